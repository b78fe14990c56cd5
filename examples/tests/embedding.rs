//! The mesh embedded in an axum service: the canary example end to end, and the inbound
//! layer's telemetry and rate limit.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_axum_canary_example_splits_90_10_through_the_embedded_mesh() {
    let canary = mesh_examples::canary::start(Some(7)).await.unwrap();
    let c = client(canary.frontend, false);
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..2_000 {
        let (status, body, headers) = get(&c, "frontend", "/", &[]).await;
        assert_eq!(status, 200, "{body}");
        assert!(headers.contains_key("x-request-id") || !body.is_empty());
        *counts.entry(body).or_insert(0usize) += 1;
    }
    let v1 = 100.0 * counts["hello v1"] as f64 / 2_000.0;
    assert!((87.0..=93.0).contains(&v1), "{counts:?}");
    assert_eq!(canary.mesh.version(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_published_at_run_time_takes_effect_for_the_next_request() {
    let canary = mesh_examples::canary::start(Some(7)).await.unwrap();
    let (v1, v2) = (canary.backends[0], canary.backends[1]);
    // All to v2 now: rewrite the VirtualService in Rust and publish it.
    let yaml = mesh_examples::canary::config_yaml(v1, v2)
        .replace("weight: 90", "weight: 0")
        .replace("weight: 10", "weight: 100");
    let loaded = mesh_core::istio::load(&[("new.yaml", &yaml)], &Default::default());
    canary.mesh.store().publish(loaded.config.unwrap());
    let c = client(canary.frontend, false);
    for _ in 0..50 {
        assert_eq!(get(&c, "frontend", "/", &[]).await.1, "hello v2");
    }
    assert_eq!(canary.mesh.version(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbound_layer_enforces_authorization_policies() {
    let policy = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: public-only }
spec:
  action: ALLOW
  rules: [{ to: [{ operation: { methods: [GET], paths: [\"/public/*\"] } }] }]
";
    let config = mesh_core::istio::load(&[("policy.yaml", policy)], &Default::default())
        .config
        .unwrap();
    let mesh = mesh_tower::embed::Mesh::builder()
        .config(config)
        .build()
        .await
        .unwrap();
    let app = axum::Router::new()
        .route("/public/page", axum::routing::get(|| async { "public" }))
        .route("/private", axum::routing::get(|| async { "private" }))
        .layer(mesh.inbound_layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let c = client(addr, false);
    let (status, body, _) = get(&c, "app", "/public/page", &[]).await;
    assert_eq!((status, body.as_str()), (200, "public"));
    let (status, body, _) = get(&c, "app", "/private", &[]).await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
}

/// `MeshBuilder::root_namespace` and `path_normalization` over config files: the root
/// namespace's DENY on `/admin/*` catches `//admin//x` once slashes are merged, and the app
/// (an axum server on 127.0.0.1) gets the merged path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builders_path_normalization_and_root_namespace_shape_the_inbound_layer() {
    use mesh_core::model::PathNormalization;
    let config = ConfigDir::new(&deny_admin_in("mesh-root"));
    for (mode, admin) in [
        (PathNormalization::Base, (200, "//admin//x".to_owned())),
        (
            PathNormalization::MergeSlashes,
            (403, "RBAC: access denied".to_owned()),
        ),
    ] {
        let mesh = mesh_tower::embed::Mesh::builder()
            .config_files([config.path()])
            .root_namespace("mesh-root")
            .path_normalization(mode)
            .build()
            .await
            .unwrap();
        let app = axum::Router::new()
            .fallback(|uri: http::Uri| async move { uri.to_string() })
            .layer(mesh.inbound_layer());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let c = client(addr, false);
        let (status, body, _) = get(&c, "app", "//admin//x", &[]).await;
        assert_eq!((status, body), admin, "{mode}");
        let (status, body, _) = get(&c, "app", "/admin/x", &[]).await;
        assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
        let (status, body, _) = get(&c, "app", "//a//b?q=//", &[]).await;
        let seen = match mode {
            PathNormalization::MergeSlashes => "/a/b?q=//",
            _ => "//a//b?q=//",
        };
        assert_eq!((status, body.as_str()), (200, seen), "{mode}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_client_on_the_mesh_channel_is_retried_on_unavailable() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    let (addr, calls) = mesh_examples::grpc::start_flaky_server().await.unwrap();
    let yaml = mesh_examples::grpc::config_yaml(addr);
    let config = mesh_core::istio::load(&[("grpc.yaml", &yaml)], &Default::default())
        .config
        .unwrap();
    let mesh = mesh_tower::embed::Mesh::builder()
        .config(config)
        .build()
        .await
        .unwrap();
    let mut client =
        TraceServiceClient::with_origin(mesh.client(), "http://collector:4317".parse().unwrap());
    for _ in 0..3 {
        client
            .export(ExportTraceServiceRequest::default())
            .await
            .expect("retried past UNAVAILABLE");
    }
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        6,
        "each call: one UNAVAILABLE, one retry"
    );
}

// ---- The examples over mutual TLS, started from their own source files. ----

#[allow(dead_code)]
#[path = "../examples/peer_identity.rs"]
mod peer_identity_example;

#[allow(dead_code)]
#[path = "../examples/tonic_client.rs"]
mod tonic_example;

#[allow(dead_code)]
#[path = "../examples/hyper_client.rs"]
mod hyper_example;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use mesh_policy::SpiffeId;
use mesh_policy::credentials::{CredentialStore, Credentials};
use mesh_policy::testing::TestCa;
use mesh_tower::embed::{Drain, Mesh};
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs a test body with an upper bound, so a hang fails with a message instead of stalling
/// the suite.
async fn within<T>(body: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), body)
        .await
        .expect("the test did not finish within 60 s")
}

/// A hyper client speaking mutual TLS with `creds`, expecting the server to be `expected`.
fn mtls_client(
    creds: Credentials,
    expected: &str,
) -> hyper_util::client::legacy::Client<mesh_tower::tls::MtlsConnector, Full<Bytes>> {
    let connector = mesh_tower::tls::MtlsConnector::new(
        hyper_util::client::legacy::connect::HttpConnector::new(),
        CredentialStore::new(creds),
        vec![SpiffeId::parse(expected).unwrap()],
    )
    .unwrap();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}

/// GETs `path` from `addr` with `client`: status and body, or the error's text.
async fn fetch<C>(
    client: &hyper_util::client::legacy::Client<C, Full<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, String), String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let req = http::Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Connects with TLS trusting `ca` but presenting no client certificate, sends a request and
/// returns what came back (empty when the server closed the connection or the handshake
/// failed).
async fn tls_without_client_cert(ca: &TestCa, addr: SocketAddr) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.bundle_pem()).unwrap();
    let config = mesh_policy::tls::client_config_from_files(&mesh_policy::tls::FileTls {
        ca: Some(&ca_path),
        ..Default::default()
    })
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let Ok(mut tls) = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
    else {
        return Vec::new();
    };
    // TLS 1.3: the client's handshake ends before the server checks for a certificate; the
    // refusal arrives as an alert on the first read.
    if tls
        .write_all(b"GET / HTTP/1.1\r\nHost: whoami\r\n\r\n")
        .await
        .is_err()
    {
        return Vec::new();
    }
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_identity_example_hands_the_handler_the_clients_spiffe_id() {
    within(async {
        let running = peer_identity_example::start().await.unwrap();
        for _ in 0..3 {
            let (status, body) = peer_identity_example::call(&running.client).await.unwrap();
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                body,
                format!(
                    "hello {} (allowed by backend/frontend-only rules[0])",
                    peer_identity_example::CLIENT_ID
                )
            );
        }
        // A mesh client from another namespace gets through mutual TLS, and authorization
        // refuses it.
        let other = peer_identity_example::mesh(
            &peer_identity_example::client_config(running.server_addr),
            "other",
            "web",
            CredentialStore::new(
                running
                    .ca
                    .credentials("spiffe://cluster.local/ns/other/sa/web"),
            ),
        )
        .await
        .unwrap();
        let (status, body) = peer_identity_example::call(&other).await.unwrap();
        assert_eq!(
            (status.as_u16(), body.as_str()),
            (403, "RBAC: access denied")
        );
        assert_eq!(running.server.health().in_flight, 0);
        assert_eq!(
            running.server.shutdown(Duration::from_secs(5)).await,
            Drain::Complete
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_strict_a_client_without_a_certificate_is_refused() {
    within(async {
        let running = peer_identity_example::start().await.unwrap();
        let addr = running.server_addr;
        // Plaintext: closed before any HTTP answer.
        let plain = fetch(&client(addr, false).clone(), addr, "/").await;
        assert!(plain.is_err(), "plaintext got an answer: {plain:?}");
        // TLS without a client certificate: refused in the handshake.
        let answer = tls_without_client_cert(&running.ca, addr).await;
        assert!(
            !answer.starts_with(b"HTTP/"),
            "answered: {}",
            String::from_utf8_lossy(&answer)
        );
        // A client with a certificate from another CA: refused too.
        let stranger = TestCa::new("another root");
        let c = mtls_client(
            stranger.credentials(peer_identity_example::CLIENT_ID),
            peer_identity_example::SERVER_ID,
        );
        assert!(fetch(&c, addr, "/").await.is_err());
        // The right certificate, straight from a hyper client over mutual TLS: let in.
        let c = mtls_client(
            running.ca.credentials(peer_identity_example::CLIENT_ID),
            peer_identity_example::SERVER_ID,
        );
        let (status, body) = fetch(&c, addr, "/").await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with(&format!("hello {} ", peer_identity_example::CLIENT_ID)));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_presents_rotated_credentials_to_new_connections() {
    within(async {
        let running = peer_identity_example::start().await.unwrap();
        assert_eq!(
            peer_identity_example::call(&running.client)
                .await
                .unwrap()
                .0,
            200
        );
        // Rotate the server to an identity the client does not expect.
        let store = running.server.identity().unwrap().clone();
        store.rotate(
            running
                .ca
                .credentials("spiffe://cluster.local/ns/backend/sa/impostor"),
        );
        // The pooled connection keeps working; a new client (new connection) refuses the
        // server's new identity.
        assert_eq!(
            peer_identity_example::call(&running.client)
                .await
                .unwrap()
                .0,
            200
        );
        let fresh = peer_identity_example::mesh(
            &peer_identity_example::client_config(running.server_addr),
            "frontend",
            "web",
            CredentialStore::new(running.ca.credentials(peer_identity_example::CLIENT_ID)),
        )
        .await
        .unwrap();
        let (status, _) = peer_identity_example::call(&fresh).await.unwrap();
        assert_eq!(status, 503);
        // Rotated back, new connections are accepted again.
        store.rotate(running.ca.credentials(peer_identity_example::SERVER_ID));
        let fresh = peer_identity_example::mesh(
            &peer_identity_example::client_config(running.server_addr),
            "frontend",
            "web",
            CredentialStore::new(running.ca.credentials(peer_identity_example::CLIENT_ID)),
        )
        .await
        .unwrap();
        assert_eq!(peer_identity_example::call(&fresh).await.unwrap().0, 200);
        assert_eq!(store.rotations(), 2);
    })
    .await;
}

/// An app on the mesh's listener under PERMISSIVE with no AuthorizationPolicy: routes taking
/// the identity as required, optional, and the verdict.
async fn permissive_app(ca: &TestCa) -> (Mesh, SocketAddr) {
    use axum::routing::get;
    use mesh_tower::embed::axum::{PeerIdentity, Verdict, with_peer_info};
    let server = peer_identity_example::mesh(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: backend }
spec: { mtls: { mode: PERMISSIVE } }
",
        "backend",
        "whoami",
        CredentialStore::new(ca.credentials(peer_identity_example::SERVER_ID)),
    )
    .await
    .unwrap();
    let app = axum::Router::new()
        .route(
            "/required",
            get(|PeerIdentity(p): PeerIdentity| async move { p.id.to_string() }),
        )
        .route(
            "/optional",
            get(|p: Option<PeerIdentity>| async move {
                p.map_or("anonymous".to_owned(), |p| p.id.to_string())
            }),
        )
        .route("/verdict", get(|v: Verdict| async move { v.to_string() }))
        .route(
            "/tls",
            get(
                |tls: axum::Extension<mesh_tower::tls::TlsInfo>| async move {
                    format!("tls={} mode={:?}", tls.tls, tls.mode)
                },
            ),
        )
        .layer(server.inbound_layer());
    let listener = server
        .listener(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    let addr = listener.local_addr();
    let shutdown = server.shutdown_signal();
    tokio::spawn(async move {
        axum::serve(listener, with_peer_info(app))
            .with_graceful_shutdown(shutdown)
            .await
    });
    (server, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extractors_under_permissive_answer_plaintext_and_mutual_tls_clients() {
    within(async {
        let ca = TestCa::new("mesh root");
        let (_server, addr) = permissive_app(&ca).await;
        let plain = client(addr, false);
        assert_eq!(
            fetch(&plain, addr, "/optional").await.unwrap(),
            (200, "anonymous".to_owned())
        );
        assert_eq!(
            fetch(&plain, addr, "/required").await.unwrap(),
            (
                403,
                "a verified peer identity is required: connect with mutual TLS and a workload certificate".to_owned()
            )
        );
        assert_eq!(
            fetch(&plain, addr, "/tls").await.unwrap(),
            (200, "tls=false mode=Some(Permissive)".to_owned())
        );
        let mtls = mtls_client(
            ca.credentials(peer_identity_example::CLIENT_ID),
            peer_identity_example::SERVER_ID,
        );
        for path in ["/required", "/optional"] {
            assert_eq!(
                fetch(&mtls, addr, path).await.unwrap(),
                (200, peer_identity_example::CLIENT_ID.to_owned())
            );
        }
        assert_eq!(
            fetch(&mtls, addr, "/tls").await.unwrap(),
            (200, "tls=true mode=Some(Permissive)".to_owned())
        );
        // No AuthorizationPolicy applies, so there is no verdict: a handler that requires one
        // is a set-up error (500), whoever calls.
        let (status, body) = fetch(&mtls, addr, "/verdict").await.unwrap();
        assert_eq!(status, 500);
        assert!(body.starts_with("no authorization verdict"), "{body}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tonic_example_calls_over_mutual_tls_and_is_retried_on_unavailable() {
    within(async {
        let running = tonic_example::start().await.unwrap();
        tonic_example::call(&running.client, 3)
            .await
            .expect("retried past UNAVAILABLE");
        assert_eq!(
            running.collector.calls.load(Ordering::SeqCst),
            6,
            "each call: one UNAVAILABLE, one retry"
        );
        let callers = running.collector.callers.lock().unwrap().clone();
        assert_eq!(callers, vec![tonic_example::CLIENT_ID.to_owned(); 6]);

        // A caller from another namespace: mutual TLS works, authorization refuses the RPC.
        let other = Mesh::builder()
            .config(
                mesh_core::istio::load(
                    &[("c.yaml", &tonic_example::client_config(running.server_addr))],
                    &mesh_core::model::Workload {
                        namespace: "other".into(),
                        ..Default::default()
                    },
                )
                .config
                .unwrap(),
            )
            .identity(CredentialStore::new(
                running
                    .ca
                    .credentials("spiffe://cluster.local/ns/other/sa/web"),
            ))
            .build()
            .await
            .unwrap();
        let err = tonic_example::call(&other, 1).await.unwrap_err();
        let status = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert_eq!(status.message(), "RBAC: access denied");
        assert_eq!(running.collector.calls.load(Ordering::SeqCst), 6);

        // A tonic client on a mesh without an identity cannot reach the STRICT server.
        let anonymous = Mesh::builder()
            .config(
                mesh_core::istio::load(
                    &[("c.yaml", &tonic_example::client_config(running.server_addr))],
                    &Default::default(),
                )
                .config
                .unwrap(),
            )
            .build()
            .await
            .unwrap();
        let err = tonic_example::call(&anonymous, 1).await.unwrap_err();
        let status = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert_eq!(running.collector.calls.load(Ordering::SeqCst), 6);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hyper_client_example_gets_every_answer_through_the_mesh() {
    within(async {
        let (a, hits_a) = hyper_example::backend("backend a", 1).await.unwrap();
        let (b, hits_b) = hyper_example::backend("backend b", 1).await.unwrap();
        let loaded = mesh_core::istio::load(
            &[("hello.yaml", &hyper_example::config_yaml(a, b))],
            &Default::default(),
        );
        let mesh = Mesh::builder()
            .config(loaded.config.unwrap())
            .seed(3)
            .build()
            .await
            .unwrap();
        let answers = hyper_example::run(&mesh, 20).await.unwrap();
        assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
        let (a_hits, b_hits) = (hits_a.load(Ordering::SeqCst), hits_b.load(Ordering::SeqCst));
        // Every answer is one of the backends', and each backend's first answer (503) was
        // retried: 20 answers, plus one failed try per backend that was reached.
        let reached = usize::from(a_hits > 0) + usize::from(b_hits > 0);
        assert_eq!(a_hits + b_hits, 20 + reached);
        let from_a = answers
            .iter()
            .filter(|(_, body)| body == "backend a")
            .count();
        assert_eq!(from_a, a_hits - usize::from(a_hits > 0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_shutdown_drains_a_served_apps_in_flight_request() {
    use axum::routing::get;
    use mesh_tower::embed::axum::with_peer_info;
    within(async {
        let ca = TestCa::new("mesh root");
        let mesh = std::sync::Arc::new(
            Mesh::builder()
                .config(mesh_core::model::MeshConfig::default())
                .identity(CredentialStore::new(
                    ca.credentials(peer_identity_example::SERVER_ID),
                ))
                .build()
                .await
                .unwrap(),
        );
        // A handler that says it started, then waits for the test to let it finish.
        let (entered_tx, mut entered) = tokio::sync::mpsc::channel::<()>(1);
        let gate = std::sync::Arc::new(tokio::sync::Notify::new());
        let release = gate.clone();
        let app = axum::Router::new()
            .route(
                "/slow",
                get(move || {
                    let (gate, entered_tx) = (gate.clone(), entered_tx.clone());
                    async move {
                        let _ = entered_tx.send(()).await;
                        gate.notified().await;
                        "done"
                    }
                }),
            )
            .layer(mesh.inbound_layer());
        let listener = mesh
            .listener(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
            .unwrap();
        let addr = listener.local_addr();
        let server = tokio::spawn(
            axum::serve(listener, with_peer_info(app))
                .with_graceful_shutdown(mesh.shutdown_signal())
                .into_future(),
        );

        let request = tokio::spawn(async move { fetch(&client(addr, false), addr, "/slow").await });
        entered.recv().await.unwrap();
        assert_eq!(mesh.health().in_flight, 1);

        let draining = tokio::spawn({
            let mesh = mesh.clone();
            async move { mesh.shutdown(Duration::from_secs(30)).await }
        });
        mesh.shutdown_signal().await;
        assert!(mesh.health().draining);
        // The request is still running, so the drain cannot have finished.
        assert!(!draining.is_finished());

        release.notify_one();
        assert_eq!(request.await.unwrap().unwrap(), (200, "done".to_owned()));
        assert_eq!(draining.await.unwrap(), Drain::Complete);
        assert_eq!(mesh.health().in_flight, 0);
        // axum::serve returns once its connections are closed; the port is closed.
        server.await.unwrap().unwrap();
        let mut refused = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(refused, "the listener still accepts after shutdown");
    })
    .await;
}

/// The embedding API's telemetry settings reach the inbound layer: with W3C only, the app
/// gets `traceparent` (continuing the caller's trace) and no B3 headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbound_layer_propagates_the_chosen_trace_formats() {
    let config = mesh_core::istio::load(&[], &Default::default())
        .config
        .unwrap();
    let mesh = mesh_tower::embed::Mesh::builder()
        .config(config)
        .trace_propagators("tracecontext".parse().unwrap())
        .trace_sampling(mesh_core::model::Percentage::NONE)
        .build()
        .await
        .unwrap();
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(|headers: http::HeaderMap| async move {
                let mut names: Vec<String> = headers
                    .keys()
                    .map(|n| n.as_str())
                    .filter(|n| n.starts_with("x-b3") || *n == "traceparent" || *n == "b3")
                    .map(str::to_owned)
                    .collect();
                names.sort();
                format!(
                    "{} {}",
                    names.join(","),
                    headers
                        .get("traceparent")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                )
            }),
        )
        .layer(mesh.inbound_layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let c = client(addr, false);
    let (status, body, _) = get(
        &c,
        "app",
        "/",
        &[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (names, traceparent) = body.split_once(' ').unwrap();
    assert_eq!(names, "traceparent");
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
            && traceparent.ends_with("-01")
            && !traceparent.contains("00f067aa0ba902b7"),
        "the caller's trace, sampled as the caller said, with this proxy's span: {traceparent}"
    );
}
