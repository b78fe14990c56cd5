use super::{Endpoint, Hostname, Labels, Protocol};
use std::fmt;
use std::time::Duration;

/// The name of an upstream cluster, in Istio's form `outbound|PORT|SUBSET|HOST`.
///
/// ```
/// use mesh_core::model::ClusterName;
/// let name = ClusterName::outbound(9080, Some("v1"), "reviews.default.svc.cluster.local");
/// assert_eq!(name.as_str(), "outbound|9080|v1|reviews.default.svc.cluster.local");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ClusterName(String);

impl ClusterName {
    /// The name istiod gives the cluster of `host`'s `port`, restricted to `subset` if any.
    pub fn outbound(port: u16, subset: Option<&str>, host: &str) -> Self {
        Self(format!("outbound|{port}|{}|{host}", subset.unwrap_or("")))
    }

    /// A cluster name as given by a control plane.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for ClusterName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// An upstream cluster: the endpoints of one service port (optionally one subset of them) and
/// the traffic policy that applies to them, resolved from the DestinationRule (subset and port
/// overrides already applied).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Cluster {
    /// The cluster's name.
    pub name: ClusterName,
    /// The service the cluster belongs to.
    pub service: Hostname,
    /// The service port.
    pub port: u16,
    /// The subset name, if the cluster is a subset.
    pub subset: Option<String>,
    /// The subset's label selector (empty for the whole service).
    pub subset_labels: Labels,
    /// The protocol spoken to the endpoints.
    pub protocol: Protocol,
    /// The endpoints, already filtered by the subset's labels.
    pub endpoints: Vec<Endpoint>,
    /// The traffic policy.
    pub policy: TrafficPolicy,
}

/// A DestinationRule's `trafficPolicy`, resolved for one cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TrafficPolicy {
    /// How endpoints are chosen.
    pub load_balancer: LoadBalancer,
    /// Connection and request limits.
    pub connection_pool: ConnectionPool,
    /// Passive health checking; `None` disables it.
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS towards the endpoints; `None` means plaintext.
    pub tls: Option<ClientTls>,
    /// The latency outlier rule (a mesh extension), when set.
    pub latency_outlier: Option<LatencyOutlierRule>,
}

/// A mesh extension beyond Envoy (envoy#288): eject an endpoint whose latency EWMA exceeds
/// `factor_percent`% of the median of its cluster's endpoints. Set with the DestinationRule
/// annotations `outlier.mesh.io/latency-factor` (e.g. `"3"`),
/// `outlier.mesh.io/latency-ejection-time` and `outlier.mesh.io/latency-min-endpoints`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LatencyOutlierRule {
    /// How slow, in percent of the median, is too slow (300: three times the median).
    pub factor_percent: u32,
    /// The base ejection time, multiplied and capped as for errors.
    pub base_ejection_time: Duration,
    /// The fewest endpoints with a latency estimate before the rule applies.
    pub min_endpoints: u32,
}

/// Load-balancing settings (`trafficPolicy.loadBalancer`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LoadBalancer {
    /// The algorithm.
    pub algorithm: LbAlgorithm,
    /// Locality-aware routing, when enabled.
    pub locality: Option<LocalityLb>,
    /// Slow start: new endpoints ramp up their share over this duration.
    pub warmup: Option<Duration>,
}

/// The load-balancing algorithm.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum LbAlgorithm {
    /// Envoy's default in Istio: least request with power of two choices.
    #[default]
    LeastRequest,
    /// Weighted round robin.
    RoundRobin,
    /// Weighted random.
    Random,
    /// Forward to the address the caller asked for.
    Passthrough,
    /// Consistent hashing on a request property.
    ConsistentHash(ConsistentHash),
    /// linkerd2-proxy's least latency: power of two choices on the endpoints' peak-EWMA
    /// round-trip time times their requests in flight (a mesh extension, set with the
    /// DestinationRule annotation `loadbalancer.mesh.io/algorithm: PEAK_EWMA`).
    PeakEwma {
        /// How fast an observation loses weight (linkerd's default: 10 s).
        decay: Duration,
    },
}

/// Consistent-hash load balancing (`loadBalancer.consistentHash`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConsistentHash {
    /// What the hash is computed from.
    pub key: HashKey,
    /// The hash table.
    pub table: HashTable,
}

/// The request property a consistent hash uses.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum HashKey {
    /// A request header's value.
    Header(String),
    /// A cookie; set with `ttl` (and `path`) when the request has none.
    Cookie {
        /// The cookie's name.
        name: String,
        /// The cookie's path.
        path: Option<String>,
        /// The cookie's lifetime; `None` for a session cookie.
        ttl: Option<Duration>,
        /// More attributes of the cookie set (`SameSite=Strict`, `Secure`): name and value,
        /// an empty value for a flag.
        attributes: Vec<(String, String)>,
    },
    /// The client's IP address.
    SourceIp,
    /// A query parameter's value.
    QueryParameter(String),
}

/// The consistent-hash table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum HashTable {
    /// Ketama ring hash with at least this many entries.
    RingHash {
        /// The ring's minimum size.
        minimum_ring_size: u64,
    },
    /// Maglev with this (prime) table size.
    Maglev {
        /// The table size.
        table_size: u64,
    },
}

impl Default for HashTable {
    fn default() -> Self {
        Self::RingHash {
            minimum_ring_size: 1024,
        }
    }
}

/// Locality-aware load balancing (`loadBalancer.localityLbSetting`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LocalityLb {
    /// Weighted distribution from a locality to others.
    pub distribute: Vec<LocalityDistribute>,
    /// Failover from one region to another.
    pub failover: Vec<LocalityFailover>,
    /// Labels whose equality with the local workload's orders failover priority.
    pub failover_priority: Vec<String>,
}

/// One `distribute` entry: traffic from `from` spreads over `to` by weight (percent).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LocalityDistribute {
    /// The originating locality (`region/zone/*`).
    pub from: String,
    /// Destination localities and their weights.
    pub to: Vec<(String, u32)>,
}

/// One `failover` entry: when `from` has no healthy endpoints, go to `to`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LocalityFailover {
    /// The originating region.
    pub from: String,
    /// The region to fail over to.
    pub to: String,
}

/// Connection-pool limits (`trafficPolicy.connectionPool`). Unset limits are Envoy's
/// defaults (effectively unlimited).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConnectionPool {
    /// Maximum connections to the cluster.
    pub max_connections: u32,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// TCP keepalive, if set.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Maximum lifetime of a connection.
    pub max_connection_duration: Option<Duration>,
    /// Idle time after which a TCP connection is closed.
    pub tcp_idle_timeout: Option<Duration>,
    /// Maximum requests waiting for a connection.
    pub http1_max_pending_requests: u32,
    /// Maximum active requests to the cluster.
    pub http2_max_requests: u32,
    /// Maximum requests per connection (0: unlimited).
    pub max_requests_per_connection: u32,
    /// Maximum outstanding retries to the cluster.
    pub max_retries: u32,
    /// Idle time after which an HTTP connection is closed.
    pub http_idle_timeout: Option<Duration>,
    /// Whether to upgrade HTTP/1.1 connections to HTTP/2.
    pub h2_upgrade: bool,
    /// Use the protocol the client used.
    pub use_client_protocol: bool,
    /// Maximum concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: Option<u32>,
    /// Envoy's retry budget (circuit breaker `retry_budget`, from xDS): when set, it replaces
    /// `max_retries` by a share of the requests in flight.
    pub retry_budget: Option<ClusterRetryBudget>,
}

/// Retries in flight allowed as a share of the cluster's requests in flight, with a floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ClusterRetryBudget {
    /// The share, in thousandths (Envoy's `budget_percent` 20.0 is 200).
    pub budget_per_mille: u32,
    /// Retries always allowed in flight (Envoy's `min_retry_concurrency`, default 3).
    pub min_retry_concurrency: u32,
}

impl Default for ConnectionPool {
    fn default() -> Self {
        Self {
            max_connections: u32::MAX,
            connect_timeout: Duration::from_secs(10),
            tcp_keepalive: None,
            max_connection_duration: None,
            tcp_idle_timeout: None,
            http1_max_pending_requests: u32::MAX,
            http2_max_requests: u32::MAX,
            max_requests_per_connection: 0,
            max_retries: u32::MAX,
            http_idle_timeout: None,
            h2_upgrade: false,
            use_client_protocol: false,
            max_concurrent_streams: None,
            retry_budget: None,
        }
    }
}

/// TCP keepalive settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct TcpKeepalive {
    /// Probes before the connection is dead.
    pub probes: Option<u32>,
    /// Idle time before the first probe.
    pub time: Option<Duration>,
    /// Time between probes.
    pub interval: Option<Duration>,
}

/// Passive outlier detection (`trafficPolicy.outlierDetection`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OutlierDetection {
    /// Eject after this many consecutive 5xx (including local-origin failures unless split).
    pub consecutive_5xx_errors: Option<u32>,
    /// Eject after this many consecutive 502/503/504.
    pub consecutive_gateway_errors: Option<u32>,
    /// Eject after this many consecutive local-origin failures (connect errors, resets).
    pub consecutive_local_origin_failures: Option<u32>,
    /// Count local-origin failures apart from upstream 5xx.
    pub split_external_local_origin_errors: bool,
    /// How often ejections are re-evaluated.
    pub interval: Duration,
    /// Base ejection time, multiplied by the ejection multiplier (which goes up with each
    /// ejection and down with each interval spent healthy), at most the maximum ejection time.
    pub base_ejection_time: Duration,
    /// The longest an ejection lasts (Envoy's `max_ejection_time`, from xDS); `None` for
    /// Envoy's default, 300 s or `base_ejection_time` when longer (Istio sets none).
    pub max_ejection_time: Option<Duration>,
    /// Never eject more than this share of the cluster.
    pub max_ejection_percent: u32,
    /// Below this share of healthy endpoints, ejection is ignored (panic mode).
    pub min_health_percent: u32,
}

impl Default for OutlierDetection {
    /// Istio's defaults.
    fn default() -> Self {
        Self {
            consecutive_5xx_errors: Some(5),
            consecutive_gateway_errors: None,
            consecutive_local_origin_failures: None,
            split_external_local_origin_errors: false,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: None,
            max_ejection_percent: 10,
            min_health_percent: 0,
        }
    }
}

impl OutlierDetection {
    /// Envoy's default `max_ejection_time` (unless `base_ejection_time` is longer).
    pub const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

    /// The longest an ejection lasts: `max_ejection_time` when set, else Envoy's default.
    pub fn max_ejection_time(&self) -> Duration {
        self.max_ejection_time
            .unwrap_or(Self::DEFAULT_MAX_EJECTION_TIME.max(self.base_ejection_time))
    }
}

/// TLS from the proxy to upstream endpoints (`trafficPolicy.tls`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ClientTls {
    /// The TLS mode.
    pub mode: TlsMode,
    /// Client certificate file (MUTUAL).
    pub client_certificate: Option<String>,
    /// Private key file (MUTUAL).
    pub private_key: Option<String>,
    /// CA certificates file for verifying the server.
    pub ca_certificates: Option<String>,
    /// Certificate revocation list file (PEM): a server certificate it revokes is refused.
    pub ca_crl: Option<String>,
    /// The name of a secret holding the credentials.
    pub credential_name: Option<String>,
    /// Identities the server may present: SPIFFE IDs under ISTIO_MUTUAL; DNS names or IP
    /// addresses under SIMPLE / MUTUAL, one of which the server's certificate must be valid
    /// for (instead of the SNI).
    pub subject_alt_names: Vec<String>,
    /// The SNI to send.
    pub sni: Option<String>,
    /// Skip verification of the server's certificate.
    pub insecure_skip_verify: bool,
}

/// The TLS mode towards an upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum TlsMode {
    /// Plaintext.
    #[default]
    Disable,
    /// TLS, server verified.
    Simple,
    /// Mutual TLS with given certificate files.
    Mutual,
    /// Mutual TLS with the mesh's workload identity.
    IstioMutual,
}
