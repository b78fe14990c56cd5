//! The route timeout: the whole request, retries included (Istio's `timeout`), answered with
//! 504 and flag `UT` when it expires. A gRPC caller's `grpc-timeout` is an upper bound, and
//! the deadline travels down (as [`Deadline`]) so that each try tells the upstream how long
//! is left.
//!
//! ```
//! use mesh_tower::body::{self, BoxBody, BoxError};
//! use mesh_tower::timeout::TimeoutLayer;
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
//! let slow = ServiceBuilder::new()
//!     .layer(TimeoutLayer::fixed(Duration::from_millis(100)))
//!     .service_fn(|_req: http::Request<BoxBody>| async {
//!         tokio::time::sleep(Duration::from_secs(5)).await;
//!         Ok::<_, BoxError>(http::Response::new(body::empty()))
//!     });
//! let error = slow.oneshot(http::Request::new(body::empty())).await.unwrap_err();
//! assert_eq!(error.to_string(), "upstream request timeout");
//! # });
//! ```

use crate::body::{BoxBody, BoxError};
use crate::context::RequestContext;
use crate::error::ProxyError;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Body as _;
use std::future::Future as _;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

/// When the whole request must be done, for the layers below (retries, the client), in the
/// request's [`RequestContext`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// The time left, zero when past.
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// Sets `grpc-timeout` on a gRPC request to the time left (deadline propagation).
    pub fn propagate(self, headers: &mut HeaderMap) {
        if is_grpc(headers) {
            self.set_grpc_timeout(headers);
        }
    }

    /// As [`Deadline::propagate`] on `req`, known gRPC or not from its context.
    pub(crate) fn propagate_to<B>(self, req: &mut Request<B>) {
        if RequestContext::is_grpc(req) {
            self.set_grpc_timeout(req.headers_mut());
        }
    }

    fn set_grpc_timeout(self, headers: &mut HeaderMap) {
        let millis = self.remaining().as_millis().clamp(1, 99_999_999);
        if let Ok(v) = HeaderValue::try_from(format!("{millis}m")) {
            headers.insert(GRPC_TIMEOUT, v);
        }
    }
}

/// Whether the request is gRPC (`content-type: application/grpc...`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// Parses gRPC's `grpc-timeout` (`100m`, `5S`, at most 8 digits and a unit).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Applies the route's (or a fixed) timeout.
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    fixed: Option<Duration>,
    idle: Option<Duration>,
}

/// Envoy's default `stream_idle_timeout`: a response body that sends nothing for this long
/// is ended with an error.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

impl Default for TimeoutLayer {
    fn default() -> Self {
        Self {
            fixed: None,
            idle: Some(DEFAULT_STREAM_IDLE_TIMEOUT),
        }
    }
}

impl TimeoutLayer {
    /// Uses each request's route timeout (none when the route sets none) and Envoy's 5 min
    /// stream idle timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `timeout` for every request.
    pub fn fixed(timeout: Duration) -> Self {
        Self {
            fixed: Some(timeout),
            ..Self::default()
        }
    }

    /// Ends a response body that sends no frame for `idle` (`None`: never).
    pub fn stream_idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.idle = idle;
        self
    }
}

/// A response body that fails when no frame arrives for `idle`.
///
/// The timer is armed only when the body has to wait (a frame that is ready at once costs no
/// clock read and no timer), and re-armed after frames arrived since it was last armed.
struct IdleBody {
    inner: BoxBody,
    idle: Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// A frame arrived since the timer was last armed.
    progressed: bool,
}

impl http_body::Body for IdleBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.progressed = true;
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let deadline = || Instant::now() + this.idle;
                let timer = match &mut this.timer {
                    Some(timer) => {
                        if this.progressed {
                            timer.as_mut().reset(deadline());
                        }
                        timer
                    }
                    None => this
                        .timer
                        .insert(Box::pin(tokio::time::sleep_until(deadline()))),
                };
                this.progressed = false;
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(ProxyError::StreamIdleTimeout.into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn with_idle_timeout(response: Response<BoxBody>, idle: Option<Duration>) -> Response<BoxBody> {
    match idle {
        Some(idle) if !response.body().is_end_stream() => response.map(|inner| {
            crate::body::erase(IdleBody {
                inner,
                idle,
                timer: None,
                progressed: false,
            })
        }),
        _ => response,
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            fixed: self.fixed,
            idle: self.idle,
            inner,
        }
    }
}

/// The service [`TimeoutLayer`] makes.
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    fixed: Option<Duration>,
    idle: Option<Duration>,
    inner: S,
}

impl<S, B> Service<Request<B>> for Timeout<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let route_timeout = self
            .fixed
            .or_else(|| RequestContext::routed(&req).and_then(|r| r.route().timeout));
        // A gRPC caller's own deadline (Envoy reads it on gRPC requests only).
        let grpc = RequestContext::is_grpc(&req);
        let caller_timeout = grpc
            .then(|| req.headers().get(&GRPC_TIMEOUT))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let timeout = match (route_timeout, caller_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let idle = self.idle;
        let Some(timeout) = timeout else {
            return ResponseFuture {
                inner: self.inner.call(req),
                expiry: None,
                idle,
            };
        };
        let deadline = Deadline(Instant::now() + timeout);
        if grpc {
            deadline.set_grpc_timeout(req.headers_mut());
        }
        RequestContext::of_mut(&mut req).deadline = Some(deadline);
        ResponseFuture {
            inner: self.inner.call(req),
            expiry: Some(tokio::time::sleep_until(deadline.0)),
            idle,
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Timeout`]'s response future: the inner one, failed with 504 `UT` at the deadline;
    /// its response body gets the stream idle timeout.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        expiry: Option<tokio::time::Sleep>,
        idle: Option<Duration>,
    }
}

impl<F> std::future::Future for ResponseFuture<F>
where
    F: std::future::Future<Output = Result<Response<BoxBody>, BoxError>>,
{
    type Output = Result<Response<BoxBody>, BoxError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result.map(|response| with_idle_timeout(response, *this.idle)));
        }
        match this.expiry.as_pin_mut().map(|expiry| expiry.poll(cx)) {
            Some(Poll::Ready(())) => {
                Poll::Ready(Err(ProxyError::Timeout { per_try: false }.into()))
            }
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_response_body_ends_with_an_error_after_the_idle_timeout() {
        use futures_util::StreamExt;
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let stalls = tower::service_fn(|_req: Request<BoxBody>| async {
            let chunks = futures_util::stream::iter([Ok::<_, BoxError>(http_body::Frame::data(
                bytes::Bytes::from_static(b"first"),
            ))])
            .chain(futures_util::stream::pending::<
                Result<http_body::Frame<bytes::Bytes>, BoxError>,
            >());
            Ok::<_, BoxError>(Response::new(crate::body::boxed(
                http_body_util::StreamBody::new(chunks),
            )))
        });
        let service = TimeoutLayer::new()
            .stream_idle_timeout(Some(Duration::from_secs(60)))
            .layer(stalls);
        let response = service
            .oneshot(Request::new(crate::body::empty()))
            .await
            .unwrap();
        let mut body = response.into_body();
        let started = Instant::now();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "first");
        let error = body.frame().await.unwrap().unwrap_err();
        assert_eq!(error.to_string(), "stream idle timeout");
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_grpc_callers_deadline_bounds_its_request_and_goes_upstream_shorter() {
        use tower::ServiceExt;
        // The upstream notes the grpc-timeout it was sent and answers after 10 s.
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let slow = {
            let sent = sent.clone();
            tower::service_fn(move |req: Request<BoxBody>| {
                sent.lock()
                    .unwrap()
                    .push(req.headers()[GRPC_TIMEOUT].clone());
                async {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    Ok::<_, BoxError>(Response::new(crate::body::empty()))
                }
            })
        };
        let request = |content_type: &'static str| {
            let mut req = Request::new(crate::body::empty());
            req.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(content_type),
            );
            req.headers_mut()
                .insert(GRPC_TIMEOUT, HeaderValue::from_static("2S"));
            req
        };
        let service = TimeoutLayer::fixed(Duration::from_secs(60)).layer(slow);
        // gRPC: the caller's 2 s is shorter than the route's 60 s, and is what the upstream gets.
        let started = Instant::now();
        let error = service
            .clone()
            .oneshot(request("application/grpc"))
            .await
            .unwrap_err();
        assert!(matches!(
            error.downcast_ref::<ProxyError>(),
            Some(ProxyError::Timeout { per_try: false })
        ));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        // Not gRPC: the header is the app's own, neither read nor rewritten (as Envoy).
        let started = Instant::now();
        let response = service.oneshot(request("application/json")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(*sent.lock().unwrap(), ["2000m", "2S"]);
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "m", "123456789m", "5x", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
