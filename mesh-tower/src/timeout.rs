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
use crate::error::ProxyError;
use crate::route::Routed;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Request, Response};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

/// When the whole request must be done, for the layers below (retries, the client).
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
            let millis = self.remaining().as_millis().clamp(1, 99_999_999);
            if let Ok(v) = HeaderValue::try_from(format!("{millis}m")) {
                headers.insert("grpc-timeout", v);
            }
        }
    }
}

/// Whether the request is gRPC (`content-type: application/grpc...`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

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
#[derive(Clone, Copy, Debug, Default)]
pub struct TimeoutLayer {
    fixed: Option<Duration>,
}

impl TimeoutLayer {
    /// Uses each request's route timeout (none when the route sets none).
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `timeout` for every request.
    pub fn fixed(timeout: Duration) -> Self {
        Self {
            fixed: Some(timeout),
        }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            fixed: self.fixed,
            inner,
        }
    }
}

/// The service [`TimeoutLayer`] makes.
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    fixed: Option<Duration>,
    inner: S,
}

impl<S, B> Service<Request<B>> for Timeout<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<BoxBody>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let route_timeout = self.fixed.or_else(|| {
            req.extensions()
                .get::<Routed>()
                .and_then(|r| r.route().timeout)
        });
        let caller_timeout = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let timeout = match (route_timeout, caller_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(timeout) = timeout else {
            return Box::pin(self.inner.call(req));
        };
        let deadline = Deadline(Instant::now() + timeout);
        deadline.propagate(req.headers_mut());
        req.extensions_mut().insert(deadline);
        let future = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(timeout, future).await {
                Ok(result) => result,
                Err(_) => Err(ProxyError::Timeout { per_try: false }.into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
