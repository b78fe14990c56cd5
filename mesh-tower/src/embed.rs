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
//! // Inbound: `mesh.inbound_layer()` in front of an axum Router or any tower service.
//! mesh.shutdown();
//! # Ok(())
//! # }
//! ```

use crate::authz::AuthzLayer;
use crate::body::{self, BoxBody, BoxError};
use crate::outbound::Outbound;
use crate::ratelimit::RateLimitLayer;
use crate::rng::Rng;
use crate::source::FileSource;
use crate::telemetry::{Reporter, Telemetry};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use mesh_core::istio::Diagnostic;
use mesh_core::model::{LocalRateLimit, MeshConfig, Workload};
use mesh_core::store::ConfigStore;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::task::JoinHandle;
use tower_layer::Layer;
use tower_service::Service;

/// Why a mesh could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The config has errors (each names its file, resource and field).
    #[error("invalid mesh config: {}", .0.iter().filter(|d| d.is_error()).map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Config(Vec<Diagnostic>),
    /// No config source was given.
    #[error("no config: call config_files or config")]
    NoConfig,
}

enum Source {
    Files(Vec<PathBuf>),
    Static(Box<MeshConfig>),
}

/// Builds a [`Mesh`].
pub struct MeshBuilder {
    source: Option<Source>,
    workload: Workload,
    seed: Option<u64>,
    reload_interval: Duration,
    telemetry: bool,
    inbound_rate_limit: Option<LocalRateLimit>,
    identity: Option<Arc<mesh_policy::credentials::CredentialStore>>,
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

    /// Loads the config, starts watching it, and assembles the stacks.
    pub async fn build(self) -> Result<Mesh, MeshError> {
        let mut workload = self.workload.clone();
        let (config, watcher) = match self.source.ok_or(MeshError::NoConfig)? {
            Source::Static(config) => {
                workload = config.workload.clone();
                (*config, None)
            }
            Source::Files(paths) => {
                let source = FileSource::new(paths, self.workload.clone());
                let loaded = source.load().await;
                let Some(config) = loaded.config.clone() else {
                    return Err(MeshError::Config(loaded.diagnostics));
                };
                (config, Some((source, loaded)))
            }
        };
        let store = Arc::new(ConfigStore::new(config));
        let watcher = watcher.map(|(source, loaded)| {
            tokio::spawn(source.watch(store.clone(), loaded, self.reload_interval))
        });
        let rng = self.seed.map_or_else(Rng::from_entropy, Rng::with_seed);
        let mut builder = Outbound::builder(store.clone()).rng(rng.clone());
        if let Some(credentials) = self.identity {
            builder = builder.client(crate::client::UpstreamClient::with_mtls(
                store.clone(),
                credentials,
            ));
        }
        if self.telemetry {
            builder = builder
                .telemetry(Telemetry::new(Reporter::Source, workload.clone()).rng(rng.clone()));
        }
        let inbound_telemetry = self
            .telemetry
            .then(|| Telemetry::new(Reporter::Destination, workload.clone()).rng(rng));
        let authz = AuthzLayer::new(store.clone());
        Ok(Mesh {
            store,
            client: builder.build(),
            inbound: InboundLayer {
                telemetry: inbound_telemetry,
                rate_limit: self.inbound_rate_limit.map(RateLimitLayer::fixed),
                authz,
            },
            watcher,
            workload,
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
            inbound_rate_limit: None,
            identity: None,
        }
    }

    /// The outbound client: a clonable `tower::Service<http::Request<B>>` that routes by the
    /// request's authority through route, fault, mirror, timeout, retry, split, breaker and
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

    /// Stops watching the config; clients already handed out keep working on the last one.
    pub fn shutdown(mut self) {
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
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
/// authorization by the config's AuthorizationPolicies (403 `RBAC: access denied`).
#[derive(Clone, Debug)]
pub struct InboundLayer {
    telemetry: Option<Telemetry>,
    rate_limit: Option<RateLimitLayer>,
    authz: AuthzLayer,
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

/// The service [`InboundLayer`] makes.
#[derive(Clone, Debug)]
pub struct InboundService<S> {
    layer: InboundLayer,
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for InboundService<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Send + 'static,
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
        let observation = self.layer.telemetry.as_ref().map(|t| t.start(&mut req));
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
            Ok(match observation {
                Some(observation) => observation.finish(response),
                None => response,
            })
        })
    }
}
