//! The body type the stacks hand back, and constructors for the proxy's own responses.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};

/// A boxed error, as tower and hyper pass them around.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response a stack returns: the upstream's, or one the proxy made.
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body whose errors convert into [`BoxError`].
pub fn boxed<B>(body: B) -> BoxBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// As [`boxed`], for a body whose error already is a [`BoxError`]: no error-mapping wrapper
/// around it, so one call fewer for each of its frames. The mesh's own body wrappers (the
/// pool's, the idle timer's, telemetry's) each sit on the way of every response frame.
pub fn erase<B>(body: B) -> BoxBody
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static,
{
    BoxBody::new(body)
}

/// As [`boxed`], for a request body: one that has already ended (a GET's) becomes
/// [`empty`], which allocates nothing, and the original is dropped.
pub fn boxed_request<B>(body: B) -> BoxBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if body.is_end_stream() {
        empty()
    } else {
        boxed(body)
    }
}

/// A body holding `bytes`. No bytes make an [`empty`] body, which allocates nothing (a
/// retry's copy of a GET).
pub fn full(bytes: impl Into<Bytes>) -> BoxBody {
    let bytes = bytes.into();
    if bytes.is_empty() {
        return empty();
    }
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> BoxBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A request body after [`replayable`]: kept in memory, or too large (or of unknown length)
/// to keep and therefore sent once.
#[derive(Debug)]
pub enum Replay {
    /// The whole body, which can be sent again.
    Buffered(Bytes),
    /// A body that can be sent only once.
    Streaming(BoxBody),
}

/// Buffers `body` when its length is known and at most `limit` bytes, so that it can be sent
/// more than once (retries, hedges, mirrors). A larger body, or one of unknown length, is
/// left streaming and untouched.
pub async fn replayable(body: BoxBody, limit: usize) -> Result<Replay, BoxError> {
    use http_body::Body as _;
    if body.is_end_stream() {
        return Ok(Replay::Buffered(Bytes::new()));
    }
    match body.size_hint().upper() {
        Some(n) if n <= limit as u64 => Ok(Replay::Buffered(body.collect().await?.to_bytes())),
        _ => Ok(Replay::Streaming(body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    #[tokio::test]
    async fn a_request_body_keeps_its_bytes_and_an_ended_one_becomes_empty() {
        let body = boxed_request(Full::new(Bytes::from_static(b"payload")));
        assert!(!body.is_end_stream());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "payload");

        let ended = boxed_request(Full::new(Bytes::new()));
        assert!(ended.is_end_stream());
        assert_eq!(ended.size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn a_full_body_of_no_bytes_is_an_ended_empty_one() {
        let none = full(Bytes::new());
        assert!(none.is_end_stream());
        assert_eq!(none.size_hint().exact(), Some(0));
        assert!(none.collect().await.unwrap().to_bytes().is_empty());
        let some = full("kept");
        assert_eq!(some.size_hint().exact(), Some(4));
        assert_eq!(some.collect().await.unwrap().to_bytes(), "kept");
    }
}
