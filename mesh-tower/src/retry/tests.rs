use super::*;
use futures_util::future::BoxFuture;
use http::HeaderValue;
use mesh_core::model::RetryOn;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use tower::ServiceExt;

/// An upstream that answers try `n` (0-based) with `script(n)`, recording each try's
/// `x-envoy-attempt-count`.
#[derive(Clone)]
struct Scripted {
    tries: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<String>>>,
    script: Arc<dyn Fn(usize) -> Step + Send + Sync>,
}

#[derive(Clone)]
enum Step {
    Status(u16, &'static [(&'static str, &'static str)]),
    /// A connect failure, the request given back as [`crate::client`] gives it.
    ConnectFailure,
    /// A connect failure whose request is not given back.
    ConnectFailureKept,
    Hang,
}

impl Scripted {
    fn new(script: impl Fn(usize) -> Step + Send + Sync + 'static) -> Self {
        Self {
            tries: Arc::default(),
            seen: Arc::default(),
            script: Arc::new(script),
        }
    }

    fn tries(&self) -> usize {
        self.tries.load(Ordering::SeqCst)
    }
}

impl Service<Request<BoxBody>> for Scripted {
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<BoxBody>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        let n = self.tries.fetch_add(1, Ordering::SeqCst);
        if let Some(v) = req.headers().get("x-envoy-attempt-count") {
            self.seen
                .lock()
                .unwrap()
                .push(v.to_str().unwrap().to_owned());
        }
        let step = (self.script)(n);
        let failed = || -> BoxError {
            ProxyError::ConnectFailure {
                endpoint: "127.0.0.1:1".into(),
                source: "connection refused".into(),
            }
            .into()
        };
        let kept = match step {
            Step::ConnectFailure => {
                Unsent::give_back(req);
                None
            }
            _ => Some(req),
        };
        Box::pin(async move {
            let _request_until_answered = kept;
            let respond = |status: u16, headers: &'static [(&'static str, &'static str)]| {
                let mut r = Response::new(body::full(format!("try {n}")));
                *r.status_mut() = StatusCode::from_u16(status).unwrap();
                for (k, v) in headers {
                    r.headers_mut().insert(*k, HeaderValue::from_static(v));
                }
                r
            };
            match step {
                Step::Status(status, headers) => Ok(respond(status, headers)),
                Step::ConnectFailure | Step::ConnectFailureKept => Err(failed()),
                Step::Hang => std::future::pending().await,
            }
        })
    }
}

fn policy(on: &str, attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        retry_on: RetryOn::parse(on).unwrap(),
        ..RetryPolicy::istio_default()
    }
}

fn layer(policy: RetryPolicy) -> RetryLayer {
    RetryLayer::fixed(policy).rng(Rng::with_seed(3))
}

async fn send(layer: &RetryLayer, upstream: &Scripted) -> Response<BoxBody> {
    send_request(layer, upstream, Request::new(body::empty())).await
}

async fn send_request(
    layer: &RetryLayer,
    upstream: &Scripted,
    req: Request<BoxBody>,
) -> Response<BoxBody> {
    layer
        .layer(upstream.clone())
        .oneshot(req)
        .await
        .unwrap_or_else(|e| error::to_response(&e))
}

fn grpc_request() -> Request<BoxBody> {
    let mut req = Request::new(body::empty());
    req.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    req
}

#[tokio::test(start_paused = true)]
async fn each_condition_retries_what_it_names_and_nothing_else() {
    let always = |step: Step| move |_| step.clone();
    let cases: Vec<(&str, Step, usize)> = vec![
        ("5xx", Step::Status(500, &[]), 4),
        ("5xx", Step::Status(404, &[]), 1),
        ("gateway-error", Step::Status(503, &[]), 4),
        ("gateway-error", Step::Status(500, &[]), 1),
        ("retriable-4xx", Step::Status(409, &[]), 4),
        ("retriable-4xx", Step::Status(429, &[]), 1),
        ("retriable-status-codes,418", Step::Status(418, &[]), 4),
        ("connect-failure", Step::ConnectFailure, 4),
        ("reset", Step::ConnectFailure, 4),
        ("unavailable", Step::ConnectFailure, 1),
        (
            "unavailable",
            Step::Status(200, &[("grpc-status", "14")]),
            4,
        ),
        ("cancelled", Step::Status(200, &[("grpc-status", "1")]), 4),
        (
            "deadline-exceeded",
            Step::Status(200, &[("grpc-status", "4")]),
            4,
        ),
        ("internal", Step::Status(200, &[("grpc-status", "13")]), 4),
        (
            "resource-exhausted",
            Step::Status(200, &[("grpc-status", "8")]),
            4,
        ),
        (
            "unavailable",
            Step::Status(200, &[("grpc-status", "13")]),
            1,
        ),
        (
            "envoy-ratelimited",
            Step::Status(429, &[("x-envoy-ratelimited", "true")]),
            4,
        ),
    ];
    for (on, step, tries) in cases {
        // A gRPC status is an answer to a gRPC request.
        let req = match &step {
            Step::Status(_, headers) if headers.iter().any(|(k, _)| *k == "grpc-status") => {
                grpc_request()
            }
            _ => Request::new(body::empty()),
        };
        let upstream = Scripted::new(always(step));
        let response = send_request(&layer(policy(on, 3)), &upstream, req).await;
        assert_eq!(upstream.tries(), tries, "retryOn {on}");
        let flagged = ResponseFlags::of_response(&response)
            .contains(ResponseFlag::UpstreamRetryLimitExceeded);
        assert_eq!(
            flagged,
            tries > 1,
            "retryOn {on}: URX only when the retries ran out"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_flaky_upstream_succeeds_on_the_second_try_with_attempt_counts() {
    let upstream = Scripted::new(|n| {
        if n == 0 {
            Step::Status(503, &[])
        } else {
            Step::Status(200, &[])
        }
    });
    let response = send(&layer(policy("5xx", 2)), &upstream).await;
    assert_eq!(response.status(), 200);
    assert_eq!(*upstream.seen.lock().unwrap(), ["1", "2"]);
    assert!(ResponseFlags::of_response(&response).is_empty());
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_within_the_cap_and_ends_retries_beyond_it() {
    let upstream = Scripted::new(|n| {
        if n == 0 {
            Step::Status(503, &[("retry-after", "2")])
        } else {
            Step::Status(200, &[])
        }
    });
    let started = tokio::time::Instant::now();
    let response = send(&layer(policy("5xx", 2)), &upstream).await;
    assert_eq!(response.status(), 200);
    assert_eq!(started.elapsed(), Duration::from_secs(2));

    let upstream = Scripted::new(|_| Step::Status(503, &[("retry-after", "60")]));
    let response = send(&layer(policy("5xx", 2)), &upstream).await;
    assert_eq!((response.status().as_u16(), upstream.tries()), (503, 1));
}

#[tokio::test(start_paused = true)]
async fn a_body_too_large_or_of_unknown_length_is_sent_once() {
    let upstream = Scripted::new(|_| Step::Status(503, &[]));
    let big = Request::new(body::full(vec![0u8; 70 * 1024]));
    let response = layer(policy("5xx", 3))
        .layer(upstream.clone())
        .oneshot(big)
        .await
        .unwrap();
    assert_eq!((response.status().as_u16(), upstream.tries()), (503, 1));

    let upstream = Scripted::new(|_| Step::Status(503, &[]));
    let (mut tx, rx) = futures_channel_body();
    tx.push(bytes::Bytes::from_static(b"chunk"));
    drop(tx);
    let response = layer(policy("5xx", 3))
        .layer(upstream.clone())
        .oneshot(Request::new(rx))
        .await
        .unwrap();
    assert_eq!(
        (response.status().as_u16(), upstream.tries()),
        (503, 1),
        "unknown length: one try"
    );

    let upstream = Scripted::new(|_| Step::Status(503, &[]));
    let small = Request::new(body::full(vec![0u8; 1024]));
    layer(policy("5xx", 3))
        .layer(upstream.clone())
        .oneshot(small)
        .await
        .unwrap();
    assert_eq!(upstream.tries(), 4, "a small body is replayed");
}

/// A streaming body of unknown length.
fn futures_channel_body() -> (ChunkSender, BoxBody) {
    let chunks = Arc::new(Mutex::new(std::collections::VecDeque::new()));
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(std::iter::from_fn({
        let chunks = chunks.clone();
        move || {
            chunks
                .lock()
                .unwrap()
                .pop_front()
                .map(|b| Ok::<_, BoxError>(http_body::Frame::data(b)))
        }
    })));
    (ChunkSender(chunks), body::boxed(body))
}

struct ChunkSender(Arc<Mutex<std::collections::VecDeque<bytes::Bytes>>>);

impl ChunkSender {
    fn push(&mut self, b: bytes::Bytes) {
        self.0.lock().unwrap().push_back(b);
    }
}

#[tokio::test(start_paused = true)]
async fn the_route_timeout_bounds_the_tries_and_per_try_timeouts_are_retried() {
    use crate::timeout::TimeoutLayer;
    let upstream = Scripted::new(|_| Step::Hang);
    let mut p = policy("5xx", 5);
    p.per_try_timeout = Some(Duration::from_millis(100));
    let stack =
        TimeoutLayer::fixed(Duration::from_millis(250)).layer(layer(p).layer(upstream.clone()));
    let started = tokio::time::Instant::now();
    let error = stack
        .oneshot(Request::new(body::empty()))
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    assert!(matches!(
        error.downcast_ref::<ProxyError>(),
        Some(ProxyError::Timeout { per_try: false })
    ));
    assert!(
        (2..=3).contains(&upstream.tries()),
        "tries: {}",
        upstream.tries()
    );

    // Per-try timeouts alone: every try times out, the last one's 504 comes back flagged.
    let upstream = Scripted::new(|_| Step::Hang);
    let mut p = policy("5xx", 2);
    p.per_try_timeout = Some(Duration::from_millis(100));
    let response = send(&layer(p), &upstream).await;
    assert_eq!((response.status().as_u16(), upstream.tries()), (504, 3));
    let flags = ResponseFlags::of_response(&response);
    assert!(
        flags.contains(ResponseFlag::UpstreamRequestTimeout)
            && flags.contains(ResponseFlag::UpstreamRetryLimitExceeded)
    );
}

#[tokio::test(start_paused = true)]
async fn a_per_try_timeout_is_retried_only_when_retry_on_covers_a_reset() {
    let hanging = |on: RetryOn| {
        let upstream = Scripted::new(|_| Step::Hang);
        let p = RetryPolicy {
            attempts: 2,
            per_try_timeout: Some(Duration::from_millis(100)),
            retry_on: on,
            ..RetryPolicy::istio_default()
        };
        (upstream, layer(p))
    };
    // Istio's default (`connect-failure,refused-stream,unavailable,cancelled`): one try, 504.
    let (upstream, retry) = hanging(RetryOn::istio_default());
    let started = tokio::time::Instant::now();
    let response = send(&retry, &upstream).await;
    assert_eq!((response.status().as_u16(), upstream.tries()), (504, 1));
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    let flags = ResponseFlags::of_response(&response);
    assert!(flags.contains(ResponseFlag::UpstreamRequestTimeout));
    assert!(!flags.contains(ResponseFlag::UpstreamRetryLimitExceeded));
    for on in ["5xx", "gateway-error", "reset"] {
        let (upstream, retry) = hanging(RetryOn::parse(on).unwrap());
        let response = send(&retry, &upstream).await;
        assert_eq!(
            (response.status().as_u16(), upstream.tries()),
            (504, 3),
            "retryOn {on}"
        );
    }
    for on in ["connect-failure", "retriable-4xx", "refused-stream"] {
        let (upstream, retry) = hanging(RetryOn::parse(on).unwrap());
        let response = send(&retry, &upstream).await;
        assert_eq!(
            (response.status().as_u16(), upstream.tries()),
            (504, 1),
            "retryOn {on}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_hedge_goes_on_after_a_per_try_timeout_whatever_retry_on_says() {
    let upstream = Scripted::new(|n| {
        if n == 0 {
            Step::Hang
        } else {
            Step::Status(200, &[])
        }
    });
    let p = RetryPolicy {
        per_try_timeout: Some(Duration::from_millis(100)),
        ..RetryPolicy::istio_default()
    };
    let hedge = HedgePolicy {
        delay: Duration::from_secs(10),
        max_attempts: 2,
    };
    let response = send(&layer(p).hedge(hedge), &upstream).await;
    assert_eq!((response.status().as_u16(), upstream.tries()), (200, 2));
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_failures_spends_only_the_budget() {
    let budget = RetryBudget::new(20, 3, Duration::from_secs(10));
    let upstream = Scripted::new(|_| Step::Status(503, &[]));
    let retry = RetryLayer::new(budget.clone(), Rng::with_seed(1)).layer(upstream.clone());
    let mut fixed = layer(policy("5xx", 2));
    fixed.budget = budget.clone();
    let retry_fixed = fixed.layer(upstream.clone());
    drop(retry);
    for _ in 0..1_000 {
        retry_fixed
            .clone()
            .oneshot(Request::new(body::empty()))
            .await
            .unwrap();
    }
    let retries = upstream.tries() - 1_000;
    assert!(
        retries <= 1_000 / 5 + 3,
        "{retries} retries for 1,000 failing requests"
    );
    assert!(retries >= 1_000 / 5 - 2, "the budget is used: {retries}");
    assert!(budget.exhausted() > 0);
}

#[tokio::test(start_paused = true)]
async fn a_hedge_wins_when_the_first_try_is_slow_and_the_loser_is_cancelled() {
    let dropped = Arc::new(AtomicUsize::new(0));
    struct DropGuard(Arc<AtomicUsize>);
    impl Drop for DropGuard {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let guard_count = dropped.clone();
    let tries = Arc::new(AtomicUsize::new(0));
    let upstream = {
        let tries = tries.clone();
        tower::service_fn(move |_req: Request<BoxBody>| {
            let n = tries.fetch_add(1, Ordering::SeqCst);
            let guard = DropGuard(guard_count.clone());
            async move {
                let _guard = guard;
                let delay = if n == 0 {
                    Duration::from_secs(10)
                } else {
                    Duration::from_millis(5)
                };
                tokio::time::sleep(delay).await;
                Ok::<_, BoxError>(Response::new(body::full(format!("try {n}"))))
            }
        })
    };
    let hedge = HedgePolicy {
        delay: Duration::from_millis(50),
        max_attempts: 2,
    };
    let service = layer(policy("5xx", 0)).hedge(hedge).layer(upstream);
    let started = tokio::time::Instant::now();
    let response = service.oneshot(Request::new(body::empty())).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(55));
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"try 1");
    assert_eq!(tries.load(Ordering::SeqCst), 2);
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        2,
        "the slow try was cancelled"
    );
}

proptest::proptest! {
    #[test]
    fn backoff_stays_within_full_jitter_bounds(retry in 1u32..40, base_ms in 1u64..1_000, cap_factor in 1u64..20, seed in proptest::prelude::any::<u64>()) {
        let base = Duration::from_millis(base_ms);
        let max = base * cap_factor as u32;
        let rng = Rng::with_seed(seed);
        let ceiling = base.saturating_mul(2u32.saturating_pow(retry - 1)).min(max);
        for _ in 0..20 {
            let wait = backoff(retry, base, max, &rng);
            proptest::prop_assert!(wait <= ceiling, "{wait:?} > {ceiling:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_chunked_body_that_ended_is_replayed_from_its_copy() {
    use http_body_util::BodyExt as _;
    let tries = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let upstream = {
        let (tries, bodies) = (tries.clone(), bodies.clone());
        tower::service_fn(move |req: Request<BoxBody>| {
            let n = tries.fetch_add(1, Ordering::SeqCst);
            let bodies = bodies.clone();
            async move {
                // Like a unary handler: read the whole request, then answer.
                let body = req.into_body().collect().await?.to_bytes();
                bodies.lock().unwrap().push(body);
                let mut r = Response::new(body::empty());
                *r.status_mut() = if n == 0 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                };
                Ok::<_, BoxError>(r)
            }
        })
    };
    let chunks = ["hel", "lo"].map(|c| {
        Ok::<_, BoxError>(http_body::Frame::data(bytes::Bytes::from_static(
            c.as_bytes(),
        )))
    });
    let streaming = body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
        chunks,
    )));
    let response = layer(policy("5xx", 2))
        .layer(upstream)
        .oneshot(Request::new(streaming))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(tries.load(Ordering::SeqCst), 2);
    assert_eq!(*bodies.lock().unwrap(), ["hello", "hello"]);
}

/// Every try carries the request's extensions: the mesh's own (which the first try takes
/// without a copy) and any other an application set (then each try gets a copy).
#[tokio::test(start_paused = true)]
async fn each_try_carries_the_request_extensions() {
    #[derive(Clone, Debug, PartialEq)]
    struct Tenant(&'static str);

    let deadline = crate::timeout::Deadline(tokio::time::Instant::now() + Duration::from_secs(9));
    let info = crate::server::ConnectionInfo {
        peer: ([127, 0, 0, 1], 40000).into(),
        local: ([127, 0, 0, 1], 15001).into(),
        redirected: false,
    };
    for tenant in [None, Some(Tenant("blue"))] {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let upstream = {
            let seen = seen.clone();
            tower::service_fn(move |req: Request<BoxBody>| {
                let ext = req.extensions();
                let context = crate::context::RequestContext::of(&req);
                let mut seen = seen.lock().unwrap();
                seen.push((
                    context.and_then(|c| c.deadline),
                    ext.get::<crate::server::ConnectionInfo>().copied(),
                    ext.get::<Tenant>().cloned(),
                    context.and_then(|c| c.attempt).map_or(1, |a| a.number),
                ));
                let status = if seen.len() < 3 { 503 } else { 200 };
                let mut response = Response::new(body::empty());
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                async move { Ok::<_, BoxError>(response) }
            })
        };
        let mut req = Request::new(body::empty());
        crate::context::RequestContext::of_mut(&mut req).deadline = Some(deadline);
        req.extensions_mut().insert(info);
        if let Some(t) = &tenant {
            req.extensions_mut().insert(t.clone());
        }
        let response = layer(policy("5xx", 2))
            .layer(upstream)
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let expected: Vec<_> = (1..=3)
            .map(|n| (Some(deadline), Some(info), tenant.clone(), n))
            .collect();
        assert_eq!(*seen.lock().unwrap(), expected, "tenant {tenant:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_policy_retrying_only_unseen_tries_resends_the_request_the_client_gave_back() {
    // Istio's default: connect-failure,refused-stream,unavailable,cancelled. No copy of the
    // headers is kept; the second try is the request the first one handed back.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = {
        let seen = seen.clone();
        tower::service_fn(move |req: Request<BoxBody>| {
            let headers = req.headers();
            let n = {
                let mut seen = seen.lock().unwrap();
                seen.push((
                    headers["x-envoy-attempt-count"]
                        .to_str()
                        .unwrap()
                        .to_owned(),
                    headers["x-app"].to_str().unwrap().to_owned(),
                ));
                seen.len()
            };
            let answer = if n == 1 {
                Unsent::give_back(req);
                Err(ProxyError::ConnectFailure {
                    endpoint: "127.0.0.1:1".into(),
                    source: "connection refused".into(),
                }
                .into())
            } else {
                Ok(Response::new(body::empty()))
            };
            async move { answer }
        })
    };
    let mut req = Request::new(body::empty());
    req.headers_mut()
        .insert("x-app", HeaderValue::from_static("kept"));
    let response = layer(RetryPolicy::istio_default())
        .layer(upstream)
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = seen.lock().unwrap().clone();
    let expected = [("1", "kept"), ("2", "kept")].map(|(a, b)| (a.to_owned(), b.to_owned()));
    assert_eq!(seen, expected);
}

#[tokio::test(start_paused = true)]
async fn without_the_request_given_back_only_a_policy_keeping_a_copy_retries() {
    let kept = |_| Step::ConnectFailureKept;
    // Istio's default keeps no copy: nothing to send again, the failure stands (no URX).
    let upstream = Scripted::new(kept);
    let response = send(&layer(RetryPolicy::istio_default()), &upstream).await;
    assert_eq!(upstream.tries(), 1);
    assert_eq!(response.status(), 503);
    let flags = ResponseFlags::of_response(&response);
    assert!(!flags.contains(ResponseFlag::UpstreamRetryLimitExceeded));
    // `5xx` retries answered tries too, so the headers are copied for every request.
    let upstream = Scripted::new(kept);
    send(&layer(policy("connect-failure,5xx", 2)), &upstream).await;
    assert_eq!(upstream.tries(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_grpc_status_is_retried_on_grpc_requests() {
    let unavailable = |_| Step::Status(200, &[("grpc-status", "14")]);
    let upstream = Scripted::new(unavailable);
    send_request(
        &layer(RetryPolicy::istio_default()),
        &upstream,
        grpc_request(),
    )
    .await;
    assert_eq!(upstream.tries(), 3);
    // The answer of a request that is not gRPC is not read for one.
    let upstream = Scripted::new(unavailable);
    send(&layer(RetryPolicy::istio_default()), &upstream).await;
    assert_eq!(upstream.tries(), 1);
}
