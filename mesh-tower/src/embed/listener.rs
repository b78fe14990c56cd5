//! The inbound TLS acceptor packaged for a service that serves itself: a listener whose
//! connections are accepted by PeerAuthentication, and the peer's identity carried into every
//! request.
//!
//! [`MeshListener`] owns a `TcpListener` and accepts in a task of its own: each TCP connection
//! goes through [`InboundTls::accept`] (STRICT: mutual TLS required; PERMISSIVE: TLS or
//! plaintext on the same port; DISABLE: plaintext, the mode read from the config snapshot at
//! each accept, the workload's credentials read from the
//! [`CredentialStore`](mesh_policy::credentials::CredentialStore) at each
//! handshake, so rotation applies to new connections). Handshakes run concurrently (at most
//! [`MeshListener::MAX_HANDSHAKES`] at once), so a slow or silent client never holds up the
//! next one; a refused connection (plaintext under STRICT, no client certificate, an untrusted
//! chain, a timeout) is closed and logged at debug level, and never reaches the caller.
//!
//! What comes out is a [`MeshStream`]: the byte stream to serve plus its [`PeerInfo`] (the
//! TCP addresses, what TLS saw, and the verified [`PeerIdentity`] under mutual TLS). Wrap the
//! per-connection service in [`AddPeerInfo`] and every request carries them as typed
//! extensions ([`ConnectionInfo`], [`TlsInfo`], [`PeerIdentity`]), where the inbound layer's
//! authorization and the handlers find them. With the `axum` feature the listener implements
//! `axum::serve::Listener` (see `embed::axum`); with hyper, use it directly:
//!
//! ```no_run
//! # async fn example(mesh: mesh_tower::embed::Mesh) -> Result<(), Box<dyn std::error::Error>> {
//! use hyper_util::rt::{TokioExecutor, TokioIo};
//! use mesh_tower::embed::AddPeerInfo;
//!
//! let mut listener = mesh.listener(tokio::net::TcpListener::bind("127.0.0.1:8443").await?)?;
//! loop {
//!     let (stream, _addr) = listener.accept().await?;
//!     let who = stream.peer_identity().map(|p| p.id.to_string());
//!     println!("connection from {who:?}");
//!     let service = AddPeerInfo::new(
//!         tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
//!             let peer = req.extensions().get::<mesh_policy::PeerIdentity>().cloned();
//!             let text = peer.map_or("anonymous".to_owned(), |p| p.id.to_string());
//!             Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
//!                 bytes::Bytes::from(text),
//!             )))
//!         }),
//!         stream.info().clone(),
//!     );
//!     tokio::spawn(async move {
//!         let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
//!         let service = hyper_util::service::TowerToHyperService::new(service);
//!         let _ = builder.serve_connection(TokioIo::new(stream), service).await;
//!     });
//! }
//! # }
//! ```
//!
//! Dropping the listener stops accepting: the accept task ends and handshakes still in
//! progress are dropped with it.

use crate::server::ConnectionInfo;
use crate::tls::{InboundTls, ServerStream, TlsInfo};
use mesh_policy::PeerIdentity;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tower_service::Service;

/// What is known about the peer of an accepted connection; [`AddPeerInfo`] copies it into
/// each request's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The TCP addresses.
    pub connection: ConnectionInfo,
    /// What the TLS layer saw (whether TLS, SNI, ALPN, the PeerAuthentication mode applied).
    pub tls: TlsInfo,
    /// The verified SPIFFE identity, over mutual TLS only.
    pub identity: Option<PeerIdentity>,
}

impl PeerInfo {
    /// Inserts [`ConnectionInfo`], [`TlsInfo`] and (when verified) [`PeerIdentity`] into
    /// `extensions`.
    pub fn insert_into(&self, extensions: &mut http::Extensions) {
        extensions.insert(self.connection);
        extensions.insert(self.tls.clone());
        if let Some(identity) = &self.identity {
            extensions.insert(identity.clone());
        }
    }
}

/// An accepted inbound connection: the stream to serve (TLS done, or plaintext where the mode
/// allows it) and what is known about its peer.
#[derive(Debug)]
pub struct MeshStream {
    io: ServerStream,
    info: PeerInfo,
}

impl MeshStream {
    /// The peer's addresses, TLS details and identity.
    pub fn info(&self) -> &PeerInfo {
        &self.info
    }

    /// The verified SPIFFE identity of the peer (mutual TLS only).
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.info.identity.as_ref()
    }

    /// The stream and the peer's details, apart.
    pub fn into_parts(self) -> (ServerStream, PeerInfo) {
        (self.io, self.info)
    }
}

impl AsyncRead for MeshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A TCP listener whose connections are accepted by PeerAuthentication; see the module docs.
#[derive(Debug)]
pub struct MeshListener {
    local: SocketAddr,
    accepted: mpsc::Receiver<MeshStream>,
    task: JoinHandle<()>,
}

impl MeshListener {
    /// How many TLS handshakes may be in progress at once; past it, the listener waits for
    /// one to finish before accepting the next TCP connection.
    pub const MAX_HANDSHAKES: usize = 1024;

    /// Accepts on `listener` through `tls`. Must be called inside a tokio runtime (it spawns
    /// the accept task).
    pub fn new(listener: TcpListener, tls: InboundTls) -> io::Result<Self> {
        Self::with_shutdown(listener, tls, std::future::pending())
    }

    /// As [`MeshListener::new`], and stops accepting (closing the `TcpListener`) when
    /// `shutdown` resolves; [`MeshListener::accept`] then fails.
    pub fn with_shutdown(
        listener: TcpListener,
        tls: InboundTls,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, accepted) = mpsc::channel(64);
        let task = tokio::spawn(async move {
            tokio::select! {
                () = accept_loop(listener, Arc::new(tls), tx) => {}
                () = shutdown => {}
            }
        });
        Ok(Self {
            local,
            accepted,
            task,
        })
    }

    /// The next accepted connection and its peer's address. Fails once the listener has
    /// stopped accepting (after its shutdown signal, or a panic in the accept task).
    pub async fn accept(&mut self) -> io::Result<(MeshStream, SocketAddr)> {
        match self.accepted.recv().await {
            Some(stream) => {
                let peer = stream.info.connection.peer;
                Ok((stream, peer))
            }
            None => Err(io::Error::other(
                "the mesh listener's accept task has ended",
            )),
        }
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for MeshListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, tls: Arc<InboundTls>, tx: mpsc::Sender<MeshStream>) {
    let handshakes = Arc::new(Semaphore::new(MeshListener::MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            permit = handshakes.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return, // never closed
            },
            () = tx.closed() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // E.g. too many open files: pause rather than spin, keep listening.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = tx.closed() => return,
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        let tls = tls.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let (io, identity, tls_info) = match tls.accept(stream).await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "inbound connection refused");
                    return;
                }
            };
            let stream = MeshStream {
                io,
                info: PeerInfo {
                    connection: ConnectionInfo {
                        peer,
                        local,
                        redirected: false,
                    },
                    tls: tls_info,
                    identity,
                },
            };
            // The permit is held until the stream is handed over, bounding what waits here.
            let _ = tx.send(stream).await;
            drop(permit);
        });
    }
}

/// Puts a connection's [`PeerInfo`] into the extensions of every request on it, then calls
/// `S`: the per-connection service for a [`MeshStream`].
#[derive(Clone, Debug)]
pub struct AddPeerInfo<S> {
    inner: S,
    info: Arc<PeerInfo>,
}

impl<S> AddPeerInfo<S> {
    /// Wraps `inner` for the connection described by `info`.
    pub fn new(inner: S, info: PeerInfo) -> Self {
        Self {
            inner,
            info: Arc::new(info),
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The connection's details.
    pub fn info(&self) -> &PeerInfo {
        &self.info
    }
}

impl<S, B> Service<http::Request<B>> for AddPeerInfo<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> S::Future {
        self.info.insert_into(req.extensions_mut());
        self.inner.call(req)
    }
}
