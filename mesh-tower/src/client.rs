//! The upstream client: sends a routed request to the endpoint the balancer chose, over
//! HTTP/1.1 or HTTP/2 (prior knowledge) as the cluster's protocol says, with pooled
//! connections.

use crate::balance::Upstream;
use crate::body::{self, BoxBody, BoxError};
use crate::error::ProxyError;
use crate::split::Target;
use futures_util::future::BoxFuture;
use http::header::{CONNECTION, HOST, HeaderName, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::task::{Context, Poll};
use std::time::Duration;
use tower_service::Service;

/// Pooled HTTP/1.1 and HTTP/2 clients; cheap to clone (clones share the pools).
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    http1: Client<HttpConnector, BoxBody>,
    http2: Client<HttpConnector, BoxBody>,
}

impl Default for UpstreamClient {
    fn default() -> Self {
        Self::new()
    }
}

impl UpstreamClient {
    /// Clients with Envoy's defaults: 10 s connect timeout, TCP_NODELAY, idle connections
    /// kept for 60 s.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        connector.enforce_http(true);
        let http1 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .http2_only(true)
            .build(connector);
        Self { http1, http2 }
    }

    /// Sends `req` to `authority`, over HTTP/2 when `http2`.
    pub fn send(
        &self,
        mut req: Request<BoxBody>,
        authority: http::uri::Authority,
        http2: bool,
    ) -> BoxFuture<'static, Result<Response<BoxBody>, BoxError>> {
        if !req.headers().contains_key(HOST)
            && let Some(original) = req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::try_from(a.as_str()).ok())
        {
            req.headers_mut().insert(HOST, original);
        }
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority.clone());
        parts.path_and_query = Some(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        match Uri::from_parts(parts) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(e) => {
                return Box::pin(async move { Err(ProxyError::BadRequest(e.to_string()).into()) });
            }
        }
        strip_hop_by_hop(req.headers_mut());
        *req.version_mut() = if http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let future = if http2 {
            self.http2.request(req)
        } else {
            self.http1.request(req)
        };
        Box::pin(async move {
            match future.await {
                Ok(response) => {
                    let mut response = response.map(body::boxed);
                    strip_hop_by_hop(response.headers_mut());
                    Ok(response)
                }
                Err(e) if e.is_connect() => Err(ProxyError::ConnectFailure {
                    endpoint: authority.to_string(),
                    source: e.into(),
                }
                .into()),
                Err(e) => Err(ProxyError::UpstreamReset {
                    endpoint: authority.to_string(),
                    source: e.into(),
                }
                .into()),
            }
        })
    }
}

impl Service<Request<BoxBody>> for UpstreamClient {
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<BoxBody>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        let Some(upstream) = req.extensions().get::<Upstream>().cloned() else {
            let e = ProxyError::BadRequest("the client needs an upstream endpoint".into());
            return Box::pin(async move { Err(e.into()) });
        };
        let http2 = req.extensions().get::<Target>().is_some_and(|t| {
            matches!(
                t.cluster.protocol,
                mesh_core::model::Protocol::Http2 | mesh_core::model::Protocol::Grpc
            )
        });
        self.send(req, upstream.authority, http2)
    }
}

/// Removes the headers that describe one connection rather than the message (RFC 9110
/// section 7.6.1), keeping `te: trailers`, which gRPC needs.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [CONNECTION, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    for name in ["keep-alive", "proxy-connection", "trailer"] {
        headers.remove(name);
    }
    let trailers_only = headers
        .get(TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !trailers_only {
        headers.remove(TE);
    }
}
