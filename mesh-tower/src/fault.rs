//! Fault injection: delay and abort a share of requests before they leave (Istio's
//! `fault.delay` and `fault.abort`), flagged `DI` and `FI`.
//!
//! The fault comes from the matched route ([`Routed`](crate::route::Routed)) or is fixed when the layer is used
//! on its own:
//!
//! ```
//! use mesh_core::model::{AbortError, Fault, FaultAbort, Percentage};
//! use mesh_tower::body::{self, BoxBody, BoxError};
//! use mesh_tower::fault::FaultLayer;
//! use mesh_tower::rng::Rng;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # tokio_test();
//! # fn tokio_test() {
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let abort_all = Fault {
//!     delay: None,
//!     abort: Some(FaultAbort { error: AbortError::Http(503), percentage: Percentage::ALL }),
//! };
//! let service = ServiceBuilder::new()
//!     .layer(FaultLayer::fixed(abort_all, Rng::with_seed(1)))
//!     .service_fn(|_req: http::Request<BoxBody>| async {
//!         Ok::<_, BoxError>(http::Response::new(body::empty()))
//!     });
//! let response = service.oneshot(http::Request::new(body::empty())).await.unwrap();
//! assert_eq!(response.status(), 503);
//! # });
//! # }
//! ```

use crate::body::{self, BoxBody, BoxError};
use crate::context::RequestContext;
use crate::flags::{ResponseFlag, ResponseFlags};
use crate::future::{self, ResponseFuture};
use crate::rng::Rng;
use http::{HeaderValue, Request, Response, StatusCode};
use mesh_core::model::{AbortError, Fault};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower_layer::Layer;
use tower_service::Service;

/// Injects the route's (or a fixed) fault.
#[derive(Clone, Debug)]
pub struct FaultLayer {
    rng: Rng,
    fixed: Option<Arc<Fault>>,
}

impl FaultLayer {
    /// Injects the fault of each request's matched route.
    pub fn new(rng: Rng) -> Self {
        Self { rng, fixed: None }
    }

    /// Injects `fault` into every request.
    pub fn fixed(fault: Fault, rng: Rng) -> Self {
        Self {
            rng,
            fixed: Some(Arc::new(fault)),
        }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = FaultInjection<S>;

    fn layer(&self, inner: S) -> FaultInjection<S> {
        FaultInjection {
            layer: self.clone(),
            inner,
        }
    }
}

/// The service [`FaultLayer`] makes.
#[derive(Clone, Debug)]
pub struct FaultInjection<S> {
    layer: FaultLayer,
    inner: S,
}

/// What the draws decided for one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Delay the request this long.
    pub delay: Option<Duration>,
    /// Abort it with this error.
    pub abort: Option<AbortError>,
}

/// Draws the delay and the abort of `fault`, each with its own percentage.
pub fn decide(fault: &Fault, rng: &Rng) -> Decision {
    Decision {
        delay: fault
            .delay
            .as_ref()
            .filter(|d| d.percentage.admits(rng.ppm()))
            .map(|d| d.delay),
        abort: fault
            .abort
            .as_ref()
            .filter(|a| a.percentage.admits(rng.ppm()))
            .map(|a| a.error.clone()),
    }
}

fn abort_response(error: &AbortError) -> Response<BoxBody> {
    let mut response = Response::new(body::full("fault filter abort"));
    match error {
        AbortError::Http(status) => {
            *response.status_mut() =
                StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        }
        AbortError::Grpc(code) => {
            let headers = response.headers_mut();
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            headers.insert(crate::grpc::GRPC_STATUS, HeaderValue::from(*code));
            headers.insert(
                crate::grpc::GRPC_MESSAGE,
                HeaderValue::from_static("fault filter abort"),
            );
            *response.body_mut() = body::empty();
        }
        AbortError::Http2Error => {
            // A stream reset cannot be expressed as a response here; Envoy's nearest
            // answer without one is a 503.
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    ResponseFlags::mark(&mut response, ResponseFlag::FaultInjected);
    response
}

impl<S, B> Service<Request<B>> for FaultInjection<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let decision = match &self.layer.fixed {
            Some(fault) => decide(fault, &self.layer.rng),
            None => RequestContext::routed(&req)
                .and_then(|r| r.route().fault.as_ref())
                .map(|f| decide(f, &self.layer.rng))
                .unwrap_or_default(),
        };
        if decision == Decision::default() {
            return future::passed(self.inner.call(req));
        }
        // The call waits (delay) or never happens (abort): the future owns the ready service.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if decision.delay.is_some() {
            metrics::counter!("mesh_faults_injected_total", "kind" => "delay").increment(1);
        }
        if decision.abort.is_some() {
            metrics::counter!("mesh_faults_injected_total", "kind" => "abort").increment(1);
        }
        future::acted(async move {
            if let Some(delay) = decision.delay {
                tokio::time::sleep(delay).await;
            }
            let mut response = match &decision.abort {
                Some(error) => abort_response(error),
                None => inner.call(req).await?,
            };
            if decision.delay.is_some() {
                ResponseFlags::mark(&mut response, ResponseFlag::DelayInjected);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::model::{FaultAbort, FaultDelay, Percentage};

    #[test]
    fn percentages_hold_over_100_000_seeded_trials_down_to_a_tenth_of_a_percent() {
        for (percent, tolerance) in [(0.1, 0.03), (10.0, 0.3), (50.0, 0.5), (99.9, 0.03)] {
            let p = Percentage::from_percent_f64(percent).unwrap();
            let fault = Fault {
                delay: Some(FaultDelay {
                    delay: Duration::from_secs(1),
                    percentage: p,
                }),
                abort: Some(FaultAbort {
                    error: AbortError::Http(500),
                    percentage: p,
                }),
            };
            let rng = Rng::with_seed(7);
            let (mut delayed, mut aborted) = (0u32, 0u32);
            for _ in 0..100_000 {
                let d = decide(&fault, &rng);
                delayed += u32::from(d.delay.is_some());
                aborted += u32::from(d.abort.is_some());
            }
            for (what, n) in [("delayed", delayed), ("aborted", aborted)] {
                let share = f64::from(n) / 1_000.0;
                assert!(
                    (share - percent).abs() <= tolerance,
                    "{what} {share}% for {percent}%"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_holds_the_request_and_an_abort_never_reaches_the_upstream() {
        use tower::ServiceExt;
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let upstream = {
            let calls = calls.clone();
            tower::service_fn(move |_req: Request<BoxBody>| {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async { Ok::<_, BoxError>(Response::new(body::empty())) }
            })
        };
        let delay = Fault {
            delay: Some(FaultDelay {
                delay: Duration::from_secs(7),
                percentage: Percentage::ALL,
            }),
            abort: None,
        };
        let started = tokio::time::Instant::now();
        let response = FaultLayer::fixed(delay, Rng::with_seed(1))
            .layer(upstream.clone())
            .oneshot(Request::new(body::empty()))
            .await
            .unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(7));
        assert!(ResponseFlags::of_response(&response).contains(ResponseFlag::DelayInjected));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);

        let abort = Fault {
            delay: None,
            abort: Some(FaultAbort {
                error: AbortError::Grpc(14),
                percentage: Percentage::ALL,
            }),
        };
        let response = FaultLayer::fixed(abort, Rng::with_seed(1))
            .layer(upstream)
            .oneshot(Request::new(body::empty()))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["grpc-status"], "14");
        assert!(ResponseFlags::of_response(&response).contains(ResponseFlag::FaultInjected));
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "the abort never reached it"
        );
    }
}
