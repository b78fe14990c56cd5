use super::{ClusterName, Labels, Pattern, Percentage, StringMatch};
// foldhash for lookups by the request's authority: keys come from config; a request only
// looks up (no flooding to fear).
use foldhash::HashMap;
use std::fmt;
use std::time::Duration;

/// The outbound route table: virtual hosts, found by the request's destination port and
/// authority.
///
/// Envoy picks a route configuration by the connection's destination port (the outbound
/// listener it lands on: istiod builds `0.0.0.0_9080` with RDS `"9080"`), then the virtual
/// host by authority. A table built with [`RouteTable::with_ports`] does the same: a port with
/// routes of its own looks up its own virtual hosts, so `Host: reviews` (no port) sent to
/// port 9080 meets the routes of port 9080 even when port 8080's also claim `reviews`. Any
/// other port, and a table built with [`RouteTable::new`] (the Istio-YAML loader, whose
/// VirtualServices match ports themselves), uses every virtual host merged: the first to
/// claim a domain keeps it.
///
/// The virtual hosts are stored once; a port's table is an index into them, so
/// [`RouteTable::find_index_on_port`] names a virtual host of
/// [`RouteTable::virtual_hosts`] whichever table found it. Without per-port tables a lookup
/// costs what a merged one did; with them, one binary search over the ports first.
///
/// ```
/// use mesh_core::model::{RouteTable, VirtualHost};
/// let vh = |name: &str, domains: &[&str]| VirtualHost {
///     name: name.into(),
///     domains: domains.iter().map(|d| d.to_string()).collect(),
///     routes: vec![],
/// };
/// // Istio's RDS "8080" and "9080": both claim `reviews`, each with its own catch-all.
/// let table = RouteTable::with_ports(
///     vec![
///         vh("reviews:8080", &["reviews", "reviews:8080"]),
///         vh("allow_any:8080", &["*"]),
///         vh("reviews:9080", &["reviews", "reviews:9080"]),
///         vh("block_all:9080", &["*"]),
///     ],
///     [(8080, vec![0, 1]), (9080, vec![2, 3])].into(),
/// );
/// assert_eq!(table.find_on_port(Some(9080), "reviews").unwrap().name, "reviews:9080");
/// assert_eq!(table.find_on_port(Some(8080), "reviews").unwrap().name, "reviews:8080");
/// assert_eq!(table.find_on_port(Some(9080), "ratings").unwrap().name, "block_all:9080");
/// // A port without a table of its own: every virtual host, the first claim wins.
/// assert_eq!(table.find_on_port(Some(80), "reviews").unwrap().name, "reviews:8080");
/// assert_eq!(table.find_on_port(None, "reviews:9080").unwrap().name, "reviews:9080");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RouteTable {
    virtual_hosts: Vec<VirtualHost>,
    /// Every virtual host, for a port without a table of its own.
    #[serde(flatten)]
    merged: DomainIndex,
    /// The ports with tables of their own, sorted by port.
    ports: Vec<PortTable>,
}

/// One port's virtual hosts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
struct PortTable {
    port: u16,
    /// Indices into [`RouteTable::virtual_hosts`], in claim order.
    virtual_hosts: Vec<usize>,
    #[serde(skip)]
    index: DomainIndex,
}

/// Domains to virtual hosts, for one set of virtual hosts.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
struct DomainIndex {
    /// Exact domain (lower case, with or without `:port`) -> index into the virtual hosts.
    exact: HashMap<String, usize>,
    /// Wildcard domains (`*.example.com` stored as `.example.com`), longest first.
    suffixes: Vec<(String, usize)>,
    /// The `*` virtual host, if any.
    catch_all: Option<usize>,
}

impl DomainIndex {
    /// The index of the virtual hosts `order` names, in that order: the first to claim a
    /// domain keeps it.
    fn new(virtual_hosts: &[VirtualHost], order: impl IntoIterator<Item = usize>) -> Self {
        let mut exact = HashMap::default();
        let mut suffixes = Vec::new();
        let mut catch_all = None;
        for i in order {
            let Some(vh) = virtual_hosts.get(i) else {
                continue;
            };
            for domain in &vh.domains {
                let domain = domain.to_ascii_lowercase();
                if domain == "*" {
                    catch_all.get_or_insert(i);
                } else if let Some(suffix) = domain.strip_prefix('*') {
                    suffixes.push((suffix.to_owned(), i));
                } else {
                    exact.entry(domain).or_insert(i);
                }
            }
        }
        // Stable: among suffixes of one length, the first claim stays first.
        suffixes.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        Self {
            exact,
            suffixes,
            catch_all,
        }
    }

    /// `authority` must be lower case.
    fn find(&self, authority: &str) -> Option<usize> {
        self.exact.get(authority).copied().or_else(|| {
            let host = strip_port(authority);
            self.suffixes
                .iter()
                .find(|(suffix, _)| host.ends_with(suffix.as_str()) && host.len() > suffix.len())
                .map(|(_, i)| *i)
                .or(self.catch_all)
        })
    }
}

impl RouteTable {
    /// Builds the table with no per-port tables; the first virtual host to claim a domain
    /// keeps it.
    pub fn new(virtual_hosts: Vec<VirtualHost>) -> Self {
        Self::with_ports(virtual_hosts, std::collections::BTreeMap::new())
    }

    /// Builds the table with per-port tables: `ports` gives each port's virtual hosts as
    /// indices into `virtual_hosts`, in claim order (the first to claim a domain keeps it; an
    /// index past the end names nothing). Every virtual host is also in the merged table that
    /// serves the other ports, in the order given, as [`RouteTable::new`] builds it.
    ///
    /// A port whose list is every virtual host in order gets no table of its own: the merged
    /// one answers the same (so a config with one outbound listener costs nothing more).
    pub fn with_ports(
        virtual_hosts: Vec<VirtualHost>,
        ports: std::collections::BTreeMap<u16, Vec<usize>>,
    ) -> Self {
        let merged = DomainIndex::new(&virtual_hosts, 0..virtual_hosts.len());
        let ports = ports
            .into_iter()
            .filter(|(_, hosts)| !hosts.iter().copied().eq(0..virtual_hosts.len()))
            .map(|(port, hosts)| PortTable {
                port,
                index: DomainIndex::new(&virtual_hosts, hosts.iter().copied()),
                virtual_hosts: hosts,
            })
            .collect();
        Self {
            virtual_hosts,
            merged,
            ports,
        }
    }

    /// The virtual hosts, in order.
    pub fn virtual_hosts(&self) -> &[VirtualHost] {
        &self.virtual_hosts
    }

    /// Whether some port has a table of its own: only then does the destination port change
    /// what [`find_on_port`](Self::find_on_port) finds (so a caller can skip working it out).
    pub fn is_per_port(&self) -> bool {
        !self.ports.is_empty()
    }

    /// The ports with tables of their own, ascending, each with its virtual hosts (indices
    /// into [`virtual_hosts`](Self::virtual_hosts)) in claim order.
    pub fn ports(&self) -> impl Iterator<Item = (u16, &[usize])> {
        self.ports
            .iter()
            .map(|t| (t.port, t.virtual_hosts.as_slice()))
    }

    /// The virtual host serving `authority` (`host` or `host:port`) in the merged table, as
    /// Envoy picks it: an exact domain, then the longest wildcard suffix, then `*`. The same
    /// as [`find_on_port`](Self::find_on_port) with no port.
    ///
    /// ```
    /// use mesh_core::model::{RouteTable, VirtualHost};
    /// let vh = |name: &str, domains: &[&str]| VirtualHost {
    ///     name: name.into(),
    ///     domains: domains.iter().map(|d| d.to_string()).collect(),
    ///     routes: vec![],
    /// };
    /// let table = RouteTable::new(vec![
    ///     vh("reviews", &["reviews", "reviews:9080"]),
    ///     vh("wild", &["*.example.com"]),
    /// ]);
    /// assert_eq!(table.find("Reviews:9080").unwrap().name, "reviews");
    /// assert_eq!(table.find("api.example.com").unwrap().name, "wild");
    /// assert!(table.find("ratings").is_none());
    /// ```
    pub fn find(&self, authority: &str) -> Option<&VirtualHost> {
        self.find_on_port(None, authority)
    }

    /// Like [`find`](Self::find), the index of the virtual host in [`virtual_hosts`](Self::virtual_hosts).
    pub fn find_index(&self, authority: &str) -> Option<usize> {
        self.find_index_on_port(None, authority)
    }

    /// The virtual host serving `authority` for a request sent to destination `port`: in
    /// that port's table when it has one, else in the merged table (see the type's docs).
    pub fn find_on_port(&self, port: Option<u16>, authority: &str) -> Option<&VirtualHost> {
        self.find_index_on_port(port, authority)
            .and_then(|i| self.virtual_hosts.get(i))
    }

    /// Like [`find_on_port`](Self::find_on_port), the index of the virtual host in
    /// [`virtual_hosts`](Self::virtual_hosts).
    pub fn find_index_on_port(&self, port: Option<u16>, authority: &str) -> Option<usize> {
        let index = match port {
            Some(port) if !self.ports.is_empty() => self
                .ports
                .binary_search_by_key(&port, |t| t.port)
                .map_or(&self.merged, |i| &self.ports[i].index),
            _ => &self.merged,
        };
        let lower;
        let authority = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = authority.to_ascii_lowercase();
            lower.as_str()
        } else {
            authority
        };
        index.find(authority)
    }
}

fn strip_port(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        // A bare IPv6 address has colons but no port.
        Some((host, _)) if host.contains(':') && !host.ends_with(']') => authority,
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// A virtual host: the routes of the domains it serves.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VirtualHost {
    /// The virtual host's name (`reviews.default.svc.cluster.local:9080`).
    pub name: String,
    /// The authorities it serves, with and without port.
    pub domains: Vec<String>,
    /// The routes, first match wins.
    pub routes: Vec<Route>,
}

/// One route: when a request matches, what happens to it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Route {
    /// The route's name, for telemetry and `/explain`.
    pub name: String,
    /// The route matches if any of these match; empty matches every request.
    pub matches: Vec<RouteMatch>,
    /// What the route does.
    pub action: RouteAction,
    /// Header changes on the request.
    pub request_headers: HeaderOps,
    /// Header changes on the response.
    pub response_headers: HeaderOps,
    /// Fault injection.
    pub fault: Option<Fault>,
    /// Shadow traffic.
    pub mirrors: Vec<Mirror>,
    /// Retries; `None` uses no retries.
    pub retry: Option<RetryPolicy>,
    /// The whole request's timeout, retries included; `None` for none.
    pub timeout: Option<Duration>,
    /// Hedging (a mesh extension).
    pub hedge: Option<HedgePolicy>,
    /// The local rate limit (a mesh extension: the `ratelimit.mesh.io/*` annotations).
    pub rate_limit: Option<LocalRateLimit>,
    /// Cross-origin resource sharing (Istio's `corsPolicy`); read only on forwarding routes,
    /// as Envoy's CORS filter skips redirects and direct responses. Boxed: most routes have
    /// none, and a route is read on every request.
    pub cors: Option<Box<CorsPolicy>>,
}

/// A match on request properties (Istio's `HTTPMatchRequest`); every given condition must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RouteMatch {
    /// The match's name, for telemetry.
    pub name: Option<String>,
    /// The path (without query).
    pub uri: Option<StringMatch>,
    /// The scheme.
    pub scheme: Option<StringMatch>,
    /// The method.
    pub method: Option<StringMatch>,
    /// The authority.
    pub authority: Option<StringMatch>,
    /// Headers that must be present and match (a `None` match: present with any value).
    pub headers: Vec<(String, Option<StringMatch>)>,
    /// Headers that must not be present with a matching value.
    pub without_headers: Vec<(String, Option<StringMatch>)>,
    /// Query parameters that must match.
    pub query_params: Vec<(String, Option<StringMatch>)>,
    /// The port the request was addressed to.
    pub port: Option<u16>,
    /// Compare the path case-insensitively.
    pub ignore_uri_case: bool,
    /// The calling workload's labels must include these.
    pub source_labels: Labels,
    /// The calling workload's namespace.
    pub source_namespace: Option<String>,
}

/// What a route does with a matched request.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum RouteAction {
    /// Forward to a weighted choice of clusters.
    Forward(Forward),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer with a fixed response.
    DirectResponse(DirectResponse),
}

/// Forwarding to upstream clusters.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Forward {
    /// The destinations. Weights are relative: each gets `weight / total_weight()` of the
    /// requests, a weight of 0 none (the Istio loader gives a lone destination 100).
    pub destinations: Vec<WeightedCluster>,
    /// Rewrites applied before forwarding.
    pub rewrite: Option<Rewrite>,
}

impl Forward {
    /// The destination for a uniform draw in `0..total_weight()`.
    ///
    /// ```
    /// use mesh_core::model::{ClusterName, Forward, HeaderOps, WeightedCluster};
    /// let d = |s: &str, w| WeightedCluster {
    ///     cluster: ClusterName::new(s), weight: w,
    ///     request_headers: HeaderOps::default(), response_headers: HeaderOps::default(),
    /// };
    /// let f = Forward { destinations: vec![d("v1", 90), d("v2", 10)], rewrite: None };
    /// assert_eq!(f.pick(89).unwrap().cluster.as_str(), "v1");
    /// assert_eq!(f.pick(90).unwrap().cluster.as_str(), "v2");
    /// ```
    pub fn pick(&self, draw: u32) -> Option<&WeightedCluster> {
        let mut left = draw;
        for d in &self.destinations {
            if left < d.weight {
                return Some(d);
            }
            left -= d.weight;
        }
        None
    }

    /// The sum of the destinations' weights.
    pub fn total_weight(&self) -> u32 {
        self.destinations.iter().map(|d| d.weight).sum()
    }
}

/// A destination cluster with its share of the traffic.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WeightedCluster {
    /// The cluster.
    pub cluster: ClusterName,
    /// The relative weight.
    pub weight: u32,
    /// Header changes on requests to this destination.
    pub request_headers: HeaderOps,
    /// Header changes on responses from this destination.
    pub response_headers: HeaderOps,
}

/// Header manipulation: set (replace), add (append), remove.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HeaderOps {
    /// Headers to set, replacing any value.
    pub set: Vec<(String, String)>,
    /// Headers to append.
    pub add: Vec<(String, String)>,
    /// Headers to remove.
    pub remove: Vec<String>,
}

impl HeaderOps {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// Rewrites before forwarding (`rewrite`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Rewrite {
    /// Replace the matched path prefix (or the whole path for exact matches) with this.
    pub uri_prefix: Option<String>,
    /// Replace regex matches in the path.
    pub uri_regex: Option<(Pattern, String)>,
    /// Replace the authority.
    pub authority: Option<String>,
}

/// A redirect response (`redirect`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Redirect {
    /// Replace the path.
    pub uri: Option<String>,
    /// Replace the authority.
    pub authority: Option<String>,
    /// Replace the scheme.
    pub scheme: Option<String>,
    /// Replace the port.
    pub port: Option<RedirectPort>,
    /// The status code (301 by default).
    pub code: u16,
}

/// The port of a redirect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum RedirectPort {
    /// This port.
    Port(u16),
    /// The default port of the scheme.
    FromProtocolDefault,
    /// The port of the request.
    FromRequestPort,
}

/// A fixed response (`directResponse`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DirectResponse {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: Option<Vec<u8>>,
}

/// Fault injection (`fault`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Fault {
    /// Delay requests.
    pub delay: Option<FaultDelay>,
    /// Abort requests.
    pub abort: Option<FaultAbort>,
}

/// Delay a share of requests.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FaultDelay {
    /// How long.
    pub delay: Duration,
    /// Which share.
    pub percentage: Percentage,
}

/// Abort a share of requests.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FaultAbort {
    /// With what.
    pub error: AbortError,
    /// Which share.
    pub percentage: Percentage,
}

/// The error an abort answers with.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum AbortError {
    /// An HTTP status.
    Http(u16),
    /// A gRPC status code.
    Grpc(u32),
    /// Reset the stream.
    Http2Error,
}

/// Mirror a share of requests to another cluster (`mirror`, `mirrors`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Mirror {
    /// The shadow destination.
    pub cluster: ClusterName,
    /// The shadow destination's host (the shadow authority is this with `-shadow`).
    pub host: String,
    /// Which share of requests.
    pub percentage: Percentage,
}

/// Retries (`retries`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RetryPolicy {
    /// Retries allowed (Istio's `attempts`: retries, not tries).
    pub attempts: u32,
    /// The timeout of each try.
    pub per_try_timeout: Option<Duration>,
    /// The conditions that make a try worth retrying.
    pub retry_on: RetryOn,
    /// Retry on other localities.
    pub retry_remote_localities: bool,
    /// Send a retry to an endpoint no earlier try of the request went to, when the
    /// balancer finds one (Istio's `retryIgnorePreviousHosts`, on by default: Envoy's
    /// `previous_hosts` predicate with 5 host selection attempts).
    pub ignore_previous_hosts: bool,
    /// The first backoff interval (Envoy: 25 ms).
    pub backoff_base: Duration,
    /// The largest backoff interval (Envoy: 10x base).
    pub backoff_max: Duration,
}

impl RetryPolicy {
    /// No retries.
    pub const NONE: Self = Self {
        attempts: 0,
        per_try_timeout: None,
        retry_on: RetryOn::NONE,
        retry_remote_localities: false,
        ignore_previous_hosts: false,
        backoff_base: Duration::ZERO,
        backoff_max: Duration::ZERO,
    };

    /// Istio's retry policy when a route sets none: 2 retries on
    /// `connect-failure,refused-stream,unavailable,cancelled`, each to another endpoint when
    /// there is one.
    pub fn istio_default() -> Self {
        Self {
            attempts: 2,
            per_try_timeout: None,
            retry_on: RetryOn::istio_default(),
            retry_remote_localities: false,
            ignore_previous_hosts: true,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
        }
    }
}

/// Hedged requests (a mesh extension, set with the VirtualService annotation
/// `mesh.dev/hedge`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HedgePolicy {
    /// Send the second attempt after this delay without an answer.
    pub delay: Duration,
    /// At most this many attempts in all.
    pub max_attempts: u32,
}

/// One retry-on condition (Envoy's `x-envoy-retry-on` and `x-envoy-retry-grpc-on` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[repr(u8)]
pub enum RetryCondition {
    /// Any 5xx response, a reset, a connect failure or a per-try timeout.
    FiveXx,
    /// 502, 503 or 504.
    GatewayError,
    /// The upstream reset or closed the connection (before or after the response began).
    Reset,
    /// The upstream reset before the response began.
    ResetBeforeRequest,
    /// The connection to the upstream could not be made.
    ConnectFailure,
    /// The upstream answered with `x-envoy-ratelimited`.
    EnvoyRateLimited,
    /// 409.
    Retriable4xx,
    /// The HTTP/2 stream was refused (`REFUSED_STREAM`).
    RefusedStream,
    /// A status code in [`RetryOn::status_codes`].
    RetriableStatusCodes,
    /// A response header listed by the route (not settable from Istio; kept for xDS).
    RetriableHeaders,
    /// HTTP/3 connect failure after the handshake.
    Http3PostConnectFailure,
    /// gRPC status CANCELLED (1).
    Cancelled,
    /// gRPC status DEADLINE_EXCEEDED (4).
    DeadlineExceeded,
    /// gRPC status INTERNAL (13).
    Internal,
    /// gRPC status RESOURCE_EXHAUSTED (8).
    ResourceExhausted,
    /// gRPC status UNAVAILABLE (14).
    Unavailable,
}

impl RetryCondition {
    const ALL: [(RetryCondition, &'static str); 16] = [
        (Self::FiveXx, "5xx"),
        (Self::GatewayError, "gateway-error"),
        (Self::Reset, "reset"),
        (Self::ResetBeforeRequest, "reset-before-request"),
        (Self::ConnectFailure, "connect-failure"),
        (Self::EnvoyRateLimited, "envoy-ratelimited"),
        (Self::Retriable4xx, "retriable-4xx"),
        (Self::RefusedStream, "refused-stream"),
        (Self::RetriableStatusCodes, "retriable-status-codes"),
        (Self::RetriableHeaders, "retriable-headers"),
        (Self::Http3PostConnectFailure, "http3-post-connect-failure"),
        (Self::Cancelled, "cancelled"),
        (Self::DeadlineExceeded, "deadline-exceeded"),
        (Self::Internal, "internal"),
        (Self::ResourceExhausted, "resource-exhausted"),
        (Self::Unavailable, "unavailable"),
    ];

    /// Envoy's name of the condition.
    pub fn name(self) -> &'static str {
        Self::ALL[self as usize].1
    }

    /// The gRPC status code this condition retries, for the gRPC ones.
    pub fn grpc_status(self) -> Option<u32> {
        match self {
            Self::Cancelled => Some(1),
            Self::DeadlineExceeded => Some(4),
            Self::ResourceExhausted => Some(8),
            Self::Internal => Some(13),
            Self::Unavailable => Some(14),
            _ => None,
        }
    }
}

/// A set of retry conditions and the status codes `retriable-status-codes` covers.
///
/// ```
/// use mesh_core::model::{RetryCondition, RetryOn};
/// let on = RetryOn::parse("gateway-error, 409,unavailable").unwrap();
/// assert!(on.contains(RetryCondition::GatewayError));
/// assert!(on.contains(RetryCondition::RetriableStatusCodes), "a number implies the condition");
/// assert_eq!(on.status_codes(), &[409]);
/// assert_eq!(on.to_string(), "gateway-error,retriable-status-codes,unavailable,409");
/// assert!(RetryOn::parse("sometimes").is_err());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    bits: u32,
    status_codes: Vec<u16>,
}

impl RetryOn {
    /// No condition: nothing is retried.
    pub const NONE: Self = Self {
        bits: 0,
        status_codes: Vec::new(),
    };

    /// Istio's default: `connect-failure,refused-stream,unavailable,cancelled`.
    pub fn istio_default() -> Self {
        let mut on = Self::default();
        for c in [
            RetryCondition::ConnectFailure,
            RetryCondition::RefusedStream,
            RetryCondition::Unavailable,
            RetryCondition::Cancelled,
        ] {
            on.insert(c);
        }
        on
    }

    /// Parses Istio's `retryOn`: condition names and HTTP status codes, comma-separated.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut on = Self::default();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if let Ok(code) = item.parse::<u16>() {
                if !(100..=599).contains(&code) {
                    return Err(format!("status code {code} is out of range 100..=599"));
                }
                on.insert(RetryCondition::RetriableStatusCodes);
                if !on.status_codes.contains(&code) {
                    on.status_codes.push(code);
                }
                continue;
            }
            let condition = RetryCondition::ALL
                .iter()
                .find(|(_, name)| *name == item)
                .map(|(c, _)| *c)
                .ok_or_else(|| format!("unknown retry condition {item:?}"))?;
            on.insert(condition);
        }
        Ok(on)
    }

    /// Adds `condition`.
    pub fn insert(&mut self, condition: RetryCondition) {
        self.bits |= 1 << condition as u8;
    }

    /// Whether `condition` is in the set.
    pub fn contains(&self, condition: RetryCondition) -> bool {
        self.bits & (1 << condition as u8) != 0
    }

    /// Whether every condition is about a try the upstream never saw: a connect failure, a
    /// reset before the request, a refused HTTP/2 stream. The gRPC statuses count only for a
    /// gRPC request (`grpc_request`), and `retriable-status-codes` only with codes listed.
    ///
    /// Such a policy never retries a request after the upstream answered it, so a retry can
    /// send the request the failed try hands back instead of a copy made for every request.
    ///
    /// ```
    /// use mesh_core::model::RetryOn;
    ///
    /// assert!(RetryOn::istio_default().retries_only_unseen(false));
    /// assert!(!RetryOn::istio_default().retries_only_unseen(true));
    /// assert!(!RetryOn::parse("connect-failure,503").unwrap().retries_only_unseen(false));
    /// ```
    pub fn retries_only_unseen(&self, grpc_request: bool) -> bool {
        use RetryCondition as C;
        const fn bit(c: C) -> u32 {
            1 << c as u8
        }
        const UNSEEN: u32 =
            bit(C::ConnectFailure) | bit(C::ResetBeforeRequest) | bit(C::RefusedStream);
        // The conditions with a `grpc_status` (a test keeps the two lists together).
        const GRPC: u32 = bit(C::Cancelled)
            | bit(C::DeadlineExceeded)
            | bit(C::Internal)
            | bit(C::ResourceExhausted)
            | bit(C::Unavailable);
        let mut unseen = UNSEEN;
        if !grpc_request {
            unseen |= GRPC;
        }
        if self.status_codes.is_empty() {
            unseen |= bit(C::RetriableStatusCodes);
        }
        self.bits & !unseen == 0
    }

    /// The codes `retriable-status-codes` retries.
    pub fn status_codes(&self) -> &[u16] {
        &self.status_codes
    }

    /// Whether a response with `status` should be retried (5xx, gateway-error,
    /// retriable-4xx, retriable-status-codes).
    pub fn retries_status(&self, status: u16) -> bool {
        (self.contains(RetryCondition::FiveXx) && (500..=599).contains(&status))
            || (self.contains(RetryCondition::GatewayError) && matches!(status, 502..=504))
            || (self.contains(RetryCondition::Retriable4xx) && status == 409)
            || (self.contains(RetryCondition::RetriableStatusCodes)
                && self.status_codes.contains(&status))
    }

    /// Whether a gRPC status code (from `grpc-status`) should be retried.
    pub fn retries_grpc(&self, code: u32) -> bool {
        RetryCondition::ALL
            .iter()
            .any(|(c, _)| self.contains(*c) && c.grpc_status() == Some(code))
    }
}

impl fmt::Display for RetryOn {
    /// Envoy's comma-separated form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let names = RetryCondition::ALL
            .iter()
            .filter(|(c, _)| self.contains(*c))
            .map(|(_, n)| n.to_string());
        let codes = self.status_codes.iter().map(u16::to_string);
        for item in names.chain(codes) {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            f.write_str(&item)?;
        }
        Ok(())
    }
}

impl serde::Serialize for RetryOn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A local token bucket (Envoy's `local_ratelimit`): `max_tokens` burst, refilled with
/// `tokens_per_fill` every `fill_interval`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LocalRateLimit {
    /// The bucket's size: the largest burst.
    pub max_tokens: u32,
    /// Tokens added each interval.
    pub tokens_per_fill: u32,
    /// The refill interval.
    pub fill_interval: Duration,
}

/// Cross-origin resource sharing on a route: Envoy's `envoy.filters.http.cors` with the
/// route's `CorsPolicy`, as istiod writes it from a VirtualService's `corsPolicy`
/// (`TranslateCORSPolicy` in istio's `pilot/pkg/networking/core/route/route.go`).
///
/// The header values are kept comma-joined, as Envoy keeps them, so that an answer takes them
/// as they are.
///
/// ```
/// use mesh_core::model::{CorsPolicy, StringMatch};
/// let policy = CorsPolicy {
///     allow_origins: vec![StringMatch::Prefix("https://app.".into())],
///     ..CorsPolicy::default()
/// };
/// assert!(policy.allows_origin("https://app.example.com"));
/// assert!(!policy.allows_origin("https://evil.example.com"));
/// assert!(policy.forward_unmatched_preflights, "Istio's and Envoy's default");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CorsPolicy {
    /// The origins allowed: a request's `Origin` must match one. A match that accepts the
    /// literal `*` accepts every origin (Envoy's `isOriginAllowed`).
    pub allow_origins: Vec<StringMatch>,
    /// `access-control-allow-methods` of a preflight's answer; `*` answers with the
    /// request's `access-control-request-method`; empty: not sent.
    pub allow_methods: String,
    /// `access-control-allow-headers` of a preflight's answer; `*` answers with the
    /// request's `access-control-request-headers`; empty: not sent.
    pub allow_headers: String,
    /// `access-control-expose-headers` of the answer to an allowed request that is not a
    /// preflight; empty: not sent.
    pub expose_headers: String,
    /// `access-control-max-age` of a preflight's answer, in seconds; `None`: not sent.
    pub max_age: Option<u64>,
    /// Send `access-control-allow-credentials: true`.
    pub allow_credentials: bool,
    /// A preflight whose origin is not allowed goes on to the upstream (Istio's
    /// `unmatchedPreflights: FORWARD`, the default); otherwise the proxy answers it, without
    /// `access-control-allow-origin` (`IGNORE`).
    pub forward_unmatched_preflights: bool,
}

impl Default for CorsPolicy {
    /// No origin allowed, nothing sent, unmatched preflights forwarded.
    fn default() -> Self {
        Self {
            allow_origins: Vec::new(),
            allow_methods: String::new(),
            allow_headers: String::new(),
            expose_headers: String::new(),
            max_age: None,
            allow_credentials: false,
            forward_unmatched_preflights: true,
        }
    }
}

impl CorsPolicy {
    /// Whether `origin` is allowed.
    pub fn allows_origin(&self, origin: &str) -> bool {
        // Envoy asks each matcher about "*" first: an exact "*" (or a regex like ".*")
        // stands for every origin.
        self.allow_origins
            .iter()
            .any(|m| m.matches("*", false) || m.matches(origin, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_conditions_about_unseen_tries_and_grpc_statuses_of_other_requests_need_no_copy() {
        let unseen = [
            RetryCondition::ConnectFailure,
            RetryCondition::ResetBeforeRequest,
            RetryCondition::RefusedStream,
            // Without codes listed, it retries nothing.
            RetryCondition::RetriableStatusCodes,
        ];
        for (condition, name) in RetryCondition::ALL {
            let mut on = RetryOn::NONE;
            on.insert(condition);
            let (plain, grpc) = (on.retries_only_unseen(false), on.retries_only_unseen(true));
            if unseen.contains(&condition) {
                assert!(plain && grpc, "{name}");
            } else if condition.grpc_status().is_some() {
                assert!(plain && !grpc, "{name}: read on gRPC requests only");
            } else {
                assert!(!plain && !grpc, "{name}: retries an answered try");
            }
        }
        let codes = RetryOn::parse("retriable-status-codes,503").unwrap();
        assert!(!codes.retries_only_unseen(false));
    }

    fn vh(name: &str, domains: &[&str]) -> VirtualHost {
        VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            routes: vec![],
        }
    }

    /// Istio's RDS "8080" and "9080" for one service on two ports, each with its catch-all.
    fn two_ports() -> RouteTable {
        RouteTable::with_ports(
            vec![
                vh(
                    "reviews:8080",
                    &["reviews", "reviews:8080", "*.example.com"],
                ),
                vh("allow_any:8080", &["*"]),
                vh(
                    "reviews:9080",
                    &["Reviews", "reviews:9080", "*.example.com"],
                ),
                vh("block_all:9080", &["*"]),
            ],
            [(8080, vec![0, 1]), (9080, vec![2, 3])].into(),
        )
    }

    #[test]
    fn a_port_with_a_table_finds_its_own_virtual_hosts_and_catch_all() {
        let table = two_ports();
        assert!(table.is_per_port());
        let name = |port, authority| table.find_on_port(port, authority).map(|v| v.name.as_str());
        assert_eq!(name(Some(8080), "reviews"), Some("reviews:8080"));
        assert_eq!(name(Some(9080), "REVIEWS"), Some("reviews:9080"));
        assert_eq!(name(Some(9080), "api.example.com"), Some("reviews:9080"));
        assert_eq!(name(Some(8080), "ratings"), Some("allow_any:8080"));
        assert_eq!(name(Some(9080), "ratings"), Some("block_all:9080"));
        // A domain with another port's number is not this port's: its catch-all answers.
        assert_eq!(name(Some(9080), "reviews:8080"), Some("block_all:9080"));
        assert_eq!(
            table.find_index_on_port(Some(9080), "reviews"),
            Some(2),
            "an index into the one list of virtual hosts"
        );
    }

    #[test]
    fn other_ports_and_no_port_use_the_merged_table_where_the_first_claim_wins() {
        let table = two_ports();
        for port in [None, Some(80), Some(15001)] {
            let name = |authority| table.find_on_port(port, authority).map(|v| v.name.as_str());
            assert_eq!(name("reviews"), Some("reviews:8080"), "{port:?}");
            assert_eq!(name("reviews:9080"), Some("reviews:9080"), "{port:?}");
            assert_eq!(name("ratings"), Some("allow_any:8080"), "{port:?}");
        }
        assert_eq!(table.find("reviews").unwrap().name, "reviews:8080");
    }

    #[test]
    fn a_port_table_the_same_as_the_merged_one_is_not_kept() {
        let hosts = vec![vh("reviews", &["reviews"]), vh("any", &["*"])];
        let one_listener = RouteTable::with_ports(hosts.clone(), [(9080, vec![0, 1])].into());
        assert!(!one_listener.is_per_port());
        assert_eq!(one_listener, RouteTable::new(hosts.clone()));
        // An empty list is kept: that port has no virtual hosts (404 there, as in Envoy).
        let empty = RouteTable::with_ports(hosts, [(9080, vec![])].into());
        assert!(empty.find_on_port(Some(9080), "reviews").is_none());
        assert_eq!(
            empty.find_on_port(Some(80), "reviews").unwrap().name,
            "reviews"
        );
        assert_eq!(empty.ports().collect::<Vec<_>>(), [(9080, &[][..])]);
    }

    #[test]
    fn the_dump_shows_each_port_s_virtual_hosts() {
        let dump = serde_json::to_value(two_ports()).unwrap();
        assert_eq!(dump["virtual_hosts"].as_array().unwrap().len(), 4);
        assert_eq!(dump["catch_all"], 1);
        assert_eq!(
            dump["ports"],
            serde_json::json!([
                { "port": 8080, "virtual_hosts": [0, 1] },
                { "port": 9080, "virtual_hosts": [2, 3] },
            ])
        );
    }
}
