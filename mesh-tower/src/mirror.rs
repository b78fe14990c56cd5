//! Traffic mirroring (Istio's `mirror` + `mirrorPercentage`, and `mirrors`): a share of
//! requests is copied to a shadow destination, fire and forget.
//!
//! The copy's authority gets `-shadow` appended to its host (`reviews:9080` becomes
//! `reviews-shadow:9080`), as Envoy does. The shadow never delays or fails the primary: its
//! response is dropped, it runs on its own task with a timeout, and at most `max_in_flight`
//! shadows run at once (past that, a mirror is skipped and counted). Only a body of known
//! length within the limit is copied; otherwise the mirror is skipped and counted.
//!
//! ```
//! use mesh_core::model::Percentage;
//! use mesh_tower::body::{self, BoxBody, BoxError};
//! use mesh_tower::mirror::MirrorLayer;
//! use mesh_tower::rng::Rng;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let shadow = tower::service_fn(move |req: http::Request<BoxBody>| {
//!     let _ = tx.send(req.headers()["host"].clone());
//!     async { Ok::<_, BoxError>(http::Response::new(body::empty())) }
//! });
//! let service = ServiceBuilder::new()
//!     .layer(MirrorLayer::to(shadow, Percentage::ALL, Rng::with_seed(1)))
//!     .service_fn(|_req: http::Request<BoxBody>| async {
//!         Ok::<_, BoxError>(http::Response::new(body::empty()))
//!     });
//! let request = http::Request::builder().header("host", "reviews:9080").body(body::empty()).unwrap();
//! service.oneshot(request).await.unwrap();
//! assert_eq!(rx.recv().await.unwrap(), "reviews-shadow:9080");
//! # });
//! ```

use crate::body::{self, BoxBody, BoxError, Replay};
use crate::context::RequestContext;
use crate::future::{self, ResponseFuture};
use crate::rng::Rng;
use crate::split::Target;
use http::{HeaderValue, Request, Response};
use mesh_core::model::Percentage;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Semaphore;
use tower::util::BoxCloneSyncService;
use tower_layer::Layer;
use tower_service::Service;

/// Where shadows go: a service that sends a request to the [`Target`] cluster in its
/// [`RequestContext`] (the outbound stack's balancer and client).
pub type ShadowService = BoxCloneSyncService<Request<BoxBody>, Response<BoxBody>, BoxError>;

/// Counters of the mirror layer, shared by its clones.
#[derive(Debug, Default)]
pub struct MirrorStats {
    /// Shadows sent.
    pub sent: AtomicU64,
    /// Mirrors skipped because the body could not be copied.
    pub skipped_body: AtomicU64,
    /// Mirrors skipped because `max_in_flight` shadows were running.
    pub skipped_overflow: AtomicU64,
}

/// Mirrors requests by each route's mirror policy, or all to one shadow service.
#[derive(Clone, Debug)]
pub struct MirrorLayer {
    shadow: ShadowService,
    fixed: Option<Percentage>,
    rng: Rng,
    body_limit: usize,
    in_flight: Arc<Semaphore>,
    shadow_timeout: Duration,
    stats: Arc<MirrorStats>,
}

impl MirrorLayer {
    /// Mirrors by each request's route, sending shadows through `shadow`.
    pub fn new(shadow: ShadowService, rng: Rng) -> Self {
        Self {
            shadow,
            fixed: None,
            rng,
            body_limit: crate::retry::DEFAULT_BUFFER_LIMIT,
            in_flight: Arc::new(Semaphore::new(128)),
            shadow_timeout: Duration::from_secs(15),
            stats: Arc::default(),
        }
    }

    /// Mirrors `percentage` of all requests to `shadow`.
    pub fn to<S>(shadow: S, percentage: Percentage, rng: Rng) -> Self
    where
        S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        Self {
            fixed: Some(percentage),
            ..Self::new(BoxCloneSyncService::new(shadow), rng)
        }
    }

    /// Copies bodies of at most `limit` bytes (larger ones are not mirrored).
    pub fn body_limit(mut self, limit: usize) -> Self {
        self.body_limit = limit;
        self
    }

    /// Runs at most `max` shadows at once.
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.in_flight = Arc::new(Semaphore::new(max));
        self
    }

    /// Gives up on a shadow after `timeout`.
    pub fn shadow_timeout(mut self, timeout: Duration) -> Self {
        self.shadow_timeout = timeout;
        self
    }

    /// The layer's counters.
    pub fn stats(&self) -> Arc<MirrorStats> {
        self.stats.clone()
    }
}

impl<S> Layer<S> for MirrorLayer {
    type Service = Mirror<S>;

    fn layer(&self, inner: S) -> Mirror<S> {
        Mirror {
            layer: self.clone(),
            inner,
        }
    }
}

/// The service [`MirrorLayer`] makes.
#[derive(Clone, Debug)]
pub struct Mirror<S> {
    layer: MirrorLayer,
    inner: S,
}

/// `host[:port]` with `-shadow` appended to the host.
pub fn shadow_authority(authority: &str) -> String {
    let (host, port) = match authority.rsplit_once(':') {
        // A port: digits after the last colon, unless that colon is inside a bare IPv6 host.
        Some((h, p))
            if !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']')) =>
        {
            (h, Some(p))
        }
        _ => (authority, None),
    };
    match port {
        Some(port) => format!("{host}-shadow:{port}"),
        None => format!("{host}-shadow"),
    }
}

impl<S> Service<Request<BoxBody>> for Mirror<S>
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        let layer = &self.layer;
        // Which shadows this request gets: (cluster to set, or none for a fixed shadow).
        let mut targets: Vec<Option<Target>> = Vec::new();
        match layer.fixed {
            Some(p) if p.admits(layer.rng.ppm()) => targets.push(None),
            Some(_) => {}
            None => {
                if let Some(routed) = RequestContext::routed(&req) {
                    for m in &routed.route().mirrors {
                        if m.percentage.admits(layer.rng.ppm())
                            && let Some(cluster) = routed.snapshot().cluster(&m.cluster)
                        {
                            targets.push(Some(Target {
                                cluster: cluster.clone(),
                            }));
                        }
                    }
                }
            }
        }
        if targets.is_empty() {
            return future::passed(self.inner.call(req));
        }
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let layer = layer.clone();
        // Erased where `S::Future: Send` is known, so the async block needs no proof about `S`.
        let inner: ShadowService = BoxCloneSyncService::new(inner);
        future::acted(async move {
            let (parts, body) = req.into_parts();
            let bytes = match body::replayable(body, layer.body_limit).await? {
                Replay::Buffered(bytes) => bytes,
                Replay::Streaming(body) => {
                    layer
                        .stats
                        .skipped_body
                        .fetch_add(targets.len() as u64, Ordering::Relaxed);
                    metrics::counter!("mesh_mirror_requests_total", "result" => "skipped_body")
                        .increment(targets.len() as u64);
                    return call_ready(inner, Request::from_parts(parts, body)).await;
                }
            };
            for target in targets {
                let Ok(permit) = layer.in_flight.clone().try_acquire_owned() else {
                    layer.stats.skipped_overflow.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("mesh_mirror_requests_total", "result" => "skipped_overflow")
                        .increment(1);
                    continue;
                };
                let mut shadow = Request::new(body::full(bytes.clone()));
                *shadow.method_mut() = parts.method.clone();
                *shadow.uri_mut() = parts.uri.clone();
                *shadow.headers_mut() = parts.headers.clone();
                let authority = crate::route::destination(&Request::from_parts(parts.clone(), ()))
                    .map(shadow_authority);
                if let Some(value) = authority.and_then(|a| HeaderValue::try_from(a).ok()) {
                    shadow.headers_mut().insert(http::header::HOST, value);
                }
                if let Some(target) = target {
                    RequestContext::of_mut(&mut shadow).target = Some(target);
                }
                let service = layer.shadow.clone();
                let timeout = layer.shadow_timeout;
                layer.stats.sent.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("mesh_mirror_requests_total", "result" => "sent").increment(1);
                tokio::spawn(async move {
                    let _permit = permit;
                    // The shadow's answer (or failure) is dropped.
                    let _ = tokio::time::timeout(timeout, call_ready(service, shadow)).await;
                });
            }
            call_ready(inner, Request::from_parts(parts, body::full(bytes))).await
        })
    }
}

async fn call_ready(
    mut service: ShadowService,
    req: Request<BoxBody>,
) -> Result<Response<BoxBody>, BoxError> {
    std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
    service.call(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[test]
    fn shadow_hosts_keep_the_port() {
        assert_eq!(shadow_authority("reviews"), "reviews-shadow");
        assert_eq!(shadow_authority("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_authority("[::1]:80"), "[::1]-shadow:80");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_shadow_never_delays_the_primary_and_the_backlog_is_bounded() {
        let shadow = tower::service_fn(|_req: Request<BoxBody>| async {
            std::future::pending::<()>().await;
            Ok::<_, BoxError>(Response::new(body::empty()))
        });
        let layer = MirrorLayer::to(shadow, Percentage::ALL, Rng::with_seed(1)).max_in_flight(10);
        let stats = layer.stats();
        let primary = tower::service_fn(|_req: Request<BoxBody>| async {
            Ok::<_, BoxError>(Response::new(body::full("primary")))
        });
        let service = layer.layer(primary);
        let started = tokio::time::Instant::now();
        for _ in 0..50 {
            let response = service
                .clone()
                .oneshot(Request::new(body::full("payload")))
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "no primary waited for a shadow"
        );
        assert_eq!(stats.sent.load(Ordering::Relaxed), 10);
        assert_eq!(stats.skipped_overflow.load(Ordering::Relaxed), 40);
        // The shadows time out and free their slots.
        tokio::time::sleep(Duration::from_secs(16)).await;
        service
            .clone()
            .oneshot(Request::new(body::empty()))
            .await
            .unwrap();
        assert_eq!(stats.sent.load(Ordering::Relaxed), 11);
    }

    #[tokio::test]
    async fn the_share_mirrored_follows_the_percentage() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let shadow = tower::service_fn(move |_req: Request<BoxBody>| {
            let _ = tx.send(());
            async { Ok::<_, BoxError>(Response::new(body::empty())) }
        });
        let layer = MirrorLayer::to(
            shadow,
            Percentage::from_percent_f64(25.0).unwrap(),
            Rng::with_seed(9),
        )
        .max_in_flight(10_000);
        let primary = tower::service_fn(|_req: Request<BoxBody>| async {
            Ok::<_, BoxError>(Response::new(body::empty()))
        });
        let service = layer.layer(primary);
        for _ in 0..10_000 {
            service
                .clone()
                .oneshot(Request::new(body::empty()))
                .await
                .unwrap();
        }
        tokio::task::yield_now().await;
        let mut n = 0;
        while tokio::time::timeout(Duration::from_millis(200), rx.recv())
            .await
            .ok()
            .flatten()
            .is_some()
        {
            n += 1;
        }
        assert!(
            (2_300..=2_700).contains(&n),
            "{n} of 10,000 mirrored at 25%"
        );
    }
}
