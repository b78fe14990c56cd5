//! Serving a stack on a TCP listener: HTTP/1.1 and h2c (prior knowledge) on one port, with a
//! graceful drain on shutdown; [`serve_tls`] adds mutual TLS by PeerAuthentication.

use crate::body::BoxBody;
use crate::graceful::GracefulShutdown;
use crate::tls::InboundTls;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower_service::Service;

/// The connection a request arrived on, in the request's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the client connected to: this listener's own, or, when the connection
    /// was [`redirected`](Self::redirected), the destination the client was calling.
    pub local: SocketAddr,
    /// Whether iptables redirected the connection to this (capture) listener: `local` is then
    /// its original destination (`SO_ORIGINAL_DST`), whose port picks the outbound routes as
    /// Envoy's per-port listeners do ([`crate::route::destination_port`]).
    pub redirected: bool,
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drain {
    /// Every connection finished its in-flight requests.
    Complete,
    /// The grace period ran out with connections still open; they were dropped.
    TimedOut,
}

/// Runs each HTTP/2 stream that hyper's server hands over as a task of its own, as
/// `hyper_util`'s `TokioExecutor` does, with the stream's future boxed first.
///
/// A stream's future holds the stack's response future (over 500 bytes for the outbound
/// stack), and `tokio::spawn` copies the future it is given six times on its way into the
/// task. Boxed, the future is copied once and the task holds a pointer: one allocation more,
/// and about 540 fewer instructions per h2c request through the sidecar (64 connections of 10
/// streams: 46,364 -> 45,820; `benches/RESULTS.md`, session 16).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StreamExecutor;

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(Box::pin(future));
    }
}

/// The HTTP server settings for `listener`.
fn http_builder(listener: &TcpListener) -> Arc<auto::Builder<StreamExecutor>> {
    let mut builder = auto::Builder::new(StreamExecutor);
    let local = listener.local_addr().ok();
    match local.and_then(header_read_timeout) {
        Some(timeout) => {
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout);
        }
        None => {
            builder.http1().header_read_timeout(None);
        }
    }
    builder.http2().timer(TokioTimer::new());
    Arc::new(builder)
}

/// How long an HTTP/1.1 client of a listener bound to `local` may take to send a request's
/// head.
///
/// A listener that faces the network gives 60 s, against clients that hold connections open
/// with slow headers. A loopback listener (the sidecar's outbound listener, which only this
/// host's apps reach) has no such timeout, as Envoy's listeners have none by default: hyper
/// re-arms the timer for every request, about 1,400 instructions each, 3.5% of the sidecar's
/// work per request.
fn header_read_timeout(local: SocketAddr) -> Option<Duration> {
    (!local.ip().is_loopback()).then_some(Duration::from_secs(60))
}

/// Serves `service` on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish for up to `grace`, and returns.
///
/// Accept errors (e.g. too many open files) are logged and retried after a short pause, so
/// one bad moment does not take the listener down. On a listener that is not bound to a
/// loopback address, an HTTP/1.1 client has 60 s to send each request's head.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Drain
where
    S: Service<Request<Incoming>, Response = Response<BoxBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let builder = http_builder(&listener);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    while let Some((stream, peer)) = next_connection(&listener, &mut shutdown).await {
        let local = stream.local_addr().unwrap_or(peer);
        let info = ConnectionInfo {
            peer,
            local,
            redirected: false,
        };
        let service = InPlace::new(service.clone());
        let hyper_service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(info);
            service.call(req)
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let connection =
                builder.serve_connection_with_upgrades(TokioIo::new(stream), hyper_service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drain(listener, graceful, grace).await
}

/// As [`serve`], with each connection accepted by `tls` first (PeerAuthentication STRICT,
/// PERMISSIVE or DISABLE, from the current snapshot). Every request carries the connection's
/// [`ConnectionInfo`], [`crate::tls::TlsInfo`] and, over mutual TLS, the verified
/// [`mesh_policy::PeerIdentity`] in its
/// extensions. A connection that `tls` refuses (plaintext on a STRICT port, a failed
/// handshake) is closed and logged at debug level.
pub async fn serve_tls<S>(
    listener: TcpListener,
    service: S,
    tls: InboundTls,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Drain
where
    S: Service<Request<Incoming>, Response = Response<BoxBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let builder = http_builder(&listener);
    let graceful = GracefulShutdown::new();
    let tls = Arc::new(tls);
    tokio::pin!(shutdown);
    while let Some((stream, peer)) = next_connection(&listener, &mut shutdown).await {
        let local = stream.local_addr().unwrap_or(peer);
        let info = ConnectionInfo {
            peer,
            local,
            redirected: false,
        };
        let service = InPlace::new(service.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let (io, identity, tls_info) = match tls.accept(stream).await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "inbound connection refused");
                    return;
                }
            };
            let hyper_service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let ext = req.extensions_mut();
                ext.insert(info);
                ext.insert(tls_info.clone());
                if let Some(id) = &identity {
                    ext.insert(id.clone());
                }
                service.call(req)
            });
            let connection =
                builder.serve_connection_with_upgrades(TokioIo::new(io), hyper_service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drain(listener, graceful, grace).await
}

/// A connection's own copy of the stack, called in place while it is ready (the stacks here
/// always are: their readiness is per request), so that a request does not clone the whole
/// stack; when it is not ready, the request gets a clone driven to readiness (`oneshot`),
/// boxed: that rare future holds a whole stack and the request, and unboxed it would make
/// every request's future as large (hyper copies a request's future at least once, and an
/// HTTP/2 stream's more often).
struct InPlace<S> {
    service: std::sync::Mutex<S>,
}

/// The future of a request that found its connection's stack not ready.
type NotReady<S> = std::pin::Pin<Box<tower::util::Oneshot<S, Request<Incoming>>>>;

impl<S> InPlace<S>
where
    S: Service<Request<Incoming>, Error = Infallible> + Clone,
{
    fn new(service: S) -> Self {
        Self {
            service: std::sync::Mutex::new(service),
        }
    }

    fn call(&self, req: Request<Incoming>) -> futures_util::future::Either<S::Future, NotReady<S>> {
        use futures_util::future::Either;
        let mut service = self.service.lock().unwrap_or_else(|p| p.into_inner());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match service.poll_ready(&mut cx) {
            std::task::Poll::Ready(Ok(())) => Either::Left(service.call(req)),
            std::task::Poll::Ready(Err(never)) => match never {},
            std::task::Poll::Pending => Either::Right(Box::pin(service.clone().oneshot(req))),
        }
    }
}

/// The next connection (with `TCP_NODELAY` set), or `None` once `shutdown` resolves. Accept
/// errors (e.g. too many open files) are logged and retried after a short pause, so one bad
/// moment does not take the listener down.
pub(crate) async fn next_connection<F: Future<Output = ()>>(
    listener: &TcpListener,
    shutdown: &mut std::pin::Pin<&mut F>,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((stream, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = shutdown.as_mut() => return None,
        }
    }
}

/// Stops accepting and gives open connections `grace` to finish their requests.
pub(crate) async fn drain(
    listener: TcpListener,
    graceful: GracefulShutdown,
    grace: Duration,
) -> Drain {
    drop(listener);
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => Drain::Complete,
        Err(_) => Drain::TimedOut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    /// A stack that is not ready the first time each copy is asked, and counts its copies.
    struct SlowToStart {
        asked: bool,
        copies: Arc<AtomicUsize>,
    }

    impl Clone for SlowToStart {
        fn clone(&self) -> Self {
            self.copies.fetch_add(1, Ordering::SeqCst);
            Self {
                asked: self.asked,
                copies: self.copies.clone(),
            }
        }
    }

    impl Service<Request<Incoming>> for SlowToStart {
        type Response = Response<BoxBody>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<BoxBody>, Infallible>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            if self.asked {
                return Poll::Ready(Ok(()));
            }
            self.asked = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }

        fn call(&mut self, req: Request<Incoming>) -> Self::Future {
            let version = format!("{:?}", req.version());
            std::future::ready(Ok(Response::new(crate::body::full(version))))
        }
    }

    async fn serving(copies: &Arc<AtomicUsize>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = SlowToStart {
            asked: false,
            copies: copies.clone(),
        };
        tokio::spawn(serve(
            listener,
            service,
            std::future::pending(),
            Duration::ZERO,
        ));
        addr
    }

    #[tokio::test]
    async fn a_stack_not_ready_answers_through_a_copy_then_in_place_over_http1() {
        let copies = Arc::new(AtomicUsize::new(0));
        let addr = serving(&copies).await;
        let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let mut copies_after = Vec::new();
        for _ in 0..3 {
            sender.ready().await.unwrap();
            let req = Request::get("http://test/")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let response = sender.send_request(req).await.unwrap();
            assert_eq!(response.status(), 200);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "HTTP/1.1");
            copies_after.push(copies.load(Ordering::SeqCst));
        }
        // The connection's own copy, then one for the first request (its copy was not ready);
        // the connection's copy, asked once, serves the next requests in place.
        assert_eq!(copies_after, [2, 2, 2]);
    }

    #[tokio::test]
    async fn concurrent_http2_streams_each_get_their_answer() {
        let copies = Arc::new(AtomicUsize::new(0));
        let addr = serving(&copies).await;
        let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
        let (sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(conn);
        let requests = (0..20).map(|i| {
            let mut sender = sender.clone();
            async move {
                let req = Request::get(format!("http://test/{i}"))
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                let response = sender.send_request(req).await.unwrap();
                assert_eq!(response.status(), 200);
                response.into_body().collect().await.unwrap().to_bytes()
            }
        });
        let bodies = futures_util::future::join_all(requests).await;
        assert_eq!(bodies.len(), 20);
        assert!(bodies.iter().all(|b| b == "HTTP/2.0"), "{bodies:?}");
        assert_eq!(copies.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn only_listeners_off_loopback_time_out_slow_request_heads() {
        let at = |addr: &str| header_read_timeout(addr.parse().unwrap());
        assert_eq!(at("127.0.0.1:15001"), None);
        assert_eq!(at("[::1]:15001"), None);
        assert_eq!(at("0.0.0.0:15006"), Some(Duration::from_secs(60)));
        assert_eq!(at("[::]:15006"), Some(Duration::from_secs(60)));
        assert_eq!(at("10.0.0.8:15006"), Some(Duration::from_secs(60)));
    }
}
