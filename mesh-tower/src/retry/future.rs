//! The retry layer's response future. Most requests are tried once and need no retry, so the
//! first try is the inner service's own future, held inline: the retry loop (erased, boxed)
//! starts only when the first answer asks for a retry.

use super::template::Kept;
use super::{Inner, PolicyOf, Spare, Verdict, classify, retried};
use crate::body::{BoxBody, BoxError};
use futures_util::future::BoxFuture;
use http::Response;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tower::util::BoxCloneService;
use tower_service::Service;

pin_project! {
    /// What [`super::Retry`] returns for a request.
    pub struct ResponseFuture<S, F> {
        #[pin]
        state: State<S, F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, F> {
        /// No retry policy: the inner service's future as it is.
        Passed { #[pin] future: F },
        /// The first try, with what a retry would need.
        First { #[pin] future: F, retry: Option<Retries<S>> },
        /// Retrying, hedging, or a request whose body must be read first: the whole loop.
        Looping { future: BoxFuture<'static, Result<Response<BoxBody>, BoxError>> },
    }
}

/// What the tries after the first need: the service to clone for them and the layer's budget
/// and settings (shared, [`Spare`]), the request kept for them, the policy. Small (the kept
/// copy is boxed), so it is held inline: a request tried once allocates nothing for it.
pub(super) struct Retries<S> {
    pub(super) spare: std::sync::Arc<Spare<S>>,
    pub(super) template: Kept,
    pub(super) policy: PolicyOf,
}

impl<S> Retries<S>
where
    S: Service<http::Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    /// The retry loop from here on; `first` is the first try's result when it was sent.
    pub(super) fn into_loop(
        self,
        first: Option<Result<Response<BoxBody>, BoxError>>,
    ) -> BoxFuture<'static, Result<Response<BoxBody>, BoxError>> {
        let Retries {
            spare,
            template,
            policy,
        } = self;
        // Erased only now, where `S::Future: Send` is known, so the loop needs no
        // higher-ranked Send proofs about `S`.
        let inner: Inner = BoxCloneService::new(spare.inner.clone());
        Box::pin(retried(inner, template, policy, spare.layer.clone(), first))
    }
}

impl<S, F> ResponseFuture<S, F> {
    pub(super) fn passed(future: F) -> Self {
        Self {
            state: State::Passed { future },
        }
    }

    pub(super) fn first(future: F, retries: Retries<S>) -> Self {
        Self {
            state: State::First {
                future,
                retry: Some(retries),
            },
        }
    }

    pub(super) fn looping(future: BoxFuture<'static, Result<Response<BoxBody>, BoxError>>) -> Self {
        Self {
            state: State::Looping { future },
        }
    }
}

impl<S, F> Future for ResponseFuture<S, F>
where
    S: Service<http::Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    F: Future<Output = Result<Response<BoxBody>, BoxError>>,
{
    type Output = Result<Response<BoxBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Passed { future } => return future.poll(cx),
                StateProj::Looping { future } => return future.as_mut().poll(cx),
                StateProj::First { future, retry } => {
                    let result = ready!(future.poll(cx));
                    let Some(retries) = retry.take() else {
                        // `retry` is taken only here, so this is a caller polling after the
                        // answer (a broken `Future` contract): hand on what the try gave.
                        return Poll::Ready(result);
                    };
                    // A try whose request did not come back cannot be sent again (the upstream
                    // saw it): its answer stands, unread.
                    if !retries.template.can_replay()
                        || classify(retries.policy.get(), &result) == Verdict::Done
                    {
                        return Poll::Ready(result);
                    }
                    state.set(State::Looping {
                        future: retries.into_loop(Some(result)),
                    });
                }
            }
        }
    }
}
