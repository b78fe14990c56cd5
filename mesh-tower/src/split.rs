//! The split layer: a weighted choice among the matched route's destinations (a 90/10
//! canary), each a cluster of the snapshot.
//!
//! In the outbound stack it sits above the retry layer: the destination is drawn, and its
//! request header operations applied, once per request; every retry and hedge of the request
//! goes to that cluster (Envoy picks the weighted cluster once, with the route).

use crate::body::{BoxBody, BoxError};
use crate::context::RequestContext;
use crate::error::ProxyError;
use crate::future::{self, ResponseFuture};
use crate::rng::Rng;
use crate::route::apply_header_ops;
use http::{Request, Response};
use mesh_core::model::Cluster;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// The cluster the split layer chose, for the layers below it (in the request's
/// [`RequestContext`]).
#[derive(Clone, Debug)]
pub struct Target {
    /// The chosen cluster.
    pub cluster: Arc<Cluster>,
}

/// Picks one of a [`Routed`](crate::route::Routed) request's weighted destinations.
#[derive(Clone, Debug, Default)]
pub struct SplitLayer {
    rng: Rng,
}

impl SplitLayer {
    /// A layer drawing from `rng` (seed it for reproducible splits).
    pub fn new(rng: Rng) -> Self {
        Self { rng }
    }
}

impl<S> Layer<S> for SplitLayer {
    type Service = Split<S>;

    fn layer(&self, inner: S) -> Split<S> {
        Split {
            rng: self.rng.clone(),
            inner,
        }
    }
}

/// The service [`SplitLayer`] makes.
#[derive(Clone, Debug)]
pub struct Split<S> {
    rng: Rng,
    inner: S,
}

impl<S, B> Service<Request<B>> for Split<S>
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

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(routed) = RequestContext::routed(&req).cloned() else {
            let e = ProxyError::BadRequest("the split layer needs a routed request".into());
            return future::acted(async move { Err(e.into()) });
        };
        let Some(forward) = routed.forward() else {
            let e = ProxyError::BadRequest("the route does not forward".into());
            return future::acted(async move { Err(e.into()) });
        };
        let draw = self.rng.below(forward.total_weight());
        let Some((index, chosen)) = forward
            .destinations
            .iter()
            .enumerate()
            .scan(draw, |left, (i, d)| {
                let hit = *left < d.weight;
                *left = left.saturating_sub(d.weight);
                Some((i, d, hit))
            })
            .find(|(_, _, hit)| *hit)
            .map(|(i, d, _)| (i, d))
        else {
            let e = ProxyError::NoHealthyUpstream(format!(
                "route {} has no weighted destination",
                routed.route().name
            ));
            return future::acted(async move { Err(e.into()) });
        };
        let Some(cluster) = routed.snapshot().cluster(&chosen.cluster).cloned() else {
            let e = ProxyError::ClusterNotFound(chosen.cluster.to_string());
            return future::acted(async move { Err(e.into()) });
        };
        apply_header_ops(&chosen.request_headers, req.headers_mut());
        RequestContext::of_mut(&mut req).target = Some(Target { cluster });
        let passes = chosen.response_headers.is_empty();
        // Called now (it is ready): no clone of the stack below per request.
        let future = self.inner.call(req);
        if passes {
            return future::passed(future);
        }
        future::acted(async move {
            let mut response = future.await?;
            if let Some(forward) = routed.forward() {
                apply_header_ops(
                    &forward.destinations[index].response_headers,
                    response.headers_mut(),
                );
            }
            Ok(response)
        })
    }
}
