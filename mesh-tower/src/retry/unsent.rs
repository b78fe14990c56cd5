//! A try's request, handed back by the layers below when the upstream never saw it.
//!
//! Most retry policies (Istio's default among them: `connect-failure,refused-stream,
//! unavailable,cancelled`) retry only tries the upstream never saw. For those, the retry layer
//! keeps no copy of the request's headers; it gives the try an [`Unsent`] instead, and the
//! client puts the request back in it when the connection could not be made (or, over
//! HTTP/2, the stream was refused). A retry sends that request again. Copying the headers of
//! every request for a retry that rarely comes cost more than any other step of the retry
//! layer.

use super::template::mark_try;
use crate::body::{self, BoxBody};
use crate::context::RequestContext;
use http::{Request, Version};
use std::sync::{Arc, Mutex, PoisonError};

/// Where the client gives back a try's request that the upstream never saw. Set in the
/// request's [`RequestContext`] by the retry layer.
#[derive(Clone)]
pub struct Unsent {
    slot: Arc<Mutex<Option<Request<BoxBody>>>>,
    /// Keep a copy of an HTTP/2 request for a refused stream (hyper does not hand it back).
    copy_for_http2: bool,
}

impl std::fmt::Debug for Unsent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unsent")
            .field("copy_for_http2", &self.copy_for_http2)
            .finish_non_exhaustive()
    }
}

impl Unsent {
    /// An empty slot; `copy_for_http2` when a refused HTTP/2 stream is retried.
    pub(crate) fn new(copy_for_http2: bool) -> Self {
        Self {
            slot: Arc::default(),
            copy_for_http2,
        }
    }

    /// Whether a request was given back.
    pub(crate) fn holds_request(&self) -> bool {
        self.slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// The request given back, if any.
    pub(crate) fn take(&self) -> Option<Request<BoxBody>> {
        self.slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Gives `req` back to the retry layer, when it asked for it; drops it otherwise.
    ///
    /// The slot is taken out of the request first: a request holding the slot it sits in
    /// would never be freed.
    pub fn give_back(mut req: Request<BoxBody>) {
        let Some(unsent) = req
            .extensions_mut()
            .get_mut::<RequestContext>()
            .and_then(|c| c.unsent.take())
        else {
            return;
        };
        *unsent.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(req);
    }

    /// A copy of `req`'s head (its body has ended) to give back if its HTTP/2 stream is
    /// refused, when the retry layer asked for one. Without `req`'s extensions: whoever gives
    /// the copy back puts the request's own on it (the client keeps them aside while hyper has
    /// the request), so that they are not copied for every request.
    pub fn copy_for_http2(req: &Request<BoxBody>) -> Option<Request<BoxBody>> {
        let context = RequestContext::of(req)?;
        if !context.unsent.as_ref()?.copy_for_http2 {
            return None;
        }
        let mut copy = Request::new(body::empty());
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        Some(copy)
    }
}

/// The tries of a request without a body whose policy retries only tries the upstream never
/// saw ([`RetryOn::retries_only_unseen`]): the first try is the request itself, with no copy
/// kept; each retry is the request the try before it handed back.
///
/// [`RetryOn::retries_only_unseen`]: mesh_core::model::RetryOn::retries_only_unseen
pub(super) struct Resend {
    /// Where the last try's request comes back.
    unsent: Unsent,
    /// The request's version (the client sets the one it sends with).
    version: Version,
    remote_localities: bool,
}

impl Resend {
    /// The tries of `req`, which is made the first one; `copy_for_http2` when a refused
    /// HTTP/2 stream is retried.
    pub(super) fn first(
        req: &mut Request<BoxBody>,
        remote_localities: bool,
        copy_for_http2: bool,
    ) -> Self {
        let resend = Self {
            unsent: Unsent::new(copy_for_http2),
            version: req.version(),
            remote_localities,
        };
        RequestContext::of_mut(req).unsent = Some(resend.unsent.clone());
        mark_try(req, 1, remote_localities);
        resend
    }

    /// Whether the last try handed its request back.
    pub(super) fn can_replay(&self) -> bool {
        self.unsent.holds_request()
    }

    /// Try `n` (from 2): the request the try before handed back; `None` when it was not.
    pub(super) fn attempt(&mut self, n: u32) -> Option<Request<BoxBody>> {
        // As the last try left it, but for what the layers below chose for it (the cluster,
        // chosen above, stays: every try of a request goes to it). The client's
        // changes to the name and the URI are the ones it makes to any request, whatever the
        // protocol of the next try; the version it set is put back.
        let mut req = self.unsent.take()?;
        *req.version_mut() = self.version;
        // Each try its own slot: a late give-back of an earlier try goes nowhere.
        self.unsent = Unsent::new(self.unsent.copy_for_http2);
        let context = RequestContext::of_mut(&mut req);
        context.upstream = None;
        context.stream_slot = None;
        context.unsent = Some(self.unsent.clone());
        mark_try(&mut req, n, self.remote_localities);
        Some(req)
    }
}
