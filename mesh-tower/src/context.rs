//! What the outbound layers decide about a request on its way down, in one entry of the
//! request's extensions.
//!
//! The router sets the route ([`Routed`]), the timeout layer the deadline ([`Deadline`]),
//! telemetry the trace to add spans to ([`TraceScope`]), the retry layer which try this is
//! ([`Attempt`]), the split the cluster ([`Target`]) and the balancer the endpoint
//! ([`Upstream`], [`StreamSlot`]). Each is a field of one [`RequestContext`] instead of an
//! extension of its own: every entry of an `http::Extensions` map is a boxed value and a
//! hashed insert, and the map grows when a fourth entry arrives.
//!
//! The context comes back up on the response: the client moves the request's extensions over
//! to it ([`RequestContext::of_response`]), so telemetry reads the endpoint that answered
//! without a map of the response's own to allocate.
//!
//! ```
//! use mesh_tower::context::RequestContext;
//! use mesh_tower::timeout::Deadline;
//!
//! let mut req = http::Request::new(());
//! assert!(RequestContext::of(&req).is_none());
//! let deadline = Deadline(tokio::time::Instant::now());
//! RequestContext::of_mut(&mut req).deadline = Some(deadline);
//! assert_eq!(RequestContext::of(&req).and_then(|c| c.deadline), Some(deadline));
//! ```

use crate::balance::{StreamSlot, Upstream};
use crate::retry::Unsent;
use crate::route::Routed;
use crate::split::Target;
use crate::telemetry::{Attempt, TraceScope};
use crate::timeout::Deadline;
use http::{Request, Response};
use std::sync::Arc;

/// A request's context; see the module docs. A field is `None` until its layer runs (or
/// when the layer had nothing to say: no route timeout, an unsampled trace, a first try).
#[derive(Clone, Debug, Default)]
pub struct RequestContext {
    /// The matched route, from [`crate::route::RouteLayer`].
    pub routed: Option<Routed>,
    /// The request's deadline, from [`crate::timeout::TimeoutLayer`].
    pub deadline: Option<Deadline>,
    /// The trace, when its spans are collected, from [`crate::telemetry::Telemetry`]
    /// (shared: a 128-bit trace id inline would make the context 16-byte aligned).
    pub trace: Option<Arc<TraceScope>>,
    /// Which try this is, from the retry layer: `None` on a first try.
    pub attempt: Option<Attempt>,
    /// The chosen cluster, from [`crate::split::SplitLayer`].
    pub target: Option<Target>,
    /// The chosen endpoint, from [`crate::balance::BalanceLayer`].
    pub upstream: Option<Upstream>,
    /// Which of the endpoint's HTTP/2 connections to use, from the balancer.
    pub stream_slot: Option<StreamSlot>,
    /// Where the client gives the request back when the upstream never saw it, from the
    /// retry layer (when that is all a retry needs).
    pub unsent: Option<Unsent>,
    /// The endpoints earlier tries of this request went to (for a hedged try, those of the
    /// tries still in flight too), for a retry or hedge to avoid (Istio's
    /// `retryIgnorePreviousHosts`), from the retry layer.
    pub previous_hosts: Option<Arc<[http::uri::Authority]>>,
    /// Where the balancer notes the endpoint it picked, when the retry layer cannot learn it
    /// from the try's outcome (a try cut off by its per-try timeout, a hedged try still in
    /// flight).
    pub picked: Option<Arc<std::sync::OnceLock<http::uri::Authority>>>,
    /// Whether the request is gRPC (`content-type: application/grpc...`), from outbound
    /// telemetry's scan of the headers (`None` elsewhere); read through
    /// [`RequestContext::is_grpc`], which scans the headers itself without it.
    pub grpc: Option<bool>,
}

impl RequestContext {
    /// `req`'s context, when a layer has set one.
    pub fn of<B>(req: &Request<B>) -> Option<&Self> {
        req.extensions().get()
    }

    /// The context of the request `response` answers, as the client carried it over to the
    /// response (with what the balancer chose: [`RequestContext::upstream`]).
    pub fn of_response<B>(response: &Response<B>) -> Option<&Self> {
        response.extensions().get()
    }

    /// `req`'s context for a layer to write its part, added empty when it has none.
    pub fn of_mut<B>(req: &mut Request<B>) -> &mut Self {
        req.extensions_mut().get_or_insert_default()
    }

    /// The matched route of `req`.
    pub fn routed<B>(req: &Request<B>) -> Option<&Routed> {
        Self::of(req)?.routed.as_ref()
    }

    /// Whether `req` is gRPC: as recorded in its context, else from its headers.
    pub fn is_grpc<B>(req: &Request<B>) -> bool {
        Self::of(req)
            .and_then(|c| c.grpc)
            .unwrap_or_else(|| crate::timeout::is_grpc(req.headers()))
    }

    /// The cluster chosen for `req`.
    pub fn target<B>(req: &Request<B>) -> Option<&Target> {
        Self::of(req)?.target.as_ref()
    }
}
