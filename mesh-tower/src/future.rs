//! The response future of a layer that often has nothing to do for a request: the inner
//! service's own future, untouched and unallocated, when it passes the request on as it is;
//! a boxed future when it acts (a rate-limit answer, an injected fault, a mirror, ...).

use crate::body::{BoxBody, BoxError};
use futures_util::future::{BoxFuture, Either};
use http::Response;

/// What a layer's `call` returns: `Either::Left` is the inner service's future (the request
/// passed through), `Either::Right` the layer's own work, boxed.
pub type ResponseFuture<F, E = BoxError> =
    Either<F, BoxFuture<'static, Result<Response<BoxBody>, E>>>;

/// The request passed through: the inner future as it is.
pub(crate) fn passed<F, E>(inner: F) -> ResponseFuture<F, E> {
    Either::Left(inner)
}

/// The layer acts: its future, boxed.
pub(crate) fn acted<F, E>(
    future: impl std::future::Future<Output = Result<Response<BoxBody>, E>> + Send + 'static,
) -> ResponseFuture<F, E> {
    Either::Right(Box::pin(future))
}
