//! Plain TCP through the sidecar: a service's `TCP` port forwarded from a local port, bytes
//! echoed both ways, and Istio's TCP metrics counting the connection and its bytes; and the
//! intercepted TCP path's two halves (mutual TLS, authorization by source and port); TLS
//! passed through by the ClientHello's SNI (VirtualService `tls` rules).

mod common;

use common::*;
use mesh_core::model::Workload;
use mesh_examples::proxy::Proxy;
use mesh_policy::credentials::CredentialStore;
use mesh_policy::testing::TestCa;
use mesh_tower::server::ConnectionInfo;
use mesh_tower::tcp::{InboundConnection, TcpInbound, TcpOutbound, TcpTarget};
use mesh_tower::tls::InboundTls;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_echo_through_a_tcp_port_with_istio_tcp_metrics() {
    let echo = tcp_echo("echo").await.addr;
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: echo }}
spec:
  hosts: [echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 9000, name: tcp, protocol: TCP }}]
  endpoints: [{{ address: 127.0.0.1, ports: {{ tcp: {} }} }}]
",
        echo.port()
    );
    let config = ConfigDir::new(&yaml);
    let mut options = test_options(vec![config.path()]);
    options.tcp_forwards = vec![(
        ([127, 0, 0, 1], 0).into(),
        "echo.default.svc.cluster.local".into(),
        9000,
    )];
    let proxy = Proxy::start(options).await.unwrap();
    let local = proxy.tcp_forwards()[0];

    let mut stream = TcpStream::connect(local).await.unwrap();
    let mut total = 0u64;
    for message in ["hello", "through the mesh", "bye"] {
        stream.write_all(message.as_bytes()).await.unwrap();
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, message.as_bytes());
        total += message.len() as u64;
    }
    drop(stream);

    // The connection is counted when it closes.
    let admin = client(proxy.admin, false);
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = get(&admin, "localhost", "/stats/prometheus", &[]).await.1;
        if metrics.contains("istio_tcp_connections_closed_total{") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!("{name}{{"))
                    && l.contains("destination_service=\"echo.default.svc.cluster.local\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert_eq!(value("istio_tcp_connections_opened_total"), 1);
    assert_eq!(value("istio_tcp_connections_closed_total"), 1);
    assert_eq!(value("istio_tcp_sent_bytes_total"), total);
    assert_eq!(value("istio_tcp_received_bytes_total"), total);
    assert!(metrics.contains("request_protocol=\"tcp\""));
    proxy.shutdown().await;
}

/// A TCP server on 127.0.0.1 greeting each connection with `name`, then echoing.
async fn greeting_echo(name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                if w.write_all(name.as_bytes()).await.is_ok() {
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_service_tcp_route_shifts_a_tcp_port_to_another_service() {
    // `ledger` and its canary `ledger-next`, each one endpoint; the VirtualService sends all of
    // `ledger`'s TCP traffic to the canary.
    let (ledger, next) = (greeting_echo("v1").await, greeting_echo("v2").await);
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: ledger }}
spec:
  hosts: [ledger.default.svc.cluster.local]
  addresses: [10.96.0.20]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 5432, name: tcp, protocol: TCP }}]
  endpoints: [{{ address: 127.0.0.1, ports: {{ tcp: {ledger} }} }}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: ledger-next }}
spec:
  hosts: [ledger-next.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 5432, name: tcp, protocol: TCP }}]
  endpoints: [{{ address: 127.0.0.1, ports: {{ tcp: {next} }} }}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: ledger }}
spec:
  hosts: [ledger]
  tcp:
  - match: [{{ port: 5432 }}]
    route: [{{ destination: {{ host: ledger-next }}, weight: 100 }}]
"
    );
    let config = ConfigDir::new(&yaml);
    let mut options = test_options(vec![config.path()]);
    options.tcp_forwards = vec![(
        ([127, 0, 0, 1], 0).into(),
        "ledger.default.svc.cluster.local".into(),
        5432,
    )];
    let proxy = Proxy::start(options).await.unwrap();
    let local = proxy.tcp_forwards()[0];

    for _ in 0..3 {
        let mut stream = TcpStream::connect(local).await.unwrap();
        stream.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&back, b"v2ping", "the canary answers");
    }

    // The metrics name the service the route chose (a connection is counted as opened
    // before any byte moves, so all three are in).
    let admin = client(proxy.admin, false);
    let metrics = get(&admin, "localhost", "/stats/prometheus", &[]).await.1;
    let opened = |service: &str| {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("istio_tcp_connections_opened_total{")
                    && l.contains(&format!("destination_service=\"{service}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum::<u64>()
    };
    assert_eq!(
        opened("ledger-next.default.svc.cluster.local"),
        3,
        "{metrics}"
    );
    assert_eq!(opened("ledger.default.svc.cluster.local"), 0, "{metrics}");
    proxy.shutdown().await;
}

/// A TLS server on 127.0.0.1 (a certificate `ca` issued for `a.example.com` and
/// `b.example.com`) greeting each handshaken connection with `name`, then echoing.
async fn tls_greeting_echo(ca: &TestCa, name: &'static str) -> u16 {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let leaf = ca.issue_with(&mesh_policy::testing::LeafSpec {
        dns: &["a.example.com", "b.example.com"],
        ..Default::default()
    });
    let certs = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let (mut r, mut w) = tokio::io::split(tls);
                if w.write_all(name.as_bytes()).await.is_ok() {
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_service_tls_route_sends_each_sni_to_its_service() {
    // `edge` (TLS port 443) and two backends, each a TLS server; the VirtualService sends
    // `a.example.com` to `edge-a` and `b.example.com` to `edge-b`, the TLS passing through.
    let ca = TestCa::new("edge-ca");
    let (a, b) = (
        tls_greeting_echo(&ca, "A").await,
        tls_greeting_echo(&ca, "B").await,
    );
    let entry = |name: &str, port: u16| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: {name} }}
spec:
  hosts: [{name}.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{ number: 443, name: tls, protocol: TLS }}]
  endpoints: [{{ address: 127.0.0.1, ports: {{ tls: {port} }} }}]
---
"
        )
    };
    let yaml = format!(
        "{}{}{}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: edge }}
spec:
  hosts: [edge.example.com, a.example.com, b.example.com]
  tls:
  - match: [{{ sniHosts: [a.example.com] }}]
    route: [{{ destination: {{ host: edge-a.example.com }} }}]
  - match: [{{ sniHosts: [b.example.com] }}]
    route: [{{ destination: {{ host: edge-b.example.com }} }}]
",
        entry("edge", a),
        entry("edge-a", a),
        entry("edge-b", b),
    );
    let config = ConfigDir::new(&yaml);
    let mut options = test_options(vec![config.path()]);
    options.tcp_forwards = vec![(([127, 0, 0, 1], 0).into(), "edge.example.com".into(), 443)];
    let proxy = Proxy::start(options).await.unwrap();
    let local = proxy.tcp_forwards()[0];

    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca.bundle_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls_client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls_client));
    for (sni, expected) in [
        ("b.example.com", b"B"),
        ("a.example.com", b"A"),
        ("b.example.com", b"B"),
    ] {
        let tcp = TcpStream::connect(local).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(sni).unwrap();
        let mut tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
            .await
            .unwrap()
            .expect("the backend's own handshake, passed through");
        tls.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&back[..1], expected, "{sni}");
        assert_eq!(&back[1..], b"ping");
    }

    // The metrics name the service each rule chose.
    let metrics = get(
        &client(proxy.admin, false),
        "localhost",
        "/stats/prometheus",
        &[],
    )
    .await
    .1;
    let opened = |service: &str| {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("istio_tcp_connections_opened_total{")
                    && l.contains(&format!("destination_service=\"{service}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum::<u64>()
    };
    assert_eq!(opened("edge-a.example.com"), 1, "{metrics}");
    assert_eq!(opened("edge-b.example.com"), 2, "{metrics}");
    assert_eq!(opened("edge.example.com"), 0, "{metrics}");
    proxy.shutdown().await;
}

/// The config both sides of the mTLS TCP test load: the echo service (endpoint: the server
/// side's listener, service account `echo`), ISTIO_MUTUAL towards it, and the server's
/// policies: STRICT, TCP allowed from namespace `client` on port 9000 only.
fn mtls_tcp_config(server_port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: echo, namespace: server }}
spec:
  hosts: [echo.server.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 9000, name: tcp, protocol: TCP }}]
  endpoints: [{{ address: 127.0.0.1, serviceAccount: echo, ports: {{ tcp: {server_port} }} }}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: echo, namespace: server }}
spec:
  host: echo.server.svc.cluster.local
  trafficPolicy: {{ tls: {{ mode: ISTIO_MUTUAL }} }}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{ name: default, namespace: server }}
spec: {{ mtls: {{ mode: STRICT }} }}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{ name: tcp, namespace: server }}
spec:
  action: ALLOW
  rules:
  - from: [{{ source: {{ namespaces: [client] }} }}]
    to: [{{ operation: {{ ports: [\"9000\"] }} }}]
  - to: [{{ operation: {{ methods: [GET] }} }}]
"
    )
}

/// Sends `message` through an intercepted-TCP client side and reads the echo; `None` when
/// the connection is closed first.
async fn through(outbound: &TcpOutbound, dst: SocketAddr, message: &[u8]) -> Option<Vec<u8>> {
    let (mut app, proxy_side) = tokio::io::duplex(1024);
    let outbound = outbound.clone();
    let conn = ConnectionInfo {
        peer: ([127, 0, 0, 1], 40000).into(),
        local: dst,
        redirected: true,
    };
    let task = tokio::spawn(async move { outbound.forward(proxy_side, conn).await });
    app.write_all(message).await.ok()?;
    let mut back = vec![0u8; message.len()];
    let read = tokio::time::timeout(Duration::from_secs(10), app.read_exact(&mut back)).await;
    drop(app);
    let _ = task.await;
    match read {
        Ok(Ok(_)) => Some(back),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intercepted_tcp_speaks_mtls_and_is_authorized_by_source_namespace_and_port() {
    let metrics = mesh_examples::metrics::prometheus().expect("the Prometheus recorder");
    // The app behind the server side: a TCP echo.
    let app = tcp_echo("echo").await.addr;
    // The server side, as the inbound capture listener runs it for original port 9000.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    let yaml = mtls_tcp_config(server_addr.port());
    let ca = TestCa::new("mesh root");
    let server_store = store_for(&yaml, "server", "echo");
    let tls = InboundTls::new(
        server_store.clone(),
        CredentialStore::new(ca.credentials("spiffe://cluster.local/ns/server/sa/echo")),
    )
    .unwrap()
    .workload_port(9000);
    let inbound = TcpInbound::new(server_store);
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let (tls, inbound) = (tls.clone(), inbound.clone());
            tokio::spawn(async move {
                let Ok((io, identity, info)) = tls.accept(stream).await else {
                    return;
                };
                let conn = InboundConnection {
                    peer,
                    destination: ([127, 0, 0, 1], 9000).into(),
                    identity,
                    tls: info.tls,
                    sni: info.sni,
                    peer_metadata: info.peer_metadata,
                };
                inbound.forward(io, conn, app).await;
            });
        }
    });

    // The client side, as the outbound capture listener runs it.
    let client_store = store_for(&yaml, "client", "frontend");
    let outbound = |id: &str| {
        TcpOutbound::new(client_store.clone()).mtls(CredentialStore::new(ca.credentials(id)))
    };
    let frontend = outbound("spiffe://cluster.local/ns/client/sa/frontend");
    match frontend.resolve(server_addr) {
        Some(TcpTarget::Cluster { cluster, .. }) => {
            assert_eq!(cluster.service.as_str(), "echo.server.svc.cluster.local");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        frontend.resolve(app),
        Some(TcpTarget::Passthrough(app)),
        "an address no service owns passes through"
    );

    // Allowed: namespace `client` on port 9000 (the HTTP-only rule plays no part).
    assert_eq!(
        through(&frontend, server_addr, b"hello over mtls")
            .await
            .as_deref(),
        Some(&b"hello over mtls"[..])
    );
    // Denied: another namespace; the connection is closed before reaching the app.
    let stranger = outbound("spiffe://cluster.local/ns/other/sa/web");
    assert_eq!(through(&stranger, server_addr, b"let me in").await, None);
    // Passthrough (no service owns the app's own address): plaintext straight there.
    assert_eq!(
        through(&frontend, app, b"direct").await.as_deref(),
        Some(&b"direct"[..])
    );

    // Both sides counted: mutual TLS, the peer's identity on the server side, and each
    // side's workload on the other's, from Istio's TCP metadata exchange (without it both
    // are `unknown`).
    let text = metrics.render();
    let count = |labels: &[&str]| -> u64 {
        text.lines()
            .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let mtls = "connection_security_policy=\"mutual_tls\"";
    let from = |ns: &str| format!("source_principal=\"spiffe://cluster.local/ns/{ns}/sa/");
    assert_eq!(
        count(&[
            "reporter=\"destination\"",
            mtls,
            &from("client"),
            "source_workload=\"frontend-v1\"",
            "source_workload_namespace=\"client\"",
            "source_canonical_service=\"frontend-v1\"",
            "destination_workload=\"echo-v1\"",
            "response_flags=\"-\""
        ]),
        1,
        "{text}"
    );
    assert_eq!(
        count(&[
            "reporter=\"destination\"",
            mtls,
            &from("other"),
            "response_flags=\"UAEX\""
        ]),
        1,
        "{text}"
    );
    assert_eq!(
        count(&[
            "reporter=\"source\"",
            mtls,
            "destination_service=\"echo.server.svc.cluster.local\"",
            "source_workload=\"frontend-v1\"",
            "destination_workload=\"echo-v1\"",
            "destination_canonical_service=\"echo-v1\"",
            "destination_workload_namespace=\"server\""
        ]),
        2,
        "{text}"
    );
    assert_eq!(
        count(&[
            "reporter=\"source\"",
            "destination_service=\"PassthroughCluster\""
        ]),
        1,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_forward_ejects_a_refusing_endpoint_and_clusters_shows_it() {
    // A live endpoint that answers each connection with "up", and one that refuses.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(b"up").await;
        }
    });
    let down = {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        closed.local_addr().unwrap().port()
    };
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: db }}
spec:
  hosts: [db.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 5432, name: tcp, protocol: TCP }}]
  endpoints:
  - {{ address: 127.0.0.1, ports: {{ tcp: {live} }} }}
  - {{ address: 127.0.0.1, ports: {{ tcp: {down} }} }}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: db }}
spec:
  host: db.default.svc.cluster.local
  trafficPolicy:
    loadBalancer: {{ simple: ROUND_ROBIN }}
    outlierDetection: {{ consecutive5xxErrors: 2, baseEjectionTime: 5m }}
"
    );
    let config = ConfigDir::new(&yaml);
    let mut options = test_options(vec![config.path()]);
    options.tcp_forwards = vec![(
        ([127, 0, 0, 1], 0).into(),
        "db.default.svc.cluster.local".into(),
        5432,
    )];
    let proxy = Proxy::start(options).await.unwrap();
    let local = proxy.tcp_forwards()[0];
    // What one connection through the forward reads: "up", or nothing (closed).
    let once = || async move {
        let mut stream = TcpStream::connect(local).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got))
            .await
            .expect("answered or closed within 10 s")
            .ok();
        got
    };
    // Round-robin: the refusing endpoint fails every other connection, twice: ejected.
    let mut answered = Vec::new();
    for _ in 0..4 {
        answered.push(once().await);
    }
    assert_eq!(answered, [&b"up"[..], b"", b"up", b""]);
    for _ in 0..4 {
        assert_eq!(
            once().await,
            b"up",
            "the ejected endpoint gets no connection"
        );
    }

    // The admin endpoint shows the TCP ejection as it shows HTTP ones.
    let admin = client(proxy.admin, false);
    let clusters = get(&admin, "localhost", "/clusters", &[]).await.1;
    let line = |port: u16, field: &str| {
        let prefix =
            format!("outbound|5432||db.default.svc.cluster.local::127.0.0.1:{port}::{field}::");
        clusters
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {clusters}"))
            .to_owned()
    };
    assert_eq!(line(down, "health_flags"), "/failed_outlier_check");
    assert_eq!(line(down, "times_ejected"), "1");
    assert_eq!(line(live, "health_flags"), "healthy");
    assert_eq!(line(live, "times_ejected"), "0");
    proxy.shutdown().await;
}

/// An Envoy sidecar's side of a mesh TCP connection, made by hand: mutual TLS offering
/// Istio's TCP protocols (`istio-peer-exchange`, `istio`), then, when `preamble`, Istio's
/// metadata exchange, then `payload`. Returns what the server side's `InboundTls` saw and
/// read, and the workload the client heard from the server.
async fn envoy_style_client(
    preamble: bool,
    payload: &'static [u8],
) -> (mesh_tower::tls::TlsInfo, Vec<u8>, Option<String>) {
    use mesh_tower::telemetry::TcpPeerExchange;
    let ca = TestCa::new("mesh root");
    let yaml = mtls_tcp_config(9000);
    let server_store = store_for(&yaml, "server", "echo");
    let tls = InboundTls::new(
        server_store,
        CredentialStore::new(ca.credentials("spiffe://cluster.local/ns/server/sa/echo")),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (mut io, _, info) = tls.accept(stream).await.unwrap();
        let mut read = vec![0u8; payload.len()];
        io.read_exact(&mut read).await.unwrap();
        (info, read)
    });
    let config = mesh_policy::tls::mesh_client_config(
        CredentialStore::new(ca.credentials("spiffe://cluster.local/ns/client/sa/frontend")),
        Vec::new(),
        mesh_policy::tls::MeshProtocol::Tcp,
    )
    .unwrap();
    assert_eq!(
        config.alpn_protocols,
        [b"istio-peer-exchange".to_vec(), b"istio".to_vec()],
        "Istio's ALPNInMeshWithMxc"
    );
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("echo.server.svc.cluster.local").unwrap();
    let mut client = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(
        client.get_ref().1.alpn_protocol(),
        Some(&b"istio-peer-exchange"[..])
    );
    let mut heard = None;
    if preamble {
        let me = Workload {
            workload_name: "frontend-v3".to_owned(),
            namespace: "client".to_owned(),
            ..Workload::default()
        };
        let exchanged = TcpPeerExchange::with_id(&me, Some("sidecar~10.0.0.9~frontend"))
            .run(&mut client)
            .await
            .unwrap();
        heard = exchanged.peer.map(|p| p.workload.clone());
    }
    client.write_all(payload).await.unwrap();
    let (info, read) = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server side read the payload")
        .unwrap();
    (info, read, heard)
}

#[tokio::test]
async fn inbound_tls_runs_istio_s_tcp_metadata_exchange_when_the_client_negotiates_it() {
    // Both sides learn each other; the app's bytes follow the preambles untouched.
    let (info, read, heard) = envoy_style_client(true, b"SELECT 1;").await;
    assert_eq!(read, b"SELECT 1;");
    let peer = info.peer_metadata.expect("the client's workload");
    assert_eq!(
        (peer.workload.as_str(), peer.namespace.as_str()),
        ("frontend-v3", "client")
    );
    assert_eq!(heard.as_deref(), Some("echo-v1"));

    // A client that negotiated the exchange but sends payload instead of a preamble: an
    // unknown peer, and not a byte of its payload lost.
    let (info, read, _) = envoy_style_client(false, b"payload, not a preamble").await;
    assert!(info.peer_metadata.is_none());
    assert_eq!(read, b"payload, not a preamble");
}
