//! The mesh in-process: one entry point for a service that embeds the mesh instead of
//! running a sidecar.
//!
//! ```no_run
//! use mesh_tower::embed::Mesh;
//! use tower::ServiceExt;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let mesh = Mesh::builder()
//!     .config_files(["examples/config/quickstart"])
//!     .build()
//!     .await?;
//! // Outbound: any request, routed by its authority through the whole outbound stack.
//! let request = http::Request::get("http://hello/").body(http_body_util::Empty::<bytes::Bytes>::new())?;
//! let response = mesh.client().oneshot(request).await?;
//! println!("{} (config version {})", response.status(), mesh.version());
//! // Inbound: `mesh.inbound_layer()` in front of an axum Router or any tower service, and
//! // `mesh.listener(..)` for TLS by PeerAuthentication (with `.identity(..)`).
//! mesh.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(())
//! # }
//! ```
//!
//! The pieces:
//! - [`Mesh::client`]: the outbound stack as a `tower::Service` (a hyper-util client
//!   replacement, a tonic channel).
//! - [`Mesh::inbound_layer`]: authorization, rate limit and telemetry in front of an app.
//! - [`Mesh::listener`] / [`Mesh::acceptor`]: TLS by PeerAuthentication with the workload's
//!   credentials ([`listener`] module); [`AddPeerInfo`] puts the peer's identity into request
//!   extensions; with the `axum` feature, `embed::axum` makes the listener an `axum::serve`
//!   listener and gives the `PeerIdentity` and `Verdict` extractors.
//! - [`Mesh::health`], [`Mesh::version`], [`Mesh::shutdown_signal`] and [`Mesh::shutdown`]:
//!   the handle.
//!
//! # Graceful shutdown
//! [`Mesh::shutdown`] stops watching the config, resolves every [`Mesh::shutdown_signal`]
//! (give it to `axum::serve(..).with_graceful_shutdown(..)` or your own accept loop: the
//! server stops accepting and closes idle connections), makes listeners from
//! [`Mesh::listener`] stop accepting, and then waits, up to a grace period, until every
//! request that entered the inbound layer has finished: its response sent, body included.
//! The outbound client keeps working throughout, so a handler that is draining can still call
//! its upstreams.

use crate::authz::AuthzLayer;
use crate::body::{self, BoxBody, BoxError};
use crate::outbound::Outbound;
use crate::ratelimit::RateLimitLayer;
use crate::rng::Rng;
use crate::source::FileSource;
use crate::telemetry::{Propagators, Reporter, RequestBody, Telemetry};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use mesh_core::istio::{Diagnostic, MeshOptions};
use mesh_core::model::{LocalRateLimit, MeshConfig, PathNormalization, Percentage, Workload};
use mesh_core::store::ConfigStore;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tower_layer::Layer;
use tower_service::Service;

#[cfg(feature = "axum")]
pub mod axum;
pub mod listener;

pub use crate::server::Drain;
pub use listener::{AddPeerInfo, MeshListener, MeshStream, PeerInfo};

/// Why a mesh could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The config has errors (each names its file, resource and field).
    #[error("invalid mesh config: {}", .0.iter().filter(|d| d.is_error()).map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Config(Vec<Diagnostic>),
    /// No config source was given.
    #[error("no config: call config_files, config or config_store")]
    NoConfig,
    /// A listener or acceptor was asked for without the workload's credentials.
    #[error(
        "identity: the inbound TLS acceptor needs the workload's credentials: call identity(..)"
    )]
    NoIdentity,
    /// The workload's credentials cannot make a TLS server config.
    #[error("identity: the credentials do not make a TLS server config: {0}")]
    Tls(#[from] rustls::Error),
    /// The listener's local address could not be read.
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
}

enum Source {
    Files(Vec<PathBuf>),
    Static(Box<MeshConfig>),
    Store(Arc<ConfigStore>),
}

/// Builds a [`Mesh`].
pub struct MeshBuilder {
    source: Option<Source>,
    workload: Workload,
    seed: Option<u64>,
    reload_interval: Duration,
    telemetry: bool,
    metadata_exchange: bool,
    trace_sampling: Option<Percentage>,
    propagators: Propagators,
    inbound_rate_limit: Option<LocalRateLimit>,
    identity: Option<Arc<mesh_policy::credentials::CredentialStore>>,
    root_namespace: Option<String>,
    path_normalization: Option<PathNormalization>,
}

impl std::fmt::Debug for MeshBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshBuilder")
            .field("workload", &self.workload)
            .finish_non_exhaustive()
    }
}

impl MeshBuilder {
    /// Istio YAML files or directories, watched for changes.
    pub fn config_files<P: Into<PathBuf>>(mut self, paths: impl IntoIterator<Item = P>) -> Self {
        self.source = Some(Source::Files(paths.into_iter().map(Into::into).collect()));
        self
    }

    /// A config built in Rust (or loaded by the caller); [`Mesh::store`] publishes changes.
    pub fn config(mut self, config: MeshConfig) -> Self {
        self.source = Some(Source::Static(Box::new(config)));
        self
    }

    /// A config store that another source publishes into: the xDS client
    /// (`mesh_xds_client::client::XdsClient::new(config, store.clone()).spawn()`, so that a
    /// control plane such as istiod drives the embedded mesh), or your own.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use mesh_core::{model::MeshConfig, store::ConfigStore};
    /// use std::sync::Arc;
    /// let store = Arc::new(ConfigStore::new(MeshConfig::default()));
    /// // mesh_xds_client::client::XdsClient::new(xds_config, store.clone()).spawn();
    /// let mesh = mesh_tower::embed::Mesh::builder().config_store(store).build().await?;
    /// # let _ = mesh;
    /// # Ok(())
    /// # }
    /// ```
    pub fn config_store(mut self, store: Arc<ConfigStore>) -> Self {
        self.source = Some(Source::Store(store));
        self
    }

    /// Who this service is: namespace, labels, service account, locality.
    pub fn workload(mut self, workload: Workload) -> Self {
        self.workload = workload;
        self
    }

    /// A fixed seed for splits and jitter (reproducible tests).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// How often config files are checked for changes (default 1 s).
    pub fn reload_interval(mut self, interval: Duration) -> Self {
        self.reload_interval = interval;
        self
    }

    /// Turns Istio's metrics and trace propagation off (on by default).
    pub fn without_telemetry(mut self) -> Self {
        self.telemetry = false;
        self
    }

    /// Istio's metadata exchange (`x-envoy-peer-metadata`, on by default): the metrics name
    /// the peer workload, and each request and answer carries this workload's name,
    /// namespace, app, version and cluster to the peer. Off for a service that should not tell
    /// its callees (or callers with a sidecar) who it is. See
    /// [`Telemetry::metadata_exchange`].
    pub fn metadata_exchange(mut self, enabled: bool) -> Self {
        self.metadata_exchange = enabled;
        self
    }

    /// Samples `percentage` of new traces (default: Istio's 1%; a caller's decision is kept).
    pub fn trace_sampling(mut self, percentage: Percentage) -> Self {
        self.trace_sampling = Some(percentage);
        self
    }

    /// The trace-context formats read and written (default `tracecontext,b3multi`; see
    /// [`Propagators`], which parses `OTEL_PROPAGATORS`' syntax).
    pub fn trace_propagators(mut self, propagators: Propagators) -> Self {
        self.propagators = propagators;
        self
    }

    /// This workload's identity (SPIFFE certificate, key, trust bundle): the client then speaks
    /// mutual TLS to destinations whose DestinationRule says `ISTIO_MUTUAL` (or SIMPLE/MUTUAL),
    /// checking each server's SPIFFE ID. Rotate by storing new credentials in the store.
    pub fn identity(mut self, credentials: Arc<mesh_policy::credentials::CredentialStore>) -> Self {
        self.identity = Some(credentials);
        self
    }

    /// Rate-limits inbound requests (the inbound layer answers 429 past the limit).
    pub fn inbound_rate_limit(mut self, limit: LocalRateLimit) -> Self {
        self.inbound_rate_limit = Some(limit);
        self
    }

    /// How the inbound layer normalizes request paths before authorization, the app and the
    /// access log see them (Istio's `meshConfig.pathNormalization`; default `BASE`). It
    /// applies to [`config_files`](Self::config_files) and [`config`](Self::config) (it
    /// replaces that config's own); with [`config_store`](Self::config_store) the store's
    /// publisher decides (the xDS client: the inbound listener's connection manager).
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use mesh_core::model::PathNormalization;
    /// let mesh = mesh_tower::embed::Mesh::builder()
    ///     .config_files(["examples/config/quickstart"])
    ///     .path_normalization(PathNormalization::MergeSlashes)
    ///     .build()
    ///     .await?;
    /// # let _ = mesh;
    /// # Ok(())
    /// # }
    /// ```
    pub fn path_normalization(mut self, mode: PathNormalization) -> Self {
        self.path_normalization = Some(mode);
        self
    }

    /// Istio's root namespace (`meshConfig.rootNamespace`; default `istio-system`): its
    /// AuthorizationPolicies and PeerAuthentications without a selector apply mesh-wide. It
    /// applies to [`config_files`](Self::config_files), which it is resolved from.
    pub fn root_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.root_namespace = Some(namespace.into());
        self
    }

    /// Loads the config, starts watching it, and assembles the stacks.
    pub async fn build(self) -> Result<Mesh, MeshError> {
        let mut workload = self.workload.clone();
        let (store, watcher) = match self.source.ok_or(MeshError::NoConfig)? {
            Source::Static(mut config) => {
                workload = config.workload.clone();
                if let Some(mode) = self.path_normalization {
                    config.path_normalization = mode;
                }
                (Arc::new(ConfigStore::new(*config)), None)
            }
            Source::Files(paths) => {
                let defaults = MeshOptions::default();
                let options = MeshOptions {
                    root_namespace: self.root_namespace.unwrap_or(defaults.root_namespace),
                    path_normalization: self
                        .path_normalization
                        .unwrap_or(defaults.path_normalization),
                };
                let source = FileSource::new(paths, self.workload.clone()).options(options);
                let loaded = source.load().await;
                let Some(config) = loaded.config.clone() else {
                    return Err(MeshError::Config(loaded.diagnostics));
                };
                (Arc::new(ConfigStore::new(config)), Some((source, loaded)))
            }
            Source::Store(store) => (store, None),
        };
        let watcher = watcher.map(|(source, loaded)| {
            tokio::spawn(source.watch(store.clone(), loaded, self.reload_interval))
        });
        let rng = self.seed.map_or_else(Rng::from_entropy, Rng::with_seed);
        let mut builder = Outbound::builder(store.clone()).rng(rng.clone());
        if let Some(credentials) = &self.identity {
            builder = builder.client(crate::client::UpstreamClient::with_mtls(
                store.clone(),
                credentials.clone(),
            ));
        }
        let telemetry = |reporter, rng| {
            let telemetry = Telemetry::new(reporter, workload.clone())
                .metadata_exchange(self.metadata_exchange)
                .local_service(store.clone())
                .rng(rng)
                .propagators(self.propagators);
            match self.trace_sampling {
                Some(percentage) => telemetry.sampling(percentage),
                None => telemetry,
            }
        };
        if self.telemetry {
            builder = builder.telemetry(telemetry(Reporter::Source, rng.clone()));
        }
        let inbound_telemetry = self
            .telemetry
            .then(|| telemetry(Reporter::Destination, rng));
        let authz = AuthzLayer::new(store.clone());
        // The `jwksUri` keys of the config are fetched now, not at the first request.
        authz.compile_ahead();
        let drain = Arc::new(DrainState::default());
        let (shutdown, _) = watch::channel(false);
        Ok(Mesh {
            store,
            client: builder.build(),
            inbound: InboundLayer {
                telemetry: inbound_telemetry,
                rate_limit: self.inbound_rate_limit.map(RateLimitLayer::fixed),
                authz,
                drain: drain.clone(),
            },
            watcher,
            workload,
            identity: self.identity,
            drain,
            shutdown,
        })
    }
}

/// The mesh in this process: an outbound client, an inbound layer, the live config.
#[derive(Debug)]
pub struct Mesh {
    store: Arc<ConfigStore>,
    client: Outbound,
    inbound: InboundLayer,
    watcher: Option<JoinHandle<()>>,
    workload: Workload,
    identity: Option<Arc<mesh_policy::credentials::CredentialStore>>,
    drain: Arc<DrainState>,
    shutdown: watch::Sender<bool>,
}

/// A snapshot of the mesh's state, for a health endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// The version of the config now serving.
    pub config_version: u64,
    /// Requests inside the inbound layer (response bodies included).
    pub in_flight: usize,
    /// Whether [`Mesh::shutdown`] was called.
    pub draining: bool,
    /// Seconds until the workload certificate expires (negative once expired), with an
    /// identity.
    pub certificate_seconds_to_expiry: Option<i64>,
}

impl Health {
    /// Ready to take requests: not draining, and the certificate (if any) still valid.
    pub fn is_ready(&self) -> bool {
        !self.draining && self.certificate_seconds_to_expiry.is_none_or(|s| s > 0)
    }
}

/// Counts the requests inside the inbound layer and wakes the drain when none are left.
#[derive(Debug, Default)]
struct DrainState {
    in_flight: AtomicUsize,
    idle: Notify,
}

/// One request in flight; dropped when its response (body included) is done or abandoned.
#[derive(Debug)]
struct InFlight(Arc<DrainState>);

impl InFlight {
    fn new(state: &Arc<DrainState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl DrainState {
    /// Resolves once no request is in flight.
    async fn idle(&self) {
        crate::graceful::until_zero(&self.in_flight, &self.idle).await;
    }
}

impl Mesh {
    /// Starts building a mesh.
    pub fn builder() -> MeshBuilder {
        MeshBuilder {
            source: None,
            workload: Workload::default(),
            seed: None,
            reload_interval: Duration::from_secs(1),
            telemetry: true,
            metadata_exchange: true,
            trace_sampling: None,
            propagators: Propagators::default(),
            inbound_rate_limit: None,
            identity: None,
            root_namespace: None,
            path_normalization: None,
        }
    }

    /// The outbound client: a clonable `tower::Service<http::Request<B>>` that routes by the
    /// request's authority through route, fault, mirror, timeout, split, retry, breaker and
    /// balancer, and answers failures the way Envoy does (404 NR, 503 UH/UF/UO, 504 UT).
    pub fn client(&self) -> Outbound {
        self.client.clone()
    }

    /// The inbound layer, to put in front of an axum `Router`, a tonic server or any service.
    pub fn inbound_layer(&self) -> InboundLayer {
        self.inbound.clone()
    }

    /// The live config (publish a new [`MeshConfig`] here to change it at run time).
    pub fn store(&self) -> &Arc<ConfigStore> {
        &self.store
    }

    /// The version of the config now serving.
    pub fn version(&self) -> u64 {
        self.store.version()
    }

    /// The workload this mesh acts for.
    pub fn workload(&self) -> &Workload {
        &self.workload
    }

    /// The workload's credentials, when built with [`MeshBuilder::identity`].
    pub fn identity(&self) -> Option<&Arc<mesh_policy::credentials::CredentialStore>> {
        self.identity.as_ref()
    }

    /// The inbound TLS acceptor: PeerAuthentication from this mesh's config (STRICT,
    /// PERMISSIVE or DISABLE, read at each accept), the workload's credentials (read at each
    /// handshake, so rotation applies to new connections). For a hand-written accept loop;
    /// [`Mesh::listener`] wraps it around a whole `TcpListener`.
    pub fn acceptor(&self) -> Result<crate::tls::InboundTls, MeshError> {
        let credentials = self.identity.clone().ok_or(MeshError::NoIdentity)?;
        Ok(crate::tls::InboundTls::new(
            self.store.clone(),
            credentials,
        )?)
    }

    /// `listener` with [`Mesh::acceptor`] applied to every connection: serve it with
    /// `axum::serve` (feature `axum`) or accept from it by hand. It stops accepting when
    /// [`Mesh::shutdown`] is called. Must be called inside a tokio runtime.
    pub fn listener(&self, listener: tokio::net::TcpListener) -> Result<MeshListener, MeshError> {
        Ok(MeshListener::with_shutdown(
            listener,
            self.acceptor()?,
            self.shutdown_signal(),
        )?)
    }

    /// A snapshot of the mesh's state: config version, requests in flight, draining,
    /// certificate expiry.
    pub fn health(&self) -> Health {
        Health {
            config_version: self.version(),
            in_flight: self.drain.in_flight.load(Ordering::Acquire),
            draining: *self.shutdown.borrow(),
            certificate_seconds_to_expiry: self
                .identity
                .as_ref()
                .map(|c| c.load().seconds_to_expiry()),
        }
    }

    /// Resolves when [`Mesh::shutdown`] is called (at once if it was). Give it to
    /// `axum::serve(..).with_graceful_shutdown(..)`, hyper-util's `GracefulShutdown` or an
    /// accept loop. Never resolves if the mesh is dropped without a shutdown.
    pub fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.subscribe();
        async move {
            if rx.wait_for(|down| *down).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Shuts down gracefully (see the module docs): stops watching the config, fires
    /// [`Mesh::shutdown_signal`], and waits up to `grace` for every request in the inbound
    /// layer to finish. [`Drain::TimedOut`] if some were still running; they are not cancelled
    /// (the server that runs them decides). Calling it again waits again.
    pub async fn shutdown(&self, grace: Duration) -> Drain {
        if let Some(watcher) = &self.watcher {
            watcher.abort();
        }
        self.shutdown.send_replace(true);
        match tokio::time::timeout(grace, self.drain.idle()).await {
            Ok(()) => Drain::Complete,
            Err(_) => Drain::TimedOut,
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
        }
    }
}

/// Puts the mesh's inbound policies in front of a service: telemetry (Istio's metrics with
/// `reporter="destination"`, trace context, request ids), the local rate limit, and
/// end-user JWT authentication by the config's RequestAuthentications (401 for a token that
/// fails; the verified `mesh_policy::jwt::Claims` in the request's extensions) then
/// authorization by its AuthorizationPolicies (403 `RBAC: access denied`).
#[derive(Clone, Debug)]
pub struct InboundLayer {
    telemetry: Option<Telemetry>,
    rate_limit: Option<RateLimitLayer>,
    authz: AuthzLayer,
    drain: Arc<DrainState>,
}

impl<S> Layer<S> for InboundLayer {
    type Service = InboundService<S>;

    fn layer(&self, inner: S) -> InboundService<S> {
        InboundService {
            layer: self.clone(),
            inner,
        }
    }
}

/// The service [`InboundLayer`] makes. The inner service gets the request's body as a
/// [`RequestBody`] (telemetry counts its bytes when its length is not known up front).
#[derive(Clone, Debug)]
pub struct InboundService<S> {
    layer: InboundLayer,
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for InboundService<S>
where
    S: Service<Request<RequestBody<B>>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<BoxBody>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Response<BoxBody>, std::convert::Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), std::convert::Infallible>> {
        // An inner service that fails readiness answers its requests with the error instead.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let in_flight = InFlight::new(&self.layer.drain);
        let grpc = crate::timeout::is_grpc(req.headers());
        let mut observation = self.layer.telemetry.as_ref().map(|t| t.start(&mut req));
        let req = req.map(|body| match observation.as_mut() {
            Some(observation) => observation.request_body(body),
            None => RequestBody::new(body),
        });
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let boxed = tower::util::MapResponse::new(
            tower::util::MapErr::new(inner, Into::<BoxError>::into),
            |r: Response<RB>| r.map(body::boxed),
        );
        let boxed = self.layer.authz.layer(boxed);
        let future: BoxFuture<'static, Result<Response<BoxBody>, BoxError>> =
            match &self.layer.rate_limit {
                Some(limit) => Box::pin(tower::ServiceExt::oneshot(limit.layer(boxed), req)),
                None => Box::pin(tower::ServiceExt::oneshot(boxed, req)),
            };
        Box::pin(async move {
            let response = future
                .await
                .unwrap_or_else(|e| crate::error::to_response(&e));
            // A gRPC client gets a denial or a rate limit as a gRPC status (PERMISSION_DENIED,
            // UNAVAILABLE), as Envoy answers it.
            let response = if grpc && crate::grpc::needs_rewrite(&response) {
                crate::grpc::to_grpc(response).await
            } else {
                response
            };
            let response = match observation {
                Some(observation) => observation.finish(response),
                None => response,
            };
            // Counted until the body is done (or dropped), so a drain waits for it.
            Ok(response.map(|body| {
                http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_frame(
                    body,
                    move |frame| {
                        let _held = &in_flight;
                        frame
                    },
                ))
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    use std::convert::Infallible;

    async fn mesh() -> Mesh {
        Mesh::builder()
            .config(MeshConfig::default())
            .without_telemetry()
            .build()
            .await
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_in_flight_requests_up_to_the_grace_period() {
        let mesh = mesh().await;
        let never = tower::service_fn(|_: Request<RequestBody<BoxBody>>| {
            std::future::pending::<Result<Response<BoxBody>, Infallible>>()
        });
        let mut service = mesh.inbound_layer().layer(never);
        let stuck = service.call(Request::new(body::empty()));
        assert_eq!(mesh.health().in_flight, 1);
        assert!(mesh.health().is_ready());

        assert_eq!(mesh.shutdown(Duration::from_secs(5)).await, Drain::TimedOut);
        let health = mesh.health();
        assert!(health.draining && !health.is_ready());
        assert_eq!(health.in_flight, 1);
        // The signal fired; a late subscriber sees it at once.
        mesh.shutdown_signal().await;

        // Abandoned (the server dropped it): nothing left to wait for.
        drop(stuck);
        assert_eq!(mesh.health().in_flight, 0);
        assert_eq!(mesh.shutdown(Duration::from_secs(5)).await, Drain::Complete);
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_body_still_streaming_keeps_the_request_in_flight() {
        let mesh = mesh().await;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
        let streaming = tower::service_fn(move |_: Request<RequestBody<BoxBody>>| {
            let rx = rx.lock().unwrap().take().unwrap();
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
            });
            std::future::ready(Ok::<_, Infallible>(Response::new(StreamBody::new(stream))))
        });
        let response = tower::ServiceExt::oneshot(
            mesh.inbound_layer().layer(streaming),
            Request::new(body::empty()),
        )
        .await
        .unwrap();
        assert_eq!(
            mesh.health().in_flight,
            1,
            "the head is out, the body is not"
        );
        let draining = tokio::spawn({
            let drain = mesh.drain.clone();
            async move { tokio::time::timeout(Duration::from_secs(5), drain.idle()).await }
        });
        tx.send(Bytes::from_static(b"last chunk")).await.unwrap();
        drop(tx);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "last chunk");
        assert_eq!(mesh.health().in_flight, 0);
        assert!(
            draining.await.unwrap().is_ok(),
            "the drain saw the body end"
        );
    }
}
