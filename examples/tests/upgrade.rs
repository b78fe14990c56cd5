//! HTTP/1.1 Upgrade through the sidecar (the mechanism WebSocket uses): the upstream answers
//! 101 and both connections become one byte tunnel.

mod common;

use common::*;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mesh_tower::body::{self, BoxBody};
use std::convert::Infallible;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that switches to an echo protocol on `Upgrade: echo`.
async fn echo_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                if req.headers().get("upgrade").is_some_and(|v| v == "echo") {
                    let on_upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(upgraded) = on_upgrade.await {
                            let mut io = TokioIo::new(upgraded);
                            let mut buf = [0u8; 1024];
                            // Bounded: the test sends a few messages, then closes.
                            for _ in 0..100 {
                                match io.read(&mut buf).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => {
                                        if io.write_all(&buf[..n]).await.is_err() {
                                            break;
                                        }
                                    }
                                }
                            }
                        }
                    });
                    let mut response = Response::new(body::empty());
                    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    response
                        .headers_mut()
                        .insert("connection", "upgrade".parse().unwrap());
                    response
                        .headers_mut()
                        .insert("upgrade", "echo".parse().unwrap());
                    Ok::<Response<BoxBody>, Infallible>(response)
                } else {
                    Ok(Response::new(body::full("plain")))
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream {
        addr,
        name: "echo".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_tunnels_bytes_both_ways() {
    let upstream = echo_upstream().await;
    let config = ConfigDir::new(&registry(&[&upstream]));
    let proxy = start_proxy(&config).await;

    let mut stream = TcpStream::connect(proxy.outbound).await.unwrap();
    stream
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: hello\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");

    for message in ["ping", "a longer message through the tunnel", "pong"] {
        stream.write_all(message.as_bytes()).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, message.as_bytes());
    }
    drop(stream);

    // Plain requests on the same port are unaffected.
    assert_eq!(
        get(&client(proxy.outbound, false), "hello", "/", &[])
            .await
            .1,
        "plain"
    );
    proxy.shutdown().await;
}

// ---- WebSocket through two sidecars with mutual TLS. ----

use futures_util::{SinkExt, StreamExt};
use mesh_examples::proxy::{Identity, Proxy};
use mesh_policy::credentials::CredentialStore;
use mesh_policy::testing::TestCa;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{
    Request as WsRequest, Response as WsResponse,
};

const BACKEND: &str = "spiffe://cluster.local/ns/backend/sa/api";
const FRONTEND: &str = "spiffe://cluster.local/ns/frontend/sa/web";
const HOST: &str = "backend.backend.svc.cluster.local";

/// A WebSocket echo server (tokio-tungstenite): echoes text and binary messages, answers
/// close. Records the path of each handshake it accepted.
async fn websocket_echo() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let paths = Arc::new(Mutex::new(Vec::new()));
    let seen = paths.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                // The callback's signature is tungstenite's (its error is a whole response).
                #[allow(clippy::result_large_err)]
                let record = |req: &WsRequest, resp: WsResponse| {
                    seen.lock().unwrap().push(req.uri().path().to_owned());
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
                    return;
                };
                // Bounded: the test sends a few messages, then closes.
                for _ in 0..100 {
                    match ws.next().await {
                        Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                            if ws.send(m).await.is_err() {
                                return;
                            }
                        }
                        // Reading on after a close frame sends tungstenite's reply to it.
                        None | Some(Err(_)) => return,
                        Some(Ok(_)) => {}
                    }
                }
            });
        }
    });
    (addr, paths)
}

/// A sidecar for the workload in `namespace`, over `yaml`, with `app` behind its inbound
/// port and `credentials` as its identity.
async fn mtls_sidecar(
    yaml: &str,
    namespace: &str,
    app: Option<SocketAddr>,
    credentials: Arc<CredentialStore>,
) -> (Proxy, ConfigDir) {
    let config = ConfigDir::new(yaml);
    let mut options = test_options(vec![config.path()]);
    options.app = app;
    options.workload.namespace = namespace.to_owned();
    options.identity = Some(Identity::Store(credentials));
    (
        Proxy::start(options).await.expect("the sidecar starts"),
        config,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echo_runs_through_two_sidecars_over_mutual_tls() {
    tokio::time::timeout(Duration::from_secs(60), websocket_through_two_sidecars())
        .await
        .expect("the test did not finish within 60 s");
}

async fn websocket_through_two_sidecars() {
    let ca = TestCa::new("mesh root");
    let (echo, paths) = websocket_echo().await;
    // Sidecar B: inbound, STRICT mutual TLS, callers from `frontend` only, the echo server
    // behind it.
    let (server, _server_cfg) = mtls_sidecar(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: backend }
spec: { mtls: { mode: STRICT } }
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: frontend-only, namespace: backend }
spec:
  action: ALLOW
  rules: [{ from: [{ source: { namespaces: [frontend] } }] }]
",
        "backend",
        Some(echo),
        CredentialStore::new(ca.credentials(BACKEND)),
    )
    .await;
    // Sidecar A: outbound, reaching B over ISTIO_MUTUAL.
    let client_yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: backend, namespace: backend }}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  endpoints: [{{ address: 127.0.0.1, ports: {{ http: {} }}, serviceAccount: api }}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: backend, namespace: backend }}
spec:
  host: {HOST}
  trafficPolicy: {{ tls: {{ mode: ISTIO_MUTUAL }} }}
",
        server.inbound.port()
    );
    let (frontend, _frontend_cfg) = mtls_sidecar(
        &client_yaml,
        "frontend",
        None,
        CredentialStore::new(ca.credentials(FRONTEND)),
    )
    .await;

    // A real WebSocket client, connected to sidecar A's outbound port as a captured app is.
    let stream = TcpStream::connect(frontend.outbound).await.unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async(format!("ws://{HOST}/chat"), stream)
        .await
        .expect("the WebSocket handshake through both sidecars");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(paths.lock().unwrap().as_slice(), ["/chat"]);

    let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let messages = [
        Message::text("hello through two sidecars"),
        Message::binary(big),
        Message::text("ünïcödé ✓"),
    ];
    for message in messages {
        ws.send(message.clone()).await.unwrap();
        let echoed = loop {
            match ws.next().await.expect("an answer").unwrap() {
                Message::Ping(_) | Message::Pong(_) => continue,
                other => break other,
            }
        };
        assert_eq!(echoed, message);
    }
    ws.close(None).await.unwrap();
    // The close handshake completes: the server's close frame comes back, then the end.
    let mut closed = false;
    for _ in 0..10 {
        match ws.next().await {
            Some(Ok(Message::Close(_))) => closed = true,
            None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    assert!(closed, "no close frame came back");

    // A client outside the mesh (plaintext) cannot open the socket on B's STRICT port.
    let stream = TcpStream::connect(server.inbound).await.unwrap();
    assert!(
        tokio_tungstenite::client_async(format!("ws://{HOST}/chat"), stream)
            .await
            .is_err()
    );
    assert_eq!(paths.lock().unwrap().len(), 1);
    // B authorized the one handshake that came over mutual TLS (the plaintext one never got
    // past TLS).
    let stats = server.authz_stats();
    assert_eq!(stats.allowed.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(stats.denied.load(std::sync::atomic::Ordering::Relaxed), 0);
    frontend.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_request_is_terminated_and_tunnels_to_the_routed_endpoint() {
    let echo = tcp_echo("tcp-echo").await;
    let config = ConfigDir::new(&registry(&[&echo]));
    let proxy = start_proxy(&config).await;
    let mut stream = TcpStream::connect(proxy.outbound).await.unwrap();
    stream
        .write_all(b"CONNECT hello:80 HTTP/1.1\r\nHost: hello:80\r\n\r\n")
        .await
        .unwrap();
    // The sidecar's answer, up to the end of its head.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("an answer")
            .unwrap();
        assert_eq!(n, 1, "closed early: {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
        assert!(head.len() < 4096);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Now raw bytes, both ways, to the endpoint the route chose.
    for payload in [
        &b"ping"[..],
        &[0u8, 255, 13, 10, 7][..],
        &[42u8; 70_000][..],
    ] {
        stream.write_all(payload).await.unwrap();
        let mut back = vec![0; payload.len()];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back))
            .await
            .expect("echoed")
            .unwrap();
        assert_eq!(back, payload);
    }
    drop(stream);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_to_an_unreachable_endpoint_gets_503() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = Upstream {
        addr: closed.local_addr().unwrap(),
        name: "dead".into(),
    };
    drop(closed);
    let config = ConfigDir::new(&registry(&[&dead]));
    let proxy = start_proxy(&config).await;
    let mut stream = TcpStream::connect(proxy.outbound).await.unwrap();
    stream
        .write_all(b"CONNECT hello:80 HTTP/1.1\r\nHost: hello:80\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 503");
    proxy.shutdown().await;
}
