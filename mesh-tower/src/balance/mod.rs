//! Endpoint choice within the chosen cluster (Istio's `loadBalancer`), aware of outlier
//! ejection and locality.
//!
//! For each request to a [`Target`](crate::split::Target) cluster:
//! 1. the cluster's healthy endpoints, minus those outlier detection has ejected (unless
//!    fewer than `minHealthPercent` remain: panic mode uses them all); EDS `DEGRADED`
//!    endpoints only when no healthy one is left;
//! 2. with locality load balancing, a priority level: the workload's own locality first,
//!    spilling to the next level as its healthy share drops (Envoy's 1.4 overprovisioning
//!    factor), with `failover` naming the next region; or, with a `distribute` rule (or xDS
//!    locality weights), a locality drawn by weight;
//! 3. an endpoint of that level by the cluster's algorithm: P2C least-request (default),
//!    round-robin, random (all weighted, with `warmup` slow start), passthrough,
//!    consistent hash (ring hash or Maglev on a header, cookie, source IP or query parameter),
//!    or P2C on peak-EWMA latency x load (linkerd2-proxy's balancer, see [`PeakEwma`]).
//!
//! The outcome of each try feeds the endpoint's outlier detector. State is kept per cluster
//! name and endpoint address, so a config swap that keeps an endpoint keeps its ejection
//! state and in-flight count.
//!
//! The TCP forwarders ([`crate::tcp`]) pick by the same steps, with the same state, through
//! [`BalanceLayer::pick_connection`], as Envoy's TCP proxy uses its cluster's load balancer:
//! each open connection counts as an active request for least-request (and shows in
//! `/clusters` as `rq_active` and `cx_active`), a consistent hash keys on the source IP
//! only, and each connect's outcome goes to the same detector.

mod ewma;
mod hash;
mod locality;
mod outlier;

pub use ewma::PeakEwma;
pub use hash::{Table, hash64};
pub use outlier::{Outcome, OutlierState, may_eject};

use crate::body::{BoxBody, BoxError};
use crate::context::RequestContext;
use crate::error::ProxyError;
use crate::rng::Rng;
use crate::server::ConnectionInfo;
use crate::telemetry::UpstreamInfo;
use arc_swap::ArcSwapOption;
use foldhash::HashMap;
use futures_util::future::{Either, Ready, ready};
use http::{HeaderValue, Request, Response};
use mesh_core::model::{
    Cluster, ClusterName, ConsistentHash, Endpoint, HashKey, HashTable, HealthStatus, LbAlgorithm,
    OutlierDetection, Workload,
};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

/// The endpoint the balancer chose (in the request's [`RequestContext`], for the client, and
/// in its response's, for telemetry).
#[derive(Clone, Debug)]
pub struct Upstream {
    /// `address:port` of the chosen endpoint.
    pub authority: http::uri::Authority,
    /// What telemetry reports of it: `None` for a passthrough request's own destination.
    pub info: Option<Arc<UpstreamInfo>>,
}

/// Which of an endpoint's HTTP/2 connections a request should use when the cluster caps the
/// streams per connection (`connectionPool.http.maxConcurrentStreams`): the requests already
/// in flight to the endpoint divided by the cap, so that past the cap another connection is
/// opened, as Envoy does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamSlot(pub u32);

/// One endpoint's live state: requests in flight, outlier detector, when it was first seen.
#[derive(Debug)]
pub struct EndpointState {
    /// Requests in flight to it, each TCP connection open to it included (Envoy's
    /// `rq_active`: its TCP proxy counts a connection as an active request), which
    /// least-request compares.
    pub active: AtomicUsize,
    /// TCP connections the forwarders hold open to it ([`ConnectionPick`]; Envoy's
    /// `cx_active` for a TCP proxy's host). The HTTP client's pooled connections are not
    /// counted.
    pub connections: AtomicUsize,
    /// Its outlier detector.
    pub outlier: OutlierState,
    /// Its latency estimate (kept when the cluster balances on peak EWMA).
    pub latency: PeakEwma,
    first_seen: Instant,
}

impl EndpointState {
    fn new() -> Self {
        Self {
            active: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            outlier: OutlierState::default(),
            latency: PeakEwma::new(),
            first_seen: Instant::now(),
        }
    }
}

/// A cluster's endpoints bound to their states, rebuilt when the snapshot's cluster changes.
#[derive(Debug)]
struct Resolved {
    cluster: Arc<Cluster>,
    states: Vec<Arc<EndpointState>>,
    /// The endpoints healthy by status (before outlier ejection), computed once; without
    /// any, the degraded ones.
    healthy: Vec<usize>,
    /// The degraded endpoints while `healthy` holds healthy ones: the available set once
    /// every healthy endpoint is ejected.
    degraded: Vec<usize>,
    /// Each endpoint's `address:port`, parsed once.
    authorities: Vec<Option<http::uri::Authority>>,
    /// What telemetry reports of each endpoint, built once per snapshot.
    upstream_info: Vec<Arc<UpstreamInfo>>,
    /// Whether every endpoint has the same weight (P2C then compares in-flight counts).
    equal_weights: bool,
    /// Whether some endpoint has an EDS priority above 0 (levels apply without locality).
    has_priorities: bool,
    /// Whether a `distribute` rule applies whatever the workload's locality (xDS locality
    /// weights), so that it applies when the workload's locality is unknown.
    distributes_anywhere: bool,
    /// Bumped at each ejection, so that the cached available set is rebuilt. Shared by
    /// every snapshot of the cluster, so that an ejection recorded through an older one (a
    /// try or connection that began before a config swap) reaches the current one's cache.
    ejections: Arc<std::sync::atomic::AtomicU64>,
    /// The healthy endpoints not ejected, valid until the generation changes or the first
    /// ejected endpoint returns.
    available: ArcSwapOption<Available>,
    /// The hash table over the current candidate set, and that set's fingerprint.
    table: Mutex<Option<(TableKey, Arc<Table>)>>,
}

#[derive(Debug, Default)]
struct ClusterState {
    resolved: ArcSwapOption<Resolved>,
    turn: AtomicUsize,
}

impl ClusterState {
    fn resolve(&self, cluster: &Arc<Cluster>) -> Arc<Resolved> {
        // A guard, not a clone: the one reference count written is the one returned.
        let current = self.resolved.load();
        if let Some(r) = &*current
            && Arc::ptr_eq(&r.cluster, cluster)
        {
            return r.clone();
        }
        // A new snapshot: keep the state of every endpoint that stays.
        let previous: HashMap<String, Arc<EndpointState>> = current
            .as_ref()
            .iter()
            .flat_map(|r| {
                r.cluster
                    .endpoints
                    .iter()
                    .map(Endpoint::authority)
                    .zip(r.states.iter().cloned())
            })
            .collect();
        let states = cluster
            .endpoints
            .iter()
            .map(|e| {
                previous
                    .get(&e.authority())
                    .cloned()
                    .unwrap_or_else(|| Arc::new(EndpointState::new()))
            })
            .collect();
        let with_status = |status: HealthStatus| -> Vec<usize> {
            cluster
                .endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| e.health == status)
                .map(|(i, _)| i)
                .collect()
        };
        let mut healthy = with_status(HealthStatus::Healthy);
        let mut degraded = with_status(HealthStatus::Degraded);
        // Envoy sends traffic to degraded endpoints only when the healthy ones are not
        // enough; here, only when none is left (by status, or below, by ejection).
        if healthy.is_empty() {
            healthy = std::mem::take(&mut degraded);
        }
        let authorities = cluster
            .endpoints
            .iter()
            .map(|e| e.authority().parse().ok())
            .collect();
        let equal_weights = cluster
            .endpoints
            .windows(2)
            .all(|w| w[0].weight == w[1].weight);
        let upstream_info = cluster
            .endpoints
            .iter()
            .map(|endpoint| {
                Arc::new(UpstreamInfo {
                    authority: endpoint.authority(),
                    service: cluster.service.clone(),
                    namespace: endpoint.namespace.clone(),
                    labels: endpoint.labels.clone(),
                    service_account: endpoint.service_account.clone(),
                    workload: endpoint.workload.clone(),
                    cluster: endpoint.cluster_id.clone(),
                })
            })
            .collect();
        let resolved = Arc::new(Resolved {
            cluster: cluster.clone(),
            states,
            healthy,
            degraded,
            authorities,
            upstream_info,
            equal_weights,
            has_priorities: cluster.endpoints.iter().any(|e| e.priority > 0),
            distributes_anywhere: locality::distribute_rule(cluster, &Default::default()).is_some(),
            ejections: current
                .as_ref()
                .map_or_else(Arc::default, |r| r.ejections.clone()),
            available: ArcSwapOption::empty(),
            table: Mutex::new(None),
        });
        self.resolved.store(Some(resolved.clone()));
        resolved
    }
}

/// An opt-in outlier rule beyond Envoy's: eject an endpoint whose latency EWMA exceeds
/// `factor` times the median of its cluster's endpoints.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencyOutlier {
    /// How many times the median is too slow.
    pub factor: f64,
    /// The base ejection time (multiplied and capped as for errors).
    pub base_ejection_time: Duration,
    /// The fewest endpoints with an EWMA before the rule applies.
    pub min_endpoints: usize,
}

impl From<mesh_core::model::LatencyOutlierRule> for LatencyOutlier {
    fn from(rule: mesh_core::model::LatencyOutlierRule) -> Self {
        Self {
            factor: f64::from(rule.factor_percent) / 100.0,
            base_ejection_time: rule.base_ejection_time,
            min_endpoints: rule.min_endpoints as usize,
        }
    }
}

/// Picks an endpoint for each request to a [`Target`](crate::split::Target) cluster.
#[derive(Clone, Debug, Default)]
pub struct BalanceLayer {
    clusters: Arc<RwLock<HashMap<ClusterName, Arc<ClusterState>>>>,
    rng: Rng,
    latency_outlier: Option<LatencyOutlier>,
}

impl BalanceLayer {
    /// A balancer drawing from `rng`.
    pub fn new(rng: Rng) -> Self {
        Self {
            clusters: Arc::default(),
            rng,
            latency_outlier: None,
        }
    }

    /// The generator the balancer draws from; the TCP forwarders draw a `tcp` rule's weighted
    /// destination from it too, so that one seed fixes both.
    pub(crate) fn rng(&self) -> &Rng {
        &self.rng
    }

    /// Turns on the latency outlier rule for every cluster whose policy sets none (a
    /// DestinationRule sets one with the `outlier.mesh.io/latency-*` annotations).
    pub fn latency_outlier(mut self, rule: LatencyOutlier) -> Self {
        self.latency_outlier = Some(rule);
        self
    }

    fn cluster_state(&self, name: &ClusterName) -> Arc<ClusterState> {
        if let Some(s) = self
            .clusters
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return s.clone();
        }
        self.clusters
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.clone())
            .or_default()
            .clone()
    }

    /// The state of endpoint `authority` in cluster `name`, if it has been seen.
    pub fn endpoint_state(
        &self,
        name: &ClusterName,
        authority: &str,
    ) -> Option<Arc<EndpointState>> {
        let state = self
            .clusters
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)?
            .clone();
        let resolved = state.resolved.load_full()?;
        resolved
            .cluster
            .endpoints
            .iter()
            .position(|e| e.authority() == authority)
            .map(|i| resolved.states[i].clone())
    }
}

/// An endpoint [`BalanceLayer::pick_connection`] chose for one connection (the TCP
/// forwarders, [`crate::tcp`]); the connect's outcome goes back to the endpoint's outlier
/// detector with [`connected`](Self::connected) or [`failed`](Self::failed).
///
/// Until it is dropped, the connection counts among the endpoint's
/// [`active`](EndpointState::active) requests and its
/// [`connections`](EndpointState::connections): a forwarder holds it for the life of the
/// proxied connection, so that least-request sees the endpoint's open connections and
/// `/clusters` shows them (`rq_active` and `cx_active`), as Envoy's TCP proxy does. It counts
/// from the pick, the connect included, as an HTTP try counts from its start (Envoy's
/// `cx_active` also counts from the connect; its `rq_active` from the moment the pool hands
/// the open connection over); a failed connect drops it.
/// Dropping it records no outcome (one that is not the endpoint's, such as a local TLS
/// setup error, should not count either way).
#[derive(Debug)]
pub struct ConnectionPick {
    in_flight: InFlight,
}

impl ConnectionPick {
    /// Counts a connection to endpoint `index` of `resolved`.
    fn start(resolved: Arc<Resolved>, index: usize) -> Self {
        resolved.states[index]
            .connections
            .fetch_add(1, Ordering::Relaxed);
        let (in_flight, _) = InFlight::start(resolved, index);
        Self { in_flight }
    }

    /// The chosen endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.in_flight.resolved.cluster.endpoints[self.in_flight.index]
    }

    /// The connection opened: a success, which resets the endpoint's consecutive-error
    /// counts (Envoy's TCP proxy reports `LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL`, a 200).
    pub fn connected(&self) {
        self.record(Outcome::Status(200));
    }

    /// The connection (or its TLS handshake) failed with `error`: timed out
    /// ([`Outcome::LocalOriginTimeout`], a 504 unless local-origin errors are split), else
    /// refused or reset ([`Outcome::LocalOriginFailure`], a 503), as Envoy's TCP connection
    /// pool reports them to the outlier detector.
    pub fn failed(&self, error: &std::io::Error) {
        self.record(match error.kind() {
            std::io::ErrorKind::TimedOut => Outcome::LocalOriginTimeout,
            _ => Outcome::LocalOriginFailure,
        });
    }

    fn record(&self, outcome: Outcome) {
        let InFlight {
            resolved, index, ..
        } = &self.in_flight;
        if let Some(policy) = &resolved.cluster.policy.outlier_detection {
            resolved.record(*index, outcome, policy);
        }
    }
}

impl Drop for ConnectionPick {
    fn drop(&mut self) {
        self.in_flight
            .endpoint()
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl BalanceLayer {
    /// Picks an endpoint of `cluster` for a new TCP connection from `source` (the TCP
    /// forwarders) by the same rules as an HTTP request's pick, as Envoy's TCP proxy picks
    /// with the cluster's load balancer: the endpoints the HTTP balancer would consider
    /// (healthy ones outlier detection has not ejected, degraded ones only when no healthy
    /// one is left, never an unhealthy or draining one; panic mode below
    /// `minHealthPercent`), the locality level of `workload` (its locality and labels:
    /// failover, `distribute`, EDS priorities), then the cluster's algorithm with the
    /// endpoints' weights. Least-request counts each open connection as an active request,
    /// as Envoy does (its TCP connection pool, `Tcp::ConnPoolImpl`, is a
    /// `ConnectionPool::ConnPoolImplBase` whose `attachStreamToClient` increments the host's
    /// `rq_active` for each connection it hands the TCP proxy, one per upstream
    /// connection), and a consistent hash uses the source IP only (see `useSourceIp`); any
    /// other key is absent for TCP, so the hash is random, as Envoy's.
    /// `None` when there is no endpoint to take it (Envoy's `UH`).
    ///
    /// The endpoints' states are this layer's, by cluster name and endpoint address, so they
    /// survive config swaps, and a layer shared with the HTTP stack and the admin endpoint
    /// shows TCP ejections and open connections in `/clusters`.
    pub fn pick_connection(
        &self,
        cluster: &Arc<Cluster>,
        workload: Option<&Workload>,
        source: Option<IpAddr>,
    ) -> Option<ConnectionPick> {
        let state = self.cluster_state(&cluster.name);
        let resolved = state.resolve(cluster);
        let input = PickInput::of_connection(cluster, workload, source);
        let index = self.pick(&resolved, &state, input).ok()?.index;
        Some(ConnectionPick::start(resolved, index))
    }
}

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;

    fn layer(&self, inner: S) -> Balance<S> {
        Balance {
            layer: self.clone(),
            inner,
            last: None,
        }
    }
}

/// The service [`BalanceLayer`] makes.
#[derive(Clone, Debug)]
pub struct Balance<S> {
    layer: BalanceLayer,
    inner: S,
    /// The state of the cluster this service sent to last, found without the layer's lock
    /// (which every worker writes to read) while the target is the same cluster object.
    /// A layer never drops a cluster's state, so it stays the layer's.
    last: Option<(Arc<Cluster>, Arc<ClusterState>)>,
}

/// What the balancer decided for one request.
struct Pick {
    index: usize,
    set_cookie: Option<HeaderValue>,
}

/// The hash key of a request, when the algorithm hashes.
fn hash_key<B>(key: &HashKey, req: &Request<B>) -> Option<String> {
    match key {
        HashKey::Header(name) => req
            .headers()
            .get(name.as_str())?
            .to_str()
            .ok()
            .map(str::to_owned),
        HashKey::Cookie { name, .. } => req
            .headers()
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_owned()),
        HashKey::SourceIp => req
            .extensions()
            .get::<ConnectionInfo>()
            .map(|c| c.peer.ip().to_string()),
        HashKey::QueryParameter(name) => req
            .uri()
            .query()?
            .split('&')
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_owned()),
    }
}

/// What a pick knows of the request or connection it is for: the same rules then pick an
/// endpoint for an HTTP try ([`Balance`]) and for a TCP connection
/// ([`BalanceLayer::pick_connection`]).
struct PickInput<'a> {
    /// The workload this proxy serves (its locality and labels), when known.
    workload: Option<&'a Workload>,
    /// A retry that may leave the locality (`retryRemoteLocalities`).
    remote_retry: bool,
    /// Which pick of a retry avoiding earlier tries' endpoints this is (0: the first): a
    /// consistent hash mixes it into the hash, to land elsewhere (Envoy's ring hash and
    /// Maglev take the attempt the same way).
    host_attempt: u32,
    /// The endpoints earlier tries of the request went to, for a retry to avoid.
    previous_hosts: Option<&'a Arc<[http::uri::Authority]>>,
    /// The hash key, when the cluster hashes and the request or connection has one.
    hash_key: Option<String>,
    /// Whether a missing session cookie may be set, and from which connection its value
    /// is made (HTTP only: a TCP connection has no response to carry it).
    cookie: CookieSource<'a>,
}

/// Where the value of a new session cookie comes from.
enum CookieSource<'a> {
    /// No cookie is set (TCP).
    Never,
    /// The request's downstream connection ([`ConnectionInfo`] in these extensions, looked
    /// up only when a cookie is made), else a random value.
    Request(&'a http::Extensions),
}

impl<'a> PickInput<'a> {
    /// What an HTTP request tells the balancer of cluster `cluster`.
    fn of_request<B>(req: &'a Request<B>, cluster: &Cluster) -> Self {
        let context = RequestContext::of(req);
        let hash_key = match &cluster.policy.load_balancer.algorithm {
            LbAlgorithm::ConsistentHash(ch) => hash_key(&ch.key, req),
            _ => None,
        };
        Self {
            workload: context
                .and_then(|c| c.routed.as_ref())
                .map(|r| &r.snapshot().workload),
            remote_retry: context
                .and_then(|c| c.attempt)
                .is_some_and(|a| a.number > 1 && a.remote_localities),
            host_attempt: 0,
            previous_hosts: context.and_then(|c| c.previous_hosts.as_ref()),
            hash_key,
            cookie: CookieSource::Request(req.extensions()),
        }
    }

    /// What a TCP connection from `source` tells the balancer of cluster `cluster`. Of the
    /// hash keys only the source IP means anything for TCP, as in Istio, which gives Envoy's
    /// TCP proxy a `source_ip` hash policy for `useSourceIp` and none for the others
    /// (`maybeSetHashPolicy` in pilot's `networkfilter.go`). Without
    /// a key, Envoy's ring hash and Maglev draw a random hash
    /// (`ThreadAwareLoadBalancerBase::LoadBalancerImpl::chooseHost`: "this effectively
    /// becomes the random LB"); so does this pick.
    fn of_connection(
        cluster: &Cluster,
        workload: Option<&'a Workload>,
        source: Option<IpAddr>,
    ) -> Self {
        let hash_key = match &cluster.policy.load_balancer.algorithm {
            LbAlgorithm::ConsistentHash(ConsistentHash {
                key: HashKey::SourceIp,
                ..
            }) => source.map(|ip| ip.to_string()),
            _ => None,
        };
        Self {
            workload,
            remote_retry: false,
            host_attempt: 0,
            previous_hosts: None,
            hash_key,
            cookie: CookieSource::Never,
        }
    }
}

/// How many picks a retry makes to find an endpoint no earlier try went to (istiod's
/// `host_selection_retry_max_attempts` with the `previous_hosts` predicate).
const HOST_SELECTION_ATTEMPTS: u32 = 5;

impl BalanceLayer {
    fn pick(
        &self,
        resolved: &Resolved,
        state: &ClusterState,
        input: PickInput<'_>,
    ) -> Result<Pick, ProxyError> {
        let cluster = &resolved.cluster;
        let now = Instant::now();
        let healthy = &resolved.healthy;
        let workload = input.workload;
        let local = workload
            .map(|w| &w.locality)
            .filter(|l| !l.region.is_empty());
        let ejects = cluster.policy.outlier_detection.is_some()
            || cluster.policy.latency_outlier.is_some()
            || self.latency_outlier.is_some();
        let locality_aware =
            cluster.policy.load_balancer.locality.is_some() || ejects || resolved.has_priorities;
        // EDS priorities are levels even when the workload's locality is unknown.
        let unknown = mesh_core::model::Locality::default();
        // So are the localities' weights of a `distribute` rule for any locality (xDS).
        let local = local
            .or((resolved.has_priorities || resolved.distributes_anywhere).then_some(&unknown));
        // Without outlier detection or locality, the candidates are the cached healthy set:
        // no per-request list, no per-endpoint lock.
        let candidates: Chosen<'_> = if !(ejects || locality_aware && local.is_some()) {
            Chosen::Healthy(healthy.as_slice())
        } else {
            let (available, panic) = resolved.available_or_panic(now);
            let base: &[usize] = if panic {
                healthy.as_slice()
            } else {
                &available
            };
            // A retry may leave the locality when the route says so (`retryRemoteLocalities`).
            let remote_retry = input.remote_retry;
            if let Some(local) =
                local.filter(|_| locality_aware && !remote_retry && !base.is_empty())
            {
                let none = mesh_core::model::Labels::new();
                let labels = workload.map_or(&none, |w| &w.labels);
                Chosen::Level(locality::choose_level(
                    cluster, local, labels, base, &self.rng,
                ))
            } else if panic {
                Chosen::Healthy(healthy.as_slice())
            } else {
                Chosen::Available(available)
            }
        };
        let chosen = candidates;
        let candidates: &[usize] = match &chosen {
            Chosen::Healthy(h) => h,
            Chosen::Available(a) => a,
            Chosen::Level(l) => l,
        };
        if candidates.is_empty() {
            return Err(ProxyError::NoHealthyUpstream(cluster.name.to_string()));
        }
        let weight = |i: usize| -> f64 {
            let w = f64::from(cluster.endpoints[i].weight.max(1));
            match cluster.policy.load_balancer.warmup {
                Some(warmup) if !warmup.is_zero() => {
                    let age = now.saturating_duration_since(resolved.states[i].first_seen);
                    w * (age.as_secs_f64() / warmup.as_secs_f64()).clamp(0.1, 1.0)
                }
                _ => w,
            }
        };
        let index = match &cluster.policy.load_balancer.algorithm {
            LbAlgorithm::RoundRobin => {
                let total: u64 = if resolved.equal_weights {
                    candidates.len() as u64
                        * u64::from(cluster.endpoints.first().map_or(1, |e| e.weight.max(1)))
                } else {
                    candidates
                        .iter()
                        .map(|i| u64::from(cluster.endpoints[*i].weight.max(1)))
                        .sum()
                };
                let mut turn = state.turn.fetch_add(1, Ordering::Relaxed) as u64 % total.max(1);
                let mut chosen = candidates[0];
                for i in candidates {
                    let w = u64::from(cluster.endpoints[*i].weight.max(1));
                    if turn < w {
                        chosen = *i;
                        break;
                    }
                    turn -= w;
                }
                chosen
            }
            LbAlgorithm::Random | LbAlgorithm::Passthrough => {
                weighted_random(candidates, weight, &self.rng)
            }
            LbAlgorithm::LeastRequest => {
                let active = |i: usize| resolved.states[i].active.load(Ordering::Relaxed) as f64;
                let equal = resolved.equal_weights;
                if candidates.len() == 1 {
                    candidates[0]
                } else if equal && cluster.policy.load_balancer.warmup.is_none() {
                    // Power of two choices: the less loaded of two distinct random endpoints.
                    let n = candidates.len() as u32;
                    let first = self.rng.below(n) as usize;
                    let second = (first + 1 + self.rng.below(n - 1) as usize) % candidates.len();
                    let (a, b) = (candidates[first], candidates[second]);
                    if active(b) < active(a) { b } else { a }
                } else {
                    // Unequal weights (Envoy): weighted random on weight / (active + 1).
                    weighted_random(candidates, |i| weight(i) / (active(i) + 1.0), &self.rng)
                }
            }
            LbAlgorithm::PeakEwma { decay } => {
                if candidates.len() == 1 {
                    candidates[0]
                } else {
                    // Power of two choices on latency x load (per unit of weight).
                    let cost = |i: usize| {
                        let s = &resolved.states[i];
                        let active = s.active.load(Ordering::Relaxed) as f64;
                        s.latency.estimate_ns(now, *decay) * (active + 1.0) / weight(i)
                    };
                    let n = candidates.len() as u32;
                    let first = self.rng.below(n) as usize;
                    let second = (first + 1 + self.rng.below(n - 1) as usize) % candidates.len();
                    let (a, b) = (candidates[first], candidates[second]);
                    if cost(b) < cost(a) { b } else { a }
                }
            }
            LbAlgorithm::ConsistentHash(ch) => {
                let mut set_cookie = None;
                let mut key = input.hash_key;
                if let (
                    None,
                    HashKey::Cookie {
                        name,
                        path,
                        ttl: Some(ttl),
                        attributes,
                    },
                    CookieSource::Request(extensions),
                ) = (&key, &ch.key, input.cookie)
                {
                    // As Envoy: the new cookie's value is made first and the request is routed
                    // by its hash, so the request that sets it reaches the endpoint the
                    // cookie will select. Envoy derives it from the downstream connection's
                    // addresses (one cookie per connection); without them, a random one.
                    let seed = match extensions.get::<ConnectionInfo>() {
                        Some(c) => hash64((c.peer, c.local)),
                        None => self.rng.next_u64(),
                    };
                    let value = format!("{seed:016x}");
                    let mut cookie = format!("{name}={value}; Max-Age={}", ttl.as_secs());
                    if let Some(path) = path {
                        cookie.push_str(&format!("; Path={path}"));
                    }
                    // Envoy's order: `Max-Age`, `Path`, the attributes, `HttpOnly`
                    // (`Http::Utility::makeSetCookieValue`); the order means nothing to a
                    // browser.
                    for (name, value) in attributes {
                        cookie.push_str("; ");
                        cookie.push_str(name);
                        if !value.is_empty() {
                            cookie.push('=');
                            cookie.push_str(value);
                        }
                    }
                    cookie.push_str("; HttpOnly");
                    set_cookie = HeaderValue::try_from(cookie).ok();
                    key = Some(value);
                }
                let index = match &key {
                    Some(key) => {
                        let hash = match input.host_attempt {
                            0 => hash64(key.as_str()),
                            n => hash64((key.as_str(), n)),
                        };
                        self.table_lookup(resolved, &chosen, candidates, ch, hash)
                    }
                    None => weighted_random(candidates, weight, &self.rng),
                };
                return Ok(Pick { index, set_cookie });
            }
        };
        Ok(Pick {
            index,
            set_cookie: None,
        })
    }

    fn table_lookup(
        &self,
        resolved: &Resolved,
        chosen: &Chosen<'_>,
        candidates: &[usize],
        ch: &ConsistentHash,
        hash: u64,
    ) -> usize {
        let cluster = &resolved.cluster;
        // The cached sets are recognised by identity (no per-request hashing of the list).
        let key = TableKey {
            table: ch.table,
            candidates: match chosen {
                Chosen::Healthy(_) => CandidatesKey::Healthy,
                Chosen::Available(list) => CandidatesKey::Available(list.shared()),
                Chosen::Level(list) => CandidatesKey::Content(hash64(list)),
            },
        };
        let mut cached = resolved.table.lock().unwrap_or_else(|p| p.into_inner());
        let table = match cached.as_ref() {
            Some((k, table)) if *k == key => table.clone(),
            _ => {
                let endpoints: Vec<(String, u32)> = candidates
                    .iter()
                    .map(|i| {
                        (
                            cluster.endpoints[*i].authority(),
                            cluster.endpoints[*i].weight,
                        )
                    })
                    .collect();
                let table = Arc::new(match ch.table {
                    HashTable::RingHash { minimum_ring_size } => {
                        Table::ring(&endpoints, minimum_ring_size)
                    }
                    HashTable::Maglev { table_size } => Table::maglev(&endpoints, table_size),
                });
                *cached = Some((key, table.clone()));
                table
            }
        };
        table
            .lookup(hash)
            .map_or(candidates[0], |slot| candidates[slot])
    }
}

fn weighted_random(candidates: &[usize], weight: impl Fn(usize) -> f64, rng: &Rng) -> usize {
    let total: f64 = candidates.iter().map(|i| weight(*i)).sum();
    let mut draw = f64::from(rng.ppm()) / 1_000_000.0 * total;
    for i in candidates {
        draw -= weight(*i);
        if draw < 0.0 {
            return *i;
        }
    }
    candidates[candidates.len() - 1]
}

/// The candidates of one pick, borrowed from the cached sets when possible.
enum Chosen<'a> {
    Healthy(&'a [usize]),
    Available(AvailableList),
    Level(Vec<usize>),
}

/// What a cached hash table was built over.
#[derive(Debug)]
struct TableKey {
    table: HashTable,
    candidates: CandidatesKey,
}

#[derive(Debug)]
enum CandidatesKey {
    /// The snapshot's healthy set.
    Healthy,
    /// A cached available set (held here, so its identity cannot be reused).
    Available(Arc<[usize]>),
    /// Any other list, by content.
    Content(u64),
}

impl PartialEq for TableKey {
    fn eq(&self, other: &Self) -> bool {
        self.table == other.table
            && match (&self.candidates, &other.candidates) {
                (CandidatesKey::Healthy, CandidatesKey::Healthy) => true,
                (CandidatesKey::Available(a), CandidatesKey::Available(b)) => Arc::ptr_eq(a, b),
                (CandidatesKey::Content(a), CandidatesKey::Content(b)) => a == b,
                _ => false,
            }
    }
}

/// The cached set of endpoints that are healthy and not ejected.
#[derive(Debug)]
struct Available {
    generation: u64,
    valid_until: Option<Instant>,
    list: Arc<[usize]>,
}

impl Resolved {
    /// The endpoints a new try may use at `now`, before locality: those [`available`], and
    /// whether the cluster is in panic mode (fewer than `minHealthPercent` of its healthy
    /// endpoints available: ejection is then ignored and every healthy endpoint is used).
    ///
    /// [`available`]: Self::available
    fn available_or_panic(&self, now: Instant) -> (AvailableList, bool) {
        let available = self.available(now);
        let min_health = self
            .cluster
            .policy
            .outlier_detection
            .as_ref()
            .map_or(0, |o| o.min_health_percent);
        let panic = available.len() * 100 < self.healthy.len() * min_health as usize;
        (available, panic)
    }

    /// Feeds a try's outcome to endpoint `index`'s outlier detector and ejects the endpoint
    /// when it crosses a threshold, unless `maxEjectionPercent` of the cluster is out already.
    fn record(&self, index: usize, outcome: Outcome, policy: &OutlierDetection) {
        let endpoint_state = &self.states[index];
        if !endpoint_state.outlier.record(outcome, policy) {
            return;
        }
        let now = Instant::now();
        let ejected = self
            .states
            .iter()
            .filter(|s| s.outlier.is_ejected(now))
            .count();
        if may_eject(ejected, self.states.len(), policy.max_ejection_percent) {
            let cluster = &self.cluster;
            endpoint_state.outlier.eject(now, policy);
            self.ejections.fetch_add(1, Ordering::Release);
            metrics::counter!("mesh_outlier_ejections_total", "cluster" => cluster.name.to_string()).increment(1);
            tracing::info!(cluster = %cluster.name, endpoint = %cluster.endpoints[index].authority(), "outlier ejected");
        }
    }

    /// The healthy endpoints not ejected at `now` (the degraded ones not ejected when
    /// there are none): cached until an ejection happens or an
    /// ejected endpoint's time is up, so a pick does not visit every endpoint.
    fn available(&self, now: Instant) -> AvailableList {
        let generation = self.ejections.load(Ordering::Acquire);
        let cached = self.available.load();
        if let Some(c) = &*cached
            && c.generation == generation
            && c.valid_until.is_none_or(|t| now < t)
        {
            return AvailableList::Cached(cached);
        }
        let mut valid_until: Option<Instant> = None;
        let mut not_ejected = |set: &[usize]| -> Arc<[usize]> {
            set.iter()
                .copied()
                .filter(|i| match self.states[*i].outlier.ejected_until(now) {
                    Some(until) => {
                        valid_until = Some(valid_until.map_or(until, |v| v.min(until)));
                        false
                    }
                    None => true,
                })
                .collect()
        };
        let mut list = not_ejected(&self.healthy);
        if list.is_empty() && !self.degraded.is_empty() {
            // Every healthy endpoint is ejected: the degraded ones take the traffic.
            list = not_ejected(&self.degraded);
        }
        self.available.store(Some(Arc::new(Available {
            generation,
            valid_until,
            list: list.clone(),
        })));
        AvailableList::Fresh(list)
    }
}

/// The available endpoints for one pick: the cached list, read through a guard (no reference
/// count that every worker writes), or the list just made.
enum AvailableList {
    Cached(arc_swap::Guard<Option<Arc<Available>>>),
    Fresh(Arc<[usize]>),
}

impl AvailableList {
    /// The list itself, shared (its identity keys a hash table).
    fn shared(&self) -> Arc<[usize]> {
        match self {
            AvailableList::Cached(guard) => guard
                .as_ref()
                .map_or_else(|| Arc::from([]), |a| a.list.clone()),
            AvailableList::Fresh(list) => list.clone(),
        }
    }
}

impl std::fmt::Debug for AvailableList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl std::ops::Deref for AvailableList {
    type Target = [usize];

    fn deref(&self) -> &[usize] {
        match self {
            AvailableList::Cached(guard) => guard.as_ref().map_or(&[], |a| &a.list),
            AvailableList::Fresh(list) => list,
        }
    }
}

/// A try counted among endpoint `index`'s requests in flight: the count goes down when the try
/// ends ([`InFlight::end`]) or is dropped, however it ends.
///
/// It holds the resolved cluster, which holds the cluster and every endpoint's state: one
/// reference count per try, where each of those, cloned apart, would be one more count that
/// every worker thread writes.
#[derive(Debug)]
struct InFlight {
    resolved: Arc<Resolved>,
    index: usize,
    ended: bool,
}

impl InFlight {
    /// Counts a try to endpoint `index` of `resolved`; returns it and the count before it.
    fn start(resolved: Arc<Resolved>, index: usize) -> (Self, usize) {
        let already = resolved.states[index]
            .active
            .fetch_add(1, Ordering::Relaxed);
        let in_flight = Self {
            resolved,
            index,
            ended: false,
        };
        (in_flight, already)
    }

    /// The endpoint's state.
    fn endpoint(&self) -> &EndpointState {
        &self.resolved.states[self.index]
    }

    /// The try is over: it no longer counts.
    fn end(&mut self) {
        if !std::mem::replace(&mut self.ended, true) {
            self.endpoint().active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.end();
    }
}

impl<S, B> Service<Request<B>> for Balance<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = Either<ResponseFuture<S::Future>, Ready<Result<Response<BoxBody>, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(cluster) = RequestContext::target(&req).map(|t| &t.cluster) else {
            let e = ProxyError::BadRequest("the balancer needs a target cluster".into());
            return Either::Right(ready(Err(e.into())));
        };
        if matches!(
            cluster.policy.load_balancer.algorithm,
            LbAlgorithm::Passthrough
        ) && cluster.endpoints.is_empty()
        {
            // Passthrough: the request's own destination is the endpoint.
            let authority = crate::route::destination(&req).and_then(|a| a.parse().ok());
            let Some(authority) = authority else {
                let e = ProxyError::NoHealthyUpstream(cluster.name.to_string());
                return Either::Right(ready(Err(e.into())));
            };
            RequestContext::of_mut(&mut req).upstream = Some(Upstream {
                authority,
                info: None,
            });
            return Either::Left(ResponseFuture {
                inner: self.inner.call(req),
                observed: None,
            });
        }
        let state = match &self.last {
            Some((seen, state)) if Arc::ptr_eq(seen, cluster) => state,
            _ => {
                let state = self.layer.cluster_state(&cluster.name);
                &self.last.insert((cluster.clone(), state)).1
            }
        };
        let resolved = state.resolve(cluster);
        let input = PickInput::of_request(&req, cluster);
        let previous = input.previous_hosts.cloned();
        let mut pick = match self.layer.pick(&resolved, state, input) {
            Ok(pick) => pick,
            Err(e) => return Either::Right(ready(Err(e.into()))),
        };
        // A retry avoids the endpoints of earlier tries: picked again, up to Envoy's host
        // selection attempts as istiod sets them, and the last pick stands.
        if let Some(previous) = previous {
            for host_attempt in 1..HOST_SELECTION_ATTEMPTS {
                let seen = resolved.authorities[pick.index]
                    .as_ref()
                    .is_some_and(|a| previous.contains(a));
                if !seen {
                    break;
                }
                let input = PickInput {
                    host_attempt,
                    ..PickInput::of_request(&req, cluster)
                };
                match self.layer.pick(&resolved, state, input) {
                    Ok(again) => pick = again,
                    Err(_) => break,
                }
            }
        }
        let endpoint = &cluster.endpoints[pick.index];
        let authority = match resolved.authorities[pick.index].clone() {
            Some(a) => a,
            None => {
                let e = ProxyError::BadRequest(format!(
                    "endpoint {} is not a valid authority",
                    endpoint.authority()
                ));
                return Either::Right(ready(Err(e.into())));
            }
        };
        let (in_flight, already) = InFlight::start(resolved, pick.index);
        // The target's cluster, as `resolve` keeps it (the request that holds the target is
        // borrowed mutably below).
        let policy = &in_flight.resolved.cluster.policy;
        let streams_per_connection = policy.connection_pool.max_concurrent_streams;
        // The clock is read only when the try's latency is used.
        let timed = matches!(policy.load_balancer.algorithm, LbAlgorithm::PeakEwma { .. })
            || policy.latency_outlier.is_some()
            || self.layer.latency_outlier.is_some();
        let context = RequestContext::of_mut(&mut req);
        if let Some(picked) = &context.picked {
            let _ = picked.set(authority.clone());
        }
        context.upstream = Some(Upstream {
            authority,
            info: Some(in_flight.resolved.upstream_info[pick.index].clone()),
        });
        if let Some(cap) = streams_per_connection
            && cap > 0
        {
            let slot = u32::try_from(already).unwrap_or(u32::MAX) / cap;
            context.stream_slot = Some(StreamSlot(slot));
        }
        let started = timed.then(Instant::now);
        // Called in place: the balancer is ready whenever the stack below is.
        let future = self.inner.call(req);
        Either::Left(ResponseFuture {
            inner: future,
            observed: Some(Observed {
                in_flight,
                set_cookie: pick.set_cookie,
                started,
                latency_outlier: self.layer.latency_outlier,
            }),
        })
    }
}

pin_project_lite::pin_project! {
    /// [`Balance`]'s response future: the try, then what its outcome tells of the endpoint
    /// (outlier detection, peak EWMA, the latency rule).
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        observed: Option<Observed>,
    }
}

impl<F> std::future::Future for ResponseFuture<F>
where
    F: std::future::Future<Output = Result<Response<BoxBody>, BoxError>>,
{
    type Output = Result<Response<BoxBody>, BoxError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        Poll::Ready(match this.observed.take() {
            Some(observed) => observed.finish(result),
            // A refused request (no endpoint, bad authority): nothing was sent.
            None => result,
        })
    }
}

/// One try to an endpoint, kept until its outcome is known.
struct Observed {
    /// The try among the endpoint's requests in flight, with the resolved cluster.
    in_flight: InFlight,
    set_cookie: Option<HeaderValue>,
    /// When the try started, if its latency is used (peak EWMA, the latency rule).
    started: Option<Instant>,
    latency_outlier: Option<LatencyOutlier>,
}

impl Observed {
    fn finish(
        self,
        result: Result<Response<BoxBody>, BoxError>,
    ) -> Result<Response<BoxBody>, BoxError> {
        let Observed {
            mut in_flight,
            set_cookie,
            started,
            latency_outlier,
        } = self;
        // The try is over: it no longer counts as in flight.
        in_flight.end();
        let (resolved, index) = (&*in_flight.resolved, in_flight.index);
        let (cluster, endpoint_state) = (&resolved.cluster, &resolved.states[index]);
        if let LbAlgorithm::PeakEwma { decay } = cluster.policy.load_balancer.algorithm
            && let Some(started) = started
        {
            // Failures count as slow, so that a failing endpoint is not preferred.
            let elapsed = started.elapsed();
            let rtt = match &result {
                Ok(r) if !r.status().is_server_error() => elapsed,
                _ => elapsed.max(Duration::from_secs(1)),
            };
            endpoint_state.latency.observe(rtt, Instant::now(), decay);
        }
        if let Some(policy) = &cluster.policy.outlier_detection {
            let outcome = match &result {
                Ok(response) => Some(Outcome::Status(response.status().as_u16())),
                Err(e) => match e.downcast_ref::<ProxyError>() {
                    Some(ProxyError::ConnectFailure { .. } | ProxyError::UpstreamReset { .. }) => {
                        Some(Outcome::LocalOriginFailure)
                    }
                    Some(ProxyError::Timeout { .. }) => Some(Outcome::LocalOriginTimeout),
                    _ => None,
                },
            };
            if let Some(outcome) = outcome {
                resolved.record(index, outcome, policy);
            }
        }
        let latency_rule = cluster
            .policy
            .latency_outlier
            .map(LatencyOutlier::from)
            .or(latency_outlier);
        if let Some(rule) = latency_rule
            && let Some(started) = started
        {
            endpoint_state.outlier.record_latency(started.elapsed());
            latency_check(resolved, endpoint_state, rule);
        }
        let mut response = result?;
        // The client carries the request's context, with this endpoint, over to the response
        // (`crate::client`); from a client that does not, the response gets the endpoint here.
        let context = response
            .extensions_mut()
            .get_or_insert_default::<RequestContext>();
        if context.upstream.is_none()
            && let Some(authority) = &resolved.authorities[index]
        {
            context.upstream = Some(Upstream {
                authority: authority.clone(),
                info: Some(resolved.upstream_info[index].clone()),
            });
        }
        if let Some(cookie) = set_cookie {
            response
                .headers_mut()
                .append(http::header::SET_COOKIE, cookie);
        }
        Ok(response)
    }
}

fn latency_check(resolved: &Resolved, endpoint: &EndpointState, rule: LatencyOutlier) {
    let mut ewmas: Vec<f64> = resolved
        .states
        .iter()
        .filter_map(|s| s.outlier.latency_ewma_ms())
        .collect();
    if ewmas.len() < rule.min_endpoints.max(2) {
        return;
    }
    ewmas.sort_by(f64::total_cmp);
    let median = ewmas[ewmas.len() / 2];
    let now = Instant::now();
    if let Some(mine) = endpoint.outlier.latency_ewma_ms() {
        let ejected = resolved
            .states
            .iter()
            .filter(|s| s.outlier.is_ejected(now))
            .count();
        if mine > median * rule.factor && may_eject(ejected, resolved.states.len(), 10) {
            endpoint
                .outlier
                .eject_for_latency(now, rule.base_ejection_time);
            resolved.ejections.fetch_add(1, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests;
