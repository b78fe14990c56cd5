use super::{ClusterName, Labels, Pattern, Percentage, StringMatch};
// foldhash for lookups by the request's authority: keys come from config; a request only
// looks up (no flooding to fear).
use foldhash::HashMap;
use std::fmt;
use std::time::Duration;

/// The outbound route table: virtual hosts, found by the request's authority.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RouteTable {
    virtual_hosts: Vec<VirtualHost>,
    /// Exact domain (lower case, with or without `:port`) -> index into `virtual_hosts`.
    exact: HashMap<String, usize>,
    /// Wildcard domains (`*.example.com` stored as `.example.com`), longest first.
    suffixes: Vec<(String, usize)>,
    /// The `*` virtual host, if any.
    catch_all: Option<usize>,
}

impl RouteTable {
    /// Builds the table; the first virtual host to claim a domain keeps it.
    pub fn new(virtual_hosts: Vec<VirtualHost>) -> Self {
        let mut exact = HashMap::default();
        let mut suffixes = Vec::new();
        let mut catch_all = None;
        for (i, vh) in virtual_hosts.iter().enumerate() {
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
        suffixes.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        Self {
            virtual_hosts,
            exact,
            suffixes,
            catch_all,
        }
    }

    /// The virtual hosts, in order.
    pub fn virtual_hosts(&self) -> &[VirtualHost] {
        &self.virtual_hosts
    }

    /// The virtual host serving `authority` (`host` or `host:port`), as Envoy picks it: an
    /// exact domain, then the longest wildcard suffix, then `*`.
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
        self.find_index(authority)
            .and_then(|i| self.virtual_hosts.get(i))
    }

    /// Like [`find`](Self::find), the index of the virtual host in [`virtual_hosts`](Self::virtual_hosts).
    pub fn find_index(&self, authority: &str) -> Option<usize> {
        let lower;
        let authority = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = authority.to_ascii_lowercase();
            lower.as_str()
        } else {
            authority
        };
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
        backoff_base: Duration::ZERO,
        backoff_max: Duration::ZERO,
    };

    /// Istio's retry policy when a route sets none: 2 retries on
    /// `connect-failure,refused-stream,unavailable,cancelled`.
    pub fn istio_default() -> Self {
        Self {
            attempts: 2,
            per_try_timeout: None,
            retry_on: RetryOn::istio_default(),
            retry_remote_localities: false,
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
}
