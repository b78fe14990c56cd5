//! Graceful shutdown of served connections, at the cost of two atomic operations a poll.
//!
//! The same contract as hyper-util's `GracefulShutdown`: each connection is watched from its
//! [`Watcher`] on; [`GracefulShutdown::shutdown`] asks every watched connection to finish its
//! requests and close (hyper's `graceful_shutdown`), and resolves once all have ended.
//!
//! hyper-util's watches a `tokio::sync::watch` channel: each poll of a connection (two a
//! request) polls a fresh `changed()` future, which locks the channel's list of waiters. That
//! came to about 430 instructions a request in the sidecar. Here a connection keeps its task's
//! waker in an [`AtomicWaker`] (unchanged between polls, so no clone) and reads one flag.

use futures_util::task::AtomicWaker;
use hyper_util::server::graceful::GracefulConnection;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use tokio::sync::Notify;

/// Starts the drain of the connections its watchers watch; see the module docs.
pub(crate) struct GracefulShutdown {
    shared: Arc<Shared>,
}

/// One connection's part of a [`GracefulShutdown`]: counted as open until dropped.
pub(crate) struct Watcher {
    shared: Arc<Shared>,
}

struct Shared {
    draining: AtomicBool,
    /// The watched connections' wakers, woken when the drain starts.
    wakers: Mutex<Vec<Weak<AtomicWaker>>>,
    /// The watchers not dropped yet.
    open: AtomicUsize,
    /// Told when the last watcher is dropped.
    all_ended: Notify,
}

impl GracefulShutdown {
    pub(crate) fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                draining: AtomicBool::new(false),
                wakers: Mutex::default(),
                open: AtomicUsize::new(0),
                all_ended: Notify::new(),
            }),
        }
    }

    /// A watcher for a connection about to be served.
    pub(crate) fn watcher(&self) -> Watcher {
        self.shared.open.fetch_add(1, Ordering::SeqCst);
        Watcher {
            shared: self.shared.clone(),
        }
    }

    /// Asks every watched connection to close once its requests are answered, and waits
    /// until every watcher is gone.
    pub(crate) async fn shutdown(self) {
        let shared = &self.shared;
        shared.draining.store(true, Ordering::SeqCst);
        let wakers = std::mem::take(&mut *lock(&shared.wakers));
        for waker in wakers.iter().filter_map(Weak::upgrade) {
            waker.wake();
        }
        until_zero(&shared.open, &shared.all_ended).await;
    }
}

/// Resolves once `count` is zero; whoever brings it to zero calls `zero.notify_waiters()`.
pub(crate) async fn until_zero(count: &AtomicUsize, zero: &Notify) {
    loop {
        let notified = zero.notified();
        tokio::pin!(notified);
        // Registered before the count is read: a count reaching zero in between still wakes it.
        notified.as_mut().enable();
        if count.load(Ordering::SeqCst) == 0 {
            return;
        }
        notified.await;
    }
}

impl Watcher {
    /// `conn`, closed gracefully when the drain starts.
    pub(crate) fn watch<C: GracefulConnection>(self, conn: C) -> Watched<C> {
        let waker = Arc::new(AtomicWaker::new());
        {
            let mut wakers = lock(&self.shared.wakers);
            // Ended connections leave dead entries: swept whenever the list would grow.
            if wakers.len() == wakers.capacity() {
                wakers.retain(|w| w.strong_count() > 0);
            }
            wakers.push(Arc::downgrade(&waker));
        }
        Watched {
            conn,
            waker,
            watcher: self,
            closing: false,
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if self.shared.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.shared.all_ended.notify_waiters();
        }
    }
}

pin_project! {
    /// A connection watched by a [`Watcher`].
    pub(crate) struct Watched<C> {
        #[pin]
        conn: C,
        waker: Arc<AtomicWaker>,
        watcher: Watcher,
        closing: bool,
    }
}

impl<C: GracefulConnection> Future for Watched<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if !*this.closing {
            // The waker first, then the flag: a drain that starts after the flag was read
            // wakes the waker registered before it.
            this.waker.register(cx.waker());
            if this.watcher.shared.draining.load(Ordering::SeqCst) {
                *this.closing = true;
                this.conn.as_mut().graceful_shutdown();
            }
        }
        this.conn.poll(cx)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::{self, BoxBody};
    use hyper_util::rt::TokioIo;
    use std::time::Duration;
    use tokio::io::DuplexStream;
    use tokio::time::Instant;

    /// A hyper HTTP/1.1 connection over an in-memory pipe, whose service answers after
    /// `delay`; and the client's end of the pipe.
    fn served(
        delay: Duration,
    ) -> (
        impl GracefulConnection<Output = Result<(), hyper::Error>> + Send + 'static,
        DuplexStream,
    ) {
        let (server, client) = tokio::io::duplex(4096);
        let service = hyper::service::service_fn(move |_req| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(body::empty()))
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server), service);
        (conn, client)
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_lets_a_request_in_flight_finish_and_waits_for_every_watcher() {
        let graceful = GracefulShutdown::new();
        // One connection busy with a request that takes 5 s, one idle.
        let (busy, busy_client) = served(Duration::from_secs(5));
        let busy = tokio::spawn(graceful.watcher().watch(busy));
        let (idle, _idle_client) = served(Duration::ZERO);
        let idle = tokio::spawn(graceful.watcher().watch(idle));
        let (mut sender, client_conn) =
            hyper::client::conn::http1::handshake::<_, BoxBody>(TokioIo::new(busy_client))
                .await
                .unwrap();
        tokio::spawn(client_conn);
        let answer = tokio::spawn(sender.send_request(http::Request::new(body::empty())));
        tokio::time::sleep(Duration::from_millis(10)).await;
        // A watcher whose connection was not served yet counts until dropped.
        let unserved = graceful.watcher();
        let started = Instant::now();
        let drain = tokio::spawn(graceful.shutdown());
        tokio::time::timeout(Duration::from_secs(1), idle)
            .await
            .expect("the idle one closes at once")
            .unwrap()
            .unwrap();
        assert_eq!(answer.await.unwrap().unwrap().status(), 200);
        busy.await.unwrap().unwrap();
        assert!(started.elapsed() >= Duration::from_secs(4));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!drain.is_finished());
        drop(unserved);
        drain.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_watched_after_the_drain_began_closes_at_once() {
        let graceful = GracefulShutdown::new();
        let late = graceful.watcher();
        let drain = tokio::spawn(graceful.shutdown());
        tokio::task::yield_now().await;
        let (conn, _client) = served(Duration::ZERO);
        tokio::time::timeout(Duration::from_secs(1), late.watch(conn))
            .await
            .expect("closed at once")
            .unwrap();
        drain.await.unwrap();
    }
}
