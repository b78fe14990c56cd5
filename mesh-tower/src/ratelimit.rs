//! Local rate limiting: a token bucket per route (the `ratelimit.mesh.io/*` annotations on a
//! VirtualService), per inbound port ([`InboundRateLimitLayer`], from xDS's `local_ratelimit`
//! on an inbound listener) or a fixed one around any service. A request without a token gets 429,
//! flag `RL`, and `x-ratelimit-*` headers (Envoy's draft-03 form); every answer carries the
//! headers while a limit applies.
//!
//! ```
//! use mesh_core::model::LocalRateLimit;
//! use mesh_tower::body::{self, BoxBody, BoxError};
//! use mesh_tower::ratelimit::RateLimitLayer;
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
//! let limit = LocalRateLimit { max_tokens: 2, tokens_per_fill: 2, fill_interval: Duration::from_secs(1) };
//! let mut service = ServiceBuilder::new()
//!     .layer(RateLimitLayer::fixed(limit))
//!     .service_fn(|_req: http::Request<BoxBody>| async { Ok::<_, BoxError>(http::Response::new(body::empty())) });
//! let mut statuses = Vec::new();
//! for _ in 0..3 {
//!     let response = service.ready().await.unwrap().call(http::Request::new(body::empty())).await.unwrap();
//!     statuses.push(response.status().as_u16());
//! }
//! assert_eq!(statuses, [200, 200, 429]);
//! # });
//! ```

use crate::body::{BoxBody, BoxError};
use crate::context::RequestContext;
use crate::error::{self, ProxyError};
use crate::future::{self, ResponseFuture};
use crate::route::Routed;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use mesh_core::model::LocalRateLimit;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

/// A token bucket.
#[derive(Debug)]
pub struct TokenBucket {
    limit: LocalRateLimit,
    /// `x-ratelimit-limit`'s value, made once (a number's value is a new buffer).
    limit_value: HeaderValue,
    state: Mutex<(u32, Instant)>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(limit: LocalRateLimit) -> Self {
        Self {
            state: Mutex::new((limit.max_tokens, Instant::now())),
            limit_value: HeaderValue::from(limit.max_tokens),
            limit,
        }
    }

    /// Takes a token if there is one; returns whether it did, the tokens left and the time
    /// to the next refill.
    pub fn take(&self) -> (bool, u32, Duration) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let interval = self.limit.fill_interval.max(Duration::from_millis(1));
        let fills = now.saturating_duration_since(state.1).as_nanos() / interval.as_nanos();
        if fills > 0 {
            let added = (fills as u64).saturating_mul(u64::from(self.limit.tokens_per_fill));
            state.0 = (u64::from(state.0) + added).min(u64::from(self.limit.max_tokens)) as u32;
            state.1 += interval * fills.min(u128::from(u32::MAX)) as u32;
        }
        let reset = (state.1 + interval).saturating_duration_since(now);
        if state.0 > 0 {
            state.0 -= 1;
            (true, state.0, reset)
        } else {
            (false, 0, reset)
        }
    }

    fn headers(&self, remaining: u32, reset: Duration, headers: &mut HeaderMap) {
        headers.insert(X_RATELIMIT_LIMIT, self.limit_value.clone());
        headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(remaining));
        headers.insert(
            X_RATELIMIT_RESET,
            HeaderValue::from(reset.as_secs_f64().ceil() as u64),
        );
    }
}

// Names made once: a `&str` name is parsed, and a custom one copied into a new buffer, at
// every insert.
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The routes' buckets, by virtual host name, then route name: found by the names the request's
/// route has, without copying them.
type RouteBuckets = HashMap<String, HashMap<String, Arc<TokenBucket>>>;

/// Applies each route's rate limit, or a fixed one.
#[derive(Clone, Debug, Default)]
pub struct RateLimitLayer {
    fixed: Option<Arc<TokenBucket>>,
    buckets: Arc<Mutex<RouteBuckets>>,
}

impl RateLimitLayer {
    /// Limits by each request's route (a bucket per virtual host and route, kept across
    /// config swaps while the limit is unchanged).
    pub fn new() -> Self {
        Self::default()
    }

    /// Limits every request by one bucket.
    pub fn fixed(limit: LocalRateLimit) -> Self {
        Self {
            fixed: Some(Arc::new(TokenBucket::new(limit))),
            ..Self::default()
        }
    }

    fn bucket(&self, routed: &Routed, limit: &LocalRateLimit) -> Arc<TokenBucket> {
        let (host, route) = (&routed.virtual_host().name, &routed.route().name);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bucket) = buckets.get(host).and_then(|routes| routes.get(route))
            && bucket.limit == *limit
        {
            return bucket.clone();
        }
        // The route's first request, or its limit changed: a full bucket.
        let bucket = Arc::new(TokenBucket::new(limit.clone()));
        buckets
            .entry(host.clone())
            .or_default()
            .insert(route.clone(), bucket.clone());
        bucket
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            layer: self.clone(),
            inner,
        }
    }
}

/// The service [`RateLimitLayer`] makes.
#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    layer: RateLimitLayer,
    inner: S,
}

impl<S, B> Service<Request<B>> for RateLimit<S>
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

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let bucket = self.layer.fixed.clone().or_else(|| {
            let routed = RequestContext::routed(&req)?;
            let limit = routed.route().rate_limit.as_ref()?;
            Some(self.layer.bucket(routed, limit))
        });
        let Some(bucket) = bucket else {
            return future::passed(self.inner.call(req));
        };
        let (allowed, remaining, reset) = bucket.take();
        if !allowed {
            metrics::counter!("mesh_rate_limited_total").increment(1);
            let mut response = error::to_response(&ProxyError::RateLimited.into());
            bucket.headers(remaining, reset, response.headers_mut());
            return future::acted(async move { Ok(response) });
        }
        let future = self.inner.call(req);
        future::acted(async move {
            let mut response = future.await?;
            bucket.headers(remaining, reset, response.headers_mut());
            Ok(response)
        })
    }
}

/// Limits inbound requests by the token bucket of the inbound listener they are for
/// ([`crate::inbound::listener_for`]; `InboundListener::rate_limit`), a bucket per port kept
/// while its limit is unchanged. Errors of the inner service pass through unchanged, so it
/// fits stacks whose errors are already responses.
#[derive(Clone, Debug)]
pub struct InboundRateLimitLayer {
    store: Arc<mesh_core::store::ConfigStore>,
    buckets: Arc<Mutex<HashMap<u16, Arc<TokenBucket>>>>,
}

impl InboundRateLimitLayer {
    /// Limits by `store`'s live inbound listeners.
    pub fn new(store: Arc<mesh_core::store::ConfigStore>) -> Self {
        Self {
            store,
            buckets: Arc::default(),
        }
    }

    fn bucket<B>(&self, req: &Request<B>) -> Option<Arc<TokenBucket>> {
        let snapshot = self.store.load();
        let listener = crate::inbound::listener_for(&snapshot, req)?;
        let limit = listener.rate_limit.as_ref()?;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets
            .entry(listener.port)
            .or_insert_with(|| Arc::new(TokenBucket::new(limit.clone())));
        if bucket.limit != *limit {
            *bucket = Arc::new(TokenBucket::new(limit.clone()));
        }
        Some(bucket.clone())
    }
}

impl<S> Layer<S> for InboundRateLimitLayer {
    type Service = InboundRateLimit<S>;

    fn layer(&self, inner: S) -> InboundRateLimit<S> {
        InboundRateLimit {
            layer: self.clone(),
            inner,
        }
    }
}

/// The service [`InboundRateLimitLayer`] makes.
#[derive(Clone, Debug)]
pub struct InboundRateLimit<S> {
    layer: InboundRateLimitLayer,
    inner: S,
}

impl<S, B> Service<Request<B>> for InboundRateLimit<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>>,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(bucket) = self.layer.bucket(&req) else {
            return future::passed(self.inner.call(req));
        };
        let (allowed, remaining, reset) = bucket.take();
        if !allowed {
            metrics::counter!("mesh_rate_limited_total").increment(1);
            let mut response = error::to_response(&ProxyError::RateLimited.into());
            bucket.headers(remaining, reset, response.headers_mut());
            return future::acted(async move { Ok(response) });
        }
        let future = self.inner.call(req);
        future::acted(async move {
            let mut response = future.await?;
            bucket.headers(remaining, reset, response.headers_mut());
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    /// The statuses of `n` GET requests to `uri`, one after another.
    async fn statuses<S>(service: &S, uri: String, n: usize) -> Vec<u16>
    where
        S: Service<Request<BoxBody>, Response = Response<BoxBody>> + Clone,
        S::Error: std::fmt::Debug,
    {
        let mut statuses = Vec::new();
        for _ in 0..n {
            let req = Request::get(&uri).body(crate::body::empty()).unwrap();
            let response = service.clone().oneshot(req).await.unwrap();
            statuses.push(response.status().as_u16());
        }
        statuses
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_refills_at_its_rate_up_to_its_burst() {
        let bucket = TokenBucket::new(LocalRateLimit {
            max_tokens: 5,
            tokens_per_fill: 2,
            fill_interval: Duration::from_secs(1),
        });
        let taken = (0..10).filter(|_| bucket.take().0).count();
        assert_eq!(taken, 5, "the burst");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            (0..10).filter(|_| bucket.take().0).count(),
            2,
            "one interval's fill"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            (0..10).filter(|_| bucket.take().0).count(),
            5,
            "never more than the burst"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_inbound_listeners_bucket_limits_the_requests_to_its_port_only() {
        use mesh_core::model::{InboundListener, MeshConfig, Protocol};
        let listener = |port: u16, rate_limit: Option<LocalRateLimit>| InboundListener {
            port,
            protocol: Protocol::Http,
            default_endpoint: ([127, 0, 0, 1], 8080).into(),
            rate_limit,
        };
        let limit = LocalRateLimit {
            max_tokens: 2,
            tokens_per_fill: 2,
            fill_interval: Duration::from_secs(1),
        };
        let config = MeshConfig {
            inbound: vec![listener(9080, Some(limit)), listener(9090, None)],
            ..MeshConfig::default()
        };
        let store = Arc::new(mesh_core::store::ConfigStore::new(config));
        let app = tower::service_fn(|_req: Request<BoxBody>| async {
            Ok::<_, std::convert::Infallible>(Response::new(crate::body::empty()))
        });
        let service = InboundRateLimitLayer::new(store).layer(app);
        let statuses = |port: u16| statuses(&service, format!("http://reviews:{port}/"), 3);
        assert_eq!(statuses(9080).await, [200, 200, 429]);
        assert_eq!(
            statuses(9090).await,
            [200, 200, 200],
            "no limit on the other port"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(statuses(9080).await, [200, 200, 429], "refilled");
    }

    /// Two services whose VirtualServices allow `burst` requests per second each.
    fn two_limited_services(burst: u32) -> mesh_core::model::MeshConfig {
        let yaml = ["a", "b"]
            .map(|host| {
                format!(
                    "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: {host} }}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  endpoints: [{{ address: 127.0.0.1 }}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {host}
  annotations: {{ ratelimit.mesh.io/requests-per-second: \"1\", ratelimit.mesh.io/burst: \"{burst}\" }}
spec:
  hosts: [{host}]
  http:
  - route: [{{ destination: {{ host: {host} }} }}]
"
                )
            })
            .join("---\n");
        let workload = mesh_core::model::Workload::default();
        mesh_core::istio::load(&[("limits.yaml", &yaml)], &workload)
            .config
            .expect("a valid config")
    }

    #[tokio::test(start_paused = true)]
    async fn each_route_has_its_own_bucket_kept_while_its_limit_is_unchanged() {
        use crate::route::RouteLayer;
        use mesh_core::store::ConfigStore;

        let store = Arc::new(ConfigStore::new(two_limited_services(2)));
        let app = tower::service_fn(|_req: Request<BoxBody>| async {
            Ok::<_, BoxError>(Response::new(crate::body::empty()))
        });
        let service = RouteLayer::new(store.clone()).layer(RateLimitLayer::new().layer(app));
        let statuses = |host: &str, n| statuses(&service, format!("http://{host}/"), n);
        assert_eq!(statuses("a", 3).await, [200, 200, 429]);
        assert_eq!(statuses("b", 1).await, [200], "b's bucket is its own");
        store.publish(two_limited_services(2));
        assert_eq!(
            statuses("a", 1).await,
            [429],
            "the same limit in a new config: the bucket is kept"
        );
        assert_eq!(statuses("b", 2).await, [200, 429]);
        store.publish(two_limited_services(3));
        assert_eq!(
            statuses("a", 4).await,
            [200, 200, 200, 429],
            "a new limit: a full bucket of its size"
        );
    }
}
