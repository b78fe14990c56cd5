//! Circuit breaking (Istio's `connectionPool`), per cluster, as Envoy's circuit breakers:
//! - on HTTP/1.1, at most `maxConnections` requests in flight (one per connection), and at
//!   most `http1MaxPendingRequests` waiting for a connection; past both, a request fails at
//!   once with 503 and flag `UO`; nothing queues without bound;
//! - on both protocols, at most `http2MaxRequests` requests in flight (Envoy's `max_requests`);
//!   one more fails at once with 503 `UO`: it does not wait (on HTTP/1.1 it is counted when
//!   it has its connection, as Envoy counts a stream when it is attached to one).
//!
//! Retries (tries after the first) are
//! also bounded: at most `maxRetries` of them in flight per cluster, or, with Envoy's retry
//! budget (xDS), at most a share of the cluster's requests in flight (never fewer than its
//! floor); one more is refused with [`ProxyError::RetryOverflow`], and the retry layer
//! answers with the previous try's result.
//!
//! ```
//! use mesh_tower::breaker::Limits;
//! let limits = Limits { connections: 1, pending: 1, requests: 10, retries: 3 };
//! assert_eq!(limits.connections, 1);
//! ```

use crate::body::{BoxBody, BoxError};
use crate::context::RequestContext;
use crate::error::ProxyError;
use foldhash::HashMap;
use futures_util::future::{BoxFuture, Either};
use http::{Request, Response};
use mesh_core::model::{Cluster, ClusterName, ClusterRetryBudget, Protocol};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_layer::Layer;
use tower_service::Service;

/// A limit of `u32::MAX` (Istio's default for each) is no limit: no count reaches it, so it is
/// not counted.
const UNLIMITED: u32 = u32::MAX;

/// A cluster's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Requests in flight on HTTP/1.1, one per connection (`maxConnections`; no limit here
    /// on HTTP/2, whose requests share connections).
    pub connections: u32,
    /// Requests waiting for a connection (`http1MaxPendingRequests`).
    pub pending: u32,
    /// Requests in flight, on either protocol (`http2MaxRequests`).
    pub requests: u32,
    /// Retries in flight.
    pub retries: u32,
}

impl Limits {
    /// The limits `cluster`'s connection pool policy sets.
    pub fn of(cluster: &Cluster) -> Self {
        let pool = &cluster.policy.connection_pool;
        let connections = match cluster.protocol {
            Protocol::Http2 | Protocol::Grpc => UNLIMITED,
            _ => pool.max_connections,
        };
        Self {
            connections,
            pending: pool.http1_max_pending_requests,
            requests: pool.http2_max_requests,
            retries: pool.max_retries,
        }
    }
}

/// Overflow counters, by kind.
#[derive(Debug, Default)]
pub struct BreakerStats {
    /// Requests refused because the connection and pending limits were both reached.
    pub overflow_pending: AtomicU64,
    /// Requests refused because `http2MaxRequests` requests were in flight.
    pub overflow_requests: AtomicU64,
    /// Retries refused because `maxRetries` retries were in flight.
    pub overflow_retries: AtomicU64,
}

#[derive(Debug)]
struct Gate {
    limits: Limits,
    /// HTTP/1.1 connections (one request each).
    active: Arc<Semaphore>,
    pending: Arc<Semaphore>,
    /// Requests in flight (`http2MaxRequests`).
    in_flight: Arc<Semaphore>,
    retries: Arc<Semaphore>,
    /// Requests in flight (first tries and retries), counted with a retry budget.
    requests: AtomicUsize,
    /// Retries in flight, counted with a retry budget.
    retries_in_flight: AtomicUsize,
}

/// Decrements a [`Gate`] counter when a try ends, however it ends.
struct Counted(Arc<Gate>, fn(&Gate) -> &AtomicUsize);

impl Counted {
    fn new(gate: &Arc<Gate>, counter: fn(&Gate) -> &AtomicUsize) -> Self {
        counter(gate).fetch_add(1, Ordering::AcqRel);
        Self(gate.clone(), counter)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a try holds until it ends: its slot in flight, its retry admission and its place in
/// the request count (released on drop).
#[derive(Default)]
struct Held {
    _active: Option<OwnedSemaphorePermit>,
    _in_flight: Option<OwnedSemaphorePermit>,
    _retry: Option<OwnedSemaphorePermit>,
    _retry_counted: Option<Counted>,
    _request: Option<Counted>,
}

impl Gate {
    /// Admits one retry, by the budget when the cluster has one, else by `maxRetries`;
    /// `None` when the limit is reached.
    fn admit_retry(gate: &Arc<Gate>, budget: Option<ClusterRetryBudget>) -> Option<Held> {
        match budget {
            Some(b) => {
                // This retry is already counted among the requests.
                let requests = gate.requests.load(Ordering::Acquire);
                let allowed = (requests * b.budget_per_mille as usize / 1000)
                    .max(b.min_retry_concurrency as usize);
                (gate.retries_in_flight.load(Ordering::Acquire) < allowed).then(|| Held {
                    _retry_counted: Some(Counted::new(gate, |g| &g.retries_in_flight)),
                    ..Held::default()
                })
            }
            None => gate.retries.clone().try_acquire_owned().ok().map(|p| Held {
                _retry: Some(p),
                ..Held::default()
            }),
        }
    }
}

impl Gate {
    fn new(limits: Limits) -> Self {
        let cap = |n: u32| (n as usize).min(Semaphore::MAX_PERMITS);
        Self {
            limits,
            active: Arc::new(Semaphore::new(cap(limits.connections))),
            pending: Arc::new(Semaphore::new(cap(limits.pending))),
            in_flight: Arc::new(Semaphore::new(cap(limits.requests))),
            retries: Arc::new(Semaphore::new(cap(limits.retries))),
            requests: AtomicUsize::new(0),
            retries_in_flight: AtomicUsize::new(0),
        }
    }
}

/// Enforces each cluster's limits.
#[derive(Clone, Debug, Default)]
pub struct BreakerLayer {
    gates: Arc<RwLock<HashMap<ClusterName, Arc<Gate>>>>,
    stats: Arc<BreakerStats>,
}

impl BreakerLayer {
    /// A breaker with no cluster seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The overflow counters.
    pub fn stats(&self) -> Arc<BreakerStats> {
        self.stats.clone()
    }

    /// The gate of `cluster` for its `limits` (`Limits::of(cluster)`, which the caller has
    /// already read), made anew when they change (requests in flight under the old limits
    /// finish under them).
    fn gate(&self, cluster: &Cluster, limits: Limits) -> Arc<Gate> {
        if let Some(g) = self
            .gates
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&cluster.name)
            && g.limits == limits
        {
            return g.clone();
        }
        let mut gates = self.gates.write().unwrap_or_else(|p| p.into_inner());
        let gate = gates
            .entry(cluster.name.clone())
            .or_insert_with(|| Arc::new(Gate::new(limits)));
        if gate.limits != limits {
            *gate = Arc::new(Gate::new(limits));
        }
        gate.clone()
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;

    fn layer(&self, inner: S) -> Breaker<S> {
        Breaker {
            layer: self.clone(),
            inner,
        }
    }
}

/// The service [`BreakerLayer`] makes.
#[derive(Clone, Debug)]
pub struct Breaker<S> {
    layer: BreakerLayer,
    inner: S,
}

/// An admission: a slot in flight, held until the try ends.
async fn admit(
    gate: Arc<Gate>,
    stats: Arc<BreakerStats>,
    name: String,
) -> Result<OwnedSemaphorePermit, ProxyError> {
    if let Ok(permit) = gate.active.clone().try_acquire_owned() {
        return Ok(permit);
    }
    let Ok(waiting) = gate.pending.clone().try_acquire_owned() else {
        stats.overflow_pending.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("mesh_circuit_breaker_overflow_total", "cluster" => name.clone(), "kind" => "pending").increment(1);
        return Err(ProxyError::Overflow(format!(
            "{name}: pending requests limit reached"
        )));
    };
    let permit = gate
        .active
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ProxyError::Overflow(format!("{name}: closed")))?;
    drop(waiting);
    Ok(permit)
}

/// A slot among the `http2MaxRequests` requests in flight, or an overflow at once (Envoy's
/// `max_requests` fails a stream, it never queues it).
fn admit_request(
    gate: &Gate,
    stats: &BreakerStats,
    name: &ClusterName,
) -> Result<Option<OwnedSemaphorePermit>, ProxyError> {
    if gate.limits.requests == UNLIMITED {
        return Ok(None);
    }
    match gate.in_flight.clone().try_acquire_owned() {
        Ok(permit) => Ok(Some(permit)),
        Err(_) => {
            stats.overflow_requests.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("mesh_circuit_breaker_overflow_total", "cluster" => name.to_string(), "kind" => "requests").increment(1);
            Err(ProxyError::Overflow(format!(
                "{name}: active requests limit reached"
            )))
        }
    }
}

impl<S, B> Service<Request<B>> for Breaker<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future =
        Either<Admitted<S::Future>, BoxFuture<'static, Result<Response<BoxBody>, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let context = RequestContext::of(&req);
        let Some(cluster) = context.and_then(|c| c.target.as_ref()).map(|t| &t.cluster) else {
            return Either::Left(Admitted {
                inner: self.inner.call(req),
                held: None,
            });
        };
        let limits = Limits::of(cluster);
        let is_retry = context
            .and_then(|c| c.attempt)
            .is_some_and(|a| a.number > 1);
        let budget = cluster.policy.connection_pool.retry_budget;
        // Istio's default limits are all `u32::MAX`, which no count reaches: a try with nothing
        // to count or to admit touches no state shared with the other workers.
        let limited_active = limits.connections != UNLIMITED;
        let limited_requests = limits.requests != UNLIMITED;
        let limited_retry = is_retry && limits.retries != UNLIMITED;
        if !(limited_active || limited_requests || budget.is_some() || limited_retry) {
            return Either::Left(Admitted {
                inner: self.inner.call(req),
                held: None,
            });
        }
        let gate = self.layer.gate(cluster, limits);
        let request = budget.map(|_| Counted::new(&gate, |g| &g.requests));
        let mut held = if is_retry {
            match Gate::admit_retry(&gate, budget) {
                Some(held) => held,
                None => {
                    self.layer
                        .stats
                        .overflow_retries
                        .fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("mesh_circuit_breaker_overflow_total", "cluster" => cluster.name.to_string(), "kind" => "retries").increment(1);
                    let e = ProxyError::RetryOverflow(format!(
                        "{}: retries limit reached",
                        cluster.name
                    ));
                    return Either::Right(Box::pin(async move { Err(e.into()) }));
                }
            }
        } else {
            Held::default()
        };
        held._request = request;
        let overflow = |e: ProxyError| -> Self::Future {
            Either::Right(Box::pin(async move { Err(e.into()) }))
        };
        if !limited_active {
            match admit_request(&gate, &self.layer.stats, &cluster.name) {
                Ok(permit) => held._in_flight = permit,
                Err(e) => return overflow(e),
            }
            return Either::Left(Admitted {
                inner: self.inner.call(req),
                held: Some(held),
            });
        }
        // Fast path: a free connection, no waiting.
        if let Ok(permit) = gate.active.clone().try_acquire_owned() {
            held._active = Some(permit);
            match admit_request(&gate, &self.layer.stats, &cluster.name) {
                Ok(permit) => held._in_flight = permit,
                Err(e) => return overflow(e),
            }
            return Either::Left(Admitted {
                inner: self.inner.call(req),
                held: Some(held),
            });
        }
        // The call waits for a slot: the future owns the ready service.
        let name = cluster.name.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let stats = self.layer.stats.clone();
        let admission = admit(gate.clone(), stats.clone(), name.to_string());
        Either::Right(Box::pin(async move {
            held._active = Some(admission.await?);
            held._in_flight = admit_request(&gate, &stats, &name)?;
            let result = inner.call(req).await;
            drop(held);
            result
        }))
    }
}

pin_project_lite::pin_project! {
    /// [`Breaker`]'s response future for a request admitted at once: the inner future,
    /// holding the request's slot until it ends.
    pub struct Admitted<F> {
        #[pin]
        inner: F,
        held: Option<Held>,
    }
}

impl<F: std::future::Future> std::future::Future for Admitted<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        // The slot is free once the response (or the failure) is here.
        this.held.take();
        Poll::Ready(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use crate::split::Target;
    use mesh_core::model::{ConnectionPool, TrafficPolicy};
    use std::time::Duration;
    use tower::ServiceExt;

    /// A request the split sent to `cluster`.
    fn request_to(cluster: &Arc<Cluster>) -> Request<BoxBody> {
        let mut req = Request::new(body::empty());
        RequestContext::of_mut(&mut req).target = Some(Target {
            cluster: cluster.clone(),
        });
        req
    }

    /// The upstream of the limit tests: answers 200 after a second.
    async fn answer_after_a_second(_: Request<BoxBody>) -> Result<Response<BoxBody>, BoxError> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(Response::new(body::empty()))
    }

    fn cluster(pool: ConnectionPool) -> Arc<Cluster> {
        Arc::new(Cluster {
            name: ClusterName::new("c"),
            service: "s".into(),
            port: 80,
            subset: None,
            subset_labels: Default::default(),
            protocol: Protocol::Http,
            endpoints: vec![],
            policy: TrafficPolicy {
                connection_pool: pool,
                ..TrafficPolicy::default()
            },
        })
    }

    #[tokio::test]
    async fn tries_to_a_cluster_with_istio_default_limits_take_no_slot() {
        let cluster = cluster(ConnectionPool::default());
        let ok = tower::service_fn(|_req: Request<BoxBody>| async {
            Ok::<_, BoxError>(Response::new(body::empty()))
        });
        let layer = BreakerLayer::new();
        let svc = layer.layer(ok);
        for number in [1, 2] {
            let mut req = Request::new(body::empty());
            let context = RequestContext::of_mut(&mut req);
            context.target = Some(Target {
                cluster: cluster.clone(),
            });
            context.attempt = Some(crate::telemetry::Attempt {
                number,
                remote_localities: false,
            });
            assert!(svc.clone().oneshot(req).await.is_ok());
        }
        // No limit to enforce and no budget: no gate, so nothing the workers share is written.
        assert!(layer.gates.read().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn past_max_retries_in_flight_a_retry_is_refused_at_once_and_first_tries_are_not() {
        let cluster = cluster(ConnectionPool {
            max_retries: 1,
            ..ConnectionPool::default()
        });
        let slow = tower::service_fn(answer_after_a_second);
        let layer = BreakerLayer::new();
        let svc = layer.layer(slow);
        let started = tokio::time::Instant::now();
        // Two retries (second tries) and three first tries at once.
        let tries = [2, 2, 1, 1, 1].map(|number| {
            let mut req = request_to(&cluster);
            RequestContext::of_mut(&mut req).attempt = Some(crate::telemetry::Attempt {
                number,
                remote_localities: false,
            });
            let svc = svc.clone();
            async move {
                let result = svc.oneshot(req).await;
                let overflow = result.as_ref().err().is_some_and(|e| {
                    matches!(
                        e.downcast_ref::<ProxyError>(),
                        Some(ProxyError::RetryOverflow(_))
                    )
                });
                (
                    number,
                    result.is_ok(),
                    overflow,
                    tokio::time::Instant::now(),
                )
            }
        });
        let results = futures_util::future::join_all(tries).await;
        let refused: Vec<_> = results.iter().filter(|r| r.2).collect();
        assert_eq!(refused.len(), 1, "one retry over maxRetries: {results:?}");
        assert_eq!(refused[0].0, 2, "only retries count against maxRetries");
        assert_eq!(refused[0].3, started, "refused at once");
        assert_eq!(results.iter().filter(|r| r.1).count(), 4);
        assert_eq!(layer.stats().overflow_retries.load(Ordering::Relaxed), 1);
        // Once the retry in flight ends, another may go.
        let mut req = request_to(&cluster);
        RequestContext::of_mut(&mut req).attempt = Some(crate::telemetry::Attempt {
            number: 3,
            remote_localities: false,
        });
        assert!(svc.oneshot(req).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_budget_allows_a_share_of_the_requests_in_flight_with_a_floor() {
        use mesh_core::model::ClusterRetryBudget;
        for (min_retry_concurrency, admitted) in [(1, 2), (3, 3)] {
            // Envoy's default share, 20%: with 10 first tries in flight, a retry k (k in
            // flight) is admitted while k < 20% of (10 + k + 1).
            let cluster = cluster(ConnectionPool {
                max_retries: 0,
                retry_budget: Some(ClusterRetryBudget {
                    budget_per_mille: 200,
                    min_retry_concurrency,
                }),
                ..ConnectionPool::default()
            });
            let slow = tower::service_fn(answer_after_a_second);
            let layer = BreakerLayer::new();
            let svc = layer.layer(slow);
            let tries = (0..15).map(|i| {
                let mut req = request_to(&cluster);
                RequestContext::of_mut(&mut req).attempt = Some(crate::telemetry::Attempt {
                    number: if i < 10 { 1 } else { 2 },
                    remote_localities: false,
                });
                svc.clone().oneshot(req)
            });
            let results = futures_util::future::join_all(tries).await;
            let retries_ok = results[10..].iter().filter(|r| r.is_ok()).count();
            assert!(results[..10].iter().all(Result::is_ok), "first tries pass");
            assert_eq!(retries_ok, admitted, "floor {min_retry_concurrency}");
            assert_eq!(
                layer.stats().overflow_retries.load(Ordering::Relaxed),
                5 - admitted as u64
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn past_http2_max_requests_a_request_fails_at_once_on_either_protocol() {
        for protocol in [Protocol::Http, Protocol::Http2, Protocol::Grpc] {
            let cluster = Arc::new(Cluster {
                protocol,
                ..Arc::unwrap_or_clone(cluster(ConnectionPool {
                    http2_max_requests: 1,
                    // A pending queue is for a connection to come free: it does not hold a
                    // request over the requests limit.
                    http1_max_pending_requests: 10,
                    ..ConnectionPool::default()
                }))
            });
            let slow = tower::service_fn(answer_after_a_second);
            let layer = BreakerLayer::new();
            let svc = layer.layer(slow);
            let started = tokio::time::Instant::now();
            let tries = (0..3).map(|_| {
                let req = request_to(&cluster);
                let svc = svc.clone();
                async move {
                    let response = svc
                        .oneshot(req)
                        .await
                        .unwrap_or_else(|e| crate::error::to_response(&e));
                    (response, tokio::time::Instant::now())
                }
            });
            let results = futures_util::future::join_all(tries).await;
            let ok: Vec<_> = results.iter().filter(|(r, _)| r.status() == 200).collect();
            assert_eq!(ok.len(), 1, "{protocol:?}");
            assert_eq!(ok[0].1, started + Duration::from_secs(1));
            for (response, at) in results.iter().filter(|(r, _)| r.status() != 200) {
                assert_eq!(response.status(), 503, "{protocol:?}");
                assert!(
                    crate::flags::ResponseFlags::of_response(response)
                        .contains(crate::flags::ResponseFlag::UpstreamOverflow),
                    "{protocol:?}: UO"
                );
                assert_eq!(*at, started, "{protocol:?}: refused at once");
            }
            assert_eq!(layer.stats().overflow_requests.load(Ordering::Relaxed), 2);
            // Once the request in flight ends, another may go.
            let req = request_to(&cluster);
            assert!(svc.oneshot(req).await.is_ok(), "{protocol:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn on_http1_a_pending_request_counts_against_max_requests_only_once_it_has_a_connection()
    {
        // One connection, one pending, one request in flight: the pending request waits for
        // the connection (as Envoy counts a stream against max_requests when it is attached).
        let cluster = cluster(ConnectionPool {
            max_connections: 1,
            http1_max_pending_requests: 1,
            http2_max_requests: 1,
            ..ConnectionPool::default()
        });
        let slow = tower::service_fn(answer_after_a_second);
        let layer = BreakerLayer::new();
        let svc = layer.layer(slow);
        let started = tokio::time::Instant::now();
        let tries = (0..3).map(|_| {
            let req = request_to(&cluster);
            svc.clone().oneshot(req)
        });
        let results = futures_util::future::join_all(tries).await;
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 2);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(layer.stats().overflow_pending.load(Ordering::Relaxed), 1);
        assert_eq!(layer.stats().overflow_requests.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_active_and_pending_limits_requests_fail_at_once() {
        let cluster = Arc::new(Cluster {
            name: ClusterName::new("c"),
            service: "s".into(),
            port: 80,
            subset: None,
            subset_labels: Default::default(),
            protocol: Protocol::Http,
            endpoints: vec![],
            policy: TrafficPolicy {
                connection_pool: ConnectionPool {
                    max_connections: 1,
                    http1_max_pending_requests: 1,
                    ..ConnectionPool::default()
                },
                ..TrafficPolicy::default()
            },
        });
        let slow = tower::service_fn(answer_after_a_second);
        let layer = BreakerLayer::new();
        let svc = layer.layer(slow);
        let started = tokio::time::Instant::now();
        let tries = (0..5).map(|_| {
            let req = request_to(&cluster);
            let svc = svc.clone();
            async move {
                let result = svc.oneshot(req).await;
                (result.is_ok(), tokio::time::Instant::now())
            }
        });
        let mut ok = 0;
        for (success, at) in futures_util::future::join_all(tries).await {
            if success {
                ok += 1;
            } else {
                assert_eq!(at, started, "an overflow fails at once");
            }
        }
        assert_eq!(ok, 2, "one in flight and one pending");
        assert_eq!(layer.stats().overflow_pending.load(Ordering::Relaxed), 3);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
