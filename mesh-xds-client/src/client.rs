//! The ADS client: the tonic transport that drives [`AdsState`] and publishes each complete,
//! consistent snapshot to a [`ConfigStore`].
//!
//! - One stream at a time, to the first server of the list that answers (gRPC's A71
//!   fallback order); when it breaks, the next attempt starts again from the first.
//! - Between failed rounds, a jittered exponential backoff ([`Backoff`]); it resets once a
//!   stream has received a response.
//! - A rejected update is NACKed and recorded with [`ConfigStore::reject`]; the store keeps
//!   serving the last good snapshot. Losing the control plane changes nothing in the store:
//!   the current snapshot keeps serving until a new stream brings something new.
//!
//! ```no_run
//! # async fn example() {
//! use mesh_core::{model::{MeshConfig, Workload}, store::ConfigStore};
//! use mesh_xds_client::client::{XdsClient, XdsClientConfig};
//! use mesh_xds_client::node::NodeIdentity;
//! use mesh_xds_client::protocol::Mode;
//! use std::sync::Arc;
//!
//! let workload = Workload::default();
//! let node = NodeIdentity::from_workload(&workload, "10.0.0.7".parse().unwrap(), "app-0").to_node();
//! let store = Arc::new(ConfigStore::new(MeshConfig::default()));
//! let config = XdsClientConfig::new(vec!["http://istiod.istio-system.svc:15010".into()], Mode::Sotw, node, workload);
//! let handle = XdsClient::new(config, store.clone()).spawn();
//! let mut status = handle.status();
//! status.wait_for(|s| s.published.is_some()).await.unwrap();
//! # }
//! ```

use crate::protocol::backoff::{Backoff, BackoffConfig};
use crate::protocol::{AdsState, Handled, Mode, ProtocolConfig, Request, ResourceStatus};
use crate::translate::XdsSecret;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest,
};
use futures_util::Stream;
use mesh_core::model::{MeshConfig, Workload};
use mesh_core::store::ConfigStore;
use prost::Message;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::Streaming;

/// The client's settings.
#[derive(Clone, Debug)]
pub struct XdsClientConfig {
    /// Control planes in fallback order: `host:port` (plaintext, or TLS when [`tls`] is set)
    /// or a URI (`http://host:port`, `https://host:port`).
    ///
    /// [`tls`]: Self::tls
    pub servers: Vec<String>,
    /// State of the world or delta.
    pub mode: Mode,
    /// The node identity (see [`crate::node::NodeIdentity`]).
    pub node: Node,
    /// The workload the snapshots are built for.
    pub workload: Workload,
    /// Reconnection backoff.
    pub backoff: BackoffConfig,
    /// Seed of the backoff jitter.
    pub seed: u64,
    /// How long a requested resource may take before it is taken not to exist.
    pub does_not_exist_timeout: Duration,
    /// The largest xDS message accepted or sent (default 64 MiB).
    pub max_message_size: usize,
    /// Time allowed to establish a connection to a server.
    pub connect_timeout: Duration,
    /// TLS (and mTLS, with a client identity) to the control plane; `None` for plaintext.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// While streaming from a fallback server, how often to try the servers before it in the
    /// list; the first that accepts a connection takes over (gRPC's A71).
    pub primary_retry: Duration,
    /// Where to save the last good resources after each publish, and to load them from at
    /// start, so that the workload can start while the control plane is unreachable.
    pub snapshot_file: Option<PathBuf>,
}

impl XdsClientConfig {
    /// Settings with the defaults: gRPC backoff, 15 s does-not-exist timeout, 64 MiB messages,
    /// 5 s connect timeout.
    pub fn new(servers: Vec<String>, mode: Mode, node: Node, workload: Workload) -> Self {
        Self {
            servers,
            mode,
            node,
            workload,
            backoff: BackoffConfig::default(),
            seed: 0x6d65_7368,
            does_not_exist_timeout: Duration::from_secs(15),
            max_message_size: 64 << 20,
            connect_timeout: Duration::from_secs(5),
            tls: None,
            primary_retry: Duration::from_secs(30),
            snapshot_file: None,
        }
    }
}

/// What the client is doing, for admin pages and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct XdsStatus {
    /// The server of the current stream, if one is open.
    pub server: Option<String>,
    /// Streams opened so far.
    pub streams: u64,
    /// Responses received so far.
    pub responses: u64,
    /// Responses NACKed so far.
    pub nacks: u64,
    /// The last NACK's error detail.
    pub last_nack: Option<String>,
    /// The last connection or stream error.
    pub last_error: Option<String>,
    /// The store version of the last snapshot this client published.
    pub published: Option<u64>,
    /// Every resource's version and state.
    pub resources: Vec<ResourceStatus>,
    /// Whether the resources saved in the snapshot file were loaded at start.
    pub restored: bool,
}

/// The accepted SDS secrets, by name.
pub type Secrets = Arc<BTreeMap<String, XdsSecret>>;

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The server URI is not valid.
    #[error("invalid xDS server URI {uri:?}: {source}")]
    InvalidServer {
        /// The URI.
        uri: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The connection could not be established.
    #[error("cannot connect to xDS server {server}: {source}")]
    Connect {
        /// The server.
        server: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The stream failed.
    #[error("xDS stream to {server} failed: {status}")]
    Stream {
        /// The server.
        server: String,
        /// The gRPC status.
        status: Box<tonic::Status>,
    },
    /// The server closed the stream.
    #[error("xDS server {server} closed the stream")]
    Closed {
        /// The server.
        server: String,
    },
    /// The snapshot file could not be read or written.
    #[error("xDS snapshot file {path}: {source}")]
    SnapshotIo {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot file holds something that is not a saved snapshot, or resources that no
    /// longer pass validation.
    #[error("xDS snapshot file {path}: {reason}")]
    SnapshotInvalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A change applied to every snapshot built from xDS before it is published: how another
/// source (the YAML files' inbound listeners, authorization, peer authentication) is combined
/// with the control plane's config.
pub type Overlay = Arc<dyn Fn(MeshConfig) -> MeshConfig + Send + Sync>;

/// The ADS client. [`spawn`](Self::spawn) it, or `await` [`run`](Self::run).
pub struct XdsClient {
    config: XdsClientConfig,
    store: Arc<ConfigStore>,
    status: watch::Sender<XdsStatus>,
    secrets: watch::Sender<Secrets>,
    overlay: Option<Overlay>,
}

impl std::fmt::Debug for XdsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsClient")
            .field("config", &self.config)
            .field("overlay", &self.overlay.is_some())
            .finish_non_exhaustive()
    }
}

/// A spawned client: its status, and its task (aborted on drop).
#[derive(Debug)]
pub struct XdsHandle {
    status: watch::Receiver<XdsStatus>,
    secrets: watch::Receiver<Secrets>,
    task: tokio::task::JoinHandle<()>,
}

impl XdsHandle {
    /// The client's status, updated after every event.
    pub fn status(&self) -> watch::Receiver<XdsStatus> {
        self.status.clone()
    }

    /// The accepted SDS secrets (certificates and trust bundles), updated as they rotate.
    pub fn secrets(&self) -> watch::Receiver<Secrets> {
        self.secrets.clone()
    }

    /// Stops the client; the store keeps its last snapshot.
    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Drop for XdsHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl XdsClient {
    /// A client publishing to `store`.
    pub fn new(config: XdsClientConfig, store: Arc<ConfigStore>) -> Self {
        Self {
            config,
            store,
            status: watch::Sender::new(XdsStatus::default()),
            secrets: watch::Sender::new(Secrets::default()),
            overlay: None,
        }
    }

    /// Applies `overlay` to every snapshot before it is published (see [`Overlay`]).
    ///
    /// ```
    /// # use mesh_core::{model::{MeshConfig, Workload}, store::ConfigStore};
    /// # use mesh_xds_client::{client::{XdsClient, XdsClientConfig}, protocol::Mode};
    /// # use std::sync::Arc;
    /// let from_yaml = MeshConfig::default(); // say, the YAML loader's snapshot
    /// # let config = XdsClientConfig::new(vec![], Mode::Sotw, Default::default(), Workload::default());
    /// # let store = Arc::new(ConfigStore::new(MeshConfig::default()));
    /// let client = XdsClient::new(config, store).overlay(Arc::new(move |mut xds: MeshConfig| {
    ///     // xDS owns services, clusters and routes; the files own the workload's own side.
    ///     xds.inbound = from_yaml.inbound.clone();
    ///     xds.authorization = from_yaml.authorization.clone();
    ///     xds.peer_authentication = from_yaml.peer_authentication.clone();
    ///     xds
    /// }));
    /// # let _ = client;
    /// ```
    pub fn overlay(mut self, overlay: Overlay) -> Self {
        self.overlay = Some(overlay);
        self
    }

    /// The client's status.
    pub fn status(&self) -> watch::Receiver<XdsStatus> {
        self.status.subscribe()
    }

    /// Runs the client on a new task.
    pub fn spawn(self) -> XdsHandle {
        let status = self.status.subscribe();
        let secrets = self.secrets.subscribe();
        let task = tokio::spawn(self.run());
        XdsHandle {
            status,
            secrets,
            task,
        }
    }

    /// Runs the client: connects, follows the stream, reconnects; never returns.
    pub async fn run(self) {
        let mut state = AdsState::new(ProtocolConfig {
            mode: self.config.mode,
            node: self.config.node.clone(),
            does_not_exist_timeout: self.config.does_not_exist_timeout,
        });
        let mut backoff = Backoff::new(self.config.backoff.clone(), self.config.seed);
        if let Some(path) = &self.config.snapshot_file {
            match self.restore(path, &mut state).await {
                Ok(true) => {
                    let published = self.publish(&state).await;
                    self.status.send_modify(|s| {
                        s.restored = true;
                        s.published = published.or(s.published);
                        s.resources = dump(&state);
                    });
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "xDS snapshot file not loaded"),
            }
        }
        loop {
            let mut progressed = false;
            for (i, server) in self.config.servers.iter().enumerate() {
                let higher = &self.config.servers[..i];
                let result = self
                    .attempt(server, higher, &mut state, &mut progressed)
                    .await;
                state.disconnected();
                if let Err(e) = result {
                    tracing::warn!(error = %e, "xDS stream ended");
                    self.status.send_modify(|s| {
                        s.server = None;
                        s.last_error = Some(e.to_string());
                    });
                }
                if progressed {
                    break;
                }
            }
            if progressed {
                // The stream worked for a while: reconnect at once, from the first server.
                backoff.reset();
            } else {
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }

    fn endpoint(&self, server: &str) -> Result<tonic::transport::Endpoint, XdsError> {
        let invalid = |source| XdsError::InvalidServer {
            uri: server.to_owned(),
            source,
        };
        let mut endpoint =
            tonic::transport::Endpoint::from_shared(server_uri(server, self.config.tls.is_some()))
                .map_err(invalid)?
                .connect_timeout(self.config.connect_timeout)
                .tcp_nodelay(true);
        if let Some(tls) = &self.config.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(invalid)?;
        }
        Ok(endpoint)
    }

    /// One stream to `server`; `higher` are the servers before it, probed while it serves.
    /// `Ok(())` means a higher-priority server is reachable again.
    async fn attempt(
        &self,
        server: &str,
        higher: &[String],
        state: &mut AdsState,
        progressed: &mut bool,
    ) -> Result<(), XdsError> {
        let channel =
            self.endpoint(server)?
                .connect()
                .await
                .map_err(|source| XdsError::Connect {
                    server: server.to_owned(),
                    source,
                })?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(self.config.max_message_size)
            .max_encoding_message_size(self.config.max_message_size);
        let (tx, rx) = mpsc::unbounded_channel();
        for r in state.connected(Instant::now()) {
            // The receiver is alive: it is moved into the request stream below.
            let _ = tx.send(r);
        }
        let stream_err = |status: tonic::Status| XdsError::Stream {
            server: server.to_owned(),
            status: Box::new(status),
        };
        self.status.send_modify(|s| {
            s.server = Some(server.to_owned());
            s.streams += 1;
        });
        tracing::info!(server, mode = ?self.config.mode, "xDS stream open");
        match self.config.mode {
            Mode::Sotw => {
                let inbound = client
                    .stream_aggregated_resources(sotw_requests(rx))
                    .await
                    .map_err(stream_err)?
                    .into_inner();
                self.drive(
                    (server, higher),
                    state,
                    &tx,
                    inbound,
                    AdsState::handle_sotw,
                    progressed,
                )
                .await
            }
            Mode::Delta => {
                let inbound = client
                    .delta_aggregated_resources(delta_requests(rx))
                    .await
                    .map_err(stream_err)?
                    .into_inner();
                self.drive(
                    (server, higher),
                    state,
                    &tx,
                    inbound,
                    AdsState::handle_delta,
                    progressed,
                )
                .await
            }
        }
    }

    async fn drive<R>(
        &self,
        (server, higher): (&str, &[String]),
        state: &mut AdsState,
        tx: &mpsc::UnboundedSender<Request>,
        mut inbound: Streaming<R>,
        handle: fn(&mut AdsState, R, Instant) -> Handled,
        progressed: &mut bool,
    ) -> Result<(), XdsError> {
        let retry = self.config.primary_retry;
        let mut probe = tokio::time::interval_at(Instant::now() + retry, retry);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = state.next_deadline();
            tokio::select! {
                _ = probe.tick(), if !higher.is_empty() => {
                    for h in higher {
                        let Ok(endpoint) = self.endpoint(h) else { continue };
                        if endpoint.connect().await.is_ok() {
                            tracing::info!(server = %h, "higher-priority xDS server reachable: switching back");
                            *progressed = true;
                            return Ok(());
                        }
                    }
                }
                msg = inbound.message() => {
                    let resp = match msg {
                        Ok(Some(resp)) => resp,
                        Ok(None) => return Err(XdsError::Closed { server: server.to_owned() }),
                        Err(status) => {
                            return Err(XdsError::Stream { server: server.to_owned(), status: Box::new(status) });
                        }
                    };
                    *progressed = true;
                    let handled = handle(state, resp, Instant::now());
                    for r in handled.requests {
                        // The request stream lives as long as the call; a send error means the
                        // stream is going away, which the next message() reports.
                        let _ = tx.send(r);
                    }
                    let nack = (!handled.rejected.is_empty()).then(|| {
                        let errors: Vec<String> = handled.rejected.iter().map(ToString::to_string).collect();
                        tracing::warn!(errors = ?errors, "xDS update rejected (NACK)");
                        self.store.reject("xds", errors.clone());
                        errors.join("; ")
                    });
                    let published = if handled.changed { self.publish(state).await } else { None };
                    self.status.send_modify(|s| {
                        s.responses += 1;
                        if let Some(n) = nack {
                            s.nacks += 1;
                            s.last_nack = Some(n);
                        }
                        if published.is_some() {
                            s.published = published;
                        }
                        s.resources = dump(state);
                    });
                }
                () = sleep_until(deadline) => {
                    if state.on_timer(Instant::now()) {
                        let published = self.publish(state).await;
                        self.status.send_modify(|s| {
                            if published.is_some() {
                                s.published = published;
                            }
                            s.resources = dump(state);
                        });
                    }
                }
            }
        }
    }

    /// Publishes the snapshot if it is complete and differs from the live one; shares the
    /// secrets if they changed; saves the resources if a snapshot file is set.
    async fn publish(&self, state: &AdsState) -> Option<u64> {
        let secrets = state.secrets();
        self.secrets.send_if_modified(|current| {
            let changed = **current != secrets;
            if changed {
                *current = Arc::new(secrets);
            }
            changed
        });
        let mut config = state.snapshot(&self.config.workload)?;
        if let Some(overlay) = &self.overlay {
            config = overlay(config);
        }
        if self.store.load().config == config {
            return None;
        }
        let version = self.store.publish(config);
        tracing::info!(version, "xDS snapshot published");
        if let Some(path) = &self.config.snapshot_file
            && let Err(e) = save(path, state).await
        {
            tracing::warn!(error = %e, "xDS snapshot file not saved");
        }
        Some(version)
    }

    /// Loads the snapshot file into `state`; `Ok(false)` when there is none.
    async fn restore(&self, path: &Path, state: &mut AdsState) -> Result<bool, XdsError> {
        let bytes = match tokio::fs::read(path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                return Err(XdsError::SnapshotIo {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let invalid = |reason: String| XdsError::SnapshotInvalid {
            path: path.to_owned(),
            reason,
        };
        let mut buf = bytes.as_slice();
        let mut saved = Vec::new();
        while !buf.is_empty() {
            let resp = DeltaDiscoveryResponse::decode_length_delimited(&mut buf)
                .map_err(|e| invalid(format!("protobuf decode error: {e}")))?;
            saved.push(resp);
        }
        state.restore(saved, Instant::now()).map_err(|errors| {
            invalid(
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        tracing::info!(path = %path.display(), "xDS snapshot file loaded");
        Ok(true)
    }
}

/// Writes `state`'s resources to `path` atomically (a temporary file, then a rename).
async fn save(path: &Path, state: &AdsState) -> Result<(), XdsError> {
    let mut bytes = Vec::new();
    for resp in state.persisted() {
        // Encoding into a Vec cannot run out of space.
        let _ = resp.encode_length_delimited(&mut bytes);
    }
    let io = |source| XdsError::SnapshotIo {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    tokio::fs::write(&tmp, &bytes).await.map_err(io)?;
    tokio::fs::rename(&tmp, path).await.map_err(io)
}

/// `server` as a URI: `host:port` gets `http://`, or `https://` with TLS.
///
/// ```
/// use mesh_xds_client::client::server_uri;
/// assert_eq!(server_uri("istiod.istio-system.svc:15010", false), "http://istiod.istio-system.svc:15010");
/// assert_eq!(server_uri("istiod:15012", true), "https://istiod:15012");
/// assert_eq!(server_uri("http://127.0.0.1:18000", true), "http://127.0.0.1:18000");
/// ```
pub fn server_uri(server: &str, tls: bool) -> String {
    if server.contains("://") {
        server.to_owned()
    } else if tls {
        format!("https://{server}")
    } else {
        format!("http://{server}")
    }
}

/// The state's resource statuses with wall-clock update times, for config dumps.
fn dump(state: &AdsState) -> Vec<ResourceStatus> {
    let now = Instant::now();
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut out = state.status();
    for r in &mut out {
        r.last_updated_unix_ms = r.last_updated.map(|t| {
            let ago = now.saturating_duration_since(t);
            u64::try_from(wall.saturating_sub(ago).as_millis()).unwrap_or(u64::MAX)
        });
    }
    out
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn sotw_requests(
    rx: mpsc::UnboundedReceiver<Request>,
) -> impl Stream<Item = DiscoveryRequest> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await? {
                Request::Sotw(r) => return Some((r, rx)),
                Request::Delta(_) => continue,
            }
        }
    })
}

fn delta_requests(
    rx: mpsc::UnboundedReceiver<Request>,
) -> impl Stream<Item = DeltaDiscoveryRequest> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await? {
                Request::Delta(r) => return Some((r, rx)),
                Request::Sotw(_) => continue,
            }
        }
    })
}
