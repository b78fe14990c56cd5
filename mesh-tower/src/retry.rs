//! Retries and hedging (Istio's `retries`; hedging through the `hedging.mesh.io/delay`
//! annotation), bounded by a [`RetryBudget`].
//!
//! - A try is retried when the route's `retryOn` covers its outcome: the status (`5xx`,
//!   `gateway-error`, `retriable-4xx`, listed codes), `grpc-status` in the response headers
//!   (`cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`, `unavailable`), a
//!   connect failure, a reset, or a per-try timeout (as a reset, so only on `5xx`,
//!   `gateway-error` or `reset`, as Envoy; a hedge goes on after one whatever `retryOn` says).
//! - Between tries: exponential backoff with full jitter (25 ms base and 250 ms cap unless the
//!   route says), or the upstream's `Retry-After` on 503/429 when it is within
//!   [`RetryLayer::max_retry_after`].
//! - A body of known length within the buffer limit (64 KiB by default) is read first and
//!   replayed; any other body is sent as it arrives with a copy kept up to the limit, and is
//!   replayed only if it ended within the limit before the retry (a gRPC unary call, a small
//!   chunked upload); otherwise the request is sent once. A response is handed on only when
//!   no retry will follow, so no retry happens after a body byte reached the caller.
//! - A retry avoids the endpoints earlier tries went to (`retryIgnorePreviousHosts`, on by
//!   default): the balancer picks again, up to 5 times, when it lands on one. A hedged try
//!   avoids those of the tries before it too, including the ones still in flight (the
//!   balancer notes each try's endpoint when it picks), as Envoy's hedge on a per-try timeout
//!   goes through the same host selection predicates as a retry.
//! - Each try carries `x-envoy-attempt-count`; the final response of a request whose retries
//!   ran out is flagged `URX`.
//! - A request without a body whose policy retries only tries the upstream never saw (a
//!   connect failure, a reset before the request, a refused stream; Istio's default) is not
//!   copied: the client hands the failed try's request back ([`Unsent`]) and the retry sends
//!   it. So a gRPC status (`unavailable`, `cancelled`, ...) is read for a retry only on a gRPC
//!   request (`content-type: application/grpc...`): Envoy reads it on any answer, but only a
//!   gRPC server sends one.
//!
//! ```
//! use mesh_core::model::{RetryOn, RetryPolicy};
//! use mesh_tower::body::{self, BoxBody, BoxError};
//! use mesh_tower::retry::RetryLayer;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
//! let tries = Arc::new(AtomicUsize::new(0));
//! let flaky = {
//!     let tries = tries.clone();
//!     tower::service_fn(move |_req: http::Request<BoxBody>| {
//!         let n = tries.fetch_add(1, Ordering::SeqCst);
//!         async move {
//!             let mut response = http::Response::new(body::empty());
//!             *response.status_mut() = if n == 0 { http::StatusCode::SERVICE_UNAVAILABLE } else { http::StatusCode::OK };
//!             Ok::<_, BoxError>(response)
//!         }
//!     })
//! };
//! let policy = RetryPolicy { retry_on: RetryOn::parse("5xx").unwrap(), ..RetryPolicy::istio_default() };
//! let service = ServiceBuilder::new().layer(RetryLayer::fixed(policy)).service(flaky);
//! let response = service.oneshot(http::Request::new(body::empty())).await.unwrap();
//! assert_eq!(response.status(), 200);
//! assert_eq!(tries.load(Ordering::SeqCst), 2);
//! # });
//! ```

mod budget;
mod future;
mod template;
mod unsent;

pub use budget::RetryBudget;
pub use future::ResponseFuture;
use future::Retries;
use template::{Kept, ReplayBody, Template};
use unsent::Resend;
pub use unsent::Unsent;

use crate::body::{self, BoxBody, BoxError, Replay};
use crate::context::RequestContext;
use crate::error::{self, ProxyError};
use crate::flags::{ResponseFlag, ResponseFlags};
use crate::rng::Rng;
use crate::route::Routed;
use crate::telemetry::{Attempts, SpanKind, SpanRecord, TraceContext};
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{Request, Response, StatusCode};
use mesh_core::model::{HedgePolicy, RetryCondition, RetryPolicy};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::util::BoxCloneService;
use tower_layer::Layer;
use tower_service::Service;

/// The default limit of a body kept for replay (Envoy's `per_request_buffer_limit_bytes`
/// is 16 KiB; 64 KiB covers typical JSON and gRPC unary messages).
pub const DEFAULT_BUFFER_LIMIT: usize = 64 * 1024;

/// Retries (and hedges) by the route's policy, or a fixed one.
#[derive(Clone, Debug)]
pub struct RetryLayer {
    fixed: Option<Arc<RetryPolicy>>,
    fixed_hedge: Option<HedgePolicy>,
    budget: RetryBudget,
    rng: Rng,
    buffer_limit: usize,
    max_retry_after: Duration,
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new(RetryBudget::default(), Rng::from_entropy())
    }
}

impl RetryLayer {
    /// Retries by each request's route policy, within `budget`, jittering with `rng`.
    pub fn new(budget: RetryBudget, rng: Rng) -> Self {
        Self {
            fixed: None,
            fixed_hedge: None,
            budget,
            rng,
            buffer_limit: DEFAULT_BUFFER_LIMIT,
            max_retry_after: Duration::from_secs(5),
        }
    }

    /// Retries every request by `policy`, with a default budget.
    pub fn fixed(policy: RetryPolicy) -> Self {
        Self {
            fixed: Some(Arc::new(policy)),
            ..Self::default()
        }
    }

    /// Hedges every request by `hedge` (routes configure it with the `hedging.mesh.io/delay`
    /// annotation instead).
    pub fn hedge(mut self, hedge: HedgePolicy) -> Self {
        self.fixed_hedge = Some(hedge);
        self
    }

    /// Replays bodies of at most `limit` bytes (larger ones are sent once).
    pub fn buffer_limit(mut self, limit: usize) -> Self {
        self.buffer_limit = limit;
        self
    }

    /// Honours `Retry-After` up to `max`; a longer one ends the retries.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// Uses `budget` (to share one among stacks).
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = budget;
        self
    }

    /// Jitters with `rng`.
    pub fn rng(mut self, rng: Rng) -> Self {
        self.rng = rng;
        self
    }
}

impl<S: Clone> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            spare: Arc::new(Spare {
                inner: inner.clone(),
                layer: self.clone(),
            }),
            inner,
        }
    }
}

/// The service [`RetryLayer`] makes.
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    spare: Arc<Spare<S>>,
}

/// The layer, and a copy of the inner service, shared by a [`Retry`] and its clones.
///
/// A request tried once (the usual) keeps only a reference to it for a retry that does not
/// come; a retry clones the service from it. Cloning the inner stack for every request instead
/// wrote the reference count of every `Arc` in it (the balancer's, the breaker's, the client's
/// pools), counts that all of the sidecar's worker threads write. The inner services are
/// clones of one another, sharing their state, so a try sent through a clone of this copy is
/// sent as through a clone of the service that took the first.
#[derive(Debug)]
struct Spare<S> {
    inner: S,
    layer: RetryLayer,
}

/// The exponential backoff before retry number `retry` (1-based), with full jitter: uniform
/// in `0..=min(max, base * 2^(retry-1))`.
pub fn backoff(retry: u32, base: Duration, max: Duration, rng: &Rng) -> Duration {
    let ceiling = base
        .checked_mul(1u32 << retry.saturating_sub(1).min(20))
        .unwrap_or(max)
        .min(max);
    let micros = u32::try_from(ceiling.as_micros()).unwrap_or(u32::MAX);
    Duration::from_micros(u64::from(rng.below(micros.saturating_add(1))))
}

/// Why a try is worth another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Done,
    Retry,
}

fn classify(policy: &RetryPolicy, result: &Result<Response<BoxBody>, BoxError>) -> Verdict {
    let on = &policy.retry_on;
    let retry = match result {
        Ok(response) => {
            let status = response.status().as_u16();
            let grpc = response
                .headers()
                .get(&crate::grpc::GRPC_STATUS)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok());
            on.retries_status(status)
                || grpc.is_some_and(|code| on.retries_grpc(code))
                || (on.contains(RetryCondition::EnvoyRateLimited)
                    && response.headers().contains_key(&X_ENVOY_RATELIMITED))
        }
        Err(e) => match e.downcast_ref::<ProxyError>() {
            Some(ProxyError::ConnectFailure { .. }) => [
                RetryCondition::ConnectFailure,
                RetryCondition::FiveXx,
                RetryCondition::GatewayError,
                RetryCondition::Reset,
                RetryCondition::ResetBeforeRequest,
            ]
            .into_iter()
            .any(|c| on.contains(c)),
            Some(ProxyError::UpstreamReset { source, .. }) => {
                let refused = error_chain_mentions(source.as_ref(), "REFUSED_STREAM");
                [
                    RetryCondition::Reset,
                    RetryCondition::FiveXx,
                    RetryCondition::GatewayError,
                ]
                .into_iter()
                .any(|c| on.contains(c))
                    || (refused && on.contains(RetryCondition::RefusedStream))
            }
            // Envoy resets the stream of a try whose timer fired and retries it as a reset
            // (`wouldRetryFromReset` with a local reset): only on `5xx`, `gateway-error` or
            // `reset`, so Istio's default policy answers 504 after the first such try.
            Some(ProxyError::Timeout { per_try: true }) => [
                RetryCondition::Reset,
                RetryCondition::FiveXx,
                RetryCondition::GatewayError,
            ]
            .into_iter()
            .any(|c| on.contains(c)),
            _ => false,
        },
    };
    if retry { Verdict::Retry } else { Verdict::Done }
}

fn is_per_try_timeout(result: &Result<Response<BoxBody>, BoxError>) -> bool {
    result.as_ref().is_err_and(|e| {
        matches!(
            e.downcast_ref::<ProxyError>(),
            Some(ProxyError::Timeout { per_try: true })
        )
    })
}

pub(crate) fn error_chain_mentions(
    error: &(dyn std::error::Error + 'static),
    needle: &str,
) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.to_string().contains(needle) || format!("{e:?}").contains(needle) {
            return true;
        }
        next = e.source();
    }
    false
}

/// `Retry-After` in seconds (the HTTP-date form is not honoured).
fn retry_after(result: &Result<Response<BoxBody>, BoxError>) -> Option<Duration> {
    let response = result.as_ref().ok()?;
    if !matches!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
    ) {
        return None;
    }
    let secs: u64 = response
        .headers()
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

const X_ENVOY_RATELIMITED: http::HeaderName = http::HeaderName::from_static("x-envoy-ratelimited");

/// One try with its span: a child of the request's span when the trace is collected, whose
/// id the upstream sees as its parent.
///
/// `inner` is the service itself for sequential retries (no clone per try) or a clone of it
/// for a hedge's concurrent tries.
fn traced_try<I>(
    mut inner: I,
    mut req: Request<BoxBody>,
    n: u32,
    per_try: Option<Duration>,
    rng: &Rng,
) -> impl std::future::Future<Output = Result<Response<BoxBody>, BoxError>> + Send + use<I>
where
    I: std::borrow::BorrowMut<Inner> + Send,
{
    let span = RequestContext::of(&req)
        .and_then(|c| c.trace.as_ref())
        .map(|scope| (scope.sink.clone(), scope.context.clone()))
        .map(|(sink, parent)| {
            let child = TraceContext {
                span_id: rng.next_u64() | 1,
                parent_span_id: Some(parent.span_id),
                ..parent
            };
            child.inject(req.headers_mut());
            (sink, child, std::time::SystemTime::now())
        });
    // Only a collected span reads it.
    let upstream_hint = span.as_ref().map(|_| req.uri().to_string());
    async move {
        let result = try_once(inner.borrow_mut(), req, per_try).await;
        if let Some((sink, child, start)) = span {
            let (status, error) = match &result {
                Ok(r) => (
                    r.status().as_u16().to_string(),
                    r.status().is_server_error(),
                ),
                Err(e) => (e.to_string(), true),
            };
            let mut attributes = vec![
                ("mesh.attempt".to_owned(), n.to_string()),
                ("http.response.status_code".to_owned(), status),
                ("url.full".to_owned(), upstream_hint.unwrap_or_default()),
            ];
            if let Some(info) = result
                .as_ref()
                .ok()
                .and_then(RequestContext::of_response)
                .and_then(|c| c.upstream.as_ref()?.info.as_ref())
            {
                attributes.push(("server.address".to_owned(), info.authority.clone()));
            }
            sink(SpanRecord {
                trace_id: child.trace_id,
                span_id: child.span_id,
                parent_span_id: child.parent_span_id,
                name: format!("attempt {n}"),
                kind: SpanKind::Client,
                start,
                end: std::time::SystemTime::now(),
                attributes,
                error,
            });
        }
        result
    }
}

/// Ends a request whose retries ran out: errors become their response, flagged `URX`.
fn exhausted(result: Result<Response<BoxBody>, BoxError>) -> Result<Response<BoxBody>, BoxError> {
    let mut response = match result {
        Ok(response) => response,
        Err(e) => error::to_response(&e),
    };
    ResponseFlags::mark(&mut response, ResponseFlag::UpstreamRetryLimitExceeded);
    Ok(response)
}

/// The service below the retry layer, erased.
type Inner = BoxCloneService<Request<BoxBody>, Response<BoxBody>, BoxError>;

impl<S> Service<Request<BoxBody>> for Retry<S>
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<BoxBody>) -> Self::Future {
        let context = RequestContext::of(&req);
        let routed = context.and_then(|c| c.routed.as_ref());
        let layer = &self.spare.layer;
        let policy = match &layer.fixed {
            Some(p) => Some(PolicyOf::Fixed(p.clone())),
            None => routed
                .filter(|r| r.route().retry.is_some())
                .map(|r| PolicyOf::Route(r.clone())),
        };
        let hedge: Option<HedgePolicy> = layer
            .fixed_hedge
            .clone()
            .or_else(|| routed.and_then(|r| r.route().hedge.clone()));
        layer.budget.record_request();
        let Some(policy) = policy.filter(|p| p.get().attempts > 0 || hedge.is_some()) else {
            // `self.inner` is ready: `poll_ready` asked it.
            return ResponseFuture::passed(self.inner.call(req));
        };
        let sampled = context.is_some_and(|c| c.trace.is_some());
        let first_try_inline = hedge.is_none()
            && policy.get().per_try_timeout.is_none()
            && !sampled
            && http_body::Body::is_end_stream(req.body());
        if first_try_inline {
            // The usual request: no body to read first, no per-try timer or span. The first
            // try is the inner service's own future; the retry loop starts only if its
            // answer asks for a retry.
            let on = &policy.get().retry_on;
            // A gRPC status is read only when it can matter: the lookup costs a hash.
            let unseen_only = on.retries_only_unseen(false)
                && (on.retries_only_unseen(true) || !RequestContext::is_grpc(&req));
            let remote_localities = policy.get().retry_remote_localities;
            if unseen_only {
                let copy_for_http2 = on.contains(RetryCondition::RefusedStream);
                let resend = Resend::first(&mut req, remote_localities, copy_for_http2);
                let retries = Retries {
                    spare: self.spare.clone(),
                    template: Kept::Unsent(resend),
                    policy,
                };
                return ResponseFuture::first(self.inner.call(req), retries);
            }
            let (parts, _) = req.into_parts();
            // Boxed before the first try is taken from it, so the kept request is not moved
            // again afterwards.
            let template = Box::new(Template::new(parts, ReplayBody::empty(), remote_localities));
            let mut retries = Retries {
                spare: self.spare.clone(),
                template: Kept::Copied(template),
                policy,
            };
            if let Some(first) = retries.template.attempt(1) {
                let future = self.inner.call(first);
                return ResponseFuture::first(future, retries);
            }
            // An empty body can always be sent; were it not, the loop answers as it does for
            // any body that cannot be sent.
            return ResponseFuture::looping(retries.into_loop(None));
        }
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        // Erased here, where `S::Future: Send` is known, so the async tries below need no
        // higher-ranked Send proofs about `S`.
        let mut inner: Inner = BoxCloneService::new(inner);
        let layer = layer.clone();
        ResponseFuture::looping(Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = match body::replayable(body, layer.buffer_limit).await? {
                Replay::Buffered(bytes) => ReplayBody::Buffered(bytes),
                Replay::Streaming(body)
                    if http_body::Body::size_hint(&body).lower() > layer.buffer_limit as u64 =>
                {
                    // Known to be too large to replay: one try, no retries.
                    return try_once(&mut inner, Request::from_parts(parts, body), None).await;
                }
                Replay::Streaming(body) => ReplayBody::tee(body, layer.buffer_limit),
            };
            let remote_localities = policy.get().retry_remote_localities;
            let template = Template::new(parts, body, remote_localities);
            match hedge {
                Some(hedge) => hedged(inner, template, policy, hedge, layer).await,
                None => {
                    let template = Kept::Copied(Box::new(template));
                    retried(inner, template, policy, layer, None).await
                }
            }
        }))
    }
}

/// A request's retry policy: the layer's fixed one, or its route's (read through the route,
/// not copied per request).
#[derive(Clone, Debug)]
enum PolicyOf {
    Fixed(Arc<RetryPolicy>),
    Route(Routed),
}

impl PolicyOf {
    fn get(&self) -> &RetryPolicy {
        match self {
            PolicyOf::Fixed(policy) => policy,
            // Made only for a route with a policy.
            PolicyOf::Route(routed) => routed.route().retry.as_ref().unwrap_or(&NO_RETRIES),
        }
    }
}

static NO_RETRIES: RetryPolicy = RetryPolicy::NONE;

async fn try_once(
    inner: &mut Inner,
    req: Request<BoxBody>,
    per_try: Option<Duration>,
) -> Result<Response<BoxBody>, BoxError> {
    std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
    let future = inner.call(req);
    match per_try {
        Some(limit) => match tokio::time::timeout(limit, future).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::Timeout { per_try: true }.into()),
        },
        None => future.await,
    }
}

/// Sends the tries one after another, with backoff, until one needs no retry or the
/// policy or the budget ends them. `first` is the first try's result when it was already sent
/// (by [`ResponseFuture`]).
async fn retried(
    mut inner: Inner,
    mut template: Kept,
    policy: PolicyOf,
    layer: RetryLayer,
    mut first: Option<Result<Response<BoxBody>, BoxError>>,
) -> Result<Response<BoxBody>, BoxError> {
    let policy = policy.get();
    let mut attempt = 1;
    let mut previous: Option<Result<Response<BoxBody>, BoxError>> = None;
    // The endpoints of the tries so far, for a retry to avoid (`retryIgnorePreviousHosts`).
    let mut tried: Vec<http::uri::Authority> = Vec::new();
    loop {
        let mut picked = None;
        let result = match first.take() {
            Some(result) => result,
            None => {
                let Some(mut req) = template.attempt(attempt) else {
                    // The body cannot be sent again (it had not ended, or was too large).
                    return previous.unwrap_or_else(|| {
                        Err(ProxyError::BadRequest("request body already sent".into()).into())
                    });
                };
                if policy.ignore_previous_hosts {
                    let context = RequestContext::of_mut(&mut req);
                    context.previous_hosts = (!tried.is_empty()).then(|| Arc::from(&tried[..]));
                    // A try cut off by its timer says nothing of its endpoint: the balancer
                    // notes it here.
                    if policy.per_try_timeout.is_some() {
                        let slot = Arc::new(std::sync::OnceLock::new());
                        context.picked = Some(slot.clone());
                        picked = Some(slot);
                    }
                }
                traced_try(&mut inner, req, attempt, policy.per_try_timeout, &layer.rng).await
            }
        };
        // Telemetry reads a missing count as one try.
        let result = result.map(|mut r| {
            if attempt > 1 {
                r.extensions_mut().insert(Attempts(attempt));
            }
            r
        });
        if let Err(e) = &result
            && let Some(ProxyError::RetryOverflow(_)) = e.downcast_ref::<ProxyError>()
            && let Some(previous) = previous
        {
            // The cluster's maxRetries were all in flight: the previous answer stands.
            return previous;
        }
        if classify(policy, &result) == Verdict::Done {
            return result;
        }
        if attempt > policy.attempts {
            return exhausted(result);
        }
        if policy.ignore_previous_hosts
            && let Some(endpoint) =
                endpoint_of(&result).or_else(|| picked.as_ref().and_then(|p| p.get().cloned()))
            && !tried.contains(&endpoint)
        {
            tried.push(endpoint);
        }
        if !template.can_replay() {
            // The request was to come back from the try and did not (the upstream saw it, or
            // the failure was not the client's to hand it back): it stands as answered.
            return result;
        }
        let wait = match retry_after(&result) {
            Some(wait) if wait > layer.max_retry_after => return exhausted(result),
            Some(wait) => wait,
            None => backoff(attempt, policy.backoff_base, policy.backoff_max, &layer.rng),
        };
        if !layer.budget.try_retry() {
            metrics::counter!("mesh_retry_budget_exhausted_total").increment(1);
            return exhausted(result);
        }
        metrics::counter!("mesh_retries_total").increment(1);
        tokio::time::sleep(wait).await;
        previous = Some(result);
        attempt += 1;
    }
}

/// The endpoint a finished try went to: the response's (the client carries the request's
/// context over to it), or the one a connection failure or reset names.
fn endpoint_of(result: &Result<Response<BoxBody>, BoxError>) -> Option<http::uri::Authority> {
    match result {
        Ok(response) => RequestContext::of_response(response)?
            .upstream
            .as_ref()
            .map(|u| u.authority.clone()),
        Err(e) => match e.downcast_ref::<ProxyError>()? {
            ProxyError::ConnectFailure { endpoint, .. }
            | ProxyError::UpstreamReset { endpoint, .. } => endpoint.parse().ok(),
            _ => None,
        },
    }
}

/// Sends a try, and another each `delay` without an answer (up to `max_attempts`, each
/// extra one paid from the budget); the first answer that needs no retry wins and the
/// others are cancelled (dropped). With `ignore_previous_hosts`, each try avoids the
/// endpoints of the tries before it, whether still in flight or finished.
async fn hedged(
    inner: Inner,
    mut template: Template,
    policy: PolicyOf,
    hedge: HedgePolicy,
    layer: RetryLayer,
) -> Result<Response<BoxBody>, BoxError> {
    let policy = policy.get();
    let mut in_flight = FuturesUnordered::new();
    let mut started = 1;
    let mut budget_left = true;
    let most = hedge.max_attempts.max(policy.attempts + 1);
    // The endpoints of the tries so far, in flight or finished, for each later one to avoid
    // (`retryIgnorePreviousHosts`, as Envoy's hedged try goes through the same host
    // selection predicates as a retry).
    let mut hosts = policy.ignore_previous_hosts.then(TriedHosts::default);
    let Some(mut first) = template.attempt(started) else {
        return Err(ProxyError::BadRequest("request body already sent".into()).into());
    };
    if let Some(hosts) = &mut hosts {
        hosts.mark(&mut first);
    }
    in_flight.push(traced_try(
        inner.clone(),
        first,
        started,
        policy.per_try_timeout,
        &layer.rng,
    ));
    let mut last = None;
    loop {
        let may_hedge = budget_left && started < hedge.max_attempts;
        tokio::select! {
            finished = in_flight.next() => {
                let Some(result) = finished else { break };
                // A hedge goes on after a try's timer fired whatever `retryOn` says, as
                // Envoy's hedge on per-try timeout does: no stream was reset.
                if classify(policy, &result) == Verdict::Done && !is_per_try_timeout(&result) {
                    return result;
                }
                last = Some(result);
                if in_flight.is_empty() {
                    // Every try so far failed: go on as a retry would, without backoff.
                    if started >= most {
                        break;
                    }
                    let Some(mut req) = template.attempt(started + 1) else { break };
                    if !layer.budget.try_retry() {
                        break;
                    }
                    if let Some(hosts) = &mut hosts {
                        hosts.mark(&mut req);
                    }
                    started += 1;
                    in_flight.push(traced_try(inner.clone(), req, started, policy.per_try_timeout, &layer.rng));
                }
            }
            () = tokio::time::sleep(hedge.delay), if may_hedge => {
                match template.attempt(started + 1) {
                    Some(mut req) if layer.budget.try_retry() => {
                        if let Some(hosts) = &mut hosts {
                            hosts.mark(&mut req);
                        }
                        started += 1;
                        in_flight.push(traced_try(inner.clone(), req, started, policy.per_try_timeout, &layer.rng));
                    }
                    // No budget, or a body not (yet) replayable: wait for the tries in flight.
                    _ => budget_left = false,
                }
            }
        }
    }
    match last {
        Some(result) => exhausted(result),
        None => Err(ProxyError::NoHealthyUpstream("no hedged try finished".into()).into()),
    }
}

/// Where the balancer notes the endpoint of each try of a hedged request: a try still in
/// flight has no outcome to read it from, and one cut off by its per-try timer names none.
#[derive(Default)]
struct TriedHosts(Vec<Arc<std::sync::OnceLock<http::uri::Authority>>>);

impl TriedHosts {
    /// Gives `req` the endpoints of the tries before it to avoid, and a slot of its own.
    fn mark(&mut self, req: &mut Request<BoxBody>) {
        let mut tried: Vec<http::uri::Authority> = Vec::with_capacity(self.0.len());
        for endpoint in self.0.iter().filter_map(|slot| slot.get()) {
            if !tried.contains(endpoint) {
                tried.push(endpoint.clone());
            }
        }
        let slot = Arc::new(std::sync::OnceLock::new());
        let context = RequestContext::of_mut(req);
        context.previous_hosts = (!tried.is_empty()).then(|| Arc::from(tried));
        context.picked = Some(slot.clone());
        self.0.push(slot);
    }
}

#[cfg(test)]
mod tests;
