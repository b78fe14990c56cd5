//! The outbound stack: route -> rate limit -> fault -> mirror -> timeout -> split -> retry ->
//! breaker -> balance -> client, with errors turned into responses at the edge. The router
//! applies the matched route's CORS policy ([`crate::cors`]) before the layers below, as
//! istiod puts Envoy's CORS filter ahead of the fault filter; an error of an allowed request
//! comes up wrapped with the CORS headers ([`crate::error::WithHeaders`]), which its response
//! at the edge carries.
//!
//! The split sits above the retry layer: as in Envoy, where the weighted cluster is chosen
//! once with the route, a request's destination is drawn once and its header operations
//! applied once, and every retry (or hedge) goes to the same cluster.

use crate::balance::{Balance, BalanceLayer};
use crate::body::{self, BoxBody, BoxError};
use crate::breaker::{Breaker, BreakerLayer};
use crate::client::UpstreamClient;
use crate::error;
use crate::fault::{FaultInjection, FaultLayer};
use crate::mirror::{Mirror, MirrorLayer, ShadowService};
use crate::ratelimit::{RateLimit, RateLimitLayer};
use crate::retry::{Retry, RetryBudget, RetryLayer};
use crate::rng::Rng;
use crate::route::{RouteLayer, Router};
use crate::split::{Split, SplitLayer};
use crate::telemetry::{Observation, Telemetry};
use crate::timeout::{Timeout, TimeoutLayer};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use mesh_core::store::ConfigStore;
use pin_project_lite::pin_project;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;
use tower_service::Service;

/// The layers of the stack as one type: each layer's future holds the next one's inline, so
/// a request allocates only where a layer acts (see [`crate::future`]).
type Stack<C> =
    Router<RateLimit<FaultInjection<Mirror<Timeout<Split<Retry<Breaker<Balance<C>>>>>>>>>;

/// Builds an [`Outbound`] service.
#[derive(Clone, Debug)]
pub struct OutboundBuilder<C = UpstreamClient> {
    store: Arc<ConfigStore>,
    rng: Rng,
    client: C,
    budget: RetryBudget,
    telemetry: Option<Telemetry>,
}

impl<C> OutboundBuilder<C>
where
    C: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>,
    C: Clone + Send + Sync + 'static,
    C::Future: Send + 'static,
{
    /// Draw splits from `rng` (seed it for reproducible tests).
    pub fn rng(mut self, rng: Rng) -> Self {
        self.rng = rng;
        self
    }

    /// Send through `client`: an [`UpstreamClient`] shared with another stack (to share its
    /// pools), or any service that sends a request to the endpoint the balancer chose (the
    /// `upstream` of its [`crate::context::RequestContext`]), such as a test double.
    pub fn client<C2>(self, client: C2) -> OutboundBuilder<C2> {
        OutboundBuilder {
            store: self.store,
            rng: self.rng,
            client,
            budget: self.budget,
            telemetry: self.telemetry,
        }
    }

    /// Uses `budget` for retries and hedges (to share one among stacks).
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.budget = budget;
        self
    }

    /// Records metrics, trace context and access logs with `telemetry`.
    pub fn telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// The service.
    pub fn build(self) -> Outbound<C> {
        // Below the split and the retries: a cluster's endpoint choice and the client, shared
        // by primary requests and mirrored shadows.
        let balancer = BalanceLayer::new(self.rng.clone());
        let upstream = ServiceBuilder::new()
            .layer(BreakerLayer::new())
            .layer(balancer.clone())
            .service(self.client);
        let shadow: ShadowService = BoxCloneSyncService::new(upstream.clone());
        let inner = ServiceBuilder::new()
            .layer(RouteLayer::new(self.store))
            .layer(RateLimitLayer::new())
            .layer(FaultLayer::new(self.rng.clone()))
            .layer(MirrorLayer::new(shadow, self.rng.clone()))
            .layer(TimeoutLayer::new())
            .layer(SplitLayer::new(self.rng.clone()))
            .layer(RetryLayer::new(self.budget, self.rng))
            .service(upstream);
        Outbound {
            inner,
            telemetry: self.telemetry,
            balancer,
        }
    }
}

/// The outbound stack as one service: any request in, a response out (never an error: a
/// failure is the response Envoy would give, flagged with its response flag).
///
/// ```no_run
/// use mesh_core::{model::MeshConfig, store::ConfigStore};
/// use mesh_tower::outbound::Outbound;
/// use std::sync::Arc;
///
/// let store = Arc::new(ConfigStore::new(MeshConfig::default()));
/// let outbound = Outbound::builder(store).build();
/// // Serve it with `mesh_tower::server`, or call it from an axum handler as a client.
/// # let _ = outbound;
/// ```
#[derive(Clone)]
pub struct Outbound<C = UpstreamClient> {
    inner: Stack<C>,
    telemetry: Option<Telemetry>,
    balancer: BalanceLayer,
}

impl<C> std::fmt::Debug for Outbound<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").finish_non_exhaustive()
    }
}

impl<C> Outbound<C> {
    /// The stack's balancer, whose endpoint state the admin endpoint shows.
    pub fn balancer(&self) -> &BalanceLayer {
        &self.balancer
    }
}

impl Outbound {
    /// A builder for the stack over `store`'s live config.
    pub fn builder(store: Arc<ConfigStore>) -> OutboundBuilder {
        OutboundBuilder {
            store,
            rng: Rng::from_entropy(),
            client: UpstreamClient::new(),
            budget: RetryBudget::default(),
            telemetry: None,
        }
    }
}

impl<B, C> Service<Request<B>> for Outbound<C>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    Stack<C>: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>,
{
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = ResponseFuture<<Stack<C> as Service<Request<BoxBody>>>::Future>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Every layer is always ready: their readiness is per request.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let mut observation = self.telemetry.as_ref().map(|t| {
            // Room, at once, for the headers telemetry and the layers below add: a map parsed
            // to fit its headers (as HTTP/2's decoder leaves it) would otherwise grow,
            // rehashing every entry, when one of them arrives. (Without telemetry, one header
            // is added: reserving would grow maps that have room for it.)
            req.headers_mut().reserve(ADDED_HEADERS);
            t.start(&mut req)
        });
        let grpc = match &observation {
            Some(observation) => observation.is_grpc(),
            None => crate::timeout::is_grpc(req.headers()),
        };
        // Telemetry counts the body's bytes (wrapping it only when its length is unknown).
        let req = match observation.as_mut() {
            Some(observation) => req.map(|b| observation.boxed_request_body(b)),
            None => req.map(body::boxed_request),
        };
        ResponseFuture {
            state: State::Stack {
                future: self.inner.call(req),
            },
            grpc,
            observation,
        }
    }
}

/// How many headers the outbound layers add to a request at most on its usual path:
/// telemetry's five (`x-request-id`, `traceparent`, `x-b3-traceid`, `x-b3-spanid`,
/// `x-b3-sampled`), the retry layer's `x-envoy-attempt-count` and the client's `host` for an
/// HTTP/2 request sent over HTTP/1.1.
const ADDED_HEADERS: usize = 7;

pin_project! {
    /// [`Outbound`]'s answer as the client gets it: an error becomes the response Envoy would
    /// give, a gRPC client gets it as gRPC, and telemetry sees the final response.
    ///
    /// The stack's future is held inline, not boxed: a server that holds this future in its
    /// connection state (hyper does) allocates nothing for it.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        grpc: bool,
        observation: Option<Observation>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Stack { #[pin] future: F },
        // The mesh's own answer to a gRPC request, being rewritten (rare: boxed).
        Grpc { future: BoxFuture<'static, Response<BoxBody>> },
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<BoxBody>, BoxError>>,
{
    type Output = Result<Response<BoxBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let response = loop {
            match this.state.as_mut().project() {
                StateProj::Stack { future } => {
                    let response =
                        ready!(future.poll(cx)).unwrap_or_else(|e| error::to_response(&e));
                    // A gRPC client gets the mesh's own answers (503 UH, 504 UT, ...) as gRPC.
                    if !(*this.grpc && crate::grpc::needs_rewrite(&response)) {
                        break response;
                    }
                    let future = crate::grpc::to_grpc(response);
                    this.state.set(State::Grpc { future });
                }
                StateProj::Grpc { future } => break ready!(future.as_mut().poll(cx)),
            }
        };
        Poll::Ready(Ok(match this.observation.take() {
            Some(observation) => observation.finish(response),
            None => response,
        }))
    }
}

#[cfg(test)]
mod tests;
