//! The upstream client: sends a routed request to the endpoint the balancer chose, over
//! HTTP/1.1 or HTTP/2 (prior knowledge) as the cluster's protocol says, with pooled
//! connections shaped by the cluster's `connectionPool` settings (see [`connection`]).
//!
//! The pools are our own (module `pool`), on hyper's low-level connection API: an HTTP/1.1
//! connection goes back to its pool when the response body ends, with no task per request and
//! no per-request pool-key allocation, which hyper-util's legacy client needs.

mod carried;
pub mod connection;
mod driver;
mod pool;
#[cfg(test)]
mod tests;

use connection::PoolSettings;
use pool::{Connector, Pool};

use crate::body::{self, BoxBody, BoxError};
use crate::context::RequestContext;
use crate::error::ProxyError;
use crate::tls::MtlsConnector;
use arc_swap::ArcSwap;
use foldhash::HashMap;
use futures_util::future::BoxFuture;
use http::header::{CONNECTION, HOST, HeaderName, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, Uri, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use mesh_core::model::{ClientTls, Cluster, TlsMode};
use mesh_core::store::ConfigStore;
use mesh_policy::SpiffeId;
use mesh_policy::credentials::CredentialStore;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

/// A pool of plaintext connections.
type PlainClient = Arc<Pool<HttpConnector>>;
/// A pool of TLS connections.
type TlsClient = Arc<Pool<MtlsConnector>>;

/// Pooled HTTP/1.1 and HTTP/2 clients; cheap to clone (clones share the pools).
///
/// Clusters whose `connectionPool` asks for other connect timeouts, keepalive or idle
/// timeouts get a pool of their own (one per distinct set of settings); connections are
/// retired after `maxRequestsPerConnection` requests or `maxConnectionDuration`.
///
/// With [`UpstreamClient::with_mtls`], clusters whose DestinationRule says
/// `tls.mode: ISTIO_MUTUAL` are reached over mutual TLS with the workload's identity, through
/// one pool per set of expected server identities (so a connection verified for one identity
/// is never reused for a destination that expects another).
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    /// Shared by every clone (a layer's copy of the stack clones it): one reference count.
    pools: Arc<Pools>,
}

/// The pools of an [`UpstreamClient`].
#[derive(Debug)]
struct Pools {
    http1: PlainClient,
    http2: PlainClient,
    defaults: [PoolSettings; 2],
    plain: ArcSwap<HashMap<PoolSettings, PlainClient>>,
    mtls: Option<MtlsPools>,
}

/// The mutual-TLS pools, keyed by the expected identities and the protocol.
#[derive(Debug)]
struct MtlsPools {
    credentials: Arc<CredentialStore>,
    config: Arc<ConfigStore>,
    pools: ArcSwap<HashMap<PoolKey, TlsClient>>,
}

/// What a pool's connections were verified for, and how they are made and kept.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum PoolKey {
    /// ISTIO_MUTUAL: the expected server identities.
    Mesh(Vec<SpiffeId>, PoolSettings),
    /// SIMPLE / MUTUAL with files: the settings and the server name.
    Files(ClientTlsKey, PoolSettings),
}

/// The parts of a [`ClientTls`] that shape a file-based TLS client.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ClientTlsKey {
    ca: Option<String>,
    crl: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    sni: String,
    subject_alt_names: Vec<String>,
}

impl MtlsPools {
    fn client(&self, key: PoolKey) -> Result<TlsClient, BoxError> {
        if let Some(c) = self.pools.load().get(&key) {
            return Ok(c.clone());
        }
        let (connector, settings) = match &key {
            // An HTTP/1 pool offers ALPN http/1.1 only, so that its connections stay HTTP/1.1
            // (an Upgrade cannot travel over h2).
            PoolKey::Mesh(expected, settings) if settings.http2 => (
                MtlsConnector::new(
                    connector(settings),
                    self.credentials.clone(),
                    expected.clone(),
                )?,
                settings,
            ),
            PoolKey::Mesh(expected, settings) => (
                MtlsConnector::new_http1(
                    connector(settings),
                    self.credentials.clone(),
                    expected.clone(),
                )?,
                settings,
            ),
            PoolKey::Files(tls, settings) => {
                fn path(p: &Option<String>) -> Option<&std::path::Path> {
                    p.as_deref().map(std::path::Path::new)
                }
                let client = match (path(&tls.cert), path(&tls.key)) {
                    (Some(c), Some(k)) => Some((c, k)),
                    _ => None,
                };
                let config =
                    mesh_policy::tls::client_config_from_files(&mesh_policy::tls::FileTls {
                        ca: path(&tls.ca),
                        client,
                        crl: path(&tls.crl),
                        subject_alt_names: &tls.subject_alt_names,
                    })?;
                let config = if settings.http2 {
                    config
                } else {
                    crate::tls::http1_only(config)
                };
                let sni = rustls::pki_types::ServerName::try_from(tls.sni.clone())?;
                (
                    MtlsConnector::with_config(connector(settings), config, sni),
                    settings,
                )
            }
        };
        let client = Pool::new(connector, settings.clone());
        self.pools.rcu(|pools| {
            let mut pools = HashMap::clone(pools);
            pools.entry(key.clone()).or_insert_with(|| client.clone());
            pools
        });
        Ok(self.pools.load().get(&key).cloned().unwrap_or(client))
    }

    /// The identities the endpoint at `authority` of `cluster` must present, by Istio's
    /// precedence: DestinationRule `tls.subjectAltNames`, then the ServiceEntry's
    /// `subjectAltNames`, then the endpoint's service account (WorkloadEntry
    /// `serviceAccount`, in its namespace); none: any identity the bundle verifies.
    fn expected(
        &self,
        cluster: &Cluster,
        tls: &ClientTls,
        authority: &str,
    ) -> Result<Vec<SpiffeId>, BoxError> {
        let parse = |names: &[String], field: &str| {
            names
                .iter()
                .map(|n| {
                    SpiffeId::parse(n).map_err(|e| -> BoxError {
                        ProxyError::BadRequest(format!(
                            "cluster {}: {field} {n:?} is not a SPIFFE ID: {e}",
                            cluster.name
                        ))
                        .into()
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        if !tls.subject_alt_names.is_empty() {
            return parse(&tls.subject_alt_names, "tls.subjectAltNames");
        }
        let snapshot = self.config.load();
        let service = snapshot.service(&cluster.service);
        if let Some(service) = service
            && !service.subject_alt_names.is_empty()
        {
            return parse(&service.subject_alt_names, "subjectAltNames");
        }
        let endpoint = cluster
            .endpoints
            .iter()
            .find(|e| e.authority() == authority);
        let Some(sa) = endpoint.and_then(|e| e.service_account.as_deref()) else {
            return Ok(Vec::new());
        };
        let namespace = endpoint
            .and_then(|e| e.namespace.as_deref())
            .or(service.map(|s| s.namespace.as_str()))
            .unwrap_or("default");
        let creds = self.credentials.load();
        SpiffeId::from_parts(creds.id().trust_domain(), namespace, sa)
            .map(|id| vec![id])
            .map_err(|e| {
                ProxyError::BadRequest(format!(
                    "cluster {}: endpoint {authority} service account {sa:?}: {e}",
                    cluster.name
                ))
                .into()
            })
    }
}

/// A plaintext pool for connections with `settings`.
fn plain_pool(settings: &PoolSettings) -> PlainClient {
    Pool::new(connector(settings), settings.clone())
}

impl Default for UpstreamClient {
    fn default() -> Self {
        Self::new()
    }
}

impl UpstreamClient {
    /// Clients with Envoy's defaults: 10 s connect timeout, TCP_NODELAY, idle connections
    /// kept for 60 s ([`connection::DEFAULT_IDLE_TIMEOUT`]).
    pub fn new() -> Self {
        Self::with_pools(None)
    }

    fn with_pools(mtls: Option<MtlsPools>) -> Self {
        let defaults = [PoolSettings::new(false), PoolSettings::new(true)];
        let pools = Pools {
            http1: plain_pool(&defaults[0]),
            http2: plain_pool(&defaults[1]),
            defaults,
            plain: ArcSwap::default(),
            mtls,
        };
        Self {
            pools: Arc::new(pools),
        }
    }

    /// The plaintext pool for connections with `settings`.
    fn plain(&self, settings: &PoolSettings) -> PlainClient {
        let pools = &self.pools;
        if *settings == pools.defaults[0] {
            return pools.http1.clone();
        }
        if *settings == pools.defaults[1] {
            return pools.http2.clone();
        }
        if let Some(client) = pools.plain.load().get(settings) {
            return client.clone();
        }
        let client = plain_pool(settings);
        pools.plain.rcu(|plain| {
            let mut plain = HashMap::clone(plain);
            plain
                .entry(settings.clone())
                .or_insert_with(|| client.clone());
            plain
        });
        pools.plain.load().get(settings).cloned().unwrap_or(client)
    }

    /// As [`UpstreamClient::new`], and able to reach `ISTIO_MUTUAL` clusters presenting
    /// `credentials`; `config` supplies ServiceEntry identities.
    pub fn with_mtls(config: Arc<ConfigStore>, credentials: Arc<CredentialStore>) -> Self {
        Self::with_pools(Some(MtlsPools {
            credentials,
            config,
            pools: ArcSwap::default(),
        }))
    }

    /// Sends `req` to `authority` over mutual TLS, requiring the server to present one of
    /// `expected` (any identity the bundle verifies when empty).
    pub fn send_mtls(
        &self,
        req: Request<BoxBody>,
        authority: http::uri::Authority,
        http2: bool,
        expected: Vec<SpiffeId>,
    ) -> BoxFuture<'static, Result<Response<BoxBody>, BoxError>> {
        self.send_mtls_with(req, authority, PoolSettings::new(http2), expected)
    }

    fn send_mtls_with(
        &self,
        req: Request<BoxBody>,
        authority: http::uri::Authority,
        settings: PoolSettings,
        expected: Vec<SpiffeId>,
    ) -> BoxFuture<'static, Result<Response<BoxBody>, BoxError>> {
        let Some(mtls) = &self.pools.mtls else {
            let e = ProxyError::ConnectFailure {
                endpoint: authority.to_string(),
                source: "mutual TLS needs workload credentials (--cert, --key, --ca)".into(),
            };
            return failed_unsent(req, e.into());
        };
        self.send_pooled(mtls, PoolKey::Mesh(expected, settings), req, authority)
    }

    fn send_pooled(
        &self,
        mtls: &MtlsPools,
        key: PoolKey,
        req: Request<BoxBody>,
        authority: http::uri::Authority,
    ) -> BoxFuture<'static, Result<Response<BoxBody>, BoxError>> {
        let (PoolKey::Mesh(_, settings) | PoolKey::Files(_, settings)) = &key;
        let http2 = settings.http2;
        match mtls.client(key) {
            Ok(client) => self.send_with(&client, req, authority, http2),
            Err(source) => {
                let e = ProxyError::ConnectFailure {
                    endpoint: authority.to_string(),
                    source,
                };
                failed_unsent(req, e.into())
            }
        }
    }

    /// Sends `req` over TLS configured by DestinationRule `SIMPLE` / `MUTUAL` with files.
    fn send_files(
        &self,
        cluster: &Cluster,
        tls: &ClientTls,
        req: Request<BoxBody>,
        authority: http::uri::Authority,
        settings: PoolSettings,
    ) -> BoxFuture<'static, Result<Response<BoxBody>, BoxError>> {
        let unsupported = |req, what: &str| {
            let e = ProxyError::ConnectFailure {
                endpoint: authority.to_string(),
                source: format!("cluster {}: {what} is not supported", cluster.name).into(),
            };
            failed_unsent(req, e.into())
        };
        if tls.credential_name.is_some() {
            return unsupported(req, "tls.credentialName (SDS secrets)");
        }
        if tls.insecure_skip_verify {
            return unsupported(req, "tls.insecureSkipVerify");
        }
        let Some(mtls) = &self.pools.mtls else {
            return unsupported(
                req,
                "TLS without a TLS-enabled client (UpstreamClient::with_mtls)",
            );
        };
        let key = ClientTlsKey {
            ca: tls.ca_certificates.clone(),
            crl: tls.ca_crl.clone(),
            cert: tls.client_certificate.clone(),
            key: tls.private_key.clone(),
            sni: tls.sni.clone().unwrap_or_else(|| cluster.service.clone()),
            subject_alt_names: tls.subject_alt_names.clone(),
        };
        self.send_pooled(mtls, PoolKey::Files(key, settings), req, authority)
    }

    /// Sends `req` to `authority`, over HTTP/2 when `http2`.
    pub fn send(
        &self,
        req: Request<BoxBody>,
        authority: http::uri::Authority,
        http2: bool,
    ) -> BoxFuture<'static, Result<Response<BoxBody>, BoxError>> {
        let client = if http2 {
            &self.pools.http2
        } else {
            &self.pools.http1
        };
        self.send_with(client, req, authority, http2)
    }

    /// Sends `req` to `authority` through the plaintext pool for `settings`.
    fn send_plain(
        &self,
        req: Request<BoxBody>,
        authority: http::uri::Authority,
        settings: &PoolSettings,
    ) -> BoxFuture<'static, Result<Response<BoxBody>, BoxError>> {
        let client = self.plain(settings);
        self.send_with(&client, req, authority, settings.http2)
    }

    fn send_with<C: Connector>(
        &self,
        pool: &Arc<Pool<C>>,
        mut req: Request<BoxBody>,
        authority: http::uri::Authority,
        http2: bool,
    ) -> BoxFuture<'static, Result<Response<BoxBody>, BoxError>> {
        let scanned = HeaderScan::of(req.headers());
        // The name the request is for: its Host header, else its URI's authority (how an
        // HTTP/2 request carries it), else the endpoint itself. HTTP/1.1 sends it as Host with
        // the origin form. HTTP/2 sends it as `:authority` and drops Host, as Envoy does: RFC
        // 9113 section 8.3.1 lets a server refuse a request whose two names differ, and a
        // server reads `:authority` first.
        let mut parts = http::uri::Parts::default();
        if http2 {
            let from_host = scanned
                .host
                .then(|| req.headers_mut().remove(HOST))
                .flatten()
                .and_then(|host| Authority::try_from(host.as_bytes()).ok());
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Some(
                from_host
                    .or_else(|| req.uri().authority().cloned())
                    .unwrap_or_else(|| authority.clone()),
            );
        } else if !scanned.host {
            let name = req.uri().authority().unwrap_or(&authority);
            if let Ok(host) = HeaderValue::try_from(name.as_str()) {
                req.headers_mut().insert(HOST, host);
            }
        }
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
        // An HTTP/1.1 Upgrade (WebSocket, ...) keeps its Connection/Upgrade headers and, once
        // the upstream answers 101, becomes a byte tunnel between the two connections.
        // (Connection and Upgrade are hop-by-hop headers: without any, no upgrade.)
        let upgrade = (!http2 && scanned.hop_by_hop)
            .then(|| upgrade_protocol(req.headers()))
            .flatten();
        let downstream = upgrade
            .as_ref()
            .and_then(|_| req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>());
        if downstream.is_some()
            && let Some(context) = req.extensions_mut().get_mut::<RequestContext>()
        {
            // Sent again without its connection's upgrade, it could not become a tunnel.
            context.unsent = None;
        }
        if scanned.hop_by_hop {
            strip_hop_by_hop(req.headers_mut());
        }
        if let Some(protocol) = &upgrade {
            req.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            req.headers_mut().insert(UPGRADE, protocol.clone());
        }
        // A request that came over HTTP/2 (a task per stream) polls its HTTP/1.1 upstream
        // connection itself; one from an HTTP/1.1 connection leaves it to a task of its own
        // (why: module `driver`).
        let in_place = req.version() == Version::HTTP_2;
        *req.version_mut() = if http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        pool.clone()
            .send(req, authority, in_place, move |mut response| {
                let switched = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                let protocol = match upgrade {
                    Some(_) if switched => {
                        let upstream = hyper::upgrade::on(&mut response);
                        if let Some(downstream) = downstream {
                            tokio::spawn(tunnel(downstream, upstream));
                        }
                        response.headers().get(UPGRADE).cloned()
                    }
                    _ => None,
                };
                strip_hop_by_hop(response.headers_mut());
                if switched && upgrade.is_some() {
                    let headers = response.headers_mut();
                    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
                    if let Some(protocol) = protocol {
                        headers.insert(UPGRADE, protocol);
                    }
                }
                response
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
        let context = RequestContext::of(&req);
        let Some(upstream) = context.and_then(|c| c.upstream.clone()) else {
            let e = ProxyError::BadRequest("the client needs an upstream endpoint".into());
            return Box::pin(async move { Err(e.into()) });
        };
        let target = context.and_then(|c| c.target.as_ref());
        let settings = match target {
            Some(t) => {
                let http2 = speaks_http2(&t.cluster, &req);
                let mut settings = PoolSettings::of(&t.cluster.policy.connection_pool, http2);
                if http2 && let Some(slot) = context.and_then(|c| c.stream_slot) {
                    settings.slot = slot.0;
                }
                settings
            }
            None => PoolSettings::new(false),
        };
        let tls = target.and_then(|t| {
            let tls = t.cluster.policy.tls.as_ref()?;
            Some((t.cluster.clone(), tls.clone()))
        });
        if req.method() == http::Method::CONNECT {
            let idle = target
                .and_then(|t| t.cluster.policy.connection_pool.tcp_idle_timeout)
                .unwrap_or(crate::tcp::DEFAULT_TCP_IDLE_TIMEOUT);
            return self.tunnel(req, upstream.authority, &settings, tls, idle);
        }
        match tls {
            Some((cluster, tls)) if tls.mode == TlsMode::IstioMutual => {
                let expected = match &self.pools.mtls {
                    Some(m) => m.expected(&cluster, &tls, upstream.authority.as_str()),
                    None => Ok(Vec::new()),
                };
                match expected {
                    Ok(expected) => {
                        self.send_mtls_with(req, upstream.authority, settings, expected)
                    }
                    Err(e) => failed_unsent(req, e),
                }
            }
            Some((cluster, tls)) if tls.mode != TlsMode::Disable => {
                self.send_files(&cluster, &tls, req, upstream.authority, settings)
            }
            _ => self.send_plain(req, upstream.authority, &settings),
        }
    }
}

impl UpstreamClient {
    /// Terminates an HTTP/1.1 `CONNECT` (Envoy's CONNECT termination): opens a TCP connection
    /// to the endpoint (mutual TLS for `ISTIO_MUTUAL`), answers 200, and once the client's
    /// connection is upgraded carries bytes both ways until either side closes or `idle`
    /// passes without traffic.
    fn tunnel(
        &self,
        mut req: Request<BoxBody>,
        authority: http::uri::Authority,
        settings: &PoolSettings,
        tls: Option<(Arc<Cluster>, ClientTls)>,
        idle: std::time::Duration,
    ) -> BoxFuture<'static, Result<Response<BoxBody>, BoxError>> {
        let downstream = hyper::upgrade::on(&mut req);
        let uri = match Uri::try_from(format!("http://{authority}")) {
            Ok(uri) => uri,
            Err(e) => {
                return Box::pin(async move { Err(ProxyError::BadRequest(e.to_string()).into()) });
            }
        };
        let endpoint = authority.to_string();
        let failed = move |source: BoxError| -> BoxError {
            ProxyError::ConnectFailure {
                endpoint: endpoint.clone(),
                source,
            }
            .into()
        };
        let mutual = match (&tls, &self.pools.mtls) {
            (Some((_, t)), _) if t.mode == TlsMode::Disable => None,
            (Some((cluster, t)), Some(mtls)) if t.mode == TlsMode::IstioMutual => {
                let connector =
                    mtls.expected(cluster, t, authority.as_str())
                        .and_then(|expected| {
                            MtlsConnector::new_http1(
                                connector(settings),
                                mtls.credentials.clone(),
                                expected,
                            )
                            .map_err(BoxError::from)
                        });
                match connector {
                    Ok(c) => Some(c),
                    Err(e) => return Box::pin(async move { Err(failed(e)) }),
                }
            }
            (Some((cluster, t)), _) => {
                let e = failed(
                    format!(
                        "cluster {}: CONNECT over TLS mode {:?} needs ISTIO_MUTUAL and workload credentials",
                        cluster.name, t.mode
                    )
                    .into(),
                );
                return Box::pin(async move { Err(e) });
            }
            (None, _) => None,
        };
        let mut plain = connector(settings);
        Box::pin(async move {
            use tower::ServiceExt;
            match mutual {
                Some(connector) => {
                    let io = connector.oneshot(uri).await.map_err(failed)?;
                    tokio::spawn(splice_upgraded(downstream, TokioIo::new(io), idle));
                }
                None => {
                    let io = (&mut plain)
                        .oneshot(uri)
                        .await
                        .map_err(|e| failed(e.into()))?;
                    tokio::spawn(splice_upgraded(downstream, TokioIo::new(io), idle));
                }
            }
            Ok(Response::new(body::empty()))
        })
    }
}

/// Once the client's connection is upgraded, carries bytes between it and `upstream`.
async fn splice_upgraded<U>(
    downstream: hyper::upgrade::OnUpgrade,
    upstream: U,
    idle: std::time::Duration,
) where
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match downstream.await {
        Ok(client) => {
            crate::tcp::splice(TokioIo::new(client), upstream, idle).await;
        }
        Err(e) => tracing::debug!(error = %e, "CONNECT: client never upgraded"),
    }
}

/// A request that failed before anything was sent: `req` goes back to the retry layer.
fn failed_unsent(
    req: Request<BoxBody>,
    error: BoxError,
) -> BoxFuture<'static, Result<Response<BoxBody>, BoxError>> {
    crate::retry::Unsent::give_back(req);
    Box::pin(async move { Err(error) })
}

/// Whether `req` goes to `cluster` over HTTP/2: HTTP2 and GRPC ports always; HTTP ports when
/// the DestinationRule says `h2UpgradePolicy: UPGRADE` (except HTTP/1.1 `Upgrade` requests,
/// which need HTTP/1.1) or `useClientProtocol` and the client spoke HTTP/2.
fn speaks_http2<B>(cluster: &Cluster, req: &Request<B>) -> bool {
    use mesh_core::model::Protocol;
    match cluster.protocol {
        Protocol::Http2 | Protocol::Grpc => true,
        Protocol::Http => {
            let pool = &cluster.policy.connection_pool;
            if pool.use_client_protocol {
                req.version() == Version::HTTP_2
            } else {
                pool.h2_upgrade && upgrade_protocol(req.headers()).is_none()
            }
        }
        _ => false,
    }
}

/// A TCP connector with `settings`.
fn connector(settings: &PoolSettings) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connection::configure(&mut connector, settings);
    connector
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` with `Upgrade`).
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    wants.then(|| headers.get(UPGRADE).cloned()).flatten()
}

/// Copies bytes both ways between the client's and the upstream's upgraded connections until
/// either side closes.
async fn tunnel(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (Ok(downstream), Ok(upstream)) = (downstream.await, upstream.await) else {
        tracing::debug!("upgrade abandoned before both sides switched");
        return;
    };
    let mut downstream = TokioIo::new(downstream);
    let mut upstream = TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended");
    }
}

/// What one pass over a request's header names tells the client, instead of a hashed lookup
/// per name (each hashes it) for the usual request that carries none of them.
struct HeaderScan {
    host: bool,
    hop_by_hop: bool,
}

impl HeaderScan {
    fn of(headers: &HeaderMap) -> Self {
        let mut scan = Self {
            host: false,
            hop_by_hop: false,
        };
        for name in headers.keys() {
            if name == HOST {
                scan.host = true;
            } else if is_hop_by_hop(name) {
                scan.hop_by_hop = true;
            }
        }
        scan
    }
}

/// Whether `name` is a hop-by-hop header (RFC 9110 section 7.6.1) or one that older peers
/// treat as one. A match on the name's text is a switch on its length, then at most two
/// comparisons.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "te"
            | "transfer-encoding"
            | "upgrade"
            | "keep-alive"
            | "proxy-connection"
            | "trailer"
    )
}

/// Removes the headers that describe one connection rather than the message (RFC 9110
/// section 7.6.1), keeping `te: trailers`, which gRPC needs.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    static TRAILER: HeaderName = HeaderName::from_static("trailer");
    // Always removed; `Connection` (and what it names) and `TE` are handled below.
    let always = [
        &TRANSFER_ENCODING,
        &UPGRADE,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &TRAILER,
    ];
    // One pass over the names instead of a hashed lookup per hop-by-hop name, for the usual
    // message that carries none.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(CONNECTION) {
        // The headers the Connection header names (rare beyond `keep-alive` / `close`).
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|name| {
                !name.eq_ignore_ascii_case("keep-alive") && !name.eq_ignore_ascii_case("close")
            })
            .filter_map(|name| HeaderName::try_from(name).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    for name in always {
        headers.remove(name);
    }
    let trailers_only = headers
        .get(TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !trailers_only {
        headers.remove(TE);
    }
}
