//! `mesh-proxy`: the mesh as a standalone sidecar.
//!
//! ```text
//! mesh-proxy run --config examples/config/quickstart --demo-upstreams
//! mesh-proxy check examples/config/bookinfo/services.yaml examples/config/bookinfo/destination-rules.yaml
//! mesh-proxy iptables --apply --exclude-outbound-ports 5432 --dry-run
//! ```
//!
//! Exit codes: 0 after a clean drain (or a `check` without errors), 1 on a config error,
//! 2 on bad arguments.

use clap::{Args, Parser, Subcommand};
use mesh_core::istio::MeshOptions;
use mesh_core::model::{Labels, Locality, PathNormalization, Percentage, Workload};
use mesh_examples::demo;
use mesh_examples::proxy::{Identity, Options, Proxy, StartError};
use mesh_tower::admin::LogLevelSetter;
use mesh_tower::server::Drain;
use mesh_tower::telemetry::{AccessLogFormat, Propagators};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// mimalloc (feature `mimalloc`, on by default): per-request allocations cost a fraction of
/// glibc's (measured with callgrind in `benches/RESULTS.md`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "mesh-proxy",
    version,
    about = "A service mesh sidecar driven by Istio config"
)]
struct Cli {
    /// Worker threads (Envoy's `--concurrency`); 1 runs everything on one thread, the best
    /// choice for a sidecar pinned to one core. Default: one per available core.
    #[arg(long, global = true)]
    concurrency: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the sidecar.
    Run(Box<RunArgs>),
    /// Program this network namespace's iptables to redirect traffic to the sidecar's capture
    /// listeners (Istio's init container), or remove those rules.
    Iptables(IptablesArgs),
    /// Validate config files like `istioctl analyze`; exit 1 when there are errors.
    Check {
        /// Files or directories of Istio YAML.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        workload: WorkloadArgs,
        #[command(flatten)]
        mesh: MeshArgs,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Istio YAML file or directory (repeatable); watched for changes (with --xds: read once,
    /// for inbound listeners, authorization and peer authentication).
    #[arg(long = "config", required_unless_present_any = ["xds", "envoy_config"])]
    config: Vec<PathBuf>,
    /// xDS control plane `host:port` (repeatable: fallback order). The control plane then owns
    /// services, clusters and routes.
    #[arg(long)]
    xds: Vec<String>,
    /// xDS variant: sotw (state of the world) or delta.
    #[arg(long, default_value = "sotw", value_parser = ["sotw", "delta"])]
    xds_protocol: String,
    /// Save the last good xDS snapshot here, and start from it when the control plane is down.
    #[arg(long)]
    xds_snapshot: Option<PathBuf>,
    /// The xDS node id (default: Istio's `sidecar~IP~POD.NS~NS.svc.cluster.local` from the
    /// workload flags, `INSTANCE_IP` and `POD_NAME`/`HOSTNAME`).
    #[arg(long, env = "MESH_NODE_ID")]
    node_id: Option<String>,
    /// The xDS node cluster (default: `APP.NAMESPACE` from the workload's `app` label).
    #[arg(long, env = "MESH_NODE_CLUSTER")]
    node_cluster: Option<String>,
    /// Run from an Envoy JSON file instead of a control plane: an admin config dump, a
    /// bootstrap's `static_resources` or a discovery response, read once at start. It owns
    /// services, clusters and routes (and authorization, from its inbound listener, unless
    /// --config files give policies).
    #[arg(long, conflicts_with = "xds")]
    envoy_config: Option<PathBuf>,
    /// Forward plain TCP from 127.0.0.1:LOCAL to a service's TCP port: `LOCAL=HOST:PORT`
    /// (repeatable; a short host is in the workload's namespace).
    #[arg(long, value_parser = parse_tcp_forward)]
    tcp_forward: Vec<(u16, String, u16)>,
    /// Transparent interception: the outbound and inbound listeners read each connection's
    /// original destination (after `mesh-proxy iptables --apply`) and carry HTTP and TCP.
    #[arg(long)]
    intercept: bool,
    /// Outbound listener port (0: any free port), on 127.0.0.1.
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Inbound listener port, on --listen-address.
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// Admin port, on 127.0.0.1.
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// Health port (`/healthz/ready`), on --listen-address.
    #[arg(long, default_value_t = 15021)]
    health_port: u16,
    /// Where inbound traffic goes when no Sidecar resource says: 127.0.0.1:PORT.
    #[arg(long)]
    app_port: Option<u16>,
    /// Address of the inbound and health listeners.
    #[arg(long, default_value = "0.0.0.0")]
    listen_address: IpAddr,
    #[command(flatten)]
    workload: WorkloadArgs,
    #[command(flatten)]
    mesh: MeshArgs,
    /// Also start a small HTTP server for every 127.0.0.1 endpoint in the config (demo).
    #[arg(long)]
    demo_upstreams: bool,
    /// Grace period for in-flight requests on SIGTERM/SIGINT, in seconds.
    #[arg(long, default_value_t = 5)]
    drain_seconds: u64,
    /// How often to check the config files for changes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    reload_interval_ms: u64,
    /// Access log to stdout: off, text (Envoy's default format) or json.
    #[arg(long, default_value = "off", value_parser = ["off", "text", "json"])]
    access_log: String,
    /// Percentage of new traces sampled (a caller's decision is kept); Istio's default is 1.
    #[arg(long, default_value_t = 1.0)]
    trace_sampling: f64,
    /// Trace-context formats read and written, comma-separated: tracecontext (W3C), b3
    /// (single header), b3multi (x-b3-*), baggage (passes through), none.
    #[arg(long, env = "OTEL_PROPAGATORS", default_value = "tracecontext,b3multi")]
    trace_propagators: Propagators,
    /// Export spans over OTLP/gRPC to this endpoint (`http://127.0.0.1:4317`).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// The `service.name` of exported spans (default: the workload's `app` label).
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    service_name: Option<String>,
    /// The workload certificate chain (PEM, leaf first, with a spiffe:// URI SAN); watched.
    #[arg(long, requires_all = ["key", "ca"])]
    cert: Option<PathBuf>,
    /// The workload private key (PEM); watched.
    #[arg(long, requires_all = ["cert", "ca"])]
    key: Option<PathBuf>,
    /// The trust bundle (PEM CA certificates); watched.
    #[arg(long, requires_all = ["cert", "key"])]
    ca: Option<PathBuf>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("action").required(true).args(["apply", "remove"])))]
struct IptablesArgs {
    /// Add the rules (after removing any earlier ones).
    #[arg(long)]
    apply: bool,
    /// Remove the rules; succeeds when they are already gone.
    #[arg(long)]
    remove: bool,
    /// Print what would be run instead of running it (needs neither root nor iptables).
    #[arg(long)]
    dry_run: bool,
    /// iptables variant: auto (the one already in use; nft on a tie), nft or legacy.
    #[arg(long, default_value = "auto", value_parser = ["auto", "nft", "legacy"])]
    iptables_mode: String,
    /// The sidecar's user id, whose traffic is not captured (run the sidecar as this user).
    #[arg(long, default_value_t = 1337)]
    proxy_uid: u32,
    /// The sidecar's group id, whose traffic is not captured (default: --proxy-uid).
    #[arg(long)]
    proxy_gid: Option<u32>,
    /// The outbound capture port (the sidecar's --outbound-port).
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// The inbound capture port (the sidecar's --inbound-port).
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// Outbound destinations to capture: CIDR list, `*` for all, empty for none.
    #[arg(long, default_value = "*")]
    include_outbound_ip_ranges: String,
    /// Outbound destinations never captured: CIDR list.
    #[arg(long, default_value = "")]
    exclude_outbound_ip_ranges: String,
    /// Outbound destination ports never captured: port list.
    #[arg(long, default_value = "")]
    exclude_outbound_ports: String,
    /// Inbound ports to capture: port list, `*` for all, empty for none.
    #[arg(long, default_value = "*")]
    include_inbound_ports: String,
    /// Inbound ports never captured (with `*`): port list.
    #[arg(long, default_value = "")]
    exclude_inbound_ports: String,
}

#[derive(Args, Debug)]
struct WorkloadArgs {
    /// The workload's namespace.
    #[arg(long, default_value = "default")]
    workload_namespace: String,
    /// The workload's labels, `k=v,k=v`.
    #[arg(long, value_parser = parse_labels, default_value = "")]
    workload_labels: Labels,
    /// The workload's service account.
    #[arg(long, default_value = "default")]
    service_account: String,
    /// The workload's locality, `region/zone/subzone`, for locality-aware load balancing.
    #[arg(long, default_value = "")]
    locality: String,
    /// The workload's name (such as its Deployment's, `reviews-v1`), for the metrics'
    /// `*_workload` labels and the peers' (default: the `app` label).
    #[arg(long, env = "ISTIO_META_WORKLOAD_NAME", default_value = "")]
    workload_name: String,
    /// The cluster the workload runs in, as Istio names it (`*_cluster` metric labels, the xDS
    /// node's `CLUSTER_ID`).
    #[arg(long, env = "ISTIO_META_CLUSTER_ID", default_value = "Kubernetes")]
    cluster_id: String,
}

/// Istio's mesh-wide settings (its `MeshConfig`) that this sidecar applies itself.
#[derive(Args, Debug)]
struct MeshArgs {
    /// How inbound request paths are normalized before authorization, the app and the access
    /// log see them (Istio's `pathNormalization`): none, base, merge-slashes or
    /// decode-and-merge-slashes. With --xds, the control plane's inbound listener decides when
    /// it sends one.
    #[arg(long, env = "MESH_PATH_NORMALIZATION", default_value = "base")]
    path_normalization: PathNormalization,
    /// Istio's root namespace: its AuthorizationPolicies and PeerAuthentications without a
    /// selector apply mesh-wide.
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
}

impl MeshArgs {
    fn options(&self) -> MeshOptions {
        MeshOptions {
            root_namespace: self.root_namespace.clone(),
            path_normalization: self.path_normalization,
        }
    }
}

impl WorkloadArgs {
    fn workload(&self) -> Workload {
        Workload {
            namespace: self.workload_namespace.clone(),
            labels: self.workload_labels.clone(),
            service_account: self.service_account.clone(),
            locality: Locality::parse(&self.locality),
            workload_name: self.workload_name.clone(),
            cluster_id: self.cluster_id.clone(),
            ..Workload::default()
        }
    }
}

fn parse_labels(text: &str) -> Result<Labels, String> {
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => Err(format!("{pair:?} is not key=value")),
        })
        .collect()
}

fn parse_tcp_forward(text: &str) -> Result<(u16, String, u16), String> {
    let bad = || format!("{text:?} is not LOCAL_PORT=HOST:PORT");
    let (local, target) = text.split_once('=').ok_or_else(bad)?;
    let (host, port) = target.rsplit_once(':').ok_or_else(bad)?;
    let local: u16 = local.parse().map_err(|_| bad())?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((local, host.to_owned(), port))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_level = init_logging();
    let runtime = match cli.concurrency {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.max(1))
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mesh-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Check {
            paths,
            workload,
            mesh,
        } => runtime.block_on(check(paths, workload.workload(), mesh.options())),
        Command::Run(args) => runtime.block_on(run(*args, log_level)),
        Command::Iptables(args) => iptables(&args),
    }
}

fn iptables(args: &IptablesArgs) -> ExitCode {
    use mesh_examples::iptables::{Backend, Intercept, RawOptions, Variant, removal_commands};
    let intercept = match Intercept::parse(&RawOptions {
        proxy_uid: args.proxy_uid,
        proxy_gid: args.proxy_gid,
        outbound_port: args.outbound_port,
        inbound_port: args.inbound_port,
        include_outbound_ip_ranges: &args.include_outbound_ip_ranges,
        exclude_outbound_ip_ranges: &args.exclude_outbound_ip_ranges,
        exclude_outbound_ports: &args.exclude_outbound_ports,
        include_inbound_ports: &args.include_inbound_ports,
        exclude_inbound_ports: &args.exclude_inbound_ports,
    }) {
        Ok(intercept) => intercept,
        Err(e) => {
            eprintln!("mesh-proxy iptables: {e}");
            return ExitCode::from(2);
        }
    };
    if args.dry_run {
        if args.apply {
            print!("{}", removal_commands());
            println!("iptables-restore --noflush <<EOF");
            print!("{}", intercept.rules());
            println!("EOF");
        } else {
            print!("{}", removal_commands());
        }
        return ExitCode::SUCCESS;
    }
    let variant = match args.iptables_mode.as_str() {
        "nft" => Variant::Nft,
        "legacy" => Variant::Legacy,
        _ => Variant::Auto,
    };
    let result = Backend::detect(variant).and_then(|backend| {
        if args.apply {
            backend.apply(&intercept)
        } else {
            backend.remove()
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-proxy iptables: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn check(paths: Vec<PathBuf>, workload: Workload, mesh: MeshOptions) -> ExitCode {
    let loaded = mesh_tower::source::FileSource::new(paths, workload)
        .options(mesh)
        .load()
        .await;
    for d in &loaded.diagnostics {
        println!("{d}");
    }
    let errors = loaded.diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = loaded.diagnostics.len() - errors;
    if errors > 0 {
        eprintln!("{errors} error(s), {warnings} warning(s)");
        ExitCode::FAILURE
    } else {
        eprintln!("config is valid ({warnings} warning(s))");
        ExitCode::SUCCESS
    }
}

/// Logs to stderr with `RUST_LOG`'s filter (default `info`), changeable at run time.
fn init_logging() -> LogLevelSetter {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, fmt, reload};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().with_writer(std::io::stderr))
        .init();
    Arc::new(move |level: &str| {
        let filter =
            EnvFilter::try_new(level).map_err(|e| format!("invalid filter {level:?}: {e}"))?;
        let shown = filter.to_string();
        handle.reload(filter).map_err(|e| e.to_string())?;
        Ok(shown)
    })
}

async fn run(args: RunArgs, log_level: LogLevelSetter) -> ExitCode {
    // Installed before anything starts: a SIGTERM that arrives while the proxy is still
    // starting (its xDS stream may already be open) is held and drains it once started, rather
    // than killing the process with the signal's default action.
    let shutdown = ShutdownSignal::install();
    let Some(sampling) = Percentage::from_percent_f64(args.trace_sampling) else {
        eprintln!(
            "mesh-proxy: --trace-sampling {} is not a percentage in 0..=100",
            args.trace_sampling
        );
        return ExitCode::from(2);
    };
    let access_log = match args.access_log.as_str() {
        "text" => Some(AccessLogFormat::Text),
        "json" => Some(AccessLogFormat::Json),
        _ => None,
    };
    let loopback = IpAddr::from([127, 0, 0, 1]);
    let options = Options {
        outbound: SocketAddr::new(loopback, args.outbound_port),
        inbound: SocketAddr::new(args.listen_address, args.inbound_port),
        admin: SocketAddr::new(loopback, args.admin_port),
        health: SocketAddr::new(args.listen_address, args.health_port),
        app: args.app_port.map(|p| SocketAddr::new(loopback, p)),
        workload: args.workload.workload(),
        mesh: args.mesh.options(),
        reload_interval: Duration::from_millis(args.reload_interval_ms.max(10)),
        drain_grace: Duration::from_secs(args.drain_seconds),
        access_log,
        trace_sampling: sampling,
        trace_propagators: args.trace_propagators,
        otlp_endpoint: args.otlp_endpoint.clone(),
        xds: args.xds.clone(),
        xds_mode: if args.xds_protocol == "delta" {
            mesh_xds_client::protocol::Mode::Delta
        } else {
            mesh_xds_client::protocol::Mode::Sotw
        },
        xds_snapshot: args.xds_snapshot.clone(),
        intercept: args.intercept,
        node_id: args.node_id.clone(),
        node_cluster: args.node_cluster.clone(),
        envoy_config: args.envoy_config.clone(),
        tcp_forwards: args
            .tcp_forward
            .iter()
            .map(|(local, host, port)| {
                let host = if host.contains('.') {
                    host.clone()
                } else {
                    format!(
                        "{host}.{}.svc.cluster.local",
                        args.workload.workload_namespace
                    )
                };
                (SocketAddr::new(loopback, *local), host, *port)
            })
            .collect(),
        service_name: args
            .service_name
            .clone()
            .or_else(|| args.workload.workload_labels.get("app").cloned())
            .unwrap_or_else(|| "mesh-proxy".to_owned()),
        log_level: Some(log_level),
        identity: match (args.cert, args.key, args.ca) {
            (Some(cert), Some(key), Some(ca)) => Some(Identity::Files {
                cert,
                key,
                ca,
                poll: Duration::from_millis(args.reload_interval_ms.max(10)),
            }),
            _ => None,
        },
        ..Options::new(args.config, args.listen_address)
    };
    let proxy = match Proxy::start(options).await {
        Ok(proxy) => proxy,
        Err(StartError::Config(diagnostics)) => {
            for d in &diagnostics {
                eprintln!("{d}");
            }
            eprintln!("mesh-proxy: the config has errors; not starting");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("mesh-proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    for w in &proxy.warnings {
        tracing::warn!("{w}");
    }
    let demo = if args.demo_upstreams {
        match demo::start(&proxy.store().load()).await {
            Ok(demo) => {
                for (addr, reply) in &demo.servers {
                    tracing::info!("demo upstream on {addr} answers {:?}", reply.trim_end());
                }
                Some(demo)
            }
            Err(e) => {
                eprintln!("mesh-proxy: {e}");
                proxy.shutdown().await;
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    tracing::info!(
        "mesh-proxy listening outbound={} inbound={} admin={} health={}",
        proxy.outbound,
        proxy.inbound,
        proxy.admin,
        proxy.health
    );
    let signal = shutdown.recv().await;
    tracing::info!("received {signal}: draining");
    let drain = proxy.shutdown().await;
    if let Some(demo) = demo {
        demo.shutdown().await;
    }
    match drain {
        Drain::Complete => tracing::info!("drained; exiting"),
        Drain::TimedOut => tracing::warn!("grace period over with requests in flight; exiting"),
    }
    ExitCode::SUCCESS
}

/// SIGTERM or SIGINT (Ctrl-C elsewhere), listened for from the moment it is installed.
struct ShutdownSignal {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl ShutdownSignal {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let streams = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Some((term, int)),
                _ => None,
            };
            Self { streams }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Waits for the signal and names it.
    async fn recv(self) -> &'static str {
        #[cfg(unix)]
        if let Some((mut term, mut int)) = self.streams {
            return tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
        }
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}
