//! An HTTP/1.1 upstream connection polled in place, by the request that has it checked out.
//!
//! hyper's `client::conn::http1` splits a connection in two: a `SendRequest` that queues a
//! request, and a `Connection` future that writes requests and reads responses, only while it
//! is polled. The usual way is a task per connection. A driver lets the task of the request
//! that holds the connection poll it instead: while the request waits for its response
//! ([`Driver::drive`]) and while its response body is read ([`Driver::poll_with`]). A proxied
//! request then runs in one task from the downstream read to the upstream write and back. A
//! task per connection costs, per request, three polls of that task (the request, the
//! response head, the body's hand-off), each a wake-up and a trip through the scheduler.
//!
//! The pool does this for requests that came over HTTP/2, each in a task of its own (hyper's
//! HTTP/2 server spawns one per stream): 6–10% more requests per second through the sidecar
//! on one core. Requests from HTTP/1.1 connections leave the upstream connection to a task of
//! its own ([`Driver::detach`]): under load the scheduler then runs the downstream
//! connections' tasks one after another, and the upstream connections' tasks, each set's code
//! staying in the instruction cache; polled in place, that was 11% slower at 64 connections
//! (`benches/RESULTS.md`, session 13).
//!
//! Only the driver can move a response on, and the driver is polled with the task's waker
//! every time the task is polled, so the response's own channels are polled without a waker:
//! the connection's progress would otherwise wake the very task that is running it, and the
//! scheduler would poll that task once more for nothing.
//!
//! Between requests nothing polls an idle connection. The pool polls it without a waker when
//! it reaps, to see whether the upstream closed it; a request sent on a connection the
//! upstream has closed meanwhile comes back unwritten and the pool sends it again on a new
//! one (see `pool.rs`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

type Connection = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

pin_project_lite::pin_project! {
    /// [`Driver::drive`]'s future.
    pub(super) struct Drive<'a, F> {
        driver: &'a mut Driver,
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for Drive<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let mut future = this.future;
        this.driver.poll_with(cx, |cx| future.as_mut().poll(cx))
    }
}

/// An HTTP/1.1 connection's I/O (hyper's `Connection` future), while open and ours to poll.
pub(super) struct Driver {
    connection: Option<Connection>,
}

impl Driver {
    /// Drives `connection` in place.
    pub(super) fn new<F>(connection: F) -> Self
    where
        F: Future<Output = hyper::Result<()>> + Send + 'static,
    {
        Self {
            connection: Some(Box::pin(connection)),
        }
    }

    /// For a connection polled by a task of its own.
    pub(super) fn elsewhere() -> Self {
        Self { connection: None }
    }

    /// Whether the connection is ours to poll (not ended, not in a task of its own).
    pub(super) fn is_attached(&self) -> bool {
        self.connection.is_some()
    }

    /// Polls the connection once; it is dropped when it has ended.
    fn poll(&mut self, cx: &mut Context<'_>) {
        if let Some(connection) = &mut self.connection
            && let Poll::Ready(ended) = connection.as_mut().poll(cx)
        {
            self.connection = None;
            log_end(ended);
        }
    }

    /// Brings the connection's state up to date (a response's end, a close by the upstream)
    /// without leaving a waker: for a connection nobody waits on.
    pub(super) fn poll_idle(&mut self) {
        self.poll(&mut Context::from_waker(Waker::noop()));
    }

    /// Polls `poll`, which only the connection's progress can make ready, with the connection
    /// polled between two tries.
    pub(super) fn poll_with<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        if self.connection.is_none() {
            return poll(cx);
        }
        let mut quiet = Context::from_waker(Waker::noop());
        if let Poll::Ready(out) = poll(&mut quiet) {
            return Poll::Ready(out);
        }
        self.poll(cx);
        if self.connection.is_none() {
            // Ended: nothing will move `poll` on but itself.
            return poll(cx);
        }
        poll(&mut quiet)
    }

    /// `future` (a request's response), with the connection polled along with it.
    ///
    /// A future of its own rather than an `async fn`: an `async fn` keeps its argument twice
    /// (as passed and as moved into its body), and this one is in every request's state.
    pub(super) fn drive<F: Future>(&mut self, future: F) -> Drive<'_, F> {
        Drive {
            driver: self,
            future,
        }
    }

    /// Hands the connection to a task of its own, to finish what it still carries (an
    /// upgrade's hand-over of the I/O, a request body still being sent) and close.
    pub(super) fn detach(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        spawn_connection(connection);
    }
}

/// Runs `connection` (hyper's `Connection` future, of either protocol) in a task of its own
/// until it ends. Generic, so that the task polls the concrete future, inlined. Outside a
/// runtime (one shutting down) the connection is closed instead.
pub(super) fn spawn_connection<F>(connection: F)
where
    F: Future<Output = hyper::Result<()>> + Send + 'static,
{
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move { log_end(connection.await) });
    }
}

fn log_end(ended: hyper::Result<()>) {
    if let Err(e) = ended {
        tracing::debug!(error = %e, "upstream connection ended");
    }
}
