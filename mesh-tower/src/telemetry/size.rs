//! How big a request and a response are, as `istio_request_bytes` and `istio_response_bytes`
//! report them.
//!
//! Istio's stats filter records the downstream connection's bytes meter: what the request
//! took on the wire (`wireBytesReceived`) and what the response did (`wireBytesSent`),
//! headers included and the body as it was actually transferred, not as declared. The stacks
//! here see parsed requests, not the wire, so headers are counted as Envoy's
//! `HeaderMap::byteSize()` counts them, the same way for HTTP/1.1 and HTTP/2; the body bytes
//! are the body's known length, or its data frames counted as they stream
//! ([`super::RequestBody`]). The access log's `bytes_received` / `bytes_sent` are body bytes
//! only, as Envoy's `%BYTES_RECEIVED%` / `%BYTES_SENT%` are.

use super::propagation::TraceHeaders;
use http::{Request, Response};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The wire size of a request's headers, approximated as Envoy's `HeaderMap::byteSize()`:
/// the sum of the name and value lengths of every header, with the request line as HTTP/2's
/// pseudo-headers (`:method`, `:path` with the query, `:authority`, `:scheme`, each name and
/// value). The same request counts the same over HTTP/1.1 and HTTP/2: its `Host` header is
/// its `:authority` (counted once, as Envoy's HTTP/1.1 codec makes it one), and a request line
/// without a scheme counts `http`. Framing (HPACK, `: `, line ends, the `HTTP/1.1` token) is
/// not counted.
///
/// The headers' lengths come from `found`, the scan of `req`'s headers that telemetry makes
/// anyway: one pass over them for both.
pub(super) fn request_header_bytes<B>(req: &Request<B>, found: &TraceHeaders<'_>) -> u64 {
    let uri = req.uri();
    // `Host` is in `found.header_bytes`: it counts as the `:authority` instead (its first
    // value, as `HeaderMap::get` reads it).
    let host = found.host.map_or(0, |host| "host".len() + host.len());
    let authority = match uri.authority() {
        Some(authority) => Some(authority.as_str().len()),
        None => found.host.map(|host| host.len()),
    };
    let pseudo = ":method".len()
        + req.method().as_str().len()
        + ":path".len()
        + uri.path_and_query().map_or(1, |p| p.as_str().len())
        + ":scheme".len()
        + uri.scheme_str().map_or("http".len(), str::len)
        + authority.map_or(0, |len| ":authority".len() + len);
    pseudo as u64 + found.header_bytes - host as u64
}

/// The wire size of a response's headers, approximated as [`request_header_bytes`]: the
/// status line as `:status` and its three digits, and every header's name and value.
pub(super) fn response_header_bytes<B>(response: &Response<B>) -> u64 {
    let fields: usize = response
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    (":status".len() + 3 + fields) as u64
}

/// A request's size: its headers' and its body's bytes.
#[derive(Clone, Debug)]
pub(super) struct RequestBytes {
    headers: u64,
    body: BodyBytes,
}

/// A request body's bytes: known up front, or counted as its frames go through.
#[derive(Clone, Debug)]
pub(super) enum BodyBytes {
    /// The body's length, known before it streams (or, before the body is handed to
    /// [`super::Observation::request_body`], its `Content-Length`).
    Known(u64),
    /// A body of unknown length: the bytes its [`super::RequestBody`] has passed on so far.
    Counted(Arc<AtomicU64>),
}

impl RequestBytes {
    /// `headers` bytes of headers and, until the body is seen, `declared` bytes of body.
    pub(super) fn new(headers: u64, declared: u64) -> Self {
        Self {
            headers,
            body: BodyBytes::Known(declared),
        }
    }

    /// Counts the body as `body` says from now on.
    pub(super) fn set_body(&mut self, body: BodyBytes) {
        self.body = body;
    }

    /// The body's bytes (the access log's `bytes_received`).
    pub(super) fn body(&self) -> u64 {
        match &self.body {
            BodyBytes::Known(n) => *n,
            BodyBytes::Counted(counter) => counter.load(Ordering::Relaxed),
        }
    }

    /// Headers and body (`istio_request_bytes`).
    pub(super) fn total(&self) -> u64 {
        self.headers + self.body()
    }
}

#[cfg(test)]
mod tests;
