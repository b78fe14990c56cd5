//! The mesh's own answers to gRPC requests, in gRPC's form.
//!
//! A denial (403 `RBAC: access denied`), a rate limit (429) or an upstream failure (503 `no
//! healthy upstream`, 504) is an HTTP response with a text body. A gRPC client reads the body
//! of any answer as gRPC messages and reports a protocol error (tonic: `Internal`, "invalid
//! compression flag") instead of the failure. Envoy answers gRPC requests with a trailers-only
//! response instead; [`to_grpc`] does the same: HTTP 200, `content-type: application/grpc`,
//! `grpc-status` from the HTTP status by gRPC's own mapping (`doc/http-grpc-status-mapping.md`:
//! 400 INTERNAL, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 UNIMPLEMENTED, 429 / 502 /
//! 503 / 504 UNAVAILABLE, anything else UNKNOWN) and `grpc-message` from the body text
//! (percent-encoded as the spec says). Extensions (response flags, the authorization verdict)
//! and other headers are kept.
//!
//! Only error answers to gRPC requests that are not gRPC already are touched: an upstream's
//! own gRPC answer (whatever its `grpc-status`) passes unchanged.

use crate::body::{self, BoxBody};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;

/// Bodies up to this size become the `grpc-message`; a larger one is dropped unread.
const MESSAGE_LIMIT: u64 = 4096;

/// `grpc-status`, looked up by a constant name (no parsing per request).
pub(crate) const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
/// `grpc-message`, likewise.
pub(crate) const GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");

/// gRPC's status code for an HTTP status, by gRPC's mapping.
pub fn code_for(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// Whether `response` should be rewritten for a gRPC client: an error status, and not gRPC.
pub fn needs_rewrite<B>(response: &Response<B>) -> bool {
    let status = response.status();
    !(status.is_success()
        || status.is_informational()
        || crate::timeout::is_grpc(response.headers()))
}

/// `response`, as a gRPC trailers-only answer when [`needs_rewrite`] says so; see the module
/// docs. Call it only for gRPC requests ([`crate::timeout::is_grpc`] on the request headers).
///
/// The future is boxed: callers await it on a rare path, and its state (reading the error
/// body) would otherwise make every request's future larger.
pub fn to_grpc(response: Response<BoxBody>) -> BoxFuture<'static, Response<BoxBody>> {
    Box::pin(rewrite(response))
}

async fn rewrite(response: Response<BoxBody>) -> Response<BoxBody> {
    if !needs_rewrite(&response) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = if body.size_hint().upper().is_some_and(|n| n <= MESSAGE_LIMIT) {
        body.collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default()
    } else {
        Bytes::new()
    };
    let text = String::from_utf8_lossy(&text);
    let text = match text.trim() {
        "" => parts.status.canonical_reason().unwrap_or("error"),
        t => t,
    };
    let code = code_for(parts.status);
    parts.status = StatusCode::OK;
    parts.headers.remove(CONTENT_LENGTH);
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    parts.headers.insert(GRPC_STATUS, HeaderValue::from(code));
    if let Ok(message) = HeaderValue::from_str(&percent_encode(text)) {
        parts.headers.insert(GRPC_MESSAGE, message);
    }
    Response::from_parts(parts, body::empty())
}

/// gRPC's `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_reply_becomes_a_trailers_only_grpc_answer() {
        let mut denied = Response::new(body::full("RBAC: access denied"));
        *denied.status_mut() = StatusCode::FORBIDDEN;
        denied
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        denied.extensions_mut().insert(7u8);
        let reply = to_grpc(denied).await;
        assert_eq!(reply.status(), StatusCode::OK);
        assert_eq!(reply.headers()["content-type"], "application/grpc");
        assert_eq!(reply.headers()["grpc-status"], "7");
        assert_eq!(reply.headers()["grpc-message"], "RBAC: access denied");
        assert_eq!(reply.extensions().get::<u8>(), Some(&7));
        assert!(reply.into_body().is_end_stream());
    }

    #[tokio::test]
    async fn grpc_answers_and_successes_pass_unchanged() {
        let mut grpc = Response::new(body::empty());
        *grpc.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        grpc.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        let grpc = to_grpc(grpc).await;
        assert_eq!(grpc.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(grpc.headers().get("grpc-status").is_none());
        let ok = to_grpc(Response::new(body::full("fine"))).await;
        assert_eq!(ok.status(), StatusCode::OK);
        assert!(ok.headers().get("grpc-status").is_none());
    }

    #[test]
    fn codes_and_message_encoding_follow_the_grpc_spec() {
        assert_eq!(code_for(StatusCode::SERVICE_UNAVAILABLE), 14);
        assert_eq!(code_for(StatusCode::GATEWAY_TIMEOUT), 14);
        assert_eq!(code_for(StatusCode::TOO_MANY_REQUESTS), 14);
        assert_eq!(code_for(StatusCode::NOT_FOUND), 12);
        assert_eq!(code_for(StatusCode::UNAUTHORIZED), 16);
        assert_eq!(code_for(StatusCode::INTERNAL_SERVER_ERROR), 2);
        assert_eq!(percent_encode("100% sûr\n"), "100%25 s%C3%BBr%0A");
    }
}

/// A layer answering gRPC requests' error responses in gRPC's form ([`to_grpc`]), for a
/// stack whose errors are already responses (the sidecar's inbound stack: a denial, a
/// missing app, an unreachable app).
///
/// ```
/// use mesh_tower::grpc::GrpcErrorsLayer;
/// use tower::Layer;
/// let service = GrpcErrorsLayer.layer(tower::service_fn(|_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(mesh_tower::body::empty()))
/// }));
/// # let _ = service;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcErrorsLayer;

impl<S> tower_layer::Layer<S> for GrpcErrorsLayer {
    type Service = GrpcErrors<S>;

    fn layer(&self, inner: S) -> GrpcErrors<S> {
        GrpcErrors { inner }
    }
}

/// The service [`GrpcErrorsLayer`] makes.
#[derive(Clone, Debug)]
pub struct GrpcErrors<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for GrpcErrors<S>
where
    S: tower_service::Service<http::Request<B>, Response = Response<BoxBody>>,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = futures_util::future::BoxFuture<'static, Result<Response<BoxBody>, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let grpc = crate::timeout::is_grpc(req.headers());
        let future = self.inner.call(req);
        Box::pin(async move {
            let response = future.await?;
            Ok(if grpc && needs_rewrite(&response) {
                to_grpc(response).await
            } else {
                response
            })
        })
    }
}
