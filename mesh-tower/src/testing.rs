//! Test upstreams for the crate's tests: real hyper servers on 127.0.0.1, on ephemeral ports,
//! that answer with a closure and count the connections and requests they take.
//!
//! [`upstream`] is the common case (HTTP/1.1, any port); [`serve`] takes a listener of the
//! test's own (to learn its port first, or to listen at a given address) and HTTP/2;
//! [`silent_upstream`] never answers; [`serve_tcp`] hands each raw connection to the test.
//! Servers run until the test's runtime ends.

use crate::body::BoxBody;
use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::{TcpListener, TcpStream};

/// The HTTP version a test upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
}

impl Protocol {
    /// [`Protocol::Http2`] when `http2`, else [`Protocol::Http1`].
    pub(crate) fn http2(http2: bool) -> Self {
        if http2 { Self::Http2 } else { Self::Http1 }
    }
}

/// A running test upstream: where it listens, and what it has taken so far.
#[derive(Clone, Debug)]
pub(crate) struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl Upstream {
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `127.0.0.1:<port>`, as a URI authority.
    pub(crate) fn authority(&self) -> Authority {
        Authority::try_from(self.addr.to_string()).unwrap()
    }

    /// How many connections it has accepted.
    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// How many requests it has been handed (answered or not); none for [`serve_tcp`].
    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A listener on 127.0.0.1, on an ephemeral port.
pub(crate) async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// A 127.0.0.1 address nothing listens on (bound, then closed).
pub(crate) async fn closed_port() -> SocketAddr {
    listener().await.local_addr().unwrap()
}

/// An HTTP/1.1 upstream on 127.0.0.1 answering each request with `answer(request)`.
pub(crate) async fn upstream<F, Fut>(answer: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<BoxBody>> + Send + 'static,
{
    serve(listener().await, Protocol::Http1, answer)
}

/// An HTTP/1.1 upstream on 127.0.0.1 that takes requests and never answers them.
pub(crate) async fn silent_upstream() -> Upstream {
    upstream(|_req| std::future::pending()).await
}

/// Serves `protocol` on `listener`, answering each request with `answer(request)`.
pub(crate) fn serve<F, Fut>(listener: TcpListener, protocol: Protocol, answer: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<BoxBody>> + Send + 'static,
{
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    let answer = Arc::new(answer);
    let mut upstream = serve_tcp(listener, move |stream| {
        let (counted, answer) = (counted.clone(), answer.clone());
        let service = hyper::service::service_fn(move |req| {
            counted.fetch_add(1, Ordering::SeqCst);
            let response = answer(req);
            async move { Ok::<_, Infallible>(response.await) }
        });
        let io = TokioIo::new(stream);
        async move {
            let _ = match protocol {
                Protocol::Http1 => {
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                }
                Protocol::Http2 => {
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await
                }
            };
        }
    });
    upstream.requests = requests;
    upstream
}

/// Accepts connections on `listener`, counting them, and hands each to `handle` on a task of
/// its own.
pub(crate) fn serve_tcp<F, Fut>(listener: TcpListener, handle: F) -> Upstream
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let upstream = Upstream {
        addr: listener.local_addr().unwrap(),
        accepted: Arc::default(),
        requests: Arc::default(),
    };
    let accepted = upstream.accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(handle(stream));
        }
    });
    upstream
}
