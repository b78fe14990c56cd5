//! Transparent interception: the capture listeners that iptables `REDIRECT` rules send a
//! network namespace's traffic to (Istio's 15001 outbound and 15006 inbound).
//!
//! A redirected connection arrives at the listener with its original destination kept by
//! the kernel's connection tracking; [`original_dst`] reads it (`SO_ORIGINAL_DST`). Then:
//!
//! - **outbound** ([`OutboundCapture`]): the protocol is the one declared for the cluster that
//!   owns the original destination (a `TCP` port goes straight to TCP), else sniffed from the
//!   first bytes ([`classify`]: an HTTP/1 method or the HTTP/2 preface). HTTP goes through the
//!   outbound stack, routed by `Host`/`:authority` in the routes of the original destination's
//!   port when the config has routes per port (xDS: as Envoy's listener for that port would;
//!   the request's [`ConnectionInfo`] carries it); when no virtual host serves that name,
//!   by the service owning the original destination (as a call to a service's address in
//!   Istio matches its virtual host), else straight to the original destination (Istio's
//!   `PassthroughCluster`), or, under the Sidecar's `outboundTrafficPolicy: REGISTRY_ONLY`,
//!   answered 502 (Istio's `BlackHoleCluster`). Opaque TCP goes to [`TcpOutbound`], which
//!   closes a connection to such a destination under `REGISTRY_ONLY`. A connection that was not
//!   redirected (an app using the listener as an explicit proxy) is served as HTTP, as the
//!   plain outbound listener does.
//! - **inbound** ([`InboundCapture`]): mutual TLS is terminated by PeerAuthentication for
//!   the original destination port ([`InboundTls`]), then HTTP is served by the inbound
//!   stack (authorization, telemetry) towards the app on `127.0.0.1:<original port>`, and
//!   TCP is authorized and forwarded by [`TcpInbound`]. On a PERMISSIVE port, TLS that
//!   offers none of Istio's mesh ALPN protocols is the app's own (when the [`InboundTls`]
//!   has [`InboundTls::pass_through_app_tls`] on, as the sidecar's has): it goes to the app
//!   untouched as TCP, authorized by [`TcpInbound`] without an identity, as Istio's plain
//!   TLS filter chain does; on a port a Sidecar ingress listener declares HTTP, Istio has no
//!   such chain and the connection is closed.
//!
//! Unlike Envoy, there is no listener per port: the original destination and the live config
//! snapshot decide each connection (its port picks the port's routes, as Envoy's listener
//! would). HTTP connections drain gracefully on shutdown; TCP connections are left to finish
//! on their own.

use crate::body::{self, BoxBody, BoxError};
use crate::client::UpstreamClient;
use crate::error::{self, ProxyError};
use crate::graceful::{GracefulShutdown, Watcher};
use crate::outbound::Outbound;
use crate::route::destination;
use crate::server::{ConnectionInfo, Drain, StreamExecutor, drain, next_connection};
use crate::tcp::{InboundConnection, TcpInbound, TcpOutbound, cluster_for};
use crate::tls::{InboundTls, ServerStream, TlsInfo};
use bytes::{Buf, Bytes};
use futures_util::future::BoxFuture;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use mesh_core::model::{OutboundTrafficPolicy, Protocol};
use mesh_core::store::ConfigStore;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;
use tower_service::Service;

/// The destination a redirected connection was addressed to before iptables `REDIRECT`
/// rewrote it (`SO_ORIGINAL_DST`, or `IP6T_SO_ORIGINAL_DST` for IPv6).
///
/// Fails on a connection that no NAT rule touched: connection tracking has no entry for it
/// (`ENOENT`). Callers treat that as a direct connection to the listener.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    let addr = match stream.local_addr()? {
        SocketAddr::V4(_) => socket.original_dst_v4()?,
        SocketAddr::V6(_) => socket.original_dst_v6()?,
    };
    addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "SO_ORIGINAL_DST returned a non-IP address",
        )
    })
}

/// Where a connection was going: its original destination, and whether it was redirected.
fn destination_of(stream: &TcpStream) -> (SocketAddr, bool) {
    let local = stream
        .local_addr()
        .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    match original_dst(stream) {
        Ok(dst) if dst != local => (dst, true),
        _ => (local, false),
    }
}

/// What the first bytes of a connection are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// An HTTP/1 request line or the HTTP/2 connection preface.
    Http,
    /// Anything else: carried as opaque TCP.
    Opaque,
}

/// The starts of HTTP/1 request lines and of the HTTP/2 preface.
const HTTP_STARTS: [&[u8]; 10] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
    b"PRI * HTTP/2.0",
];

/// Classifies a connection by its first bytes; `None` while `prefix` could still become
/// either (it is a proper prefix of an HTTP start).
///
/// ```
/// use mesh_tower::capture::{Sniffed, classify};
/// assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Sniffed::Http));
/// assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Some(Sniffed::Http));
/// assert_eq!(classify(b"GE"), None);
/// assert_eq!(classify(b"\x16\x03\x01"), Some(Sniffed::Opaque));
/// assert_eq!(classify(b"GETX"), Some(Sniffed::Opaque));
/// ```
pub fn classify(prefix: &[u8]) -> Option<Sniffed> {
    if HTTP_STARTS.iter().any(|s| prefix.starts_with(s)) {
        return Some(Sniffed::Http);
    }
    if prefix.is_empty() || HTTP_STARTS.iter().any(|s| s.starts_with(prefix)) {
        return None;
    }
    Some(Sniffed::Opaque)
}

/// Reads the first bytes of `stream` until [`classify`] decides, the stream ends, or
/// `timeout` passes (a server-first protocol sends nothing: opaque). Returns the verdict and
/// the bytes read, which the caller replays with [`Rewind`].
pub async fn sniff<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> io::Result<(Sniffed, Bytes)> {
    let mut buf = Vec::with_capacity(16);
    let deadline = tokio::time::Instant::now() + timeout;
    // Every round reads at least one byte or ends; the longest start is 14 bytes.
    for _ in 0..16 {
        let mut chunk = [0u8; 16];
        let want = 16 - buf.len().min(15);
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk[..want])).await;
        let n = match read {
            Err(_) => return Ok((Sniffed::Opaque, buf.into())),
            Ok(n) => n?,
        };
        if n == 0 {
            return Ok((Sniffed::Opaque, buf.into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(verdict) = classify(&buf) {
            return Ok((verdict, buf.into()));
        }
    }
    Ok((Sniffed::Opaque, buf.into()))
}

/// A stream that first yields bytes already read from it.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    /// `inner`, with `prefix` read again first.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }

    /// The underlying stream (bytes not yet replayed are lost).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The protocol to use for a connection: the declared one when known, else sniffed.
enum Decided {
    Http,
    Tcp,
    Sniff,
}

fn decided(protocol: Option<Protocol>) -> Decided {
    match protocol {
        Some(p) if p.is_http() => Decided::Http,
        Some(_) => Decided::Tcp,
        None => Decided::Sniff,
    }
}

fn http_builder() -> Arc<auto::Builder<StreamExecutor>> {
    let mut builder = auto::Builder::new(StreamExecutor);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(60));
    builder.http2().timer(TokioTimer::new());
    Arc::new(builder)
}

/// The outbound capture listener's logic; see the module docs.
#[derive(Clone, Debug)]
pub struct OutboundCapture {
    store: Arc<ConfigStore>,
    http: Outbound,
    passthrough: UpstreamClient,
    tcp: TcpOutbound,
    sniff_timeout: Duration,
}

impl OutboundCapture {
    /// Routes HTTP through `http`, passes unknown HTTP destinations through `passthrough`,
    /// and carries opaque TCP with `tcp`.
    pub fn new(
        store: Arc<ConfigStore>,
        http: Outbound,
        passthrough: UpstreamClient,
        tcp: TcpOutbound,
    ) -> Self {
        Self {
            store,
            http,
            passthrough,
            tcp,
            sniff_timeout: Duration::from_millis(100),
        }
    }

    /// How long to wait for a client's first bytes before treating an undeclared port as
    /// opaque TCP (a server-first protocol sends nothing); default 100 ms.
    #[must_use]
    pub fn sniff_timeout(mut self, timeout: Duration) -> Self {
        self.sniff_timeout = timeout;
        self
    }

    /// Handles one HTTP request that was going to `dst`.
    fn call<B>(&self, mut req: Request<B>, dst: SocketAddr) -> HttpFuture
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let snapshot = self.store.load();
        // By the original destination's port as well, as the route layer picks the table.
        let routed = destination(&req).is_some_and(|a| {
            snapshot
                .routes
                .find_index_on_port(Some(dst.port()), a)
                .is_some()
        });
        if routed {
            return Box::pin(self.http.clone().oneshot(req));
        }
        if let Some(cluster) = cluster_for(&snapshot, dst) {
            // The service owning the address: route as if its name had been used (the `Host`
            // header is left as the client sent it).
            let authority = format!("{}:{}", cluster.service.as_str(), cluster.port);
            match with_authority(req.uri(), &authority) {
                Ok(uri) => *req.uri_mut() = uri,
                Err(e) => return respond(ProxyError::BadRequest(e)),
            }
            return Box::pin(self.http.clone().oneshot(req));
        }
        if snapshot.outbound_traffic_policy == OutboundTrafficPolicy::RegistryOnly {
            // Istio's `block_all` virtual host answers 502 directly (BlackHoleCluster).
            tracing::debug!(%dst, "intercepted http: not in the registry (REGISTRY_ONLY)");
            return Box::pin(async { Ok(blocked()) });
        }
        // PassthroughCluster: straight to the original destination.
        let authority = match http::uri::Authority::try_from(dst.to_string()) {
            Ok(a) => a,
            Err(e) => return respond(ProxyError::BadRequest(e.to_string())),
        };
        let http2 = req.version() == http::Version::HTTP_2;
        let future = self
            .passthrough
            .send(req.map(body::boxed), authority, http2);
        Box::pin(async move { Ok(future.await.unwrap_or_else(|e| error::to_response(&e))) })
    }

    /// Handles one accepted connection.
    async fn handle(
        self,
        mut stream: TcpStream,
        peer: SocketAddr,
        builder: Arc<auto::Builder<StreamExecutor>>,
        watcher: Watcher,
    ) {
        let (dst, redirected) = destination_of(&stream);
        let info = ConnectionInfo {
            peer,
            local: dst,
            redirected,
        };
        if !redirected {
            // An explicit proxy connection: HTTP to the outbound stack, as before.
            let http = self.http.clone();
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(info);
                http.clone().oneshot(req)
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            return;
        }
        let protocol = cluster_for(&self.store.load(), dst).map(|c| c.protocol);
        let (http, prefix) = match decided(protocol) {
            Decided::Http => (true, Bytes::new()),
            Decided::Tcp => (false, Bytes::new()),
            Decided::Sniff => match sniff(&mut stream, self.sniff_timeout).await {
                Ok((sniffed, prefix)) => (sniffed == Sniffed::Http, prefix),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "outbound capture: reading failed");
                    return;
                }
            },
        };
        let io = Rewind::new(prefix, stream);
        if !http {
            let tcp = self.tcp.clone();
            tcp.forward(io, info).await;
            return;
        }
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(info);
            self.call(req, dst)
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        if let Err(e) = watcher.watch(conn).await {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

type HttpFuture = BoxFuture<'static, Result<Response<BoxBody>, Infallible>>;

/// The answer to a request for a destination outside the registry under `REGISTRY_ONLY`:
/// 502 with an empty body, as Istio's `block_all` route's direct response.
fn blocked() -> Response<BoxBody> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = http::StatusCode::BAD_GATEWAY;
    response
}

fn respond(e: ProxyError) -> HttpFuture {
    let e: BoxError = e.into();
    Box::pin(async move { Ok(error::to_response(&e)) })
}

/// `uri` with its scheme and authority set to `http://authority`.
fn with_authority(uri: &Uri, authority: &str) -> Result<Uri, String> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| format!("{authority}: {e}"))
}

/// Serves the outbound capture listener until `shutdown`, then drains HTTP connections for
/// up to `grace`.
pub async fn serve_outbound_capture(
    listener: TcpListener,
    capture: OutboundCapture,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Drain {
    let builder = http_builder();
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    while let Some((stream, peer)) = next_connection(&listener, &mut shutdown).await {
        let (capture, builder, watcher) = (capture.clone(), builder.clone(), graceful.watcher());
        tokio::spawn(capture.handle(stream, peer, builder, watcher));
    }
    drain(listener, graceful, grace).await
}

/// The inbound capture listener's logic; see the module docs. `M` makes the HTTP service
/// for a connection whose application is at the given address.
#[derive(Clone)]
pub struct InboundCapture<M> {
    store: Arc<ConfigStore>,
    tls: Option<InboundTls>,
    tcp: TcpInbound,
    make_http: M,
    default_app: Option<SocketAddr>,
    default_port: Option<u16>,
    sniff_timeout: Duration,
}

impl<M> std::fmt::Debug for InboundCapture<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundCapture")
            .field("tls", &self.tls)
            .field("default_app", &self.default_app)
            .finish_non_exhaustive()
    }
}

impl<M, S> InboundCapture<M>
where
    M: Fn(SocketAddr) -> S + Clone + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response<BoxBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    /// Terminates mutual TLS with `tls` (plaintext only when `None`), serves HTTP with the
    /// service `make_http` gives for the app's address, and TCP with `tcp`.
    pub fn new(
        store: Arc<ConfigStore>,
        tls: Option<InboundTls>,
        tcp: TcpInbound,
        make_http: M,
    ) -> Self {
        Self {
            store,
            tls,
            tcp,
            make_http,
            default_app: None,
            default_port: None,
            sniff_timeout: Duration::from_millis(100),
        }
    }

    /// Where connections that were not redirected go (the sidecar's `--app-port`), and the
    /// workload port their PeerAuthentication is looked up by.
    #[must_use]
    pub fn direct(mut self, app: Option<SocketAddr>, workload_port: Option<u16>) -> Self {
        self.default_app = app;
        self.default_port = workload_port;
        self
    }

    /// How long to wait for a client's first bytes on an undeclared port; default 100 ms.
    #[must_use]
    pub fn sniff_timeout(mut self, timeout: Duration) -> Self {
        self.sniff_timeout = timeout;
        self
    }

    /// Handles one accepted connection.
    async fn handle(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        builder: Arc<auto::Builder<StreamExecutor>>,
        watcher: Watcher,
    ) {
        let (dst, redirected) = destination_of(&stream);
        let port = if redirected {
            Some(dst.port())
        } else {
            self.default_port
        };
        let snapshot = self.store.load();
        let listener = port.and_then(|p| snapshot.inbound.iter().find(|l| l.port == p));
        let app = match (listener, redirected) {
            (Some(l), _) => Some(l.default_endpoint),
            (None, true) => Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), dst.port())),
            (None, false) => self.default_app,
        };
        let declared_http = listener.is_some_and(|l| l.protocol.is_http());
        let protocol = match (listener, redirected) {
            (Some(l), _) => Some(l.protocol),
            (None, true) => None,
            (None, false) => Some(Protocol::Http),
        };
        drop(snapshot);
        let accepted = match &self.tls {
            Some(tls) => {
                let tls = match port {
                    Some(p) => tls.clone().workload_port(p),
                    None => tls.clone(),
                };
                tls.accept(stream).await
            }
            None => Ok((ServerStream::Plain(stream), None, TlsInfo::default())),
        };
        let (mut io, identity, tls_info) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "inbound connection refused");
                return;
            }
        };
        if tls_info.app_tls && declared_http {
            // Istio's PERMISSIVE chains for a port declared HTTP: mesh TLS and plaintext only.
            tracing::debug!(%peer, "inbound capture: the app's own TLS on a port declared HTTP refused");
            return;
        }
        let decision = if tls_info.app_tls {
            Decided::Tcp
        } else {
            decided(protocol)
        };
        let (http, prefix) = match decision {
            Decided::Http => (true, Bytes::new()),
            Decided::Tcp => (false, Bytes::new()),
            Decided::Sniff => match sniff(&mut io, self.sniff_timeout).await {
                Ok((sniffed, prefix)) => (sniffed == Sniffed::Http, prefix),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "inbound capture: reading failed");
                    return;
                }
            },
        };
        let io = Rewind::new(prefix, io);
        let Some(app) = app else {
            tracing::debug!(%peer, "inbound capture: no application address for the connection");
            return;
        };
        if !http {
            let conn = InboundConnection {
                peer,
                destination: dst,
                identity,
                tls: tls_info.tls,
                sni: tls_info.sni,
                peer_metadata: tls_info.peer_metadata,
            };
            let tcp = self.tcp.clone();
            tcp.forward(io, conn, app).await;
            return;
        }
        let info = ConnectionInfo {
            peer,
            local: dst,
            redirected,
        };
        let service = (self.make_http)(app);
        let hyper_service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let ext = req.extensions_mut();
            ext.insert(info);
            ext.insert(tls_info.clone());
            if let Some(id) = &identity {
                ext.insert(id.clone());
            }
            service.clone().oneshot(req)
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), hyper_service);
        if let Err(e) = watcher.watch(conn).await {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// Serves the inbound capture listener until `shutdown`, then drains HTTP connections for up
/// to `grace`. The TLS handshake and sniffing run in each connection's own task.
pub async fn serve_inbound_capture<M, S>(
    listener: TcpListener,
    capture: InboundCapture<M>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Drain
where
    M: Fn(SocketAddr) -> S + Clone + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response<BoxBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let builder = http_builder();
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    while let Some((stream, peer)) = next_connection(&listener, &mut shutdown).await {
        let (capture, builder, watcher) = (capture.clone(), builder.clone(), graceful.watcher());
        tokio::spawn(capture.handle(stream, peer, builder, watcher));
    }
    drain(listener, graceful, grace).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, Upstream};
    use tokio::io::AsyncWriteExt;

    #[test]
    fn classify_waits_for_enough_bytes_and_knows_every_method() {
        for start in HTTP_STARTS {
            assert_eq!(classify(start), Some(Sniffed::Http));
            assert_eq!(classify(&start[..start.len() - 1]), None, "{start:?}");
        }
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"get / HTTP/1.1"), Some(Sniffed::Opaque));
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Sniffed::Opaque));
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(Sniffed::Opaque));
        assert_eq!(classify(b"PRI * HTTP/1.1"), Some(Sniffed::Opaque));
    }

    #[tokio::test]
    async fn sniffed_bytes_are_replayed_before_the_rest() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"PO").await.unwrap();
        let writer = tokio::spawn(async move {
            client.write_all(b"ST /x HTTP/1.1\r\n\r\n").await.unwrap();
            client
        });
        let (sniffed, prefix) = sniff(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(sniffed, Sniffed::Http);
        assert!(prefix.starts_with(b"POST "));
        let _client = writer.await.unwrap();
        let mut rewound = Rewind::new(prefix, server);
        let mut all = vec![0u8; 19];
        rewound.read_exact(&mut all).await.unwrap();
        assert_eq!(&all, b"POST /x HTTP/1.1\r\n\r\n"[..19].as_ref());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_opaque_after_the_timeout() {
        let (_client, mut server) = tokio::io::duplex(64);
        let (sniffed, prefix) = sniff(&mut server, Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(sniffed, Sniffed::Opaque);
        assert!(prefix.is_empty());
    }

    #[tokio::test]
    async fn an_early_end_is_opaque_with_what_arrived() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GE").await.unwrap();
        drop(client);
        let (sniffed, prefix) = sniff(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(sniffed, Sniffed::Opaque);
        assert_eq!(&prefix[..], b"GE");
    }

    /// A capture for `policy` whose registry knows one service, `known` on 127.0.0.1:`port`.
    fn capture_with(policy: OutboundTrafficPolicy, port: u16) -> OutboundCapture {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{ name: known }}\n\
             spec:\n  hosts: [known.default.svc.cluster.local]\n  resolution: STATIC\n  \
             ports: [{{ number: {port}, name: http, protocol: HTTP }}]\n  \
             endpoints: [{{ address: 127.0.0.1 }}]\n"
        );
        let mut config = mesh_core::istio::load(
            &[("known.yaml", yaml.as_str())],
            &mesh_core::model::Workload::default(),
        )
        .config
        .expect("valid");
        config.outbound_traffic_policy = policy;
        let store = Arc::new(ConfigStore::new(config));
        let client = UpstreamClient::new();
        let http = Outbound::builder(store.clone())
            .client(client.clone())
            .build();
        OutboundCapture::new(store.clone(), http, client, TcpOutbound::new(store))
    }

    /// An upstream on 127.0.0.1 answering 200 (and counting its requests).
    async fn empty_upstream() -> Upstream {
        testing::upstream(|_req| std::future::ready(Response::new(body::empty()))).await
    }

    fn request_to(authority: &str) -> Request<BoxBody> {
        Request::builder()
            .uri(format!("http://{authority}/"))
            .body(body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn registry_only_answers_502_for_a_destination_outside_the_registry() {
        let upstream = empty_upstream().await;
        let unknown = upstream.addr();
        // ALLOW_ANY: straight through to the original destination.
        let capture = capture_with(OutboundTrafficPolicy::AllowAny, 1);
        let response = capture
            .call(request_to("unknown.example"), unknown)
            .await
            .unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        assert_eq!(upstream.requests(), 1);
        // REGISTRY_ONLY: 502, and the destination never sees the request.
        let capture = capture_with(OutboundTrafficPolicy::RegistryOnly, 1);
        let response = capture
            .call(request_to("unknown.example"), unknown)
            .await
            .unwrap();
        assert_eq!(response.status(), http::StatusCode::BAD_GATEWAY);
        assert_eq!(upstream.requests(), 1);
    }

    #[tokio::test]
    async fn registry_only_still_routes_what_the_registry_knows() {
        let upstream = empty_upstream().await;
        let known = upstream.addr();
        let capture = capture_with(OutboundTrafficPolicy::RegistryOnly, known.port());
        // By host name, and by the service's endpoint address under another name.
        for authority in [
            format!("known.default.svc.cluster.local:{}", known.port()),
            "other.example".to_owned(),
        ] {
            let response = capture.call(request_to(&authority), known).await.unwrap();
            assert_eq!(response.status(), http::StatusCode::OK, "{authority}");
        }
        assert_eq!(upstream.requests(), 2);
    }

    #[tokio::test]
    async fn a_connection_no_rule_redirected_has_no_original_destination() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        // Without a NAT rule there is no conntrack entry (or it names the listener itself):
        // either way the connection counts as a direct one.
        if let Ok(dst) = original_dst(&stream) {
            assert_eq!(dst, addr);
        }
        assert_eq!(destination_of(&stream), (addr, false));
    }
}
