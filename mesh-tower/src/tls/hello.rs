//! Reading a connection's TLS ClientHello without consuming it: what Envoy's TLS inspector
//! listener filter does before an Istio sidecar picks a PERMISSIVE port's filter chain.
//!
//! [`peek_client_hello`] peeks (`MSG_PEEK`) at the stream until rustls parses a whole
//! ClientHello from a copy of the bytes, which may span several TCP segments and several TLS
//! records, up to [`MAX_CLIENT_HELLO`] bytes (Envoy's `max_client_hello_size` default,
//! BoringSSL's `SSL3_RT_MAX_PLAIN_LENGTH`). Nothing is read from the socket, so the stream can
//! then be handed on untouched: to the TLS acceptor, or to the application as opaque TCP.
//!
//! A stream that cannot be peeked at (any [`AsyncRead`], such as the outbound capture's
//! [`Rewind`](crate::capture::Rewind) over the socket) is read instead by
//! [`read_client_hello`], with the same bounds, and the bytes read are handed back to be
//! replayed first.
//!
//! Bytes rustls refuses as a ClientHello are reported as [`Peeked::NotTls`]: Envoy's TLS
//! inspector counts them in `tls_not_found`, leaves the transport protocol unset
//! (`raw_buffer`), and the connection matches the plaintext filter chains.

use mesh_policy::tls::is_mesh_alpn;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, Interest};
use tokio::net::TcpStream;

/// The most bytes of a ClientHello read before giving up, as Envoy's TLS inspector.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// What the first peek tries to read: a typical ClientHello (a few hundred bytes; more with
/// post-quantum key shares) fits, and the buffer doubles up to [`MAX_CLIENT_HELLO`].
const FIRST_PEEK: usize = 2 * 1024;

/// What a parsed ClientHello offered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The server name asked for (SNI).
    pub server_name: Option<String>,
    /// The ALPN protocols offered, in the client's order (empty without the extension).
    pub alpn: Vec<Vec<u8>>,
}

impl ClientHello {
    /// Whether the client offered one of Istio's mesh ALPN protocols
    /// ([`mesh_policy::tls::MESH_ALPN`]): a mesh peer, whose mutual TLS the sidecar
    /// terminates.
    pub fn offers_mesh_alpn(&self) -> bool {
        self.alpn.iter().any(|p| is_mesh_alpn(p))
    }
}

/// What the bytes of a connection that starts with a TLS handshake record hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peeked {
    /// A whole ClientHello.
    Hello(ClientHello),
    /// The start of one: more bytes are needed.
    Incomplete,
    /// Not a ClientHello rustls can parse.
    NotTls,
}

/// Parses the start of a connection as a TLS ClientHello (with rustls's
/// [`Acceptor`](rustls::server::Acceptor), over a copy of `bytes`).
///
/// ```
/// use mesh_tower::tls::hello::{Peeked, parse_client_hello};
/// assert_eq!(parse_client_hello(b"\x16\x03\x01\x00"), Peeked::Incomplete);
/// assert_eq!(parse_client_hello(b"\x16\x03\x01\x00\x04junk"), Peeked::NotTls);
/// ```
pub fn parse_client_hello(bytes: &[u8]) -> Peeked {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = bytes;
    // Each read_tls consumes at least one byte or returns 0/an error: bounded by the input.
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            Peeked::Hello(ClientHello {
                server_name: hello.server_name().map(str::to_owned),
                alpn: hello
                    .alpn()
                    .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
                    .unwrap_or_default(),
            })
        }
        Ok(None) => Peeked::Incomplete,
        Err(_) => Peeked::NotTls,
    }
}

/// Why a ClientHello could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// The client sent more than [`MAX_CLIENT_HELLO`] bytes without completing one (Envoy
    /// closes such a connection: `client_hello_too_large`).
    #[error("ClientHello larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    /// The whole ClientHello did not arrive in time.
    #[error("ClientHello incomplete after {0:?}")]
    Timeout(Duration),
    /// The client closed the connection in the middle of its ClientHello, or the socket
    /// failed.
    #[error("peeking at the ClientHello: {0}")]
    Io(io::Error),
}

/// Peeks at `stream` until a whole ClientHello has arrived, or the bytes are not one (`None`,
/// [`Peeked::NotTls`]), within `timeout`; nothing is consumed. The common case
/// (the whole ClientHello in the first segment) costs one `recv(MSG_PEEK)`.
pub async fn peek_client_hello(
    stream: &TcpStream,
    timeout: Duration,
) -> Result<Option<ClientHello>, HelloError> {
    tokio::time::timeout(timeout, peek_until_parsed(stream))
        .await
        .map_err(|_| HelloError::Timeout(timeout))?
}

async fn peek_until_parsed(stream: &TcpStream) -> Result<Option<ClientHello>, HelloError> {
    let mut buf = vec![0u8; FIRST_PEEK];
    let mut seen = 0;
    loop {
        seen = peek_more(stream, &mut buf, seen)
            .await
            .map_err(HelloError::Io)?;
        match parse_client_hello(&buf[..seen]) {
            Peeked::Incomplete if seen >= MAX_CLIENT_HELLO => return Err(HelloError::TooLarge),
            Peeked::Incomplete => {
                if seen == buf.len() {
                    buf.resize((buf.len() * 2).min(MAX_CLIENT_HELLO), 0);
                }
            }
            Peeked::Hello(hello) => return Ok(Some(hello)),
            Peeked::NotTls => return Ok(None),
        }
    }
}

/// As [`peek_client_hello`], for a stream that cannot be peeked at: reads from `stream` until
/// a whole ClientHello has arrived, or the bytes are not one (`None`), within `timeout`, up to
/// [`MAX_CLIENT_HELLO`] bytes. Every byte read is appended to `read`, error or not, for the
/// caller to replay ahead of the rest of the stream.
///
/// ```
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// # rt.block_on(async {
/// use mesh_tower::tls::hello::read_client_hello;
/// use std::time::Duration;
/// let mut stream: &[u8] = b"PING\r\n";
/// let mut read = Vec::new();
/// let hello = read_client_hello(&mut stream, &mut read, Duration::from_secs(1)).await;
/// assert_eq!(hello.unwrap(), None, "not TLS");
/// assert_eq!(read, b"PING\r\n");
/// # });
/// ```
pub async fn read_client_hello<S>(
    stream: &mut S,
    read: &mut Vec<u8>,
    timeout: Duration,
) -> Result<Option<ClientHello>, HelloError>
where
    S: AsyncRead + Unpin,
{
    tokio::time::timeout(timeout, read_until_parsed(stream, read))
        .await
        .map_err(|_| HelloError::Timeout(timeout))?
}

async fn read_until_parsed<S>(
    stream: &mut S,
    read: &mut Vec<u8>,
) -> Result<Option<ClientHello>, HelloError>
where
    S: AsyncRead + Unpin,
{
    let mut chunk = vec![0u8; FIRST_PEEK];
    loop {
        let room = MAX_CLIENT_HELLO.saturating_sub(read.len()).min(chunk.len());
        let n = stream
            .read(&mut chunk[..room])
            .await
            .map_err(HelloError::Io)?;
        if n == 0 {
            return Err(HelloError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        read.extend_from_slice(&chunk[..n]);
        match parse_client_hello(read) {
            Peeked::Incomplete if read.len() >= MAX_CLIENT_HELLO => {
                return Err(HelloError::TooLarge);
            }
            Peeked::Incomplete => {}
            Peeked::Hello(hello) => return Ok(Some(hello)),
            Peeked::NotTls => return Ok(None),
        }
    }
}

/// Peeks into `buf` once more than `seen` bytes are waiting; `UnexpectedEof` when the client
/// closed its side first.
///
/// A peek leaves the data in the socket, so tokio's readiness stays set after it: waiting
/// for more with `readable()` would return at once. The peek therefore runs inside
/// [`TcpStream::try_io`], and a peek that found nothing new reports `WouldBlock`, which
/// clears the readiness observed before it (and only that: bytes that arrive meanwhile set it
/// again), so the next wait sleeps until the next segment.
async fn peek_more(stream: &TcpStream, buf: &mut [u8], seen: usize) -> io::Result<usize> {
    loop {
        let ready = stream.ready(Interest::READABLE).await?;
        let peeked = stream.try_io(Interest::READABLE, || {
            let (n, _) = rustix::net::recv(stream, &mut *buf, rustix::net::RecvFlags::PEEK)?;
            if n > seen || ready.is_read_closed() {
                Ok(n)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            }
        });
        match peeked {
            Ok(n) if n > seen => return Ok(n),
            Ok(_) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// The bytes a rustls client sends first, offering `alpn`, asking for `sni`.
    fn client_hello(alpn: &[&[u8]], sni: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut bytes = Vec::new();
        conn.write_tls(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn a_client_hello_tells_mesh_alpn_from_the_apps_own() {
        let mesh = parse_client_hello(&client_hello(&mesh_policy::tls::TCP_ALPN, "web"));
        let Peeked::Hello(mesh) = mesh else {
            panic!("{mesh:?}")
        };
        assert!(mesh.offers_mesh_alpn());
        assert_eq!(mesh.server_name.as_deref(), Some("web"));
        for alpn in [&[&b"h2"[..], b"http/1.1"][..], &[]] {
            let hello = parse_client_hello(&client_hello(alpn, "app.example"));
            assert_eq!(
                hello,
                Peeked::Hello(ClientHello {
                    server_name: Some("app.example".to_owned()),
                    alpn: alpn.iter().map(|p| p.to_vec()).collect(),
                })
            );
        }
        let whole = client_hello(&[b"h2"], "app.example");
        for cut in [1, 5, 6, whole.len() - 1] {
            assert_eq!(
                parse_client_hello(&whole[..cut]),
                Peeked::Incomplete,
                "{cut}"
            );
        }
        // A handshake record holding no ClientHello, and a record too long to be one.
        assert_eq!(
            parse_client_hello(b"\x16\x03\x01\x00\x04\x0e\x00\x00\x00"),
            Peeked::NotTls
        );
        assert_eq!(parse_client_hello(b"\x16\x03\x01\xff\xff"), Peeked::NotTls);
    }

    /// A connected pair on 127.0.0.1: the client's end and the server's.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn a_client_hello_larger_than_the_bound_is_refused() {
        let (mut client, server) = pair().await;
        // A record as long as a record may be, that never completes a ClientHello within
        // the bound.
        let mut bytes = b"\x16\x03\x01\x40\x00".to_vec();
        bytes.resize(5 + 0x4000, 1);
        client.write_all(&bytes).await.unwrap();
        let peeked = peek_client_hello(&server, Duration::from_secs(30)).await;
        assert!(matches!(peeked, Err(HelloError::TooLarge)), "{peeked:?}");
    }

    #[tokio::test]
    async fn a_client_hello_cut_short_by_the_client_closing_is_an_error() {
        let (mut client, server) = pair().await;
        let whole = client_hello(&[b"h2"], "app.example");
        client.write_all(&whole[..whole.len() / 2]).await.unwrap();
        client.shutdown().await.unwrap();
        let peeked = peek_client_hello(&server, Duration::from_secs(30)).await;
        assert!(
            matches!(&peeked, Err(HelloError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof),
            "{peeked:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_hello_that_stops_arriving_times_out() {
        let (mut client, server) = pair().await;
        let whole = client_hello(&[b"h2"], "app.example");
        client.write_all(&whole[..10]).await.unwrap();
        let peeked = peek_client_hello(&server, Duration::from_secs(10)).await;
        assert!(matches!(peeked, Err(HelloError::Timeout(_))), "{peeked:?}");
    }

    #[tokio::test]
    async fn a_client_hello_read_from_any_stream_is_handed_back_whole() {
        let whole = client_hello(&[], "a.example.com");
        let (mut client, mut server) = tokio::io::duplex(64);
        let sent = whole.clone();
        let writer = tokio::spawn(async move {
            // In small pieces: the reader waits for the rest of the ClientHello.
            for piece in sent.chunks(50) {
                client.write_all(piece).await.unwrap();
            }
            client
        });
        let mut read = Vec::new();
        let hello = read_client_hello(&mut server, &mut read, Duration::from_secs(30)).await;
        assert_eq!(
            hello.unwrap().unwrap().server_name.as_deref(),
            Some("a.example.com")
        );
        assert_eq!(read, whole, "every byte read is handed back");
        drop(writer.await.unwrap());
        // Cut short by the client closing: an error, with what came handed back.
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&whole[..10]).await.unwrap();
        drop(client);
        let mut read = Vec::new();
        let hello = read_client_hello(&mut server, &mut read, Duration::from_secs(30)).await;
        assert!(matches!(hello, Err(HelloError::Io(_))), "{hello:?}");
        assert_eq!(read, whole[..10]);
    }

    #[tokio::test]
    async fn bytes_that_are_no_client_hello_are_not_tls_and_stay_unread() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"\x16garbage").await.unwrap();
        let peeked = peek_client_hello(&server, Duration::from_secs(30)).await;
        assert_eq!(peeked.unwrap(), None);
        let mut all = [0u8; 8];
        tokio::io::AsyncReadExt::read_exact(&mut server, &mut all)
            .await
            .unwrap();
        assert_eq!(&all, b"\x16garbage");
    }
}
