//! Spans: one per request (the proxy's) and one per upstream try (its children), handed to a
//! [`SpanSink`] when they end; [`otlp`](super::otlp) exports them.

use super::TraceContext;
use std::sync::Arc;
use std::time::SystemTime;

/// Whether a span is this proxy serving a request or calling an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// The proxy's handling of a request.
    Server,
    /// One try to an upstream.
    Client,
}

/// A finished span.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanRecord {
    /// The trace.
    pub trace_id: u128,
    /// This span.
    pub span_id: u64,
    /// Its parent, if any.
    pub parent_span_id: Option<u64>,
    /// What it was (`outbound hello.default.svc.cluster.local`, `attempt 2`).
    pub name: String,
    /// Server or client.
    pub kind: SpanKind,
    /// When it began.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Attributes (`http.response.status_code`, `upstream.address`, ...).
    pub attributes: Vec<(String, String)>,
    /// Whether it failed (5xx or no response).
    pub error: bool,
}

/// Where finished spans go.
pub type SpanSink = Arc<dyn Fn(SpanRecord) + Send + Sync>;

/// The trace a request belongs to, so that layers below can add spans: in the request's
/// [`crate::context::RequestContext`] when the trace is sampled and its spans are collected.
#[derive(Clone)]
pub struct TraceScope {
    /// The proxy's span for the request.
    pub context: TraceContext,
    /// Where spans go.
    pub sink: SpanSink,
}

impl std::fmt::Debug for TraceScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceScope")
            .field("context", &self.context)
            .finish()
    }
}
