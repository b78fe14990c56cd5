//! The inbound stack: requests from other workloads, forwarded to the local application.
//!
//! The application's address comes from the Sidecar resource's ingress listener for the
//! port the client addressed, else from the first ingress listener, else from the default
//! the embedder gives (the sidecar's `--app-port`).

use crate::body::{self, BoxBody, BoxError};
use crate::client::UpstreamClient;
use crate::error::{self, ProxyError};
use crate::route::destination;
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Either, Map, Ready, ready};
use http::uri::Authority;
use http::{Request, Response};
use mesh_core::model::{InboundListener, MeshConfig, Protocol};
use mesh_core::store::ConfigStore;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

/// Forwards inbound requests to the local application.
#[derive(Clone, Debug)]
pub struct Inbound {
    store: Arc<ConfigStore>,
    default_app: Option<SocketAddr>,
    client: UpstreamClient,
    /// The last app address as a URI authority: made once, not formatted and parsed again for
    /// every request (about 2,000 instructions each).
    last_app: Option<(SocketAddr, Authority)>,
}

impl Inbound {
    /// Forwards to the app the config's Sidecar names, else to `default_app`.
    pub fn new(
        store: Arc<ConfigStore>,
        default_app: Option<SocketAddr>,
        client: UpstreamClient,
    ) -> Self {
        Self {
            store,
            default_app,
            client,
            last_app: None,
        }
    }

    /// `app` as the authority of the requests sent to it.
    fn authority_of(&mut self, app: SocketAddr) -> Result<Authority, http::uri::InvalidUri> {
        if let Some((last, authority)) = &self.last_app
            && *last == app
        {
            return Ok(authority.clone());
        }
        let authority = Authority::try_from(app.to_string())?;
        self.last_app = Some((app, authority.clone()));
        Ok(authority)
    }

    fn app_for<B>(&self, req: &Request<B>) -> Option<(SocketAddr, Protocol)> {
        let snapshot = self.store.load();
        listener_for(&snapshot, req)
            .map(|l| (l.default_endpoint, l.protocol))
            .or(self.default_app.map(|a| (a, Protocol::Http)))
    }
}

/// The inbound listener a request is for: the one for the port it addresses, else the
/// first one.
pub fn listener_for<'a, B>(
    snapshot: &'a MeshConfig,
    req: &Request<B>,
) -> Option<&'a InboundListener> {
    let listeners = &snapshot.inbound;
    if listeners.len() < 2 {
        // Without a choice, no need to read the port (a header lookup and a parse).
        return listeners.first();
    }
    let port = destination(req)
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok());
    listeners
        .iter()
        .find(|l| Some(l.port) == port)
        .or(listeners.first())
}

impl<B> Service<Request<B>> for Inbound
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some((app, protocol)) = self.app_for(&req) else {
            let e: BoxError = ProxyError::NoRoute {
                authority: destination(&req).unwrap_or_default().to_owned(),
            }
            .into();
            return Either::Right(ready(Ok(error::to_response(&e))));
        };
        let authority = match self.authority_of(app) {
            Ok(a) => a,
            Err(e) => {
                let e: BoxError = ProxyError::BadRequest(e.to_string()).into();
                return Either::Right(ready(Ok(error::to_response(&e))));
            }
        };
        let http2 = matches!(protocol, Protocol::Http2 | Protocol::Grpc);
        let future = self
            .client
            .send(req.map(body::boxed_request), authority, http2);
        Either::Left(future.map(answer))
    }
}

/// [`Inbound`]'s response future: the client's (boxed once, by the client), with a failure
/// turned into Envoy's response; or the mesh's own answer at once.
pub type ResponseFuture = Either<
    Map<BoxFuture<'static, Result<Response<BoxBody>, BoxError>>, Answer>,
    Ready<Result<Response<BoxBody>, Infallible>>,
>;

/// Turns the client's result into the answer.
type Answer = fn(Result<Response<BoxBody>, BoxError>) -> Result<Response<BoxBody>, Infallible>;

fn answer(result: Result<Response<BoxBody>, BoxError>) -> Result<Response<BoxBody>, Infallible> {
    Ok(result.unwrap_or_else(|e| error::to_response(&e)))
}
