//! The application's own TLS on the sidecar's inbound ports, as Istio's PERMISSIVE filter
//! chains treat it: a client without a sidecar calling an app that terminates its own TLS
//! reaches the app untouched; a mesh client (Istio's ALPN protocols) on the same port is
//! still terminated by the sidecar; STRICT still terminates every TLS connection.

mod common;

use bytes::Bytes;
use common::store_for;
use futures_util::FutureExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use mesh_examples::proxy::{Identity, Proxy};
use mesh_policy::credentials::CredentialStore;
use mesh_policy::testing::TestCa;
use mesh_policy::{PeerIdentity, SpiffeId};
use mesh_tower::capture::{InboundCapture, serve_inbound_capture};
use mesh_tower::tcp::TcpInbound;
use mesh_tower::tls::{InboundTls, MtlsConnector, ServerStream};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const SERVER_ID: &str = "spiffe://cluster.local/ns/server/sa/web";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/client/sa/frontend";
/// The workload port the captures serve (PeerAuthentication's `portLevelMtls` key).
const PORT: u16 = 8443;

/// Runs a test body with an upper bound, so a hang fails with a message.
async fn within<T>(body: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), body)
        .await
        .expect("the test did not finish within 60 s")
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An app terminating its own TLS with a `localhost` certificate from `ca` (not the mesh's),
/// echoing what it reads; counts completed handshakes.
async fn tls_echo_app(ca: &TestCa) -> (SocketAddr, Arc<AtomicUsize>) {
    let leaf = ca.issue_with(&mesh_policy::testing::LeafSpec {
        dns: &["localhost"],
        ..Default::default()
    });
    let certs = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let (mut r, mut w) = tokio::io::split(tls);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, handshakes)
}

/// What most tests start from: the mesh's CA, an app terminating its own TLS with a
/// certificate from its own CA ([`tls_echo_app`]) and the count of its handshakes, and a
/// client without a sidecar that trusts only the app's CA, offering `h2` and `http/1.1`.
struct Fixture {
    mesh_ca: TestCa,
    app_ca: TestCa,
    app: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    client: tokio_rustls::TlsConnector,
}

impl Fixture {
    async fn new() -> Self {
        let (mesh_ca, app_ca) = (TestCa::new("mesh root"), TestCa::new("the app's own root"));
        let (app, handshakes) = tls_echo_app(&app_ca).await;
        let client = plain_tls_client(&app_ca, &[b"h2", b"http/1.1"]);
        Self {
            mesh_ca,
            app_ca,
            app,
            handshakes,
            client,
        }
    }
}

/// A client without a sidecar: trusts only `ca` (the app's), offers `alpn`.
fn plain_tls_client(ca: &TestCa, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(Arc::new(plain_tls_config(ca, alpn)))
}

fn plain_tls_config(ca: &TestCa, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.bundle_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// What the tests say to the app.
const HELLO: &[u8] = b"hello app";

/// Says [`HELLO`] to the app through `addr` with `client`: the echo, `Ok` only when the
/// handshake verified the app's certificate and the bytes came back.
async fn hello_through(
    client: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
) -> Result<Vec<u8>, String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = client
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(HELLO).await.map_err(|e| e.to_string())?;
    let mut back = vec![0u8; HELLO.len()];
    tls.read_exact(&mut back)
        .await
        .map_err(|e| format!("reading the echo: {e}"))?;
    Ok(back)
}

/// Asserts that `client`'s handshake through `addr` fails (the sidecar answered with the mesh
/// certificate, or closed the connection) and that the app saw no new handshake.
async fn assert_refused(client: &tokio_rustls::TlsConnector, addr: SocketAddr, app: &AtomicUsize) {
    let before = app.load(Ordering::SeqCst);
    let refused = hello_through(client, addr).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.starts_with("handshake")),
        "{refused:?}"
    );
    assert_eq!(
        app.load(Ordering::SeqCst),
        before,
        "the app saw the connection"
    );
}

/// PeerAuthentication `mode` for the workload in namespace `server`.
fn peer_authentication(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{ name: default, namespace: server }}
spec: {{ mtls: {{ mode: {mode} }} }}
"
    )
}

/// A Sidecar whose ingress listener declares [`PORT`] as `protocol`, towards `app`.
fn ingress(protocol: &str, app: SocketAddr) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{ name: default, namespace: server }}
spec:
  ingress:
  - port: {{ number: {PORT}, protocol: {protocol}, name: web }}
    defaultEndpoint: {app}
"
    )
}

/// The inbound capture as the sidecar runs it (the app's own TLS passed through) over the
/// config `yaml`, for connections made to it directly: the app is `app` (unless an ingress
/// listener names it), the workload port [`PORT`]. HTTP it
/// terminates is answered with the caller's verified SPIFFE ID.
async fn inbound_capture(yaml: &str, mesh_ca: &TestCa, app: SocketAddr) -> SocketAddr {
    let store = store_for(yaml, "server", "web");
    let tls = InboundTls::new(
        store.clone(),
        CredentialStore::new(mesh_ca.credentials(SERVER_ID)),
    )
    .unwrap()
    .pass_through_app_tls(true);
    let whoami = |_app: SocketAddr| {
        tower::service_fn(|req: http::Request<Incoming>| {
            let id = req
                .extensions()
                .get::<PeerIdentity>()
                .map_or_else(|| "anonymous".to_owned(), |p| p.id.to_string());
            std::future::ready(Ok::<_, Infallible>(http::Response::new(
                mesh_tower::body::full(id),
            )))
        })
    };
    let capture = InboundCapture::new(store.clone(), Some(tls), TcpInbound::new(store), whoami)
        .direct(Some(app), Some(PORT));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_inbound_capture(
        listener,
        capture,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    addr
}

/// A mesh client (Istio's HTTP ALPN protocols) as `CLIENT_ID`, expecting the sidecar to be
/// `SERVER_ID`: what the sidecar's HTTP answered, or the error.
async fn mesh_get(mesh_ca: &TestCa, addr: SocketAddr) -> Result<String, String> {
    let connector = MtlsConnector::new(
        hyper_util::client::legacy::connect::HttpConnector::new(),
        CredentialStore::new(mesh_ca.credentials(CLIENT_ID)),
        vec![SpiffeId::parse(SERVER_ID).unwrap()],
    )
    .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Full<Bytes>>(connector);
    let req = http::Request::get(format!("http://{addr}/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_passes_the_apps_own_tls_through_and_terminates_mesh_tls() {
    within(async {
        let metrics = mesh_examples::metrics::prometheus().expect("the Prometheus recorder");
        let f = Fixture::new().await;
        let sidecar = inbound_capture(&peer_authentication("PERMISSIVE"), &f.mesh_ca, f.app).await;
        // Clients without a sidecar, with the ALPN offers browsers and HTTP libraries make
        // (and none): each completes its handshake with the app's certificate (the only one
        // it trusts) and talks to the app.
        for alpn in [&[&b"h2"[..], b"http/1.1"][..], &[b"http/1.1"], &[]] {
            let client = plain_tls_client(&f.app_ca, alpn);
            assert_eq!(
                hello_through(&client, sidecar).await.as_deref(),
                Ok(HELLO),
                "ALPN {alpn:?}"
            );
        }
        assert_eq!(f.handshakes.load(Ordering::SeqCst), 3);
        // Counted as Istio counts its plain TLS chain: TCP without an identity.
        let port = format!("destination_port=\"{}\"", sidecar.port());
        let text = metrics.render();
        let opened: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("istio_tcp_connections_opened_total{") && l.contains(&port))
            .collect();
        assert_eq!(opened.len(), 1, "{text}");
        for label in [
            "connection_security_policy=\"none\"",
            "source_principal=\"unknown\"",
            "request_protocol=\"tcp\"",
        ] {
            assert!(opened[0].contains(label), "{label}: {}", opened[0]);
        }
        assert!(opened[0].ends_with(" 3"), "{}", opened[0]);
        // A mesh client on the same port: the sidecar terminates it (its SPIFFE ID checked by
        // the client) and sees the client's identity.
        assert_eq!(
            mesh_get(&f.mesh_ca, sidecar).await.as_deref(),
            Ok(CLIENT_ID)
        );
        assert_eq!(
            f.handshakes.load(Ordering::SeqCst),
            3,
            "the app saw no mesh TLS"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_still_terminates_tls_without_mesh_alpn() {
    within(async {
        let f = Fixture::new().await;
        let permissive =
            inbound_capture(&peer_authentication("PERMISSIVE"), &f.mesh_ca, f.app).await;
        let strict = inbound_capture(&peer_authentication("STRICT"), &f.mesh_ca, f.app).await;
        // STRICT: the sidecar answers with the mesh certificate, which this client does not
        // trust; nothing reaches the app.
        assert_refused(&f.client, strict, &f.handshakes).await;
        assert_eq!(f.handshakes.load(Ordering::SeqCst), 0);
        // The same client on a PERMISSIVE port of the same app reaches it.
        assert_eq!(
            hello_through(&f.client, permissive).await.as_deref(),
            Ok(HELLO)
        );
        assert_eq!(f.handshakes.load(Ordering::SeqCst), 1);
        // Mesh clients are served on both.
        for port in [strict, permissive] {
            assert_eq!(mesh_get(&f.mesh_ca, port).await.as_deref(), Ok(CLIENT_ID));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_declared_http_refuses_the_apps_own_tls_and_one_declared_tcp_passes_it() {
    within(async {
        let f = Fixture::new().await;
        let permissive = peer_authentication("PERMISSIVE");
        // Istio's PERMISSIVE chains for a TCP port: the app's own TLS goes to the app.
        let tcp_port = inbound_capture(
            &(permissive.clone() + &ingress("TCP", f.app)),
            &f.mesh_ca,
            f.app,
        )
        .await;
        assert_eq!(
            hello_through(&f.client, tcp_port).await.as_deref(),
            Ok(HELLO)
        );
        assert_eq!(f.handshakes.load(Ordering::SeqCst), 1);
        // For an HTTP port Istio has mesh TLS and plaintext chains only: closed.
        let http_port =
            inbound_capture(&(permissive + &ingress("HTTP", f.app)), &f.mesh_ca, f.app).await;
        assert_refused(&f.client, http_port, &f.handshakes).await;
        assert_eq!(f.handshakes.load(Ordering::SeqCst), 1);
        assert_eq!(
            mesh_get(&f.mesh_ca, http_port).await.as_deref(),
            Ok(CLIENT_ID)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_own_tls_is_authorized_as_tcp_without_an_identity() {
    within(async {
        let f = Fixture::new().await;
        // Only a mesh identity is allowed: the app's own TLS carries none, so Istio's network
        // RBAC on the plain TLS chain closes it before the app.
        let only_mesh = peer_authentication("PERMISSIVE")
            + "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: mesh-only, namespace: server }
spec:
  action: ALLOW
  rules:
  - from: [{ source: { principals: [cluster.local/ns/client/sa/frontend] } }]
";
        let sidecar = inbound_capture(&only_mesh, &f.mesh_ca, f.app).await;
        assert_refused(&f.client, sidecar, &f.handshakes).await;
        assert_eq!(f.handshakes.load(Ordering::SeqCst), 0);
        // Without the policy the same client reaches the app.
        let sidecar = inbound_capture(&peer_authentication("PERMISSIVE"), &f.mesh_ca, f.app).await;
        assert_eq!(
            hello_through(&f.client, sidecar).await.as_deref(),
            Ok(HELLO)
        );
        assert_eq!(f.handshakes.load(Ordering::SeqCst), 1);
    })
    .await;
}

/// A client's TCP stream whose first write sends only its first `at` bytes; the rest waits
/// until `gate` opens, so the server sees the ClientHello in two TCP writes.
struct SplitFirstWrite {
    inner: TcpStream,
    at: usize,
    gate: Option<oneshot::Receiver<()>>,
    first_done: bool,
}

impl AsyncWrite for SplitFirstWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.first_done {
            let n = buf.len().min(this.at);
            let written = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..n]))?;
            this.first_done = true;
            return Poll::Ready(Ok(written));
        }
        if let Some(gate) = &mut this.gate {
            let _ = std::task::ready!(gate.poll_unpin(cx));
            this.gate = None;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl AsyncRead for SplitFirstWrite {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

/// Runs `client`'s handshake with its ClientHello split after `at` bytes into two TCP
/// writes, and `InboundTls::accept` on the server side, which must have seen only the first
/// part before the second is sent. Returns what the server accepted and the client's end.
async fn accept_split_hello<C, T>(
    tls: &InboundTls,
    at: usize,
    client: C,
) -> (
    Result<(ServerStream, Option<PeerIdentity>, mesh_tower::tls::TlsInfo), String>,
    tokio::task::JoinHandle<T>,
)
where
    C: FnOnce(SplitFirstWrite) -> tokio::task::JoinHandle<T>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    tcp.set_nodelay(true).unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let (open, gate) = oneshot::channel();
    let client = client(SplitFirstWrite {
        inner: tcp,
        at,
        gate: Some(gate),
        first_done: false,
    });
    // The first part has arrived (the rest is held back): accepting cannot finish yet, and
    // polling it once makes it peek at the partial ClientHello.
    server.readable().await.unwrap();
    let mut accept = pin!(tls.accept(server));
    assert!(
        futures_util::poll!(accept.as_mut()).is_pending(),
        "a partial ClientHello is waited on"
    );
    open.send(()).unwrap();
    (accept.await.map_err(|e| e.to_string()), client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_split_across_two_tcp_writes_is_classified_whole() {
    within(async {
        let (mesh_ca, app_ca) = (TestCa::new("mesh root"), TestCa::new("the app's own root"));
        let store = store_for(&peer_authentication("PERMISSIVE"), "server", "web");
        let tls = InboundTls::new(store, CredentialStore::new(mesh_ca.credentials(SERVER_ID)))
            .unwrap()
            .workload_port(PORT)
            .pass_through_app_tls(true);
        // Cut after the first record's header, or inside the ClientHello; the ClientHello in
        // one TLS record, or in records of 64 bytes: no first part parses alone.
        for (at, fragments) in [(5, None), (100, None), (100, Some(64))] {
            // The app's own TLS: left untouched, its ClientHello still unread.
            let mut plain = plain_tls_config(&app_ca, &[b"h2", b"http/1.1"]);
            plain.max_fragment_size = fragments;
            let plain = tokio_rustls::TlsConnector::from(Arc::new(plain));
            let (accepted, client) = accept_split_hello(&tls, at, |io| {
                tokio::spawn(async move {
                    let name = ServerName::try_from("app.example").unwrap();
                    // The handshake ends when the test drops the server's stream.
                    let _ = plain.connect(name, io).await;
                })
            })
            .await;
            let (stream, identity, info) = accepted.unwrap();
            assert!(info.app_tls && !info.tls && identity.is_none(), "{info:?}");
            assert_eq!(info.sni.as_deref(), Some("app.example"));
            let ServerStream::Plain(mut tcp) = stream else {
                panic!("the app's TLS is not terminated: {stream:?}");
            };
            let mut record = [0u8; 3];
            tcp.read_exact(&mut record).await.unwrap();
            assert_eq!(
                record,
                [0x16, 0x03, 0x01],
                "the ClientHello was not consumed"
            );
            drop(tcp);
            client.await.unwrap();

            // A mesh client: terminated, its identity verified.
            let mut mesh = Arc::unwrap_or_clone(
                mesh_policy::tls::mesh_client_config(
                    CredentialStore::new(mesh_ca.credentials(CLIENT_ID)),
                    vec![SpiffeId::parse(SERVER_ID).unwrap()],
                    mesh_policy::tls::MeshProtocol::Http,
                )
                .unwrap(),
            );
            mesh.max_fragment_size = fragments;
            let mesh = tokio_rustls::TlsConnector::from(Arc::new(mesh));
            let (accepted, client) = accept_split_hello(&tls, at, |io| {
                tokio::spawn(async move {
                    let name = ServerName::try_from("localhost").unwrap();
                    mesh.connect(name, io).await.map(drop)
                })
            })
            .await;
            let (stream, identity, info) = accepted.unwrap();
            assert!(info.tls && !info.app_tls, "{info:?}");
            assert!(matches!(stream, ServerStream::Tls(_)), "{stream:?}");
            assert_eq!(identity.unwrap().id.to_string(), CLIENT_ID);
            client.await.unwrap().unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_passes_the_apps_own_tls_to_its_app_port() {
    within(async {
        let f = Fixture::new().await;
        let config = common::ConfigDir::new(&peer_authentication("PERMISSIVE"));
        let mut options = common::test_options(vec![config.path()]);
        options.intercept = true;
        options.app = Some(f.app);
        options.workload.namespace = "server".to_owned();
        options.identity = Some(Identity::Store(CredentialStore::new(
            f.mesh_ca.credentials(SERVER_ID),
        )));
        let proxy = Proxy::start(options).await.unwrap();
        assert_eq!(
            hello_through(&f.client, proxy.inbound).await.as_deref(),
            Ok(HELLO)
        );
        assert_eq!(f.handshakes.load(Ordering::SeqCst), 1);
        proxy.shutdown().await;
    })
    .await;
}
