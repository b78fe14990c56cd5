//! Plain TCP through the mesh: a local port forwards every connection to an endpoint of a
//! service's `TCP` port (picked from the live snapshot as the HTTP balancer picks, by the
//! DestinationRule's `loadBalancer`, endpoint weights and locality; at most `connectionPool.tcp.maxConnections` open to a cluster at once,
//! as Envoy's `max_connections` circuit breaker: a connection over it is closed, flagged
//! `UO`), with Istio's TCP metrics (`istio_tcp_connections_opened_total`,
//! `istio_tcp_connections_closed_total`, `istio_tcp_sent_bytes_total`,
//! `istio_tcp_received_bytes_total`).
//!
//! Endpoints and outlier detection are the HTTP balancer's ([`BalanceLayer::pick_connection`],
//! with the same per-endpoint state when the forwarders are given the same layer). As in
//! Envoy's TCP proxy, a connection counts as an active request of its endpoint until it
//! ends, for least-request and `/clusters` (`rq_active`, `cx_active`), and a consistent hash
//! keys on the client's source IP only (`useSourceIp`; other keys mean nothing to TCP, and
//! the pick is then random). Healthy
//! endpoints not ejected by `outlierDetection`, EDS `DEGRADED` ones only while no healthy one
//! is left, never `UNHEALTHY` or `DRAINING` ones; panic mode below `minHealthPercent`. As in
//! Envoy's TCP proxy, a refused, reset or timed-out connect (or TLS handshake) counts as a
//! local-origin failure (a 503, or a 504 for a timeout, towards `consecutive5xxErrors` and
//! `consecutiveGatewayErrors` unless `splitExternalLocalOriginErrors`), and a connection that
//! opens as a success, resetting the counts. With no endpoint to take a connection (none
//! healthy, or every one ejected), it is closed at once and flagged `UH`, as the HTTP
//! balancer answers 503 `UH`.
//!
//! Without transparent interception a TCP connection carries no destination name, so each
//! forwarded service gets its own local port (the sidecar's `--tcp-forward PORT=HOST:PORT`).
//! With interception ([`crate::capture`]) the original destination names it: [`TcpOutbound`]
//! carries a connection to the cluster owning that address (mutual TLS for `ISTIO_MUTUAL`;
//! a service's virtual address gets an endpoint picked as above, an endpoint's own address
//! goes to that endpoint, picked by nobody and not counted by outlier detection),
//! else straight through; [`TcpInbound`] authorizes a connection by the workload's
//! AuthorizationPolicies (source identity, namespace, port) before it reaches the app.
//!
//! A connection to a service's virtual address and port (or through its `--tcp-forward`
//! port) takes the first of the port's VirtualService `tcp` rules that matches it
//! ([`MeshConfig::tcp_route`](mesh_core::model::MeshConfig::tcp_route): destination port and
//! subnet, the workload's labels and namespace), as Envoy's `tcp_proxy` with
//! `weighted_clusters` does: its cluster is drawn by weight among the rule's destinations
//! (from the balancer's generator, so a seeded [`BalanceLayer::new`] fixes the draws), and
//! everything above then applies to that cluster (its endpoints, outlier detection, TLS
//! policy, connection limit; metrics name its service). Without a matching rule the
//! connection goes to the service's own cluster; a drawn cluster missing from the snapshot
//! closes the connection, flagged `NC`. A connection to an endpoint's own address is not
//! routed. The extra cost is one map lookup per connection.
//!
//! A TLS or HTTPS port may also have VirtualService `tls` rules (SNI routing of TLS the mesh
//! does not terminate), which come before its `tcp` rules. Only on such a port, the
//! forwarders read the connection's ClientHello first, as Envoy's TLS inspector does for the
//! `server_names` of istiod's filter chains: [`TcpForward`] peeks at the socket
//! ([`peek_client_hello`]), [`TcpOutbound`], given any stream, reads it
//! ([`read_client_hello`]) and replays the bytes to the upstream, so the TLS handshake is
//! the client's and the upstream's, untouched. Both are bounded by
//! [`MAX_CLIENT_HELLO`](crate::tls::hello::MAX_CLIENT_HELLO) and [`CLIENT_HELLO_TIMEOUT`].
//! The first rule whose match names the ClientHello's server name (exactly, without case, or
//! under a `*.` wildcard) takes the connection; bytes that are not TLS, a ClientHello without
//! a name, or one not complete in time take no `tls` rule and go on to the `tcp` rules, else
//! the service's own cluster (Istio's listeners continue on a listener filter timeout). A
//! client that closes in the middle of its ClientHello, or sends one larger than the bound, is
//! closed, as Envoy's TLS inspector does. Unlike Envoy, which picks the filter chain with the
//! most specific server name (exact before wildcard), the rules are tried in order, as the
//! VirtualService documents them. Ports without `tls` rules are never peeked at: a
//! server-first protocol there is carried at once.

use crate::balance::{BalanceLayer, ConnectionPick};
use crate::capture::Rewind;
use crate::flags::{ResponseFlag, ResponseFlags};
use crate::rng::Rng;
use crate::server::ConnectionInfo;
use crate::telemetry::{PEER_EXCHANGE_ALPN, PeerMetadata, TcpPeerExchange};
use crate::tls::hello::{HelloError, peek_client_hello, read_client_hello};
use arc_swap::{ArcSwap, ArcSwapOption};
use mesh_core::model::{
    Address, Cluster, ClusterName, MeshConfig, OutboundTrafficPolicy, TcpRoute, TlsMode, Workload,
};
use mesh_core::store::ConfigStore;
use mesh_policy::authz::{Attributes, Engine, Verdict};
use mesh_policy::credentials::CredentialStore;
use mesh_policy::tls::{MeshProtocol, mesh_client_config};
use mesh_policy::{PeerIdentity, SpiffeId};
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One forwarded service port.
#[derive(Clone, Debug)]
pub struct TcpForward {
    store: Arc<ConfigStore>,
    cluster: ClusterName,
    service: String,
    workload: Arc<Workload>,
    balancer: BalanceLayer,
    open: OpenConnections,
}

/// An endpoint [`TcpForward`] picked, with the connection's slot under the cluster's limit.
struct Picked {
    /// The service of the endpoint's cluster (a `tcp` rule may have sent the connection to
    /// another service than the forwarded one).
    service: String,
    endpoint: String,
    /// Where the connect's outcome goes (outlier detection); the connection counts among
    /// the endpoint's active ones while it is held.
    pick: ConnectionPick,
    connect_timeout: Duration,
    idle: Duration,
    _slot: OpenConnection,
}

impl TcpForward {
    /// Forwards to service `host` (fully qualified) on `port`, by `store`'s live config.
    pub fn new(store: Arc<ConfigStore>, host: &str, port: u16) -> Self {
        let workload = Arc::new(store.load().workload.clone());
        Self {
            store,
            cluster: ClusterName::outbound(port, None, host),
            service: host.to_owned(),
            workload,
            balancer: BalanceLayer::default(),
            open: OpenConnections::default(),
        }
    }

    /// Picks endpoints with `balancer`'s per-endpoint state (outlier detection), so that
    /// ejections are shared with every user of it, such as the admin endpoint's `/clusters`.
    /// Without it, the forwarder keeps a balancer of its own.
    #[must_use]
    pub fn balancer(mut self, balancer: BalanceLayer) -> Self {
        self.balancer = balancer;
        self
    }

    fn labels(&self, service: &str, flags: ResponseFlags) -> Vec<metrics::Label> {
        let w = &self.workload;
        let name = service.split('.').next().unwrap_or_default();
        let namespace = service.split('.').nth(1).unwrap_or("unknown");
        let mut labels = workload_labels("source", w, None);
        labels.extend([
            ("source_principal", principal_of(w)),
            ("destination_principal", "unknown".to_owned()),
            ("destination_workload_namespace", namespace.to_owned()),
            ("destination_service", service.to_owned()),
            ("destination_service_name", name.to_owned()),
            ("destination_service_namespace", namespace.to_owned()),
            ("request_protocol", "tcp".to_owned()),
            ("response_flags", flags.to_string()),
            ("connection_security_policy", "unknown".to_owned()),
        ]);
        into_labels(labels)
    }

    /// The endpoint of the cluster for a connection from `source`
    /// ([`BalanceLayer::pick_connection`]: the cluster's algorithm, weights and locality over
    /// the healthy endpoints not ejected, degraded ones only when no healthy one is left),
    /// with the cluster's connect and idle timeouts; or why there is none (no endpoint to
    /// take it, or the cluster's connection limit reached). The cluster is the service
    /// port's own, or the one its matching `tls` (by `sni`, the ClientHello's server name) or
    /// `tcp` rule draws; the rule sees the connection as one to the service's first virtual
    /// address (unspecified without one).
    fn pick(&self, source: Option<IpAddr>, sni: Option<&str>) -> Result<Picked, ResponseFlag> {
        let snapshot = self.store.load();
        let cluster = snapshot
            .cluster(&self.cluster)
            .ok_or(ResponseFlag::NoHealthyUpstream)?;
        let dst = || {
            let address = snapshot
                .service(&self.service)
                .and_then(|s| s.addresses.first())
                .map_or(IpAddr::from([0, 0, 0, 0]), |net| net.addr());
            SocketAddr::new(address, cluster.port)
        };
        let routed = routed(&snapshot, cluster, dst, sni, self.balancer.rng())?;
        let cluster = &routed;
        let pick = self
            .balancer
            .pick_connection(cluster, Some(&snapshot.workload), source)
            .ok_or(ResponseFlag::NoHealthyUpstream)?;
        let slot = self
            .open
            .try_open(cluster)
            .ok_or(ResponseFlag::UpstreamOverflow)?;
        Ok(Picked {
            service: cluster.service.to_string(),
            endpoint: pick.endpoint().authority(),
            pick,
            connect_timeout: cluster.policy.connection_pool.connect_timeout,
            idle: idle_timeout(Some(cluster)),
            _slot: slot,
        })
    }

    /// Carries one client connection to an endpoint and back, recording Istio's TCP metrics.
    /// The endpoint's pick counts the connection as active until it ends. When the service
    /// port has `tls` rules, the connection's ClientHello is peeked at first (not consumed).
    pub async fn forward(&self, client: TcpStream) {
        let source = client.peer_addr().ok().map(|a| a.ip());
        let sni = if reads_sni(&self.store.load(), &self.cluster) {
            match peeked_sni(&client).await {
                Ok(sni) => sni,
                Err(e) => {
                    tracing::debug!(service = %self.service, error = %e, "tcp: no ClientHello to route by");
                    return;
                }
            }
        } else {
            None
        };
        let picked = match self.pick(source, sni.as_deref()) {
            Ok(picked) => picked,
            Err(flag) => {
                let labels = self.labels(&self.service, ResponseFlags::of(flag));
                metrics::counter!("istio_tcp_connections_opened_total", labels.clone())
                    .increment(1);
                metrics::counter!("istio_tcp_connections_closed_total", labels).increment(1);
                return;
            }
        };
        let (endpoint, idle) = (&picked.endpoint, picked.idle);
        let upstream = tokio::time::timeout(picked.connect_timeout, TcpStream::connect(endpoint))
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "connect timeout")));
        match &upstream {
            Ok(_) => picked.pick.connected(),
            Err(e) => picked.pick.failed(e),
        }
        let Ok(upstream) = upstream else {
            let flags = ResponseFlags::of(ResponseFlag::UpstreamConnectionFailure);
            let labels = self.labels(&picked.service, flags);
            metrics::counter!("istio_tcp_connections_opened_total", labels.clone()).increment(1);
            metrics::counter!("istio_tcp_connections_closed_total", labels).increment(1);
            tracing::debug!(%endpoint, "tcp upstream connect failed");
            return;
        };
        let _ = upstream.set_nodelay(true);
        let labels = self.labels(&picked.service, ResponseFlags::default());
        metrics::counter!("istio_tcp_connections_opened_total", labels.clone()).increment(1);
        // `sent`: client -> upstream; `received`: upstream -> client (Istio's direction names).
        let bytes = ByteCounters::new(&labels, false);
        splice_reporting(client, upstream, idle, |moved| bytes.add(moved)).await;
        metrics::counter!("istio_tcp_connections_closed_total", labels).increment(1);
    }
}

/// Accepts connections on `listener` and forwards each with `forward` until `shutdown`.
pub async fn serve_tcp(
    listener: TcpListener,
    forward: TcpForward,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    while let Some((stream, _)) = crate::server::next_connection(&listener, &mut shutdown).await {
        let forward = forward.clone();
        tokio::spawn(async move { forward.forward(stream).await });
    }
}

/// Where an intercepted outbound TCP connection goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TcpTarget {
    /// An endpoint of a mesh cluster: the original destination is one of its endpoints.
    Cluster {
        /// The cluster (its TLS policy applies).
        cluster: Arc<Cluster>,
        /// The endpoint, `address:port`.
        endpoint: SocketAddr,
    },
    /// No service owns the original destination: straight there, in plaintext (Istio's
    /// `PassthroughCluster`).
    Passthrough(SocketAddr),
    /// No service owns the original destination and the outbound traffic policy is
    /// `REGISTRY_ONLY`: the connection is closed (Istio's `BlackHoleCluster`).
    BlackHole(SocketAddr),
}

impl TcpTarget {
    /// The address to connect to.
    pub fn address(&self) -> SocketAddr {
        match self {
            Self::Cluster { endpoint, .. } => *endpoint,
            Self::Passthrough(addr) | Self::BlackHole(addr) => *addr,
        }
    }

    /// The destination service name for metrics.
    fn service(&self) -> &str {
        match self {
            Self::Cluster { cluster, .. } => cluster.service.as_str(),
            Self::Passthrough(_) => "PassthroughCluster",
            Self::BlackHole(_) => "BlackHoleCluster",
        }
    }
}

/// Where a connection to `dst` (called only when the port has rules) whose ClientHello asked
/// for `sni` (read only when the port has `tls` rules: [`reads_sni`]) for the service port
/// whose own cluster is `own` goes: the cluster its first matching `tls` or `tcp` rule draws
/// by weight from `rng`, else `own`; `NC` when the drawn cluster is not in the snapshot.
/// Without rules, one map lookup.
fn routed(
    config: &mesh_core::model::MeshConfig,
    own: &Arc<Cluster>,
    dst: impl FnOnce() -> SocketAddr,
    sni: Option<&str>,
    rng: &Rng,
) -> Result<Arc<Cluster>, ResponseFlag> {
    let Some(routes) = config.tcp_routes.get(&own.name) else {
        return Ok(own.clone());
    };
    let dst = dst();
    let Some(route) = routes
        .iter()
        .find(|r| r.matches(dst, sni, &config.workload))
    else {
        return Ok(own.clone());
    };
    let drawn = route.pick(rng.below(route.total_weight()));
    match drawn.and_then(|name| config.cluster(name)) {
        Some(cluster) => Ok(cluster.clone()),
        None => {
            tracing::debug!(%dst, route = %route.name, cluster = ?drawn, "tcp route: no such cluster");
            Err(ResponseFlag::NoClusterFound)
        }
    }
}

/// Whether the service port whose own cluster is `own` has `tls` rules, so that its
/// connections' ClientHello must be read for their server name: one map lookup, and a look at
/// the port's rules when it has some.
fn reads_sni(config: &mesh_core::model::MeshConfig, own: &ClusterName) -> bool {
    config
        .tcp_routes
        .get(own)
        .is_some_and(|routes| routes.iter().any(TcpRoute::needs_sni))
}

/// How long the forwarders wait for a whole ClientHello on a port with `tls` rules before the
/// connection goes on without a server name (to the port's `tcp` rules, else its own
/// cluster), as Istio's listeners continue on a listener filter timeout.
pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The server name of the ClientHello at the start of `client` (peeked at, not consumed):
/// `None` when the bytes are not TLS, name no server, or do not complete a ClientHello within
/// [`CLIENT_HELLO_TIMEOUT`]; an error when the client closed first or the ClientHello is
/// larger than [`MAX_CLIENT_HELLO`](crate::tls::hello::MAX_CLIENT_HELLO) (Envoy's TLS
/// inspector closes such a connection).
async fn peeked_sni(client: &TcpStream) -> Result<Option<String>, HelloError> {
    match peek_client_hello(client, CLIENT_HELLO_TIMEOUT).await {
        Ok(hello) => Ok(hello.and_then(|h| h.server_name)),
        Err(HelloError::Timeout(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What the original destination alone says of an intercepted connection.
enum Owner {
    /// Where it goes, no rule applying: an endpoint's own address, or no service's.
    Target(TcpTarget),
    /// A virtual address of the service port whose own cluster this is: its rules apply.
    Service(Arc<Cluster>),
}

/// Who owns `dst`: a service's virtual address (its port's rules apply), else a fixed
/// target (an endpoint's own address goes there; an address no service owns goes through,
/// or nowhere under `REGISTRY_ONLY`).
fn owner(snapshot: &MeshConfig, dst: SocketAddr) -> Owner {
    let Some(cluster) = cluster_for(snapshot, dst) else {
        return Owner::Target(match snapshot.outbound_traffic_policy {
            OutboundTrafficPolicy::AllowAny => TcpTarget::Passthrough(dst),
            OutboundTrafficPolicy::RegistryOnly => TcpTarget::BlackHole(dst),
        });
    };
    let is_endpoint = cluster
        .endpoints
        .iter()
        .any(|e| e.port == dst.port() && e.address == Address::Ip(dst.ip()));
    if is_endpoint {
        return Owner::Target(TcpTarget::Cluster {
            cluster,
            endpoint: dst,
        });
    }
    Owner::Service(cluster)
}

/// The cluster of the service that owns `dst` (one of its endpoints is `dst`, preferring the
/// service's own cluster over its subsets', else `dst` is one of the service's virtual
/// `addresses` on one of its ports), as Istio's registry lookup by address.
pub fn cluster_for(config: &mesh_core::model::MeshConfig, dst: SocketAddr) -> Option<Arc<Cluster>> {
    let owns = |c: &Cluster| {
        c.endpoints
            .iter()
            .any(|e| e.port == dst.port() && e.address == Address::Ip(dst.ip()))
    };
    let mut found = None;
    for cluster in config.clusters.values() {
        if owns(cluster) {
            if cluster.subset.is_none() {
                return Some(cluster.clone());
            }
            found.get_or_insert_with(|| cluster.clone());
        }
    }
    if found.is_some() {
        return found;
    }
    // A service's virtual address (ClusterIP) on one of its ports: the service's cluster.
    config
        .services
        .values()
        .find(|s| s.port(dst.port()).is_some() && s.addresses.iter().any(|a| a.contains(&dst.ip())))
        .and_then(|s| {
            config
                .cluster(&ClusterName::outbound(dst.port(), None, &s.hostname))
                .cloned()
        })
}

/// Intercepted outbound TCP: each connection goes to the cluster owning its original
/// destination (with the cluster's TLS policy: `ISTIO_MUTUAL` presents the workload
/// certificate and checks the server's SPIFFE ID), else straight to the original destination.
/// Istio's TCP metrics are recorded with `reporter="source"`.
#[derive(Clone)]
pub struct TcpOutbound {
    store: Arc<ConfigStore>,
    credentials: Option<Arc<CredentialStore>>,
    workload: Arc<Workload>,
    connect_timeout: Duration,
    /// rustls client configs by expected server identities (they read the credential store
    /// at each handshake, so rotation needs no rebuild).
    configs: Arc<ArcSwap<HashMap<Vec<SpiffeId>, Arc<rustls::ClientConfig>>>>,
    /// Picks an endpoint for a connection to a service's virtual address.
    balancer: BalanceLayer,
    open: OpenConnections,
    /// This side of the metadata exchange, on mutual-TLS connections whose server takes it.
    exchange: TcpPeerExchange,
}

impl std::fmt::Debug for TcpOutbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpOutbound")
            .field("mtls", &self.credentials.is_some())
            .finish_non_exhaustive()
    }
}

/// Why an outbound TCP connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TcpConnectError {
    /// The destination is outside the registry and the outbound traffic policy is
    /// `REGISTRY_ONLY`.
    #[error("{addr} is not in the registry and the outbound traffic policy is REGISTRY_ONLY")]
    BlackHole {
        /// The original destination.
        addr: SocketAddr,
    },
    /// The TCP connection failed or timed out.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The cluster is ISTIO_MUTUAL but this proxy has no workload identity.
    #[error("cluster {cluster} needs ISTIO_MUTUAL but no workload identity is configured")]
    NoIdentity {
        /// The cluster.
        cluster: String,
    },
    /// The cluster's expected identities are not SPIFFE IDs.
    #[error("cluster {cluster}: {field} {value:?} is not a SPIFFE ID")]
    BadIdentity {
        /// The cluster.
        cluster: String,
        /// The field that named it.
        field: &'static str,
        /// The value.
        value: String,
    },
    /// The TLS client configuration could not be built.
    #[error("TLS setup for cluster {cluster}: {source}")]
    Tls {
        /// The cluster.
        cluster: String,
        /// The error.
        #[source]
        source: rustls::Error,
    },
    /// The TLS handshake failed (wrong identity, untrusted chain, ...).
    #[error("TLS handshake with {addr}: {source}")]
    Handshake {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The cluster's TLS mode (SIMPLE or MUTUAL with files) is not supported for TCP yet.
    #[error("cluster {cluster}: TLS mode {mode:?} is not supported for intercepted TCP")]
    UnsupportedTls {
        /// The cluster.
        cluster: String,
        /// The mode.
        mode: TlsMode,
    },
}

/// An upstream TCP stream: plaintext or mutual TLS.
#[derive(Debug)]
pub enum UpstreamStream {
    /// Plaintext.
    Plain(TcpStream),
    /// Mutual TLS, handshake done (and, when the server took it, the metadata exchange: the
    /// payload a server without it sent first is read again first).
    Tls {
        /// The stream.
        stream: Box<Rewind<tokio_rustls::client::TlsStream<TcpStream>>>,
        /// The server's workload, from Istio's TCP metadata exchange (ALPN
        /// `istio-peer-exchange`).
        peer: Option<Arc<PeerMetadata>>,
    },
}

impl TcpOutbound {
    /// Intercepted TCP by `store`'s live config, in plaintext only.
    pub fn new(store: Arc<ConfigStore>) -> Self {
        let workload = Arc::new(store.load().workload.clone());
        Self {
            store,
            credentials: None,
            exchange: TcpPeerExchange::new(&workload),
            workload,
            connect_timeout: Duration::from_secs(10),
            configs: Arc::default(),
            balancer: BalanceLayer::default(),
            open: OpenConnections::default(),
        }
    }

    /// What this side sends in Istio's TCP metadata exchange (default: the config's
    /// workload, without a node id).
    #[must_use]
    pub fn peer_exchange(mut self, exchange: TcpPeerExchange) -> Self {
        self.exchange = exchange;
        self
    }

    /// Picks endpoints with `balancer`'s per-endpoint state (outlier detection), so that
    /// ejections are shared with every user of it, such as the admin endpoint's `/clusters`.
    /// Without it, the forwarder keeps a balancer of its own.
    #[must_use]
    pub fn balancer(mut self, balancer: BalanceLayer) -> Self {
        self.balancer = balancer;
        self
    }

    /// Presents `credentials` to ISTIO_MUTUAL clusters.
    #[must_use]
    pub fn mtls(mut self, credentials: Arc<CredentialStore>) -> Self {
        self.credentials = Some(credentials);
        self.configs = Arc::default();
        self
    }

    /// The client config checking `expected`, built once per identity set.
    fn client_config(
        &self,
        credentials: Arc<CredentialStore>,
        expected: Vec<SpiffeId>,
    ) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        if let Some(config) = self.configs.load().get(&expected) {
            return Ok(config.clone());
        }
        let config = mesh_client_config(credentials, expected.clone(), MeshProtocol::Tcp)?;
        self.configs.rcu(|configs| {
            let mut configs = HashMap::clone(configs);
            configs
                .entry(expected.clone())
                .or_insert_with(|| config.clone());
            configs
        });
        Ok(config)
    }

    /// Where a connection to `dst` goes: `None` when `dst` is a service's virtual address
    /// and the service has no endpoint to take it (every one unhealthy, draining or ejected;
    /// Envoy's `UH`).
    /// A connection is seen as one without a server name: `tls` rules do not apply.
    pub fn resolve(&self, dst: SocketAddr) -> Option<TcpTarget> {
        let snapshot = self.store.load();
        let routed = match owner(&snapshot, dst) {
            Owner::Target(target) => Ok((target, None)),
            Owner::Service(own) => self.route(&snapshot, own, None, dst, None),
        };
        routed.ok().map(|(target, _)| target)
    }

    /// Where a connection from `source` to `dst`, a virtual address of the service port whose
    /// own cluster is `own`, goes, with the balancer's pick: in the cluster its `tls` (by
    /// `sni`, the ClientHello's server name) or `tcp` rule draws, else its own; or the cluster
    /// with no endpoint to take it, with why (`UH`; `NC`: the drawn cluster is missing, and
    /// the service's own cluster stands in for it).
    fn route(
        &self,
        snapshot: &MeshConfig,
        own: Arc<Cluster>,
        source: Option<IpAddr>,
        dst: SocketAddr,
        sni: Option<&str>,
    ) -> Result<(TcpTarget, Option<ConnectionPick>), (Arc<Cluster>, ResponseFlag)> {
        let cluster = match routed(snapshot, &own, || dst, sni, self.balancer.rng()) {
            Ok(cluster) => cluster,
            Err(flag) => return Err((own, flag)),
        };
        // One of its endpoints, as the balancer picks it. An endpoint named by a DNS name has
        // no address to put in the target: another pick, at most as many as the cluster has
        // endpoints.
        for _ in 0..cluster.endpoints.len() {
            let Some(pick) =
                self.balancer
                    .pick_connection(&cluster, Some(&snapshot.workload), source)
            else {
                break;
            };
            if let Address::Ip(ip) = pick.endpoint().address {
                let endpoint = SocketAddr::new(ip, pick.endpoint().port);
                return Ok((TcpTarget::Cluster { cluster, endpoint }, Some(pick)));
            }
        }
        Err((cluster, ResponseFlag::NoHealthyUpstream))
    }

    /// The identities the endpoint must present, by Istio's precedence: DestinationRule
    /// `tls.subjectAltNames`, the ServiceEntry's `subjectAltNames`, the endpoint's service
    /// account; none: any identity the trust bundle verifies.
    fn expected(
        &self,
        cluster: &Cluster,
        sans: &[String],
        endpoint: SocketAddr,
        trust_domain: &str,
    ) -> Result<Vec<SpiffeId>, TcpConnectError> {
        let parse = |names: &[String], field: &'static str| {
            names
                .iter()
                .map(|n| {
                    SpiffeId::parse(n).map_err(|_| TcpConnectError::BadIdentity {
                        cluster: cluster.name.to_string(),
                        field,
                        value: n.clone(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        if !sans.is_empty() {
            return parse(sans, "tls.subjectAltNames");
        }
        let snapshot = self.store.load();
        let service = snapshot.service(&cluster.service);
        if let Some(service) = service
            && !service.subject_alt_names.is_empty()
        {
            return parse(&service.subject_alt_names, "subjectAltNames");
        }
        let ep = cluster
            .endpoints
            .iter()
            .find(|e| e.port == endpoint.port() && e.address == Address::Ip(endpoint.ip()));
        let Some(sa) = ep.and_then(|e| e.service_account.as_deref()) else {
            return Ok(Vec::new());
        };
        let namespace = ep
            .and_then(|e| e.namespace.as_deref())
            .or(service.map(|s| s.namespace.as_str()))
            .unwrap_or("default");
        SpiffeId::from_parts(trust_domain, namespace, sa)
            .map(|id| vec![id])
            .map_err(|_| TcpConnectError::BadIdentity {
                cluster: cluster.name.to_string(),
                field: "serviceAccount",
                value: sa.to_owned(),
            })
    }

    /// Opens the upstream connection for `target`, with the cluster's TLS policy.
    pub async fn connect(&self, target: &TcpTarget) -> Result<UpstreamStream, TcpConnectError> {
        let addr = target.address();
        let connect_timeout = match target {
            TcpTarget::Cluster { cluster, .. } => cluster.policy.connection_pool.connect_timeout,
            TcpTarget::Passthrough(_) => self.connect_timeout,
            TcpTarget::BlackHole(_) => return Err(TcpConnectError::BlackHole { addr }),
        };
        let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "connect timeout")))
            .map_err(|source| TcpConnectError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let TcpTarget::Cluster { cluster, .. } = target else {
            return Ok(UpstreamStream::Plain(tcp));
        };
        let Some(tls) = cluster.policy.tls.as_ref() else {
            return Ok(UpstreamStream::Plain(tcp));
        };
        match tls.mode {
            TlsMode::Disable => return Ok(UpstreamStream::Plain(tcp)),
            TlsMode::IstioMutual => {}
            mode => {
                return Err(TcpConnectError::UnsupportedTls {
                    cluster: cluster.name.to_string(),
                    mode,
                });
            }
        }
        let Some(credentials) = self.credentials.clone() else {
            return Err(TcpConnectError::NoIdentity {
                cluster: cluster.name.to_string(),
            });
        };
        let trust_domain = credentials.load().id().trust_domain().to_owned();
        let expected = self.expected(cluster, &tls.subject_alt_names, addr, &trust_domain)?;
        let config = self
            .client_config(credentials, expected)
            .map_err(|source| TcpConnectError::Tls {
                cluster: cluster.name.to_string(),
                source,
            })?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = ServerName::IpAddress(addr.ip().into());
        let stream = tokio::time::timeout(connect_timeout, connector.connect(name, tcp))
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake timeout",
                ))
            })
            .map_err(|source| TcpConnectError::Handshake { addr, source })?;
        let mut stream = stream;
        let (peer, unread) = if stream.get_ref().1.alpn_protocol() == Some(PEER_EXCHANGE_ALPN) {
            let exchanged = self
                .exchange
                .clone()
                .timeout(connect_timeout)
                .run(&mut stream)
                .await
                .map_err(|source| TcpConnectError::Handshake { addr, source })?;
            (exchanged.peer, exchanged.unread)
        } else {
            (None, bytes::Bytes::new())
        };
        Ok(UpstreamStream::Tls {
            stream: Box::new(Rewind::new(unread, stream)),
            peer,
        })
    }

    /// Istio's metrics for a connection closed before any upstream was tried: opened and
    /// closed at once, with `flag`.
    fn record_refused(&self, target: &TcpTarget, flag: ResponseFlag) {
        let labels = self.labels(target, ResponseFlags::of(flag), false, None);
        metrics::counter!("istio_tcp_connections_opened_total", labels.clone()).increment(1);
        metrics::counter!("istio_tcp_connections_closed_total", labels).increment(1);
    }

    fn labels(
        &self,
        target: &TcpTarget,
        flags: ResponseFlags,
        mtls: bool,
        peer: Option<&PeerMetadata>,
    ) -> Vec<metrics::Label> {
        let w = &self.workload;
        let service = target.service().to_owned();
        let namespace = match target {
            TcpTarget::Cluster { .. } => service.split('.').nth(1).unwrap_or("unknown").to_owned(),
            TcpTarget::Passthrough(_) | TcpTarget::BlackHole(_) => "unknown".to_owned(),
        };
        let name = service.split('.').next().unwrap_or_default().to_owned();
        let mut labels = workload_labels("source", w, peer);
        let workload_namespace = peer
            .map(|p| p.namespace.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| namespace.clone());
        labels.extend([
            ("source_principal", principal_of(w)),
            ("destination_principal", "unknown".to_owned()),
            ("destination_workload_namespace", workload_namespace),
            ("destination_service", service),
            ("destination_service_name", name),
            ("destination_service_namespace", namespace),
            ("request_protocol", "tcp".to_owned()),
            ("response_flags", flags.to_string()),
            (
                "connection_security_policy",
                if mtls { "mutual_tls" } else { "unknown" }.to_owned(),
            ),
        ]);
        into_labels(labels)
    }

    /// Carries one intercepted connection (`conn`: from its client's address to its original
    /// destination) to its target and back, recording Istio's TCP metrics. An endpoint the
    /// balancer picked counts the connection as active until it ends. When the original
    /// destination is a virtual address of a service port with `tls` rules, the connection's
    /// ClientHello is read first ([`read_client_hello`], bounded by [`CLIENT_HELLO_TIMEOUT`])
    /// and replayed to the upstream.
    pub async fn forward<S>(&self, mut client: S, conn: ConnectionInfo)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let dst = conn.local;
        let snapshot = self.store.load();
        let owner = owner(&snapshot, dst);
        let mut hello = Vec::new();
        let mut sni = None;
        if let Owner::Service(own) = &owner
            && reads_sni(&snapshot, &own.name)
        {
            match read_client_hello(&mut client, &mut hello, CLIENT_HELLO_TIMEOUT).await {
                Ok(read) => sni = read.and_then(|h| h.server_name),
                Err(HelloError::Timeout(_)) => {}
                Err(e) => {
                    tracing::debug!(%dst, error = %e, "intercepted tcp: no ClientHello to route by");
                    return;
                }
            }
        }
        let client = Rewind::new(bytes::Bytes::from(hello), client);
        let routed = match owner {
            Owner::Target(target) => Ok((target, None)),
            Owner::Service(own) => {
                self.route(&snapshot, own, Some(conn.peer.ip()), dst, sni.as_deref())
            }
        };
        drop(snapshot);
        let (target, pick) = match routed {
            Ok(routed) => routed,
            Err((cluster, flag)) => {
                tracing::debug!(%dst, cluster = %cluster.name, flag = flag.code(), "intercepted tcp: no upstream to take it");
                // The labels name the service only: the original destination stands in for
                // the endpoint.
                let target = TcpTarget::Cluster {
                    cluster,
                    endpoint: dst,
                };
                self.record_refused(&target, flag);
                return;
            }
        };
        let cluster = match &target {
            TcpTarget::Cluster { cluster, .. } => Some(cluster),
            TcpTarget::Passthrough(_) => None,
            TcpTarget::BlackHole(_) => {
                tracing::debug!(%dst, "intercepted tcp: not in the registry (REGISTRY_ONLY)");
                // Envoy's BlackHoleCluster has no hosts: `UH`, as Istio's metrics show it.
                self.record_refused(&target, ResponseFlag::NoHealthyUpstream);
                return;
            }
        };
        let idle = idle_timeout(cluster);
        let Some(_slot) = cluster.map_or(Some(OpenConnection(None)), |c| self.open.try_open(c))
        else {
            tracing::debug!(%dst, "intercepted tcp: the cluster's connection limit is reached");
            self.record_refused(&target, ResponseFlag::UpstreamOverflow);
            return;
        };
        let upstream = self.connect(&target).await;
        if let Some(pick) = &pick {
            match &upstream {
                Ok(_) => pick.connected(),
                // The endpoint's failures only, not this proxy's TLS setup.
                Err(
                    TcpConnectError::Connect { source, .. }
                    | TcpConnectError::Handshake { source, .. },
                ) => pick.failed(source),
                Err(_) => {}
            }
        }
        let upstream = match upstream {
            Ok(upstream) => upstream,
            Err(e) => {
                tracing::debug!(%dst, error = %e, "intercepted tcp: upstream connect failed");
                let labels = self.labels(
                    &target,
                    ResponseFlags::of(ResponseFlag::UpstreamConnectionFailure),
                    false,
                    None,
                );
                metrics::counter!("istio_tcp_connections_opened_total", labels.clone())
                    .increment(1);
                metrics::counter!("istio_tcp_connections_closed_total", labels).increment(1);
                return;
            }
        };
        let (mtls, peer) = match &upstream {
            UpstreamStream::Plain(_) => (false, None),
            UpstreamStream::Tls { peer, .. } => (true, peer.as_deref()),
        };
        let labels = self.labels(&target, ResponseFlags::default(), mtls, peer);
        metrics::counter!("istio_tcp_connections_opened_total", labels.clone()).increment(1);
        let bytes = ByteCounters::new(&labels, false);
        let report = |moved| bytes.add(moved);
        match upstream {
            UpstreamStream::Plain(s) => splice_reporting(client, s, idle, report).await,
            UpstreamStream::Tls { stream, .. } => {
                splice_reporting(client, stream, idle, report).await
            }
        };
        metrics::counter!("istio_tcp_connections_closed_total", labels).increment(1);
    }
}

/// Open connections per cluster, for `connectionPool.tcp.maxConnections` (Envoy's cluster
/// `max_connections` circuit breaker): a connection over the limit is refused.
#[derive(Clone, Debug, Default)]
struct OpenConnections {
    by_cluster: Arc<Mutex<HashMap<ClusterName, Arc<AtomicU32>>>>,
}

/// A connection counted against its cluster's limit until dropped (`None`: no limit).
struct OpenConnection(Option<Arc<AtomicU32>>);

impl OpenConnections {
    /// A slot for one more connection to `cluster`, or `None` when its limit is reached.
    fn try_open(&self, cluster: &Cluster) -> Option<OpenConnection> {
        let max = cluster.policy.connection_pool.max_connections;
        if max == u32::MAX {
            return Some(OpenConnection(None));
        }
        let count = {
            let mut by_cluster = self
                .by_cluster
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !by_cluster.contains_key(&cluster.name) {
                // Forget the clusters with no open connection (some may be gone from the
                // config), so the map stays as small as the clusters in use.
                by_cluster.retain(|_, open| Arc::strong_count(open) > 1);
            }
            by_cluster.entry(cluster.name.clone()).or_default().clone()
        };
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(OpenConnection(Some(count)))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Some(count) = &self.0 {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Envoy's TCP proxy idle timeout when the DestinationRule sets none.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// The idle timeout of a connection to `cluster`: `connectionPool.tcp.idleTimeout`, else one
/// hour as Envoy's.
fn idle_timeout(cluster: Option<&Arc<Cluster>>) -> Duration {
    cluster
        .and_then(|c| c.policy.connection_pool.tcp_idle_timeout)
        .unwrap_or(DEFAULT_TCP_IDLE_TIMEOUT)
}

/// What [`splice`] carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spliced {
    /// Bytes from the client to the upstream.
    pub sent: u64,
    /// Bytes from the upstream to the client.
    pub received: u64,
    /// Whether the connection was closed for carrying nothing for the idle timeout.
    pub idle_timed_out: bool,
}

/// Copies bytes both ways between `client` and `upstream` until either side closes, an I/O
/// error, or `idle` passes with no byte in either direction (Istio's
/// `connectionPool.tcp.idleTimeout`). The byte counts survive an error or a timeout.
pub async fn splice<A, B>(client: A, upstream: B, idle: Duration) -> Spliced
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    splice_reporting(client, upstream, idle, |_| {}).await
}

/// How often a connection's byte counts are reported while it is open: Istio's
/// `tcp_reporting_duration` default, so a long-lived connection's traffic shows in
/// `istio_tcp_*_bytes_total` before it closes.
pub const TCP_REPORTING_INTERVAL: Duration = Duration::from_secs(5);

/// As [`splice`], calling `report` with the bytes moved since its last call every
/// [`TCP_REPORTING_INTERVAL`] while bytes move, and once at the end; the calls add up to the
/// totals returned.
pub async fn splice_reporting<A, B>(
    client: A,
    mut upstream: B,
    idle: Duration,
    mut report: impl FnMut(Spliced),
) -> Spliced
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut watched = Watched::new(client);
    let (activity, started) = (watched.activity.clone(), watched.started);
    let copy = tokio::io::copy_bidirectional(&mut watched, &mut upstream);
    tokio::pin!(copy);
    let mut reported = Spliced::default();
    let mut report_since = |reported: &mut Spliced| {
        let now = Spliced {
            sent: activity.read.load(Ordering::Relaxed),
            received: activity.written.load(Ordering::Relaxed),
            idle_timed_out: false,
        };
        if now != *reported {
            report(Spliced {
                sent: now.sent - reported.sent,
                received: now.received - reported.received,
                idle_timed_out: false,
            });
            *reported = now;
        }
    };
    let mut tick =
        tokio::time::interval_at(started + TCP_REPORTING_INTERVAL, TCP_REPORTING_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let idle_timed_out = loop {
        let last = started + Duration::from_millis(activity.last_ms.load(Ordering::Relaxed));
        tokio::select! {
            result = &mut copy => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "tcp connection ended with an error");
                }
                break false;
            }
            () = tokio::time::sleep_until(last + idle) => {
                let now_ms = started.elapsed().as_millis() as u64;
                if now_ms.saturating_sub(activity.last_ms.load(Ordering::Relaxed))
                    >= idle.as_millis() as u64
                {
                    tracing::debug!(?idle, "tcp connection idle: closed");
                    break true;
                }
            }
            _ = tick.tick() => report_since(&mut reported),
        }
    };
    report_since(&mut reported);
    Spliced {
        sent: activity.read.load(Ordering::Relaxed),
        received: activity.written.load(Ordering::Relaxed),
        idle_timed_out,
    }
}

/// Istio's byte counters of one TCP connection, under its labels.
struct ByteCounters {
    /// `istio_tcp_sent_bytes_total`.
    sent: metrics::Counter,
    /// `istio_tcp_received_bytes_total`.
    received: metrics::Counter,
    /// Whether this proxy is the connection's server side (`reporter="destination"`): bytes
    /// from the client are then received, not sent.
    server_side: bool,
}

impl ByteCounters {
    fn new(labels: &[metrics::Label], server_side: bool) -> Self {
        Self {
            sent: metrics::counter!("istio_tcp_sent_bytes_total", labels.to_vec()),
            received: metrics::counter!("istio_tcp_received_bytes_total", labels.to_vec()),
            server_side,
        }
    }

    /// Counts what a splice moved (`sent`: client to upstream, `received`: back), in Istio's
    /// direction names for this side.
    fn add(&self, moved: Spliced) {
        let (to_peer, from_peer) = if self.server_side {
            (moved.received, moved.sent)
        } else {
            (moved.sent, moved.received)
        };
        self.sent.increment(to_peer);
        self.received.increment(from_peer);
    }
}

/// The client side's byte counts and last activity (milliseconds since the splice began).
#[derive(Debug, Default)]
struct Activity {
    read: std::sync::atomic::AtomicU64,
    written: std::sync::atomic::AtomicU64,
    last_ms: std::sync::atomic::AtomicU64,
}

/// The client stream, counting bytes and noting when they moved. Every byte of a splice
/// crosses the client side (read to go up, written when it comes back), so watching it is
/// enough.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    started: tokio::time::Instant,
}

impl<S> Watched<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            activity: Arc::default(),
            started: tokio::time::Instant::now(),
        }
    }

    fn moved(&self, counter: &std::sync::atomic::AtomicU64, n: usize) {
        if n > 0 {
            counter.fetch_add(n as u64, Ordering::Relaxed);
            let ms = self.started.elapsed().as_millis() as u64;
            self.activity.last_ms.store(ms, Ordering::Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        let this = &*self;
        this.moved(&this.activity.read, n);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            let this = &*self;
            this.moved(&this.activity.written, *n);
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>` of `w`.
fn principal_of(w: &Workload) -> String {
    format!(
        "spiffe://{}/ns/{}/sa/{}",
        w.trust_domain, w.namespace, w.service_account
    )
}

/// The `reporter` label, the local workload's labels on its side (`source_*` for the source
/// reporter, `destination_*` for the destination one), and the peer workload's labels: what
/// its TCP metadata exchange told, else what Istio gives a peer without one (its namespace
/// and principal are the caller's to add).
fn workload_labels(
    reporter: &'static str,
    w: &Workload,
    peer: Option<&PeerMetadata>,
) -> Vec<(&'static str, String)> {
    let known = |v: &str| {
        if v.is_empty() {
            "unknown".to_owned()
        } else {
            v.to_owned()
        }
    };
    // What the HTTP side's labels and its metadata exchange say of this workload.
    let me = crate::telemetry::PeerMetadata::of_workload(w);
    let mine = [
        known(&me.workload),
        known(&me.canonical_service),
        known(&me.canonical_revision),
        known(&me.namespace),
        known(&me.app),
        known(&me.version),
        known(&me.cluster),
    ];
    // What the peer's metadata exchange told, else what Istio says of a peer without it.
    let theirs = match peer {
        Some(p) => [
            known(&p.workload),
            known(&p.canonical_service),
            if p.canonical_revision.is_empty() {
                "latest".to_owned()
            } else {
                p.canonical_revision.clone()
            },
            String::new(),
            known(&p.app),
            known(&p.version),
            known(&p.cluster),
        ],
        None => [
            "unknown", "unknown", "latest", "", "unknown", "unknown", "unknown",
        ]
        .map(str::to_owned),
    };
    const SOURCE: [&str; 7] = [
        "source_workload",
        "source_canonical_service",
        "source_canonical_revision",
        "source_workload_namespace",
        "source_app",
        "source_version",
        "source_cluster",
    ];
    const DESTINATION: [&str; 7] = [
        "destination_workload",
        "destination_canonical_service",
        "destination_canonical_revision",
        "destination_workload_namespace",
        "destination_app",
        "destination_version",
        "destination_cluster",
    ];
    let (source, destination) = if reporter == "source" {
        (mine, theirs)
    } else {
        (theirs, mine)
    };
    let mut labels = vec![("reporter", reporter.to_owned())];
    for (keys, values) in [(SOURCE, source), (DESTINATION, destination)] {
        // The peer's namespace (index 3) is the caller's to give.
        labels.extend(keys.into_iter().zip(values).filter(|(_, v)| !v.is_empty()));
    }
    labels
}

fn into_labels(pairs: Vec<(&'static str, String)>) -> Vec<metrics::Label> {
    pairs
        .into_iter()
        .map(|(k, v)| metrics::Label::new(k, v))
        .collect()
}

/// The compiled authorization policies of one snapshot version.
#[derive(Debug)]
struct CompiledPolicies {
    version: u64,
    engine: Option<Engine>,
}

/// Intercepted inbound TCP: each connection (mutual TLS already terminated) is authorized by
/// the workload's AuthorizationPolicies as a TCP connection ([`Engine::evaluate_tcp`]: source
/// principal, namespace, IP, destination port; rules with HTTP-only fields do not match) and,
/// when allowed, carried to the application; when denied, closed at once, as Envoy's network
/// RBAC filter does. Istio's TCP metrics are recorded with `reporter="destination"`.
#[derive(Clone, Debug)]
pub struct TcpInbound {
    store: Arc<ConfigStore>,
    workload: Arc<Workload>,
    compiled: Arc<ArcSwapOption<CompiledPolicies>>,
    connect_timeout: Duration,
}

/// One inbound TCP connection, as the capture listener saw it.
#[derive(Clone, Debug)]
pub struct InboundConnection {
    /// The client's address.
    pub peer: SocketAddr,
    /// The original destination (the workload's address and port).
    pub destination: SocketAddr,
    /// The verified client identity (mutual TLS only).
    pub identity: Option<PeerIdentity>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The TLS server name the client asked for.
    pub sni: Option<Arc<str>>,
    /// The client's workload, from Istio's TCP metadata exchange
    /// ([`crate::tls::TlsInfo::peer_metadata`]).
    pub peer_metadata: Option<Arc<PeerMetadata>>,
}

impl TcpInbound {
    /// Authorization and forwarding by `store`'s live config.
    pub fn new(store: Arc<ConfigStore>) -> Self {
        let workload = Arc::new(store.load().workload.clone());
        Self {
            store,
            workload,
            compiled: Arc::default(),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Decides `conn`; an uncompilable policy set denies (as the HTTP path does).
    pub fn authorize(&self, conn: &InboundConnection) -> Option<Verdict> {
        let snapshot = self.store.load();
        let compiled = match self.compiled.load_full() {
            Some(c) if c.version == snapshot.version => c,
            _ => {
                let engine = match Engine::new(&snapshot.authorization) {
                    Ok(engine) => Some(engine),
                    Err(e) => {
                        tracing::error!(error = %e, "authorization policies cannot be enforced; denying all TCP connections");
                        None
                    }
                };
                let compiled = Arc::new(CompiledPolicies {
                    version: snapshot.version,
                    engine,
                });
                self.compiled.store(Some(compiled.clone()));
                compiled
            }
        };
        let engine = compiled.engine.as_ref()?;
        Some(engine.evaluate_tcp(&Attributes {
            peer: conn.identity.as_ref(),
            source_ip: Some(conn.peer.ip()),
            destination_ip: Some(conn.destination.ip()),
            destination_port: Some(conn.destination.port()),
            sni: conn.sni.as_deref(),
            ..Attributes::new("", "")
        }))
    }

    fn labels(&self, conn: &InboundConnection, flags: ResponseFlags) -> Vec<metrics::Label> {
        let w = &self.workload;
        let peer = conn.peer_metadata.as_deref();
        let mut labels = workload_labels("destination", w, peer);
        // The verified identity's namespace, else the one the peer's metadata names (as the
        // HTTP side).
        let told = peer.map(|p| p.namespace.clone()).filter(|n| !n.is_empty());
        let (principal, namespace) = match &conn.identity {
            Some(id) => (
                id.id.to_string(),
                id.namespace
                    .as_deref()
                    .map(str::to_owned)
                    .or(told)
                    .unwrap_or_else(|| "unknown".to_owned()),
            ),
            None => (
                "unknown".to_owned(),
                told.unwrap_or_else(|| "unknown".to_owned()),
            ),
        };
        labels.extend([
            ("source_principal", principal),
            ("source_workload_namespace", namespace),
            ("destination_principal", principal_of(w)),
            ("destination_port", conn.destination.port().to_string()),
            ("request_protocol", "tcp".to_owned()),
            ("response_flags", flags.to_string()),
            (
                "connection_security_policy",
                if conn.identity.is_some() {
                    "mutual_tls"
                } else {
                    "none"
                }
                .to_owned(),
            ),
        ]);
        into_labels(labels)
    }

    /// Authorizes `conn` and carries `client` to the application at `app`, recording Istio's
    /// TCP metrics; a denied connection is closed without reaching the application.
    pub async fn forward<S>(&self, mut client: S, conn: InboundConnection, app: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let closed = |flags: ResponseFlags| {
            let labels = self.labels(&conn, flags);
            metrics::counter!("istio_tcp_connections_opened_total", labels.clone()).increment(1);
            metrics::counter!("istio_tcp_connections_closed_total", labels).increment(1);
        };
        match self.authorize(&conn) {
            Some(v) if v.is_allowed() => {}
            verdict => {
                tracing::debug!(
                    peer = %conn.peer,
                    verdict = %verdict.map_or_else(|| "no usable policies".to_owned(), |v| v.to_string()),
                    "inbound tcp connection denied"
                );
                closed(ResponseFlags::of(ResponseFlag::UnauthorizedExternalService));
                metrics::counter!("mesh_tcp_authz_denied_total").increment(1);
                let _ = client.shutdown().await;
                return;
            }
        }
        let upstream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(app)).await;
        let Ok(Ok(upstream)) = upstream else {
            tracing::debug!(%app, "inbound tcp: app connect failed");
            closed(ResponseFlags::of(ResponseFlag::UpstreamConnectionFailure));
            return;
        };
        let _ = upstream.set_nodelay(true);
        let labels = self.labels(&conn, ResponseFlags::default());
        metrics::counter!("istio_tcp_connections_opened_total", labels.clone()).increment(1);
        // From the server side: received = client -> app, sent = app -> client.
        let bytes = ByteCounters::new(&labels, true);
        splice_reporting(client, upstream, idle_timeout(None), |moved| {
            bytes.add(moved)
        })
        .await;
        metrics::counter!("istio_tcp_connections_closed_total", labels).increment(1);
    }
}

#[cfg(test)]
mod balance_tests;
#[cfg(test)]
mod route_tests;
#[cfg(test)]
mod sni_tests;
#[cfg(test)]
mod testing;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test(start_paused = true)]
    async fn a_splice_carries_both_ways_and_ends_after_the_idle_timeout() {
        let (mut app_client, proxy_client) = tokio::io::duplex(1024);
        let (proxy_upstream, mut app_upstream) = tokio::io::duplex(1024);
        let started = tokio::time::Instant::now();
        let splice = tokio::spawn(splice(
            proxy_client,
            proxy_upstream,
            Duration::from_secs(10),
        ));
        app_client.write_all(b"ping!").await.unwrap();
        let mut buf = [0; 5];
        app_upstream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping!");
        // Activity 6 s in pushes the deadline on.
        tokio::time::sleep(Duration::from_secs(6)).await;
        app_upstream.write_all(b"pong").await.unwrap();
        let mut buf = [0; 4];
        app_client.read_exact(&mut buf).await.unwrap();
        let spliced = splice.await.unwrap();
        assert_eq!(
            spliced,
            Spliced {
                sent: 5,
                received: 4,
                idle_timed_out: true
            }
        );
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(16),
            "10 s after the last byte"
        );
        // Both sides see the end.
        assert_eq!(app_client.read(&mut buf).await.unwrap(), 0);
    }

    const DB: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: db }
spec:
  hosts: [db.default.svc.cluster.local]
  addresses: [10.96.0.10]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{ number: 5432, name: tcp, protocol: TCP }]
  endpoints:
  - { address: 127.0.0.1, ports: { tcp: 15432 } }
  - { address: 127.0.0.2, ports: { tcp: 15432 } }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: db }
spec:
  host: db.default.svc.cluster.local
  trafficPolicy: { loadBalancer: { simple: ROUND_ROBIN } }
"#;

    #[test]
    fn a_services_virtual_address_resolves_to_its_endpoints_round_robin() {
        let config = mesh_core::istio::load(&[("db.yaml", DB)], &Workload::default())
            .config
            .expect("valid");
        let store = Arc::new(ConfigStore::new(config));
        let outbound = TcpOutbound::new(store.clone());
        let vip: SocketAddr = "10.96.0.10:5432".parse().unwrap();
        let picks: Vec<SocketAddr> = (0..4)
            .map(|_| outbound.resolve(vip).unwrap().address())
            .collect();
        let first: SocketAddr = "127.0.0.1:15432".parse().unwrap();
        let second: SocketAddr = "127.0.0.2:15432".parse().unwrap();
        assert_eq!(picks, [first, second, first, second]);
        assert!(matches!(
            outbound.resolve(vip),
            Some(TcpTarget::Cluster { cluster, .. }) if cluster.service == "db.default.svc.cluster.local"
        ));
        // An endpoint's own address stays itself; another port of the VIP, or another
        // address, is nobody's.
        assert_eq!(outbound.resolve(second).unwrap().address(), second);
        let other_port: SocketAddr = "10.96.0.10:80".parse().unwrap();
        assert!(matches!(
            outbound.resolve(other_port),
            Some(TcpTarget::Passthrough(a)) if a == other_port
        ));
    }

    #[tokio::test]
    async fn registry_only_closes_a_connection_to_an_unknown_destination_without_connecting() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let unknown = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(b"hello").await;
            }
        });
        let mut config = mesh_core::istio::load(&[("db.yaml", DB)], &Workload::default())
            .config
            .expect("valid");
        for (policy, expected) in [
            (OutboundTrafficPolicy::AllowAny, &b"hello"[..]),
            (OutboundTrafficPolicy::RegistryOnly, &b""[..]),
        ] {
            config.outbound_traffic_policy = policy;
            let outbound = TcpOutbound::new(Arc::new(ConfigStore::new(config.clone())));
            let target = outbound.resolve(unknown).unwrap();
            assert_eq!(
                target.service(),
                match policy {
                    OutboundTrafficPolicy::AllowAny => "PassthroughCluster",
                    OutboundTrafficPolicy::RegistryOnly => "BlackHoleCluster",
                }
            );
            let (mut app, proxied) = tokio::io::duplex(1024);
            let conn = ConnectionInfo {
                peer: "127.0.0.1:40000".parse().unwrap(),
                local: unknown,
                redirected: true,
            };
            let forward = tokio::spawn(async move { outbound.forward(proxied, conn).await });
            let mut got = vec![0; expected.len()];
            app.read_exact(&mut got).await.unwrap();
            // Then the end: the upstream closed after its greeting, or nothing was there.
            assert_eq!(app.read(&mut [0; 8]).await.unwrap(), 0, "{policy:?}");
            assert_eq!(got, expected, "{policy:?}");
            drop(app);
            forward.await.unwrap();
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "only ALLOW_ANY connected"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_splice_ends_when_a_side_closes_and_keeps_its_counts() {
        let (mut app_client, proxy_client) = tokio::io::duplex(1024);
        let (proxy_upstream, mut app_upstream) = tokio::io::duplex(1024);
        let splice = tokio::spawn(splice(
            proxy_client,
            proxy_upstream,
            DEFAULT_TCP_IDLE_TIMEOUT,
        ));
        app_client.write_all(&[7; 300]).await.unwrap();
        app_client.shutdown().await.unwrap();
        let mut all = Vec::new();
        app_upstream.read_to_end(&mut all).await.unwrap();
        assert_eq!(all.len(), 300);
        drop(app_upstream);
        let spliced = splice.await.unwrap();
        assert_eq!((spliced.sent, spliced.idle_timed_out), (300, false));
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_connection_reports_its_bytes_every_interval_and_the_rest_at_the_end() {
        let (mut app_client, proxy_client) = tokio::io::duplex(1024);
        let (proxy_upstream, mut app_upstream) = tokio::io::duplex(1024);
        let (reports, mut reported) = tokio::sync::mpsc::unbounded_channel();
        let splice = tokio::spawn(splice_reporting(
            proxy_client,
            proxy_upstream,
            DEFAULT_TCP_IDLE_TIMEOUT,
            move |moved: Spliced| reports.send((moved.sent, moved.received)).unwrap(),
        ));
        // Ten bytes up: reported at the first tick, while the connection stays open.
        app_client.write_all(&[1; 10]).await.unwrap();
        let mut up = [0u8; 10];
        app_upstream.read_exact(&mut up).await.unwrap();
        tokio::time::sleep(TCP_REPORTING_INTERVAL).await;
        assert_eq!(reported.recv().await, Some((10, 0)));
        // A quiet interval reports nothing; four bytes back are reported at the next tick.
        tokio::time::sleep(TCP_REPORTING_INTERVAL).await;
        app_upstream.write_all(&[2; 4]).await.unwrap();
        let mut back = [0u8; 4];
        app_client.read_exact(&mut back).await.unwrap();
        tokio::time::sleep(TCP_REPORTING_INTERVAL).await;
        assert_eq!(reported.recv().await, Some((0, 4)));
        // What moved after the last tick is reported when the connection ends.
        app_client.write_all(&[3; 6]).await.unwrap();
        app_client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        app_upstream.read_to_end(&mut rest).await.unwrap();
        drop(app_upstream);
        let spliced = splice.await.unwrap();
        assert_eq!(reported.recv().await, Some((6, 0)));
        assert_eq!(reported.recv().await, None, "no other report");
        assert_eq!((spliced.sent, spliced.received), (16, 4));
    }

    #[tokio::test]
    async fn a_cluster_takes_at_most_max_connections_at_once() {
        // The upstream counts the connections it accepts and holds each open.
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_port = upstream.local_addr().unwrap().port();
        let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = upstream.accept().await {
                accepted_tx.send(stream).unwrap();
            }
        });
        let config = testing::db_config(
            &[(upstream_port, 1, "")],
            "{ connectionPool: { tcp: { maxConnections: 1 } } }",
            Workload::default(),
        );
        let store = Arc::new(ConfigStore::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let forward = TcpForward::new(store, "db.default.svc.cluster.local", 5432);
        tokio::spawn(serve_tcp(listener, forward, std::future::pending()));

        let mut first = TcpStream::connect(local).await.unwrap();
        first.write_all(b"one").await.unwrap();
        let mut first_upstream = accepted.recv().await.unwrap();
        let mut buf = [0; 3];
        first_upstream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"one");

        // Over the limit: closed at once, never carried upstream.
        let mut second = TcpStream::connect(local).await.unwrap();
        let refused = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf)).await;
        assert!(matches!(refused, Ok(Ok(0))), "closed at once: {refused:?}");
        assert!(
            accepted.try_recv().is_err(),
            "no second upstream connection"
        );

        // The first one closed at both ends: its slot is free again.
        drop(first);
        assert_eq!(first_upstream.read(&mut buf).await.unwrap(), 0);
        drop(first_upstream);
        let third = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let mut third = TcpStream::connect(local).await.unwrap();
                third.write_all(b"three").await.unwrap();
                // The forwarder sees the first connection end asynchronously; until then a new
                // one is still over the limit and closed (reset, if it was written to).
                tokio::select! {
                    upstream = accepted.recv() => break (third, upstream.unwrap()),
                    read = third.read(&mut buf) => assert!(matches!(read, Ok(0) | Err(_)), "{read:?}"),
                }
            }
        })
        .await
        .expect("the freed slot is taken within 10 s");
        let (_third, mut third_upstream) = third;
        let mut buf = [0; 5];
        third_upstream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"three");
    }
}

/// Outlier detection and EDS health for TCP: which endpoint each connection reaches, with
/// real sockets on 127.0.0.1 (an endpoint "down" is a port nothing listens on, so a connect
/// is refused; "back up" is a listener bound to that port again). Time is paused only to
/// move past an ejection, never while a connect is in flight.
#[cfg(test)]
mod outlier_tests {
    use super::testing::{cluster_name, db_config, forwarder};
    use super::*;
    use mesh_core::model::{HealthStatus, MeshConfig};
    use tokio::io::AsyncReadExt;
    use tokio::sync::mpsc;

    /// Where one client connection went.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Reached {
        /// Upstream listener `i` accepted it.
        Endpoint(usize),
        /// The forwarder closed it without reaching any listener (connect refused, or no
        /// endpoint to take it).
        Closed,
    }
    use Reached::{Closed, Endpoint};

    /// Test upstreams: listener `i` reports each connection it accepts as `i`.
    struct Upstreams {
        tx: mpsc::UnboundedSender<usize>,
        rx: mpsc::UnboundedReceiver<usize>,
        listening: Vec<(usize, tokio::task::JoinHandle<()>)>,
    }

    impl Upstreams {
        fn new() -> Self {
            let (tx, rx) = mpsc::unbounded_channel();
            Self {
                tx,
                rx,
                listening: Vec::new(),
            }
        }

        /// Listens on `port` (0: any) as upstream `i`; the port.
        async fn listen(&mut self, i: usize, port: u16) -> u16 {
            let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let tx = self.tx.clone();
            let task = tokio::spawn(async move {
                // Each accepted connection is dropped at once: the test only counts them.
                while let Ok((_stream, _)) = listener.accept().await {
                    if tx.send(i).is_err() {
                        break;
                    }
                }
            });
            self.listening.push((i, task));
            port
        }

        /// Closes upstream `i`'s listener: connections to its port are refused again.
        async fn stop(&mut self, i: usize) {
            for (_, task) in self.listening.extract_if(.., |(j, _)| *j == i) {
                task.abort();
                let _ = task.await;
            }
        }

        /// Waits until `client`, whose connection a forwarder is carrying, reached a listener
        /// or was closed by the forwarder.
        async fn reached(&mut self, mut client: impl AsyncRead + Unpin) -> Reached {
            let mut buf = [0; 1];
            let reached = tokio::time::timeout(Duration::from_secs(10), async {
                tokio::select! {
                    // An upstream reports the accept before it drops the connection, so the
                    // report is there by the time the client could see that close.
                    biased;
                    Some(i) = self.rx.recv() => Endpoint(i),
                    _ = client.read(&mut buf) => Closed,
                }
            })
            .await
            .expect("the connection is carried or closed within 10 s");
            if reached == Closed {
                assert!(
                    self.rx.try_recv().is_err(),
                    "closed, yet an upstream got it"
                );
            }
            reached
        }

        /// Makes `n` connections through the forwarder on `local`, one after the other.
        async fn through(&mut self, local: SocketAddr, n: usize) -> Vec<Reached> {
            let mut reached = Vec::new();
            for _ in 0..n {
                let client = TcpStream::connect(local).await.unwrap();
                reached.push(self.reached(client).await);
            }
            reached
        }
    }

    /// A port nothing listens on: a connection to it is refused.
    async fn refusing_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    /// Service `db` (virtual address 10.96.0.10, TCP port 5432) with an endpoint on
    /// 127.0.0.1 at each of `ports`, in that order, and `outlier` as its DestinationRule's
    /// `outlierDetection` (flow-style YAML), balanced round-robin (so that each test knows
    /// which endpoint a connection goes to).
    fn config(ports: &[u16], outlier: &str) -> MeshConfig {
        let endpoints: Vec<(u16, u32, &str)> = ports.iter().map(|p| (*p, 1, "")).collect();
        let policy =
            format!("{{ loadBalancer: {{ simple: ROUND_ROBIN }}, outlierDetection: {outlier} }}");
        let config = db_config(&endpoints, &policy, Workload::default());
        let cluster = &config.clusters[&cluster_name()];
        let order: Vec<u16> = cluster.endpoints.iter().map(|e| e.port).collect();
        assert_eq!(order, ports, "the cluster keeps the endpoints' order");
        assert!(cluster.policy.outlier_detection.is_some());
        config
    }

    /// `config` with endpoint `i`'s EDS health set to each of `health`.
    fn with_health(mut config: MeshConfig, health: &[(usize, HealthStatus)]) -> MeshConfig {
        let cluster = config.clusters.get_mut(&cluster_name()).unwrap();
        for (i, h) in health {
            Arc::make_mut(cluster).endpoints[*i].health = *h;
        }
        config
    }

    /// Whether endpoint `127.0.0.1:port` of `db` is ejected now, by `balancer`'s state.
    fn ejected(balancer: &BalanceLayer, port: u16) -> bool {
        balancer
            .endpoint_state(&cluster_name(), &format!("127.0.0.1:{port}"))
            .is_some_and(|s| s.outlier.is_ejected(tokio::time::Instant::now()))
    }

    /// Moves the clock `by` at once (nothing is in flight: every connection so far has been
    /// carried or closed).
    async fn jump(by: Duration) {
        tokio::time::pause();
        tokio::time::advance(by).await;
        tokio::time::resume();
    }

    #[tokio::test]
    async fn a_refusing_endpoint_is_ejected_after_n_failures_then_returns() {
        let mut upstreams = Upstreams::new();
        let live = upstreams.listen(0, 0).await;
        let down = refusing_port().await;
        let store = Arc::new(ConfigStore::new(config(
            &[live, down],
            "{ consecutive5xxErrors: 3, baseEjectionTime: 30s }",
        )));
        let balancer = BalanceLayer::default();
        let local = forwarder(&store, &balancer).await;

        // Round-robin: every other connection is refused, until the third refusal ejects it.
        assert_eq!(
            upstreams.through(local, 6).await,
            [
                Endpoint(0),
                Closed,
                Endpoint(0),
                Closed,
                Endpoint(0),
                Closed
            ]
        );
        assert!(ejected(&balancer, down));

        // Back up, but ejected: no connection is even tried there; the live one takes all.
        upstreams.listen(1, down).await;
        assert_eq!(upstreams.through(local, 4).await, [Endpoint(0); 4]);

        // 30 s later (the base ejection time, first ejection), it takes its turns again.
        jump(Duration::from_secs(29)).await;
        assert_eq!(upstreams.through(local, 2).await, [Endpoint(0); 2]);
        jump(Duration::from_secs(1)).await;
        assert!(!ejected(&balancer, down));
        let mut back = upstreams.through(local, 4).await;
        back.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(back, [Endpoint(0), Endpoint(0), Endpoint(1), Endpoint(1)]);
    }

    #[tokio::test]
    async fn a_success_in_between_resets_the_count() {
        let mut upstreams = Upstreams::new();
        let live = upstreams.listen(0, 0).await;
        let flaky = refusing_port().await;
        let store = Arc::new(ConfigStore::new(config(
            &[live, flaky],
            "{ consecutive5xxErrors: 2 }",
        )));
        let balancer = BalanceLayer::default();
        let local = forwarder(&store, &balancer).await;
        assert_eq!(upstreams.through(local, 2).await, [Endpoint(0), Closed]);
        // One success at the flaky endpoint: its count starts over.
        upstreams.listen(1, flaky).await;
        assert_eq!(
            upstreams.through(local, 2).await,
            [Endpoint(0), Endpoint(1)]
        );
        upstreams.stop(1).await;
        assert_eq!(upstreams.through(local, 2).await, [Endpoint(0), Closed]);
        assert!(!ejected(&balancer, flaky), "one failure since the success");
        assert_eq!(upstreams.through(local, 2).await, [Endpoint(0), Closed]);
        assert!(ejected(&balancer, flaky), "the second in a row ejects");
    }

    #[tokio::test]
    async fn max_ejection_percent_caps_the_ejections() {
        let mut upstreams = Upstreams::new();
        let live = upstreams.listen(0, 0).await;
        let (first, second) = (refusing_port().await, refusing_port().await);
        let store = Arc::new(ConfigStore::new(config(
            &[live, first, second],
            "{ consecutive5xxErrors: 2, maxEjectionPercent: 50 }",
        )));
        let balancer = BalanceLayer::default();
        let local = forwarder(&store, &balancer).await;
        assert_eq!(
            upstreams.through(local, 6).await,
            [Endpoint(0), Closed, Closed, Endpoint(0), Closed, Closed]
        );
        // Two failures each, but ejecting the second would put 2 of 3 (67%) out.
        assert!(ejected(&balancer, first));
        assert!(!ejected(&balancer, second), "over maxEjectionPercent");
        // The ejected one gets nothing, even listening again; the other is still tried.
        upstreams.listen(1, first).await;
        let reached = upstreams.through(local, 6).await;
        assert_eq!(reached.iter().filter(|r| **r == Endpoint(0)).count(), 3);
        assert_eq!(reached.iter().filter(|r| **r == Closed).count(), 3);
    }

    #[tokio::test]
    async fn a_config_reload_keeps_the_ejection_and_an_endpoint_that_leaves_starts_over() {
        let mut upstreams = Upstreams::new();
        let live = upstreams.listen(0, 0).await;
        let down = refusing_port().await;
        let outlier = "{ consecutive5xxErrors: 1 }";
        let store = Arc::new(ConfigStore::new(config(&[live, down], outlier)));
        let balancer = BalanceLayer::default();
        let local = forwarder(&store, &balancer).await;
        assert_eq!(upstreams.through(local, 2).await, [Endpoint(0), Closed]);
        assert!(ejected(&balancer, down));
        upstreams.listen(1, down).await;

        // A new snapshot with one more endpoint: the ejected one stays out.
        let added = upstreams.listen(2, 0).await;
        store.publish(config(&[live, down, added], outlier));
        let mut reached = upstreams.through(local, 4).await;
        reached.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(
            reached,
            [Endpoint(0), Endpoint(0), Endpoint(2), Endpoint(2)]
        );

        // It leaves the cluster (a connection is made meanwhile), then comes back: its
        // state went with it, so it is in the rotation at once.
        store.publish(config(&[live, added], outlier));
        upstreams.through(local, 1).await;
        store.publish(config(&[live, down, added], outlier));
        let reached = upstreams.through(local, 3).await;
        assert_eq!(
            reached.iter().filter(|r| **r == Endpoint(1)).count(),
            1,
            "{reached:?}"
        );
    }

    #[tokio::test]
    async fn degraded_endpoints_serve_only_while_no_healthy_one_is_left_and_draining_never() {
        let mut upstreams = Upstreams::new();
        let healthy = refusing_port().await;
        let degraded = upstreams.listen(1, 0).await;
        let draining = upstreams.listen(2, 0).await;
        let store = Arc::new(ConfigStore::new(with_health(
            config(
                &[healthy, degraded, draining],
                "{ consecutive5xxErrors: 1, baseEjectionTime: 30s }",
            ),
            &[(1, HealthStatus::Degraded), (2, HealthStatus::Draining)],
        )));
        let balancer = BalanceLayer::default();
        let local = forwarder(&store, &balancer).await;
        // The healthy one is tried while it is there, though it refuses: ejected.
        assert_eq!(upstreams.through(local, 1).await, [Closed]);
        // Every healthy endpoint ejected: the degraded one takes all (the draining one none).
        assert_eq!(upstreams.through(local, 3).await, [Endpoint(1); 3]);
        // The healthy one returns, up: the degraded one is left alone again.
        upstreams.listen(0, healthy).await;
        jump(Duration::from_secs(30)).await;
        assert_eq!(upstreams.through(local, 3).await, [Endpoint(0); 3]);

        // Only draining and unhealthy endpoints: no endpoint takes it (`UH`).
        store.publish(with_health(
            config(
                &[healthy, degraded, draining],
                "{ consecutive5xxErrors: 1 }",
            ),
            &[
                (0, HealthStatus::Unhealthy),
                (1, HealthStatus::Unhealthy),
                (2, HealthStatus::Draining),
            ],
        ));
        assert_eq!(upstreams.through(local, 2).await, [Closed; 2]);
    }

    #[tokio::test]
    async fn intercepted_tcp_to_a_virtual_address_ejects_and_fails_with_uh_when_none_is_left() {
        let mut upstreams = Upstreams::new();
        let down = refusing_port().await;
        let store = Arc::new(ConfigStore::new(config(
            &[down],
            "{ consecutive5xxErrors: 2, baseEjectionTime: 30s }",
        )));
        let balancer = BalanceLayer::default();
        let outbound = TcpOutbound::new(store).balancer(balancer.clone());
        let vip: SocketAddr = "10.96.0.10:5432".parse().unwrap();
        let through = async |upstreams: &mut Upstreams| {
            let (app, proxy_side) = tokio::io::duplex(64);
            let outbound = outbound.clone();
            let conn = ConnectionInfo {
                peer: ([127, 0, 0, 1], 40000).into(),
                local: vip,
                redirected: true,
            };
            let task = tokio::spawn(async move { outbound.forward(proxy_side, conn).await });
            let reached = upstreams.reached(app).await;
            task.abort();
            reached
        };
        assert_eq!(through(&mut upstreams).await, Closed);
        assert_eq!(through(&mut upstreams).await, Closed);
        // The only endpoint is ejected (one may always be): up again, yet not tried, as the
        // HTTP balancer answers 503 `UH` with nothing left (minHealthPercent 0: no panic mode).
        assert!(ejected(&balancer, down));
        upstreams.listen(0, down).await;
        assert_eq!(through(&mut upstreams).await, Closed);
        assert_eq!(outbound.resolve(vip), None);
        jump(Duration::from_secs(30)).await;
        assert_eq!(through(&mut upstreams).await, Endpoint(0));
    }

    #[tokio::test]
    async fn in_panic_mode_an_ejected_endpoint_is_tried_again() {
        let mut upstreams = Upstreams::new();
        let live = upstreams.listen(0, 0).await;
        let down = refusing_port().await;
        // One of two ejected leaves 50% available, under minHealthPercent 60: panic mode, as
        // the HTTP balancer: every healthy endpoint, ejected or not.
        let store = Arc::new(ConfigStore::new(config(
            &[live, down],
            "{ consecutive5xxErrors: 1, minHealthPercent: 60 }",
        )));
        let balancer = BalanceLayer::default();
        let local = forwarder(&store, &balancer).await;
        assert_eq!(
            upstreams.through(local, 4).await,
            [Endpoint(0), Closed, Endpoint(0), Closed]
        );
        assert!(ejected(&balancer, down));
    }
}
