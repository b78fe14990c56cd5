//! The request kept for its tries: the head, the extensions and a replayable body.

use super::unsent::Resend;
use crate::body::{self, BoxBody, BoxError};
use crate::context::RequestContext;
use crate::server::ConnectionInfo;
use bytes::Bytes;
use http::{Extensions, HeaderMap, HeaderValue, Request};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// The request's head, kept to build each try.
pub(super) struct Template {
    /// The head with a copy of the headers, for the tries after the first.
    parts: http::request::Parts,
    /// The request's own headers, which the first try takes: a header the tries add then
    /// goes into the room the map already has, not into a copy made to fit.
    first_headers: Option<HeaderMap>,
    extensions: Carried,
    body: ReplayBody,
    remote_localities: bool,
}

/// The request body, kept so that it can be sent again.
pub(super) enum ReplayBody {
    /// Read whole before the first try (its length was known and small).
    Buffered(Bytes),
    /// Sent as it arrives on the first try, with a copy kept up to the limit: replayable once
    /// it has ended within the limit (a gRPC unary call, a small chunked body), not before.
    /// Made by [`ReplayBody::tee`].
    Tee(TeeBody),
}

/// The parts of [`ReplayBody::Tee`].
pub(super) struct TeeBody {
    first: Option<BoxBody>,
    copy: Arc<Mutex<TeeState>>,
}

impl ReplayBody {
    /// An empty body (a request without one).
    pub(super) fn empty() -> Self {
        ReplayBody::Buffered(Bytes::new())
    }

    /// `body`, sent as it arrives on the first try, with a copy kept up to `limit` bytes.
    pub(super) fn tee(body: BoxBody, limit: usize) -> Self {
        let copy = Arc::new(Mutex::new(TeeState::default()));
        let tee = Tee {
            inner: body,
            copy: copy.clone(),
            limit,
        };
        ReplayBody::Tee(TeeBody {
            first: Some(body::boxed(tee)),
            copy,
        })
    }
}

/// What a [`Tee`] has seen of the body.
#[derive(Debug, Default)]
struct TeeState {
    data: bytes::BytesMut,
    complete: bool,
    overflow: bool,
}

/// Passes a body through, keeping a copy of it up to `limit` bytes.
struct Tee {
    inner: BoxBody,
    copy: Arc<Mutex<TeeState>>,
    limit: usize,
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        let mut copy = this.copy.lock().unwrap_or_else(|p| p.into_inner());
        match &polled {
            Poll::Ready(Some(Ok(frame))) => match frame.data_ref() {
                Some(data) if !copy.overflow => {
                    if copy.data.len() + data.len() > this.limit {
                        copy.overflow = true;
                        copy.data = bytes::BytesMut::new();
                    } else {
                        copy.data.extend_from_slice(data);
                    }
                }
                Some(_) => {}
                // Trailers are not kept: such a body is not replayed.
                None => copy.overflow = true,
            },
            Poll::Ready(None) => copy.complete = true,
            Poll::Ready(Some(Err(_))) => copy.overflow = true,
            Poll::Pending => {}
        }
        // A sender may stop polling once the body says it has ended.
        if matches!(polled, Poll::Ready(Some(Ok(_)))) && this.inner.is_end_stream() {
            copy.complete = true;
        }
        drop(copy);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Template {
    /// Keeps `parts` and `body` for the tries of a request.
    pub(super) fn new(
        mut parts: http::request::Parts,
        body: ReplayBody,
        remote_localities: bool,
    ) -> Self {
        let extensions = Carried::new(std::mem::take(&mut parts.extensions));
        let copy = parts.headers.clone();
        let first_headers = Some(std::mem::replace(&mut parts.headers, copy));
        Self {
            parts,
            first_headers,
            extensions,
            body,
            remote_localities,
        }
    }

    /// The body for try `n`, or `None` when it cannot be sent again.
    fn body(&mut self, n: u32) -> Option<BoxBody> {
        match &mut self.body {
            ReplayBody::Buffered(bytes) => Some(body::full(bytes.clone())),
            ReplayBody::Tee(TeeBody { first, copy }) => {
                if n == 1
                    && let Some(body) = first.take()
                {
                    return Some(body);
                }
                let copy = copy.lock().unwrap_or_else(|p| p.into_inner());
                (copy.complete && !copy.overflow).then(|| body::full(copy.data.clone().freeze()))
            }
        }
    }

    /// Try `n` (from 1), or `None` when its body cannot be sent again.
    pub(super) fn attempt(&mut self, n: u32) -> Option<Request<BoxBody>> {
        let mut req = Request::new(self.body(n)?);
        *req.method_mut() = self.parts.method.clone();
        *req.uri_mut() = self.parts.uri.clone();
        *req.version_mut() = self.parts.version;
        *req.headers_mut() = match self.first_headers.take().filter(|_| n == 1) {
            Some(headers) => headers,
            None => self.parts.headers.clone(),
        };
        *req.extensions_mut() = self.extensions.for_try(n);
        mark_try(&mut req, n, self.remote_localities);
        Some(req)
    }
}

/// What a request's tries are made from: a copy of the request, or (when only tries the
/// upstream never saw are retried) the request handed back by the last try.
pub(super) enum Kept {
    /// Boxed: the usual request keeps none, and the retry future holds this inline.
    Copied(Box<Template>),
    Unsent(Resend),
}

impl Kept {
    /// Try `n` (from 1), or `None` when it cannot be made.
    pub(super) fn attempt(&mut self, n: u32) -> Option<Request<BoxBody>> {
        match self {
            Kept::Copied(template) => template.attempt(n),
            Kept::Unsent(resend) => resend.attempt(n),
        }
    }

    /// Whether another try can be made: a copy always can; a request to be handed back only
    /// once it was.
    pub(super) fn can_replay(&self) -> bool {
        match self {
            Kept::Copied(_) => true,
            Kept::Unsent(resend) => resend.can_replay(),
        }
    }
}

/// Marks try `n`: `x-envoy-attempt-count`, the try in the request's context after the first,
/// and the time left to the deadline.
pub(super) fn mark_try(req: &mut Request<BoxBody>, n: u32, remote_localities: bool) {
    req.headers_mut()
        .insert(X_ENVOY_ATTEMPT_COUNT, attempt_count(n));
    // A first try carries none: every reader takes its absence as try 1.
    if n > 1 {
        RequestContext::of_mut(req).attempt = Some(crate::telemetry::Attempt {
            number: n,
            remote_localities,
        });
    }
    if let Some(deadline) = RequestContext::of(req).and_then(|c| c.deadline) {
        deadline.propagate_to(req);
    }
}

const X_ENVOY_ATTEMPT_COUNT: http::HeaderName =
    http::HeaderName::from_static("x-envoy-attempt-count");

/// `x-envoy-attempt-count`'s value: static for the usual few tries (no allocation).
fn attempt_count(n: u32) -> HeaderValue {
    const STATIC: [&str; 9] = ["0", "1", "2", "3", "4", "5", "6", "7", "8"];
    match STATIC.get(n as usize) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(n),
    }
}

/// The request's extensions, kept for the tries.
///
/// Copying the extension map costs an allocation per entry, and most requests are tried once.
/// So when the map holds only the extensions the mesh itself puts on an outbound request
/// (before this layer), the first try takes the map as it is, and a retry gets a new map with
/// the same entries. A map with anything else in it is copied for each try, as before.
#[expect(
    clippy::large_enum_variant,
    reason = "inside the boxed template; boxing the entries would allocate again"
)]
enum Carried {
    /// The map holds only [`Known`] entries.
    Known {
        first: Option<Extensions>,
        known: Known,
    },
    /// The map holds entries this layer does not know: each try gets a copy.
    Copied(Extensions),
}

/// The request extensions the mesh itself sets on an outbound request above the retry layer:
/// the server's connection info and the layers' [`RequestContext`].
#[derive(Clone, Default)]
struct Known {
    connection: Option<ConnectionInfo>,
    context: Option<RequestContext>,
}

impl Known {
    fn of(extensions: &Extensions) -> Self {
        Self {
            connection: extensions.get().copied(),
            context: extensions.get().cloned(),
        }
    }

    fn len(&self) -> usize {
        usize::from(self.connection.is_some()) + usize::from(self.context.is_some())
    }

    fn to_extensions(&self) -> Extensions {
        let mut extensions = Extensions::new();
        if let Some(v) = self.connection {
            extensions.insert(v);
        }
        if let Some(v) = &self.context {
            extensions.insert(v.clone());
        }
        extensions
    }
}

impl Carried {
    fn new(extensions: Extensions) -> Self {
        let known = Known::of(&extensions);
        if known.len() == extensions.len() {
            Carried::Known {
                first: Some(extensions),
                known,
            }
        } else {
            Carried::Copied(extensions)
        }
    }

    /// The extensions of try `n`.
    fn for_try(&mut self, n: u32) -> Extensions {
        match self {
            Carried::Copied(extensions) => extensions.clone(),
            Carried::Known { first, known } => match first.take().filter(|_| n == 1) {
                Some(extensions) => extensions,
                None => known.to_extensions(),
            },
        }
    }
}
