//! VirtualService `tls` rules in the TCP forwarders: real rustls clients on 127.0.0.1 asking
//! for a server name, through the forwarder (passthrough: the handshake is the upstream's),
//! to the TLS upstream the ClientHello's SNI picks. Intercepted connections are accepted on a
//! local listener and handed to [`TcpOutbound::forward`] with the original destination a
//! capture listener would report.

use super::*;
use mesh_core::model::MeshConfig;
use mesh_policy::testing::{LeafSpec, TestCa};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::io::AsyncReadExt;

const HOST: &str = "edge.example.com";
const VIP: [u8; 4] = [10, 96, 0, 20];

/// The server names the upstreams' certificate holds.
const NAMES: &[&str] = &["a.example.com", "b.example.com", "c.example.com"];

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA, and a server config with a certificate it issued for [`NAMES`].
fn server_tls(ca: &TestCa) -> Arc<rustls::ServerConfig> {
    let leaf = ca.issue_with(&LeafSpec {
        dns: NAMES,
        ..Default::default()
    });
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    Arc::new(config)
}

/// A client config trusting `ca` only.
fn client_tls(ca: &TestCa) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.bundle_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A TLS upstream named `name` (one byte): a connection starting with a TLS record is
/// handshaken with `tls` (so only an untouched ClientHello gets through), anything else is
/// served in plaintext; either way it greets with its name, then echoes.
async fn tls_upstream(name: &'static str, tls: Arc<rustls::ServerConfig>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                if stream.peek(&mut first).await.is_err() {
                    return;
                }
                if first[0] == 0x16 {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    greet_and_echo(name, tls).await;
                } else {
                    greet_and_echo(name, stream).await;
                }
            });
        }
    });
    port
}

/// A plaintext server-first upstream named `name`: it greets a connection at once, before the
/// client sends anything, then echoes.
async fn greeting_upstream(name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(greet_and_echo(name, stream));
        }
    });
    port
}

async fn greet_and_echo(name: &'static str, stream: impl AsyncRead + AsyncWrite + Unpin) {
    let (mut from, mut to) = tokio::io::split(stream);
    if to.write_all(name.as_bytes()).await.is_ok() {
        let _ = tokio::io::copy(&mut from, &mut to).await;
    }
}

/// Service `edge.example.com` (address 10.96.0.20, TLS port 443 and TCP port 9000) with
/// endpoints `A` and `B` (subsets `a`, `b`), balanced round-robin, and the VirtualService
/// `tls` rules: `a.example.com` to subset `a`, any other name under `example.com` to `b`.
async fn setup(ca: &TestCa) -> MeshConfig {
    let tls = server_tls(ca);
    let (a_tls, b_tls) = (
        tls_upstream("A", tls.clone()).await,
        tls_upstream("B", tls).await,
    );
    let (a_tcp, b_tcp) = (greeting_upstream("A").await, greeting_upstream("B").await);
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: edge }}
spec:
  hosts: [{HOST}]
  addresses: [10.96.0.20]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - {{ number: 443, name: tls, protocol: TLS }}
  - {{ number: 9000, name: tcp, protocol: TCP }}
  endpoints:
  - {{ address: 127.0.0.1, ports: {{ tls: {a_tls}, tcp: {a_tcp} }}, labels: {{ version: a }} }}
  - {{ address: 127.0.0.1, ports: {{ tls: {b_tls}, tcp: {b_tcp} }}, labels: {{ version: b }} }}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: edge }}
spec:
  host: {HOST}
  trafficPolicy: {{ loadBalancer: {{ simple: ROUND_ROBIN }} }}
  subsets:
  - {{ name: a, labels: {{ version: a }} }}
  - {{ name: b, labels: {{ version: b }} }}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: edge }}
spec:
  hosts: [{HOST}, "*.example.com"]
  tls:
  - match: [{{ sniHosts: [a.example.com] }}]
    route: [{{ destination: {{ host: {HOST}, subset: a }} }}]
  - match: [{{ sniHosts: ["*.example.com"], port: 443 }}]
    route: [{{ destination: {{ host: {HOST}, subset: b }} }}]
"#
    );
    let loaded = mesh_core::istio::load(&[("edge.yaml", yaml.as_str())], &Workload::default());
    assert!(loaded.diagnostics.is_empty(), "{:#?}", loaded.diagnostics);
    loaded.config.expect("valid")
}

/// A capture listener stand-in on 127.0.0.1: each connection is handed to `outbound` as
/// redirected from `10.96.0.20:port`.
async fn intercepting(outbound: TcpOutbound, port: u16) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let conn = ConnectionInfo {
                peer,
                local: SocketAddr::from((VIP, port)),
                redirected: true,
            };
            let outbound = outbound.clone();
            tokio::spawn(async move { outbound.forward(stream, conn).await });
        }
    });
    local
}

/// A `--tcp-forward` listener for the service's `port`.
async fn forwarding(store: Arc<ConfigStore>, port: u16) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    tokio::spawn(serve_tcp(
        listener,
        TcpForward::new(store, HOST, port),
        std::future::pending(),
    ));
    local
}

/// Reads the upstream's one-byte name and the echo of `ping` from `stream`.
async fn greeted(mut stream: impl AsyncRead + AsyncWrite + Unpin) -> String {
    stream.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut got))
        .await
        .expect("carried within 10 s")
        .expect("carried, not closed");
    assert_eq!(&got[1..], b"ping", "echoed through the forwarder");
    String::from_utf8_lossy(&got[..1]).into_owned()
}

/// A TLS connection through `local` asking for `name` (unless `client` sends no SNI),
/// verified with `client`: the name of the upstream that completed the handshake.
async fn tls_through(local: SocketAddr, name: &str, client: &Arc<rustls::ClientConfig>) -> String {
    let tcp = TcpStream::connect(local).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client.clone());
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(server_name, tcp))
        .await
        .expect("handshake within 10 s")
        .expect("the upstream's handshake, untouched by the forwarder");
    greeted(tls).await
}

/// `n` TLS connections through `local` asking for `name`.
async fn many(
    local: SocketAddr,
    name: &str,
    client: &Arc<rustls::ClientConfig>,
    n: usize,
) -> Vec<String> {
    let mut reached = Vec::new();
    for _ in 0..n {
        reached.push(tls_through(local, name, client).await);
    }
    reached
}

/// Whether `reached` alternates between the two endpoints, as round-robin over the service's
/// own cluster does.
fn alternates(reached: &[String]) -> bool {
    reached.windows(2).all(|w| w[0] != w[1])
}

#[tokio::test]
async fn intercepted_tls_goes_to_the_upstream_its_sni_picks() {
    let ca = TestCa::new("sni-ca");
    let client = client_tls(&ca);
    let store = Arc::new(ConfigStore::new(setup(&ca).await));
    let local = intercepting(TcpOutbound::new(store), 443).await;
    assert_eq!(
        many(local, "a.example.com", &client, 3).await,
        ["A", "A", "A"]
    );
    assert_eq!(
        many(local, "b.example.com", &client, 3).await,
        ["B", "B", "B"]
    );
    // The wildcard rule takes any other name under example.com.
    assert_eq!(many(local, "c.example.com", &client, 2).await, ["B", "B"]);
}

#[tokio::test]
async fn a_tcp_forward_port_routes_tls_by_sni_too() {
    let ca = TestCa::new("sni-ca");
    let client = client_tls(&ca);
    let store = Arc::new(ConfigStore::new(setup(&ca).await));
    let local = forwarding(store, 443).await;
    assert_eq!(many(local, "b.example.com", &client, 2).await, ["B", "B"]);
    assert_eq!(many(local, "a.example.com", &client, 2).await, ["A", "A"]);
}

#[tokio::test]
async fn without_sni_or_without_tls_a_connection_goes_to_the_services_own_cluster() {
    let ca = TestCa::new("sni-ca");
    let store = Arc::new(ConfigStore::new(setup(&ca).await));
    let intercepted = intercepting(TcpOutbound::new(store.clone()), 443).await;
    let forwarded = forwarding(store, 443).await;
    // A client that sends no SNI (it still checks the certificate for the name).
    let mut config = (*client_tls(&ca)).clone();
    config.enable_sni = false;
    let no_sni = Arc::new(config);
    let client = client_tls(&ca);
    for local in [intercepted, forwarded] {
        // The port does route by SNI ...
        assert_eq!(
            many(local, "b.example.com", &client, 3).await,
            ["B", "B", "B"]
        );
        // ... but a ClientHello without a name takes no tls rule: round-robin over both.
        let reached = many(local, "a.example.com", &no_sni, 4).await;
        assert!(alternates(&reached), "{reached:?}");
        // Bytes that are not TLS reach the service's own cluster untouched (the upstreams
        // answer plaintext in plaintext).
        let mut reached = Vec::new();
        for _ in 0..4 {
            reached.push(greeted(TcpStream::connect(local).await.unwrap()).await);
        }
        assert!(alternates(&reached), "{reached:?}");
    }
}

#[tokio::test]
async fn a_port_without_tls_rules_is_not_peeked_at() {
    let ca = TestCa::new("sni-ca");
    let store = Arc::new(ConfigStore::new(setup(&ca).await));
    let routed: Vec<ClusterName> = store.load().tcp_routes.keys().cloned().collect();
    assert_eq!(routed, [ClusterName::outbound(443, None, HOST)]);
    // A server-first protocol on the service's TCP port: the upstream's greeting arrives
    // while the client has sent nothing, well before a ClientHello wait would have ended.
    let intercepted = intercepting(TcpOutbound::new(store.clone()), 9000).await;
    let forwarded = forwarding(store, 9000).await;
    for local in [intercepted, forwarded] {
        let mut client = TcpStream::connect(local).await.unwrap();
        let mut name = [0u8; 1];
        tokio::time::timeout(CLIENT_HELLO_TIMEOUT / 5, client.read_exact(&mut name))
            .await
            .expect("greeted before any ClientHello wait would end")
            .unwrap();
        assert!(name == *b"A" || name == *b"B", "{name:?}");
    }
}
