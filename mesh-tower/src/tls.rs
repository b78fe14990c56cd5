//! Mutual TLS on both sides of the proxy, with SPIFFE workload identities.
//!
//! - Inbound, [`InboundTls`] accepts a TCP connection the way the workload's
//!   PeerAuthentication says (read from the config snapshot at each accept): `STRICT` requires
//!   TLS with a client certificate, `PERMISSIVE` takes TLS and plaintext on the same port, told
//!   apart by peeking at the first byte (a TLS record starts with `0x16`, an HTTP/1 request
//!   with a method letter, an HTTP/2 preface with `P`), `DISABLE` takes plaintext only. The
//!   verified [`PeerIdentity`] and the [`TlsInfo`] go into every request's extensions
//!   ([`crate::server::serve_tls`] does that).
//! - With [`InboundTls::pass_through_app_tls`] (a listener with an application to forward
//!   TCP to: the sidecar's inbound capture), a `PERMISSIVE` port tells mesh TLS from the
//!   application's own TLS as Istio's sidecars do: the ClientHello is peeked at, not consumed
//!   ([`hello`]), and one offering an Istio mesh ALPN protocol
//!   ([`mesh_policy::tls::MESH_ALPN`]) is terminated; any other TLS (a client without a
//!   sidecar calling the app's HTTPS port) comes back untouched as
//!   [`ServerStream::Plain`] with [`TlsInfo::app_tls`] set, for the caller to forward as TCP.
//!   This is Istio's PERMISSIVE inbound filter chains (`inboundPermissive*FilterChainMatch*`
//!   in `pilot/pkg/networking/core`): mutual TLS by `allIstioMtlsALPNs`, other TLS passed
//!   through to a TCP proxy, plaintext. `STRICT` terminates any TLS, as Istio's STRICT chains.
//! - Outbound, [`MtlsConnector`] is a connector (a `tower::Service<Uri>`) for the upstream
//!   client's pools: TCP, then a rustls handshake presenting our certificate and checking the
//!   server's SPIFFE ID against the identities it was built with. [`crate::client::UpstreamClient`] keeps one pool per
//!   set of expected identities, so a pooled connection is never reused for a destination
//!   that expects someone else.
//!
//! Both read the [`CredentialStore`] at every handshake; rotation affects new connections
//! only. [`watch_credentials`] polls the PEM files and rotates the store.
//!
//! When a client negotiates ALPN `istio-peer-exchange` (mesh peers' TCP connections),
//! [`InboundTls::accept`] runs Istio's TCP metadata exchange before handing the stream on
//! ([`TcpPeerExchange`]): the peer's workload is in [`TlsInfo::peer_metadata`].

pub mod hello;

use crate::body::BoxError;
use crate::capture::Rewind;
use crate::telemetry::{PEER_EXCHANGE_ALPN, PeerMetadata, TcpPeerExchange};
use futures_util::future::BoxFuture;
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use mesh_core::model::MtlsMode;
use mesh_core::store::ConfigStore;
use mesh_policy::credentials::{CredentialStore, FileWatcher, PollOutcome};
use mesh_policy::tls::{
    ClientAuth, MeshProtocol, client_config, mesh_client_config, peer_identity, server_config,
};
use mesh_policy::{PeerIdentity, SpiffeId};
use rustls::pki_types::ServerName;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tower_service::Service;

/// What the TLS layer learned about an inbound connection, in request extensions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The server name the client asked for (shared: every request of the connection carries
    /// a clone of this).
    pub sni: Option<Arc<str>>,
    /// The negotiated ALPN protocol.
    pub alpn: Option<Arc<[u8]>>,
    /// The workload port the listener serves (for `portLevelMtls` and `destination.port`), when
    /// it differs from the listener's own port.
    pub workload_port: Option<u16>,
    /// The mode that applied.
    pub mode: Option<MtlsMode>,
    /// The peer's workload, from Istio's TCP metadata exchange on this connection (ALPN
    /// `istio-peer-exchange`); HTTP telemetry falls back to it when a request carries no
    /// exchange headers.
    pub peer_metadata: Option<Arc<PeerMetadata>>,
    /// The connection is the application's own TLS, left for the application to terminate
    /// (PERMISSIVE with [`InboundTls::pass_through_app_tls`]: its ClientHello offered none of
    /// Istio's mesh ALPN protocols). The stream is the untouched TCP connection, its
    /// ClientHello still unread; `tls` is false (the sidecar terminated nothing), there is no
    /// peer identity, and `sni` is the server name the ClientHello asked for.
    pub app_tls: bool,
}

/// Why an inbound connection was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// Plaintext arrived on a STRICT port.
    #[error("plaintext connection refused: PeerAuthentication STRICT requires mutual TLS")]
    PlaintextRefused,
    /// The TLS handshake failed (no client certificate under STRICT, untrusted chain, ...).
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    /// The handshake did not finish in time.
    #[error("TLS handshake timed out after {0:?}")]
    Timeout(Duration),
    /// Reading the first bytes failed.
    #[error("reading the first bytes: {0}")]
    Io(io::Error),
    /// The metadata exchange the client negotiated (ALPN `istio-peer-exchange`) failed on the
    /// stream.
    #[error("tcp metadata exchange: {0}")]
    Exchange(io::Error),
    /// The ClientHello a PERMISSIVE port with [`InboundTls::pass_through_app_tls`] peeks at
    /// could not be read (too large, incomplete in time, or cut short).
    #[error(transparent)]
    ClientHello(#[from] hello::HelloError),
}

/// An accepted inbound stream: plaintext or TLS.
#[derive(Debug)]
pub enum ServerStream {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS, handshake done.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS whose peer negotiated the metadata exchange but sent payload instead of its
    /// preamble: that payload is read again first.
    TlsRewound(Box<Rewind<tokio_rustls::server::TlsStream<TcpStream>>>),
}

/// An outbound stream: TLS over TCP, handshake done.
#[derive(Debug)]
pub struct ClientStream(Box<tokio_rustls::client::TlsStream<TcpStream>>);

/// A byte stream, for delegating to the variants of a stream enum.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Streams that are one of several [`Io`]s.
trait Delegate {
    fn io(&mut self) -> &mut dyn Io;
    fn io_ref(&self) -> &dyn Io;
}

impl Delegate for ServerStream {
    fn io(&mut self) -> &mut dyn Io {
        match self {
            Self::Plain(t) => t,
            Self::Tls(t) => t.as_mut(),
            Self::TlsRewound(t) => t.as_mut(),
        }
    }
    fn io_ref(&self) -> &dyn Io {
        match self {
            Self::Plain(t) => t,
            Self::Tls(t) => t.as_ref(),
            Self::TlsRewound(t) => t.as_ref(),
        }
    }
}

impl Delegate for ClientStream {
    fn io(&mut self) -> &mut dyn Io {
        self.0.as_mut()
    }
    fn io_ref(&self) -> &dyn Io {
        self.0.as_ref()
    }
}

macro_rules! delegate_io {
    ($ty:ty) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                Pin::new(self.get_mut().io()).poll_read(cx, buf)
            }
        }
        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(self.get_mut().io()).poll_write(cx, buf)
            }
            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                Pin::new(self.get_mut().io()).poll_write_vectored(cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                self.io_ref().is_write_vectored()
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(self.get_mut().io()).poll_flush(cx)
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(self.get_mut().io()).poll_shutdown(cx)
            }
        }
    };
}

delegate_io!(ServerStream);
delegate_io!(ClientStream);

/// Accepts inbound connections by PeerAuthentication; see the module docs.
#[derive(Clone)]
pub struct InboundTls {
    config: Arc<ConfigStore>,
    credentials: Arc<CredentialStore>,
    strict: TlsAcceptor,
    optional: TlsAcceptor,
    workload_port: Option<u16>,
    handshake_timeout: Duration,
    exchange: TcpPeerExchange,
    pass_through_app_tls: bool,
}

impl std::fmt::Debug for InboundTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundTls")
            .field("id", self.credentials.load().id())
            .field("workload_port", &self.workload_port)
            .finish_non_exhaustive()
    }
}

impl InboundTls {
    /// An acceptor presenting `credentials`, with the mode from `config`'s snapshot.
    pub fn new(
        config: Arc<ConfigStore>,
        credentials: Arc<CredentialStore>,
    ) -> Result<Self, rustls::Error> {
        let handshake_timeout = Duration::from_secs(10);
        Ok(Self {
            strict: TlsAcceptor::from(server_config(credentials.clone(), ClientAuth::Required)?),
            optional: TlsAcceptor::from(server_config(credentials.clone(), ClientAuth::Optional)?),
            exchange: TcpPeerExchange::new(&config.load().workload).timeout(handshake_timeout),
            config,
            credentials,
            workload_port: None,
            handshake_timeout,
            pass_through_app_tls: false,
        })
    }

    /// What this side sends in Istio's TCP metadata exchange (default: the config's workload,
    /// without a node id).
    #[must_use]
    pub fn peer_exchange(mut self, exchange: TcpPeerExchange) -> Self {
        self.exchange = exchange.timeout(self.handshake_timeout);
        self
    }

    /// The workload port this listener serves: the key for `portLevelMtls` (default: the
    /// listener's local port).
    #[must_use]
    pub fn workload_port(mut self, port: u16) -> Self {
        self.workload_port = Some(port);
        self
    }

    /// Whether a PERMISSIVE port passes the application's own TLS through (default: no, every
    /// TLS connection is terminated). When on, a TLS connection whose ClientHello offers none
    /// of Istio's mesh ALPN protocols is returned untouched, with [`TlsInfo::app_tls`] set,
    /// for the caller to forward as TCP to the application; see the module docs. Only a
    /// caller with an application to forward TCP to turns it on (the embedding API's HTTP
    /// server and [`crate::server::serve_tls`] have none). A ClientHello rustls cannot parse
    /// is returned as plaintext, as Envoy's TLS inspector leaves it to the plaintext filter
    /// chains. The ClientHello is peeked at once per TLS connection on a PERMISSIVE port,
    /// within the handshake timeout.
    #[must_use]
    pub fn pass_through_app_tls(mut self, on: bool) -> Self {
        self.pass_through_app_tls = on;
        self
    }

    /// The credentials presented.
    pub fn credentials(&self) -> &Arc<CredentialStore> {
        &self.credentials
    }

    /// Accepts `stream`: the stream to serve, the verified peer (mutual TLS only) and what the
    /// TLS layer saw.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> Result<(ServerStream, Option<PeerIdentity>, TlsInfo), AcceptError> {
        let port = self
            .workload_port
            .or_else(|| stream.local_addr().ok().map(|a| a.port()))
            .unwrap_or(0);
        let mode = self.config.load().peer_authentication.mode_for(port);
        let mut info = TlsInfo {
            workload_port: self.workload_port,
            mode: Some(mode),
            ..TlsInfo::default()
        };
        let timeout = self.handshake_timeout;
        let acceptor = match mode {
            MtlsMode::Disable => return Ok((ServerStream::Plain(stream), None, info)),
            MtlsMode::Strict => {
                if !starts_with_tls(&stream, timeout).await? {
                    return Err(AcceptError::PlaintextRefused);
                }
                &self.strict
            }
            MtlsMode::Permissive | MtlsMode::Unset => {
                if !starts_with_tls(&stream, timeout).await? {
                    return Ok((ServerStream::Plain(stream), None, info));
                }
                if self.pass_through_app_tls {
                    match hello::peek_client_hello(&stream, timeout).await? {
                        Some(hello) if hello.offers_mesh_alpn() => {}
                        Some(hello) => {
                            info.app_tls = true;
                            info.sni = hello.server_name.map(Arc::from);
                            return Ok((ServerStream::Plain(stream), None, info));
                        }
                        // Not TLS to Envoy's TLS inspector: the plaintext chains take it.
                        None => return Ok((ServerStream::Plain(stream), None, info)),
                    }
                }
                &self.optional
            }
        };
        let mut tls = tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream))
            .await
            .map_err(|_| AcceptError::Timeout(self.handshake_timeout))?
            .map_err(AcceptError::Handshake)?;
        let (_, conn) = tls.get_ref();
        let peer = peer_identity(conn.peer_certificates());
        info.tls = true;
        info.sni = conn.server_name().map(Arc::from);
        info.alpn = conn.alpn_protocol().map(Arc::from);
        if info.alpn.as_deref() != Some(PEER_EXCHANGE_ALPN) {
            return Ok((ServerStream::Tls(Box::new(tls)), peer, info));
        }
        let exchanged = self
            .exchange
            .run(&mut tls)
            .await
            .map_err(AcceptError::Exchange)?;
        info.peer_metadata = exchanged.peer;
        let stream = if exchanged.unread.is_empty() {
            ServerStream::Tls(Box::new(tls))
        } else {
            ServerStream::TlsRewound(Box::new(Rewind::new(exchanged.unread, tls)))
        };
        Ok((stream, peer, info))
    }
}

/// Whether the connection's first byte is a TLS handshake record (`0x16`). Waits (up to
/// `timeout`, so an idle connection cannot hold a task forever) for the first byte without
/// consuming it; an immediate EOF counts as plaintext.
async fn starts_with_tls(stream: &TcpStream, timeout: Duration) -> Result<bool, AcceptError> {
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(timeout, stream.peek(&mut first))
        .await
        .map_err(|_| AcceptError::Timeout(timeout))?
        .map_err(AcceptError::Io)?;
    Ok(is_tls_handshake(&first[..n]))
}

/// Whether a connection whose first bytes are `prefix` carries TLS: a TLS handshake record
/// starts with `0x16`, which no HTTP/1 method and no HTTP/2 preface does. This is how a
/// PERMISSIVE port tells mTLS from plaintext; an empty prefix (the peer closed at once) is
/// plaintext.
pub fn is_tls_handshake(prefix: &[u8]) -> bool {
    prefix.first() == Some(&0x16)
}

/// The workload certificate's expiry and the rotation count, in Prometheus text format, for
/// the admin endpoint's `/stats/prometheus` (the seed's "alert on certificate expiry").
pub fn credential_metrics(store: &CredentialStore) -> String {
    let creds = store.load();
    format!(
        "# HELP mesh_workload_cert_expiry_timestamp_seconds When the workload certificate expires (unix seconds).\n\
         # TYPE mesh_workload_cert_expiry_timestamp_seconds gauge\n\
         mesh_workload_cert_expiry_timestamp_seconds{{spiffe_id=\"{id}\"}} {exp}\n\
         # HELP mesh_workload_cert_rotations_total Workload certificate rotations since start.\n\
         # TYPE mesh_workload_cert_rotations_total counter\n\
         mesh_workload_cert_rotations_total {rot}\n",
        id = creds.id(),
        exp = creds.not_after_unix(),
        rot = store.rotations(),
    )
}

/// A hyper-util connector: TCP, then mutual TLS verified against `expected` SPIFFE IDs (any ID
/// the bundle verifies when empty).
#[derive(Clone)]
pub struct MtlsConnector {
    http: HttpConnector,
    tls: TlsConnector,
    expected: Arc<[SpiffeId]>,
    sni: Option<ServerName<'static>>,
}

impl std::fmt::Debug for MtlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsConnector")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl MtlsConnector {
    /// A connector over `http` (its timeouts and TCP options apply) presenting `credentials`.
    pub fn new(
        mut http: HttpConnector,
        credentials: Arc<CredentialStore>,
        expected: Vec<SpiffeId>,
    ) -> Result<Self, rustls::Error> {
        // The URI keeps its `http` scheme (the pool key); TLS is this connector's job.
        http.enforce_http(false);
        Ok(Self {
            http,
            tls: TlsConnector::from(client_config(credentials, expected.clone())?),
            expected: expected.into(),
            sni: None,
        })
    }

    /// A connector with a given rustls config (DestinationRule `SIMPLE` / `MUTUAL` with
    /// certificate files), sending `sni` as the server name and verifying it.
    pub fn with_config(
        mut http: HttpConnector,
        config: Arc<rustls::ClientConfig>,
        sni: ServerName<'static>,
    ) -> Self {
        http.enforce_http(false);
        Self {
            http,
            tls: TlsConnector::from(config),
            expected: Arc::new([]),
            sni: Some(sni),
        }
    }

    /// As [`MtlsConnector::new`], offering HTTP/1.1's ALPN protocols only
    /// ([`MeshProtocol::Http1`]): the connector of an HTTP/1 pool. Offering `h2` there lets
    /// the server pick it and turns the pool's connections into HTTP/2 ones, on which an
    /// HTTP/1.1 Upgrade (WebSocket) cannot be sent; Istio keeps HTTP/1.1 as HTTP/1.1 between
    /// sidecars unless `h2UpgradePolicy: UPGRADE`.
    pub fn new_http1(
        mut http: HttpConnector,
        credentials: Arc<CredentialStore>,
        expected: Vec<SpiffeId>,
    ) -> Result<Self, rustls::Error> {
        http.enforce_http(false);
        Ok(Self {
            http,
            tls: TlsConnector::from(mesh_client_config(
                credentials,
                expected.clone(),
                MeshProtocol::Http1,
            )?),
            expected: expected.into(),
            sni: None,
        })
    }

    /// The identities the server must present.
    pub fn expected(&self) -> &[SpiffeId] {
        &self.expected
    }
}

/// `config`, offering ALPN `http/1.1` only (for an HTTP/1 pool originating plain TLS, as
/// [`MtlsConnector::new_http1`] does for mesh TLS).
pub fn http1_only(config: Arc<rustls::ClientConfig>) -> Arc<rustls::ClientConfig> {
    let mut config = Arc::unwrap_or_clone(config);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

impl Connection for ClientStream {
    fn connected(&self) -> Connected {
        let (tcp, conn) = self.0.get_ref();
        let connected = tcp.connected();
        if conn.alpn_protocol() == Some(b"h2") {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl Service<Uri> for MtlsConnector {
    type Response = TokioIo<ClientStream>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<TokioIo<ClientStream>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let host = uri
            .host()
            .unwrap_or("localhost")
            .trim_matches(['[', ']'])
            .to_owned();
        let connecting = self.http.call(uri);
        let tls = self.tls.clone();
        let sni = self.sni.clone();
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            let name = match sni {
                Some(name) => name,
                None => ServerName::try_from(host)?,
            };
            let stream = tls.connect(name, tcp).await?;
            Ok(TokioIo::new(ClientStream(Box::new(stream))))
        })
    }
}

/// Polls the PEM files every `interval` and rotates `store` when they change; a bad set is
/// logged and the current credentials kept. Runs until dropped (spawn it and abort it).
pub async fn watch_credentials(
    store: Arc<CredentialStore>,
    mut watcher: FileWatcher,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let store = store.clone();
        let outcome;
        (watcher, outcome) = match tokio::task::spawn_blocking(move || {
            let outcome = watcher.poll(&store);
            (watcher, outcome)
        })
        .await
        {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, "credential watcher task failed");
                return;
            }
        };
        if let PollOutcome::Rejected(e) = outcome {
            tracing::debug!(error = %e, "credential files not rotated");
        }
    }
}
