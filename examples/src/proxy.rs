//! The sidecar: four listeners over one watched config.
//!
//! - outbound: the local app's requests to other services (HTTP/1.1 and h2c on one port;
//!   the destination is `Host`/`:authority` or an absolute-form URI);
//! - inbound: other workloads' requests to the local app, accepted by PeerAuthentication
//!   (mutual TLS with the workload identity given by `--cert --key --ca`) and authorized by
//!   AuthorizationPolicy;
//! - admin: `/config_dump`, `/clusters`, `/ready`;
//! - health: `/healthz/ready`.

use mesh_core::istio::Diagnostic;
use mesh_core::model::Percentage;
use mesh_core::model::Workload;
use mesh_core::store::ConfigStore;
use mesh_policy::credentials::{CredentialStore, Credentials, CredentialsError, FileWatcher};
use mesh_tower::admin::{Admin, LogLevelSetter, Readiness};
use mesh_tower::authz::{AuthzLayer, AuthzStats};
use mesh_tower::capture::{
    InboundCapture, OutboundCapture, serve_inbound_capture, serve_outbound_capture,
};
use mesh_tower::client::UpstreamClient;
use mesh_tower::grpc::GrpcErrorsLayer;
use mesh_tower::inbound::Inbound;
use mesh_tower::outbound::Outbound;
use mesh_tower::ratelimit::InboundRateLimitLayer;
use mesh_tower::rng::Rng;
use mesh_tower::server::{Drain, serve, serve_tls};
use mesh_tower::source::FileSource;
use mesh_tower::telemetry::{AccessLogFormat, AccessLogSink, Propagators, Reporter, Telemetry};
use mesh_tower::tls::{InboundTls, watch_credentials};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::Layer;

/// Everything the sidecar needs to start.
#[derive(Clone)]
pub struct Options {
    /// Istio YAML files and directories.
    pub config: Vec<PathBuf>,
    /// Istio's mesh-wide settings the files are resolved with: the root namespace and the
    /// inbound path normalization (with xDS, the control plane's inbound listener decides the
    /// path normalization when it sends one).
    pub mesh: mesh_core::istio::MeshOptions,
    /// Where the outbound listener binds (port 0: any free port).
    pub outbound: SocketAddr,
    /// Where the inbound listener binds.
    pub inbound: SocketAddr,
    /// Where the admin listener binds.
    pub admin: SocketAddr,
    /// Where the health listener binds.
    pub health: SocketAddr,
    /// The local app, when no Sidecar resource names it.
    pub app: Option<SocketAddr>,
    /// Who this sidecar runs beside.
    pub workload: Workload,
    /// How often the config files are checked for changes.
    pub reload_interval: Duration,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_grace: Duration,
    /// A fixed seed for traffic splits (reproducible runs); entropy when `None`.
    pub seed: Option<u64>,
    /// The access log format; `None` turns it off.
    pub access_log: Option<AccessLogFormat>,
    /// The share of new traces sampled (Istio's default: 1%).
    pub trace_sampling: Percentage,
    /// The trace-context formats read and written (`OTEL_PROPAGATORS`).
    pub trace_propagators: Propagators,
    /// Changes the log filter for `/logging?level=`.
    pub log_level: Option<LogLevelSetter>,
    /// The workload identity for mutual TLS; plaintext only when `None`.
    pub identity: Option<Identity>,
    /// Where to export spans over OTLP/gRPC (`http://host:4317`); no export when `None`.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of exported spans.
    pub service_name: String,
    /// xDS control planes, in fallback order (`host:port`); none: config from files only.
    pub xds: Vec<String>,
    /// State of the world or delta.
    pub xds_mode: mesh_xds_client::protocol::Mode,
    /// Where to save the last good xDS snapshot, and start from it.
    pub xds_snapshot: Option<PathBuf>,
    /// The xDS node id; Istio's `sidecar~IP~POD.NS~NS.svc.<domain>` from the workload when
    /// `None`.
    pub node_id: Option<String>,
    /// The xDS node cluster; `APP.NS` from the workload labels when `None`.
    pub node_cluster: Option<String>,
    /// An Envoy JSON file (admin config dump, bootstrap `static_resources`, discovery
    /// response) giving services, clusters, routes and, from its inbound listener,
    /// authorization; read once at start, like an xDS snapshot.
    pub envoy_config: Option<PathBuf>,
    /// Plain TCP forwards: a local address, and the service host and `TCP` port behind it.
    pub tcp_forwards: Vec<(SocketAddr, String, u16)>,
    /// Transparent interception: the outbound and inbound listeners are capture listeners
    /// (`mesh-proxy iptables --apply` redirects traffic to them) that read each connection's
    /// original destination and carry HTTP and opaque TCP ([`mesh_tower::capture`]).
    /// Connections made to them directly are served as before.
    pub intercept: bool,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("config", &self.config)
            .field("mesh", &self.mesh)
            .field("outbound", &self.outbound)
            .field("inbound", &self.inbound)
            .field("admin", &self.admin)
            .field("health", &self.health)
            .field("app", &self.app)
            .field("workload", &self.workload)
            .field("access_log", &self.access_log)
            .field("trace_sampling", &self.trace_sampling)
            .field("trace_propagators", &self.trace_propagators)
            .field("identity", &self.identity)
            .field("intercept", &self.intercept)
            .finish_non_exhaustive()
    }
}

/// Where the workload identity (certificate chain, key, trust bundle) comes from.
#[derive(Clone, Debug)]
pub enum Identity {
    /// PEM files, watched for rotation.
    Files {
        /// The certificate chain, leaf first.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
        /// The trust bundle.
        ca: PathBuf,
        /// How often the files are checked for changes.
        poll: Duration,
    },
    /// A store the embedder fills and rotates itself.
    Store(Arc<CredentialStore>),
}

impl Options {
    /// Options with Istio's ports on `listen` (outbound and admin stay on loopback), for the
    /// config at `config`.
    pub fn new(config: Vec<PathBuf>, listen: std::net::IpAddr) -> Self {
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        Self {
            config,
            mesh: mesh_core::istio::MeshOptions::default(),
            outbound: SocketAddr::new(loopback, 15001),
            inbound: SocketAddr::new(listen, 15006),
            admin: SocketAddr::new(loopback, 15000),
            health: SocketAddr::new(listen, 15021),
            app: None,
            workload: Workload::default(),
            reload_interval: Duration::from_secs(1),
            drain_grace: Duration::from_secs(5),
            seed: None,
            access_log: None,
            trace_sampling: Percentage::from_ppm(10_000).unwrap_or(Percentage::NONE),
            trace_propagators: Propagators::default(),
            log_level: None,
            identity: None,
            otlp_endpoint: None,
            service_name: "mesh-proxy".to_owned(),
            xds: Vec::new(),
            xds_mode: mesh_xds_client::protocol::Mode::Sotw,
            xds_snapshot: None,
            node_id: None,
            node_cluster: None,
            envoy_config: None,
            tcp_forwards: Vec::new(),
            intercept: false,
        }
    }
}

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config has errors.
    #[error("invalid config ({} errors)", .0.iter().filter(|d| d.is_error()).count())]
    Config(Vec<Diagnostic>),
    /// The Envoy JSON file (`envoy_config`) cannot be read, decoded or translated.
    #[error("envoy config {path}: {errors}")]
    EnvoyConfig {
        /// The file.
        path: PathBuf,
        /// Every error, `; `-separated, each with its place in the file and the field.
        errors: String,
    },
    /// The workload credentials are invalid.
    #[error("workload credentials: {0}")]
    Credentials(#[from] CredentialsError),
    /// The TLS configuration could not be built.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// A listener could not bind.
    #[error("cannot bind the {listener} listener on {addr}: {source}")]
    Bind {
        /// Which listener.
        listener: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A running sidecar.
#[derive(Debug)]
pub struct Proxy {
    /// The outbound listener's address.
    pub outbound: SocketAddr,
    /// The inbound listener's address.
    pub inbound: SocketAddr,
    /// The admin listener's address.
    pub admin: SocketAddr,
    /// The health listener's address.
    pub health: SocketAddr,
    /// Warnings found in the initial config.
    pub warnings: Vec<Diagnostic>,
    store: Arc<ConfigStore>,
    readiness: Readiness,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<Drain>>,
    watcher: JoinHandle<()>,
    credentials: Option<Arc<CredentialStore>>,
    credential_watcher: Option<JoinHandle<()>>,
    authz: Arc<AuthzStats>,
    xds: Option<mesh_xds_client::client::XdsHandle>,
    tcp_forwards: Vec<(SocketAddr, JoinHandle<()>)>,
}

impl Proxy {
    /// Loads the config, binds every listener, and starts serving and watching the config.
    pub async fn start(options: Options) -> Result<Proxy, StartError> {
        let source = FileSource::new(options.config.clone(), options.workload.clone())
            .options(options.mesh.clone());
        let loaded = source.load().await;
        let Some(mut config) = loaded.config.clone() else {
            return Err(StartError::Config(loaded.diagnostics));
        };
        config.workload = options.workload.clone();
        if let Some(path) = &options.envoy_config {
            config = overlay_files(load_envoy_config(path, &options.workload).await?, &config);
        }
        let warnings = loaded.diagnostics.clone();
        let store = Arc::new(ConfigStore::new(config));
        let bind = |listener: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    listener,
                    addr,
                    source,
                })
        };
        let outbound_listener = bind("outbound", options.outbound).await?;
        let inbound_listener = bind("inbound", options.inbound).await?;
        let admin_listener = bind("admin", options.admin).await?;
        let health_listener = bind("health", options.health).await?;
        let local = |l: &TcpListener, fallback: SocketAddr| l.local_addr().unwrap_or(fallback);
        let (outbound, inbound, admin, health) = (
            local(&outbound_listener, options.outbound),
            local(&inbound_listener, options.inbound),
            local(&admin_listener, options.admin),
            local(&health_listener, options.health),
        );

        let (credentials, credential_watcher) = match options.identity.clone() {
            None => (None, None),
            Some(Identity::Store(store)) => (Some(store), None),
            Some(Identity::Files {
                cert,
                key,
                ca,
                poll,
            }) => {
                let store = CredentialStore::new(Credentials::from_files(&cert, &key, &ca)?);
                let watcher = FileWatcher::new(cert, key, ca, true);
                let task = tokio::spawn(watch_credentials(store.clone(), watcher, poll));
                (Some(store), Some(task))
            }
        };
        if credentials.is_none()
            && store.load().peer_authentication.mode == mesh_core::model::MtlsMode::Strict
        {
            tracing::warn!(
                "PeerAuthentication is STRICT but no workload identity is configured \
                 (--cert, --key, --ca): inbound connections are served in plaintext"
            );
        }
        let client = match &credentials {
            Some(c) => UpstreamClient::with_mtls(store.clone(), c.clone()),
            None => UpstreamClient::new(),
        };
        let rng = options.seed.map_or_else(Rng::from_entropy, Rng::with_seed);
        // Who this sidecar is to the control plane, and to its peers in Istio's metadata
        // exchange.
        let node = node_identity(&options.workload);
        let node_id = options.node_id.clone().unwrap_or_else(|| node.node_id());
        let mut telemetry = Telemetry::new(Reporter::Source, options.workload.clone())
            .node_id(&node_id)
            .sampling(options.trace_sampling)
            .propagators(options.trace_propagators)
            .rng(rng.clone());
        if let Some(endpoint) = options.otlp_endpoint.clone() {
            let (sink, _) = mesh_tower::telemetry::otlp::exporter(
                endpoint,
                options.service_name.clone(),
                Duration::from_secs(1),
            );
            telemetry = telemetry.spans(sink);
        }
        if let Some(format) = options.access_log {
            let stdout: AccessLogSink = Arc::new(|line: &str| {
                use std::io::Write;
                let _ = writeln!(std::io::stdout().lock(), "{line}");
            });
            telemetry = telemetry.access_log(format, stdout);
        }
        let outbound_service = Outbound::builder(store.clone())
            .rng(rng)
            .client(client.clone())
            .telemetry(telemetry)
            .build();
        let authz = AuthzLayer::new(store.clone());
        // Policies compile now and at each reload: `jwksUri` keys are fetched before traffic.
        authz.compile_ahead();
        let authz_stats = authz.stats();
        let inbound_telemetry = Telemetry::new(Reporter::Destination, options.workload.clone())
            .node_id(&node_id)
            .local_service(store.clone())
            .sampling(options.trace_sampling)
            .propagators(options.trace_propagators);
        let inbound_telemetry = mesh_tower::telemetry::TelemetryLayer::new(inbound_telemetry);
        // A gRPC client gets the sidecar's own answers (denial, no app) as a gRPC status.
        // Envoy's inbound filter order: RBAC, then the local rate limit, then the router.
        let inbound_limit = InboundRateLimitLayer::new(store.clone());
        let inbound_service =
            inbound_telemetry.layer(GrpcErrorsLayer.layer(authz.layer(
                inbound_limit.layer(Inbound::new(store.clone(), options.app, client.clone())),
            )));
        // With interception, each inbound connection's app is 127.0.0.1:<original port>.
        let make_inbound = {
            let (store, authz, client) = (store.clone(), authz.clone(), client.clone());
            move |app: SocketAddr| {
                inbound_telemetry.layer(GrpcErrorsLayer.layer(authz.layer(
                    inbound_limit.layer(Inbound::new(store.clone(), Some(app), client.clone())),
                )))
            }
        };
        // PeerAuthentication's portLevelMtls is keyed by the workload's port: the Sidecar's
        // first ingress port, else the app port (the inbound listener's own port is 15006).
        let workload_port = store
            .load()
            .inbound
            .first()
            .map(|l| l.port)
            .or(options.app.map(|a| a.port()));
        // This side of Istio's TCP metadata exchange, with the node id its peers key it by.
        let peer_exchange =
            mesh_tower::telemetry::TcpPeerExchange::with_id(&options.workload, Some(&node_id));
        let inbound_tls = match &credentials {
            Some(c) => {
                let tls = InboundTls::new(store.clone(), c.clone())
                    .map_err(|e| StartError::Tls(e.to_string()))?
                    .peer_exchange(peer_exchange.clone());
                Some(match workload_port {
                    Some(port) => tls.workload_port(port),
                    None => tls,
                })
            }
            None => None,
        };
        let readiness = Readiness::default();
        // One balancer for HTTP and TCP: endpoint state (outlier ejections) in one place, and
        // in `/clusters`.
        let balancer = outbound_service.balancer().clone();
        let mut admin_service =
            Admin::new(store.clone(), readiness.clone()).balancer(balancer.clone());
        if let Some(set) = options.log_level.clone() {
            admin_service = admin_service.log_level(set);
        }

        let (watcher, xds) = if options.envoy_config.is_some() {
            // Read once, like an xDS snapshot: the files are not watched either.
            (tokio::spawn(std::future::pending::<()>()), None)
        } else if options.xds.is_empty() {
            let watcher =
                tokio::spawn(source.watch(store.clone(), loaded, options.reload_interval));
            (watcher, None)
        } else {
            // With xDS, the control plane owns services, clusters and routes; the files (read
            // once, at start) keep inbound listeners, authorization and peer authentication.
            let files = store.load().config.clone();
            let overlay: mesh_xds_client::client::Overlay =
                Arc::new(move |config: mesh_core::model::MeshConfig| overlay_files(config, &files));
            let mut node = node.to_node();
            node.id.clone_from(&node_id);
            if let Some(cluster) = &options.node_cluster {
                node.cluster.clone_from(cluster);
            }
            let mut xds_config = mesh_xds_client::client::XdsClientConfig::new(
                options.xds.clone(),
                options.xds_mode,
                node,
                options.workload.clone(),
            );
            xds_config.snapshot_file.clone_from(&options.xds_snapshot);
            let handle = mesh_xds_client::client::XdsClient::new(xds_config, store.clone())
                .overlay(overlay)
                .spawn();
            // SDS: the control plane's certificates rotate the workload's credentials.
            if let Some(credentials) = &credentials {
                tokio::spawn(mesh_xds_client::sds::rotate(
                    handle.secrets(),
                    credentials.clone(),
                ));
            }
            (tokio::spawn(std::future::pending::<()>()), Some(handle))
        };
        if let Some(store) = credentials.clone() {
            admin_service = admin_service.dump_section(
                "certificate",
                Arc::new(move || {
                    let creds = store.load();
                    serde_json::json!({
                        "spiffe_id": creds.id().to_string(),
                        "not_after_unix": creds.not_after_unix(),
                        "seconds_to_expiry": creds.seconds_to_expiry(),
                    })
                }),
            );
        }
        let xds_status = xds.as_ref().map(|handle| handle.status());
        if let Some(status) = xds_status.clone() {
            admin_service = admin_service.dump_section(
                "xds",
                Arc::new(move || serde_json::to_value(&*status.borrow()).unwrap_or_default()),
            );
        }
        if let Some(handle) = crate::metrics::prometheus() {
            let credentials = credentials.clone();
            let authz = authz_stats.clone();
            admin_service = admin_service.metrics(Arc::new(move || {
                let mut text = handle.render();
                text.push_str(&authz.prometheus());
                if let Some(store) = &credentials {
                    text.push_str(&mesh_tower::tls::credential_metrics(store));
                }
                if let Some(status) = &xds_status {
                    text.push_str(&xds_metrics(&status.borrow()));
                }
                text
            }));
        }
        let admin_service = admin_service;

        let (stop, stopped) = watch::channel(false);
        let signal = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            }
        };
        let grace = options.drain_grace;
        let capture_outbound = options.intercept.then(|| {
            let mut tcp = mesh_tower::tcp::TcpOutbound::new(store.clone())
                .balancer(balancer.clone())
                .peer_exchange(peer_exchange.clone());
            if let Some(c) = &credentials {
                tcp = tcp.mtls(c.clone());
            }
            OutboundCapture::new(store.clone(), outbound_service.clone(), client.clone(), tcp)
        });
        let capture_inbound = options.intercept.then(|| {
            // The capture forwards TCP to the app, so a PERMISSIVE port passes the app's own
            // TLS through as Istio's sidecars do; the non-intercepted listener below serves
            // HTTP only (`serve_tls`), so there every TLS connection is terminated.
            InboundCapture::new(
                store.clone(),
                inbound_tls
                    .clone()
                    .map(|tls| tls.pass_through_app_tls(true)),
                mesh_tower::tcp::TcpInbound::new(store.clone()),
                make_inbound,
            )
            .direct(options.app, workload_port)
        });
        let servers = vec![
            match capture_outbound {
                Some(capture) => tokio::spawn(serve_outbound_capture(
                    outbound_listener,
                    capture,
                    signal(),
                    grace,
                )),
                None => tokio::spawn(serve(outbound_listener, outbound_service, signal(), grace)),
            },
            match (capture_inbound, inbound_tls) {
                (Some(capture), _) => tokio::spawn(serve_inbound_capture(
                    inbound_listener,
                    capture,
                    signal(),
                    grace,
                )),
                (None, Some(tls)) => tokio::spawn(serve_tls(
                    inbound_listener,
                    inbound_service,
                    tls,
                    signal(),
                    grace,
                )),
                (None, None) => {
                    tokio::spawn(serve(inbound_listener, inbound_service, signal(), grace))
                }
            },
            tokio::spawn(serve(
                admin_listener,
                admin_service.clone(),
                signal(),
                grace,
            )),
            tokio::spawn(serve(health_listener, admin_service, signal(), grace)),
        ];
        let mut tcp_forwards = Vec::new();
        for (addr, host, port) in &options.tcp_forwards {
            let listener = bind("tcp forward", *addr).await?;
            let bound = local(&listener, *addr);
            tracing::info!("tcp forward {bound} -> {host}:{port}");
            let forward = mesh_tower::tcp::TcpForward::new(store.clone(), host, *port)
                .balancer(balancer.clone());
            tcp_forwards.push((
                bound,
                tokio::spawn(mesh_tower::tcp::serve_tcp(listener, forward, signal())),
            ));
        }
        readiness.set(true);
        Ok(Proxy {
            outbound,
            inbound,
            admin,
            health,
            warnings,
            store,
            readiness,
            stop,
            servers,
            watcher,
            credentials,
            credential_watcher,
            authz: authz_stats,
            xds,
            tcp_forwards,
        })
    }

    /// The workload credentials in use, when mutual TLS is on.
    pub fn credentials(&self) -> Option<&Arc<CredentialStore>> {
        self.credentials.as_ref()
    }

    /// The inbound authorization counters.
    pub fn authz_stats(&self) -> &Arc<AuthzStats> {
        &self.authz
    }

    /// The local addresses of the TCP forwards, in the order given.
    pub fn tcp_forwards(&self) -> Vec<SocketAddr> {
        self.tcp_forwards.iter().map(|(a, _)| *a).collect()
    }

    /// The live config store.
    pub fn store(&self) -> &Arc<ConfigStore> {
        &self.store
    }

    /// Stops accepting, waits for in-flight requests (up to the grace period), and stops.
    pub async fn shutdown(self) -> Drain {
        if let Some(xds) = &self.xds {
            xds.abort();
        }
        for (_, task) in &self.tcp_forwards {
            task.abort();
        }
        self.readiness.set(false);
        self.watcher.abort();
        if let Some(w) = &self.credential_watcher {
            w.abort();
        }
        let _ = self.stop.send(true);
        let mut drain = Drain::Complete;
        for server in self.servers {
            if !matches!(server.await, Ok(Drain::Complete)) {
                drain = Drain::TimedOut;
            }
        }
        drain
    }
}

/// The xDS client's state in Prometheus text format.
/// A control-plane config (xDS or an Envoy file) with what the YAML files keep: their inbound
/// listeners and authorization policies when they have any (else the control plane's, from
/// its inbound listener), and their peer authentication (xDS carries none the mesh reads).
/// The path normalization is the control plane's when it sent inbound listeners, else the
/// files' (the sidecar's `--path-normalization`).
/// This workload as istiod identifies a sidecar: the workload flags with the pod's address
/// and name from the environment (`INSTANCE_IP`, `POD_NAME` or `HOSTNAME`, as Istio's
/// injector sets them; 127.0.0.1 and `mesh-proxy` without).
fn node_identity(workload: &mesh_core::model::Workload) -> mesh_xds_client::node::NodeIdentity {
    let ip = std::env::var("INSTANCE_IP")
        .ok()
        .and_then(|ip| ip.parse().ok())
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    let pod = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "mesh-proxy".to_owned());
    mesh_xds_client::node::NodeIdentity::from_workload(workload, ip, pod)
}

fn overlay_files(
    mut config: mesh_core::model::MeshConfig,
    files: &mesh_core::model::MeshConfig,
) -> mesh_core::model::MeshConfig {
    // The control plane's inbound listener carries its path normalization; without one, the
    // sidecar's own (`--path-normalization`) applies.
    if config.inbound.is_empty() {
        config.path_normalization = files.path_normalization;
    }
    if !files.inbound.is_empty() {
        config.inbound.clone_from(&files.inbound);
    }
    if !files.authorization.is_empty() {
        config.authorization.clone_from(&files.authorization);
    }
    // The files' RequestAuthentications go with their AuthorizationPolicies, which may name
    // request principals (the control plane's jwt_authn filter is refused).
    if !files.request_authentication.is_empty() {
        config
            .request_authentication
            .clone_from(&files.request_authentication);
    }
    if config.workload_services.is_empty() {
        config
            .workload_services
            .clone_from(&files.workload_services);
        config
            .workload_service_ports
            .clone_from(&files.workload_service_ports);
    }
    config
        .peer_authentication
        .clone_from(&files.peer_authentication);
    // A Sidecar in the files that refuses destinations outside the registry holds under the
    // control plane too: the stricter of the two.
    if files.outbound_traffic_policy == mesh_core::model::OutboundTrafficPolicy::RegistryOnly {
        config.outbound_traffic_policy = files.outbound_traffic_policy;
    }
    config
}

/// Reads and translates the `--envoy-config` file.
async fn load_envoy_config(
    path: &std::path::Path,
    workload: &Workload,
) -> Result<mesh_core::model::MeshConfig, StartError> {
    let fail = |errors: String| StartError::EnvoyConfig {
        path: path.to_owned(),
        errors,
    };
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| fail(e.to_string()))?;
    mesh_xds_client::json::load_config_dump(&text)
        .map_err(|e| fail(e.to_string()))?
        .translate(workload)
        .map_err(|errors| {
            fail(
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })
}

fn xds_metrics(status: &mesh_xds_client::client::XdsStatus) -> String {
    let acked = status
        .resources
        .iter()
        .filter(|r| matches!(r.state, mesh_xds_client::protocol::ResourceState::Acked))
        .count();
    format!(
        "# HELP mesh_xds_connected Whether a stream to a control plane is open.\n\
         # TYPE mesh_xds_connected gauge\n\
         mesh_xds_connected {}\n\
         # HELP mesh_xds_streams_total Streams opened to control planes.\n\
         # TYPE mesh_xds_streams_total counter\n\
         mesh_xds_streams_total {}\n\
         # HELP mesh_xds_responses_total xDS responses received.\n\
         # TYPE mesh_xds_responses_total counter\n\
         mesh_xds_responses_total {}\n\
         # HELP mesh_xds_nacks_total xDS responses rejected.\n\
         # TYPE mesh_xds_nacks_total counter\n\
         mesh_xds_nacks_total {}\n\
         # HELP mesh_xds_resources_acked Resources accepted and serving.\n\
         # TYPE mesh_xds_resources_acked gauge\n\
         mesh_xds_resources_acked {acked}\n",
        u8::from(status.server.is_some()),
        status.streams,
        status.responses,
        status.nacks,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::model::{InboundListener, MeshConfig, PathNormalization, Protocol};

    #[test]
    fn the_control_planes_inbound_listener_decides_the_path_normalization_else_the_files() {
        let files = MeshConfig {
            path_normalization: PathNormalization::MergeSlashes,
            ..MeshConfig::default()
        };
        let xds = MeshConfig {
            inbound: vec![InboundListener {
                port: 9080,
                protocol: Protocol::Http,
                default_endpoint: SocketAddr::from(([127, 0, 0, 1], 9080)),
                rate_limit: None,
            }],
            path_normalization: PathNormalization::None,
            ..MeshConfig::default()
        };
        assert_eq!(
            overlay_files(xds, &files).path_normalization,
            PathNormalization::None
        );
        // No inbound listener from the control plane: the sidecar's own setting.
        assert_eq!(
            overlay_files(MeshConfig::default(), &files).path_normalization,
            PathNormalization::MergeSlashes
        );
    }
}
