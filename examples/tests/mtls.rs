//! Mutual TLS and authorization end to end: two sidecars (outbound ISTIO_MUTUAL -> inbound
//! STRICT -> app), PERMISSIVE on one port, rotation under load, and curl as an outside TLS
//! peer. Every certificate is issued at test time by a test CA.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_examples::proxy::{Identity, Proxy};
use mesh_policy::SpiffeId;
use mesh_policy::credentials::{CredentialStore, Credentials};
use mesh_policy::testing::TestCa;
use mesh_tower::tls::MtlsConnector;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const BACKEND: &str = "spiffe://cluster.local/ns/backend/sa/api";
const FRONTEND: &str = "spiffe://cluster.local/ns/frontend/sa/web";
const OTHER: &str = "spiffe://cluster.local/ns/other/sa/web";
const HOST: &str = "backend.backend.svc.cluster.local";

/// Runs a test body with an upper bound, so a hang fails with a message instead of stalling
/// the suite.
async fn within(body: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(60), body)
        .await
        .expect("the test did not finish within 60 s");
}

/// PEM files of one workload identity.
struct IdentityFiles {
    dir: tempfile::TempDir,
}

impl IdentityFiles {
    fn new(ca: &TestCa, id: &str) -> Self {
        let files = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        files.write(ca, id);
        files
    }

    /// Writes a new leaf for `id` (key first, then cert, each by rename, as a secret mount
    /// update would).
    fn write(&self, ca: &TestCa, id: &str) {
        let leaf = ca.issue(id);
        for (name, text) in [
            ("ca.pem", ca.bundle_pem()),
            ("key.pem", leaf.key_pem.as_str()),
            ("cert.pem", leaf.cert_pem.as_str()),
        ] {
            let tmp = self.dir.path().join(format!(".{name}"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(tmp, self.dir.path().join(name)).unwrap();
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn identity(&self) -> Identity {
        Identity::Files {
            cert: self.path("cert.pem"),
            key: self.path("key.pem"),
            ca: self.path("ca.pem"),
            poll: Duration::from_millis(50),
        }
    }
}

async fn sidecar(
    config: &ConfigDir,
    namespace: &str,
    app: Option<SocketAddr>,
    identity: &IdentityFiles,
) -> Proxy {
    let mut options = test_options(vec![config.path()]);
    options.reload_interval = Duration::from_millis(50);
    options.seed = Some(1);
    options.app = app;
    options.workload.namespace = namespace.to_owned();
    options.identity = Some(identity.identity());
    Proxy::start(options).await.expect("the sidecar starts")
}

fn server_config(mode: &str, allow_namespace: Option<&str>) -> String {
    let mut yaml = format!(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{ name: default, namespace: backend }}
spec: {{ mtls: {{ mode: {mode} }} }}
"
    );
    if let Some(ns) = allow_namespace {
        yaml.push_str(&format!(
            "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{ name: frontend-only, namespace: backend }}
spec:
  action: ALLOW
  rules: [{{ from: [{{ source: {{ namespaces: [{ns}] }} }}] }}]
"
        ));
    }
    yaml
}

/// The caller's view of `backend`: one endpoint (the server sidecar's inbound port) running
/// as service account `api`, reached with ISTIO_MUTUAL.
fn client_config(server_inbound: SocketAddr, extra_tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: backend, namespace: backend }}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  endpoints:
  - {{ address: 127.0.0.1, ports: {{ http: {port} }}, serviceAccount: api }}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: backend, namespace: backend }}
spec:
  host: {HOST}
  trafficPolicy:
    tls: {{ mode: ISTIO_MUTUAL{extra_tls} }}
",
        port = server_inbound.port()
    )
}

/// A test client that speaks mutual TLS itself, expecting `expected`, with `creds`.
fn mtls_client(creds: Credentials, expected: &[&str]) -> Client<MtlsConnector, Full<Bytes>> {
    let expected = expected
        .iter()
        .map(|e| SpiffeId::parse(e).unwrap())
        .collect();
    let connector =
        MtlsConnector::new(HttpConnector::new(), CredentialStore::new(creds), expected).unwrap();
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn send<C>(client: &Client<C, Full<Bytes>>, addr: SocketAddr) -> Result<(u16, String), String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let req = http::Request::get(format!("http://{addr}/"))
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(req).await.map_err(|e| {
        let mut chain = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            chain.push_str(&format!(": {s}"));
            source = s.source();
        }
        chain
    })?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_gets_200_another_namespace_403_and_plaintext_is_refused() {
    within(frontend_gets_200_another_namespace_403_and_plaintext_is_refused_body()).await;
}

async fn frontend_gets_200_another_namespace_403_and_plaintext_is_refused_body() {
    let ca = TestCa::new("mesh root");
    let app = upstream("app", Duration::ZERO).await;
    let server_files = IdentityFiles::new(&ca, BACKEND);
    let server_cfg = ConfigDir::new(&server_config("STRICT", Some("frontend")));
    let server = sidecar(&server_cfg, "backend", Some(app.addr), &server_files).await;

    let frontend_files = IdentityFiles::new(&ca, FRONTEND);
    let other_files = IdentityFiles::new(&ca, OTHER);
    let client_cfg = ConfigDir::new(&client_config(server.inbound, ""));
    let frontend = sidecar(&client_cfg, "frontend", None, &frontend_files).await;
    let other = sidecar(&client_cfg, "other", None, &other_files).await;

    // frontend -> (ISTIO_MUTUAL) -> backend inbound (STRICT) -> app.
    let c = client(frontend.outbound, false);
    for _ in 0..3 {
        let (status, body, _) = get(&c, HOST, "/", &[]).await;
        assert_eq!((status, body.as_str()), (200, "app"));
    }
    // Over h2c to the outbound port as well.
    let (status, body, _) = get(&client(frontend.outbound, true), HOST, "/", &[]).await;
    assert_eq!((status, body.as_str()), (200, "app"));

    // Another namespace: mTLS works, authorization refuses.
    let (status, body, _) = get(&client(other.outbound, false), HOST, "/", &[]).await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    let stats = server.authz_stats();
    assert_eq!(stats.denied.load(Ordering::Relaxed), 1);
    assert_eq!(stats.allowed.load(Ordering::Relaxed), 4);
    assert!(
        stats
            .prometheus()
            .contains("mesh_authz_requests_total{decision=\"deny\"} 1\n")
    );

    // The admin endpoint explains the authorization decision for a given peer, and shows the
    // workload certificate and its expiry.
    let admin = client(server.admin, false);
    let explain = |peer: &'static str| {
        let admin = admin.clone();
        async move {
            let (_, body, _) = get(
                &admin,
                "localhost",
                &format!("/explain?host=api:9080&path=/&peer={peer}"),
                &[],
            )
            .await;
            serde_json::from_str::<serde_json::Value>(&body).unwrap()
        }
    };
    let allowed = explain(FRONTEND).await;
    assert_eq!(allowed["authorization"]["allowed"], true, "{allowed}");
    let denied = explain(OTHER).await;
    assert_eq!(denied["authorization"]["allowed"], false, "{denied}");
    let (_, dump, _) = get(&admin, "localhost", "/config_dump", &[]).await;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["certificate"]["spiffe_id"], BACKEND);
    assert!(dump["certificate"]["seconds_to_expiry"].as_i64().unwrap() > 0);

    // The server side reports the exchange with the caller's verified identity.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, metrics, _) = get(
        &client(server.admin, false),
        "localhost",
        "/stats/prometheus",
        &[],
    )
    .await;
    let inbound: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("istio_requests_total{") && l.contains("reporter=\"destination\"")
        })
        .collect();
    assert!(
        inbound
            .iter()
            .any(|l| l.contains("connection_security_policy=\"mutual_tls\"")
                && l.contains("source_principal=\"spiffe://cluster.local/ns/frontend/")
                && l.contains("source_workload_namespace=\"frontend\"")
                && l.contains("response_code=\"200\"")),
        "{inbound:#?}"
    );
    assert!(
        inbound.iter().any(|l| l.contains("response_code=\"403\"")),
        "{inbound:#?}"
    );

    // Plaintext straight to the STRICT inbound port: the connection is closed, no response.
    let plain = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let err = send(&plain, server.inbound).await.unwrap_err();
    assert!(
        err.contains("connection closed") || err.contains("reset") || err.contains("Connection"),
        "{err}"
    );

    // A direct mTLS client with the frontend identity gets through; the same client
    // expecting a different server identity refuses the server.
    let creds = ca.credentials(FRONTEND);
    let (status, body) = send(&mtls_client(creds, &[BACKEND]), server.inbound)
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "app"));
    let err = send(
        &mtls_client(
            ca.credentials(FRONTEND),
            &["spiffe://cluster.local/ns/backend/sa/other"],
        ),
        server.inbound,
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("server identity spiffe://cluster.local/ns/backend/sa/api is not one of the expected identities"),
        "{err}"
    );
    // A client from another CA is refused by the server's handshake.
    let stranger = TestCa::new("stranger");
    let leaf = stranger.issue(FRONTEND);
    let both = format!("{}{}", stranger.bundle_pem(), ca.bundle_pem());
    let creds = Credentials::from_pem(
        leaf.cert_pem.as_bytes(),
        leaf.key_pem.as_bytes(),
        both.as_bytes(),
    )
    .unwrap();
    assert!(
        send(&mtls_client(creds, &[]), server.inbound)
            .await
            .is_err()
    );

    for p in [frontend, other, server] {
        p.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_server_identity_in_the_destination_rule_fails_the_request() {
    within(a_wrong_server_identity_in_the_destination_rule_fails_the_request_body()).await;
}

async fn a_wrong_server_identity_in_the_destination_rule_fails_the_request_body() {
    let ca = TestCa::new("mesh root");
    let app = upstream("app", Duration::ZERO).await;
    let server_files = IdentityFiles::new(&ca, BACKEND);
    let server_cfg = ConfigDir::new(&server_config("STRICT", None));
    let server = sidecar(&server_cfg, "backend", Some(app.addr), &server_files).await;
    let frontend_files = IdentityFiles::new(&ca, FRONTEND);
    let cfg = ConfigDir::new(&client_config(
        server.inbound,
        ", subjectAltNames: [\"spiffe://cluster.local/ns/backend/sa/not-api\"]",
    ));
    let frontend = sidecar(&cfg, "frontend", None, &frontend_files).await;
    let (status, body, _) = get(&client(frontend.outbound, false), HOST, "/", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("upstream connect error to 127.0.0.1:"),
        "{body}"
    );
    // The server never saw a request.
    assert_eq!(server.authz_stats().allowed.load(Ordering::Relaxed), 0);
    frontend.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_accepts_tls_and_plaintext_on_one_port() {
    within(permissive_accepts_tls_and_plaintext_on_one_port_body()).await;
}

async fn permissive_accepts_tls_and_plaintext_on_one_port_body() {
    let ca = TestCa::new("mesh root");
    let app = upstream("app", Duration::ZERO).await;
    let server_files = IdentityFiles::new(&ca, BACKEND);
    let server_cfg = ConfigDir::new(&server_config("PERMISSIVE", Some("frontend")));
    let server = sidecar(&server_cfg, "backend", Some(app.addr), &server_files).await;

    // Plaintext is accepted (and, having no identity, not in namespace frontend: 403).
    let plain = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let (status, body) = send(&plain, server.inbound).await.unwrap();
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    // mTLS on the same port: the identity reaches authorization.
    let (status, body) = send(
        &mtls_client(ca.credentials(FRONTEND), &[BACKEND]),
        server.inbound,
    )
    .await
    .unwrap();
    assert_eq!((status, body.as_str()), (200, "app"));

    // Without the policy, plaintext gets through too.
    server_cfg.replace(&server_config("PERMISSIVE", None));
    let version = server.store().version();
    for _ in 0..200 {
        if server.store().version() > version {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (status, body) = send(&plain, server.inbound).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "app"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_mid_run_new_connections_use_the_new_cert_and_no_request_fails() {
    within(rotation_mid_run_new_connections_use_the_new_cert_and_no_request_fails_body()).await;
}

async fn rotation_mid_run_new_connections_use_the_new_cert_and_no_request_fails_body() {
    let ca = TestCa::new("mesh root");
    let app = upstream("app", Duration::ZERO).await;
    let server_files = IdentityFiles::new(&ca, BACKEND);
    let server_cfg = ConfigDir::new(&server_config("STRICT", Some("frontend")));
    let server = sidecar(&server_cfg, "backend", Some(app.addr), &server_files).await;
    let frontend_files = IdentityFiles::new(&ca, FRONTEND);
    // No expected SANs and no service account: any identity the bundle verifies.
    let cfg =
        ConfigDir::new(&client_config(server.inbound, "").replace(", serviceAccount: api", ""));
    let frontend = sidecar(&cfg, "frontend", None, &frontend_files).await;
    let c = client(frontend.outbound, false);

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..2 {
        let (c, stop, failures, served) =
            (c.clone(), stop.clone(), failures.clone(), served.clone());
        load.push(tokio::spawn(async move {
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (status, _, _) = get(&c, HOST, "/", &[]).await;
                served.fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    // The server's files change to a new identity; a bad file in between is rejected.
    let store = server.credentials().unwrap().clone();
    std::fs::write(server_files.path("cert.pem"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.rotations(), 0, "a bad file must not rotate");
    assert_eq!(store.load().id().as_str(), BACKEND);
    const NEXT: &str = "spiffe://cluster.local/ns/backend/sa/api-v2";
    server_files.write(&ca, NEXT);
    for _ in 0..200 {
        if store.rotations() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(store.load().id().as_str(), NEXT);
    let metrics = mesh_tower::tls::credential_metrics(&store);
    assert!(
        metrics.contains("mesh_workload_cert_rotations_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "mesh_workload_cert_expiry_timestamp_seconds{{spiffe_id=\"{NEXT}\"}} {}",
            store.load().not_after_unix()
        )),
        "{metrics}"
    );
    // A new connection sees the new certificate ...
    let (status, _) = send(
        &mtls_client(ca.credentials(FRONTEND), &[NEXT]),
        server.inbound,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let err = send(
        &mtls_client(ca.credentials(FRONTEND), &[BACKEND]),
        server.inbound,
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("is not one of the expected identities"),
        "{err}"
    );
    // ... while the load kept going without a failure.
    let before = served.load(Ordering::Relaxed);
    for _ in 0..200 {
        if served.load(Ordering::Relaxed) > before + 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert!(served.load(Ordering::Relaxed) > before, "the load stalled");
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    frontend.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_a_client_certificate_passes_strict_and_without_one_fails() {
    within(curl_with_a_client_certificate_passes_strict_and_without_one_fails_body()).await;
}

async fn curl_with_a_client_certificate_passes_strict_and_without_one_fails_body() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: curl is not installed");
        return;
    }
    let ca = TestCa::new("mesh root");
    let app = upstream("app", Duration::ZERO).await;
    let server_files = IdentityFiles::new(&ca, BACKEND);
    let server_cfg = ConfigDir::new(&server_config("STRICT", Some("frontend")));
    let server = sidecar(&server_cfg, "backend", Some(app.addr), &server_files).await;
    let client_files = IdentityFiles::new(&ca, FRONTEND);
    let port = server.inbound.port();
    let (ca_pem, cert_pem, key_pem) = (
        client_files.path("ca.pem"),
        client_files.path("cert.pem"),
        client_files.path("key.pem"),
    );
    let curl = move |with_cert: bool| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "--max-time", "10", "-o", "-", "-w", " %{http_code}"])
            .arg("--resolve")
            .arg(format!("localhost:{port}:127.0.0.1"))
            .arg("--cacert")
            .arg(&ca_pem);
        if with_cert {
            cmd.arg("--cert").arg(&cert_pem).arg("--key").arg(&key_pem);
        }
        cmd.arg(format!("https://localhost:{port}/"));
        cmd.output().unwrap()
    };
    let ok = tokio::task::spawn_blocking({
        let curl = curl.clone();
        move || curl(true)
    })
    .await
    .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "app 200");
    let refused = tokio::task::spawn_blocking(move || curl(false))
        .await
        .unwrap();
    assert!(
        !refused.status.success(),
        "curl without a certificate must fail"
    );
    println!(
        "curl without a client certificate: {}",
        String::from_utf8_lossy(&refused.stderr).trim()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_mutual_tls_with_certificate_files() {
    within(simple_and_mutual_tls_with_certificate_files_body()).await;
}

async fn simple_and_mutual_tls_with_certificate_files_body() {
    let ca = TestCa::new("mesh root");
    let app = upstream("app", Duration::ZERO).await;
    let server_files = IdentityFiles::new(&ca, BACKEND);
    // STRICT with frontend-only: MUTUAL with the frontend files passes, SIMPLE has no client
    // certificate and is refused at the handshake.
    let server_cfg = ConfigDir::new(&server_config("STRICT", Some("frontend")));
    let server = sidecar(&server_cfg, "backend", Some(app.addr), &server_files).await;
    let frontend_files = IdentityFiles::new(&ca, FRONTEND);
    let path = |name: &str| frontend_files.path(name).display().to_string();
    let dr = |mode: &str, client: bool| {
        let mut tls = format!(
            "mode: {mode}, caCertificates: \"{}\", sni: localhost",
            path("ca.pem")
        );
        if client {
            tls.push_str(&format!(
                ", clientCertificate: \"{}\", privateKey: \"{}\"",
                path("cert.pem"),
                path("key.pem")
            ));
        }
        client_config(server.inbound, "").replace("mode: ISTIO_MUTUAL", &tls)
    };
    // No workload identity on this caller: the files are all it has.
    let mutual_cfg = ConfigDir::new(&dr("MUTUAL", true));
    let mut options = test_options(vec![mutual_cfg.path()]);
    options.identity = Some(frontend_files.identity());
    let caller = Proxy::start(options.clone()).await.unwrap();
    let (status, body, _) = get(&client(caller.outbound, false), HOST, "/", &[]).await;
    assert_eq!((status, body.as_str()), (200, "app"));
    caller.shutdown().await;

    let simple_cfg = ConfigDir::new(&dr("SIMPLE", false));
    options.config = vec![simple_cfg.path()];
    let caller = Proxy::start(options).await.unwrap();
    let (status, body, _) = get(&client(caller.outbound, false), HOST, "/", &[]).await;
    assert_eq!(status, 503, "{body}");
    caller.shutdown().await;

    // SIMPLE against a PERMISSIVE server without policies: TLS without a client cert is fine.
    server_cfg.replace(&server_config("PERMISSIVE", None));
    let version = server.store().version();
    for _ in 0..200 {
        if server.store().version() > version {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut options = test_options(vec![simple_cfg.path()]);
    options.identity = Some(frontend_files.identity());
    let caller = Proxy::start(options).await.unwrap();
    let (status, body, _) = get(&client(caller.outbound, false), HOST, "/", &[]).await;
    assert_eq!((status, body.as_str()), (200, "app"));
    caller.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_level_mtls_overrides_the_workload_mode_by_app_port() {
    within(port_level_body()).await;
}

async fn port_level_body() {
    let ca = TestCa::new("mesh root");
    let app = upstream("app", Duration::ZERO).await;
    let server_files = IdentityFiles::new(&ca, BACKEND);
    let pa = |port_mode: &str| {
        format!(
            "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{ name: backend, namespace: backend }}
spec:
  selector: {{ matchLabels: {{ app: backend }} }}
  mtls: {{ mode: STRICT }}
  portLevelMtls: {{ \"{}\": {{ mode: {port_mode} }} }}
",
            app.addr.port()
        )
    };
    let cfg = ConfigDir::new(&pa("PERMISSIVE"));
    let mut options = test_options(vec![cfg.path()]);
    options.reload_interval = Duration::from_millis(50);
    options.app = Some(app.addr);
    options.workload.namespace = "backend".into();
    options.workload.labels = [("app".to_owned(), "backend".to_owned())].into();
    options.identity = Some(server_files.identity());
    let server = Proxy::start(options).await.unwrap();
    // The app port is PERMISSIVE: plaintext passes although the workload is STRICT.
    let plain = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let (status, body) = send(&plain, server.inbound).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "app"));
    // Back to STRICT on that port: plaintext is refused.
    let version = server.store().version();
    cfg.replace(&pa("STRICT"));
    for _ in 0..200 {
        if server.store().version() > version {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let plain = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    assert!(send(&plain, server.inbound).await.is_err());
    let (status, _) = send(
        &mtls_client(ca.credentials(FRONTEND), &[BACKEND]),
        server.inbound,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_mesh_with_an_identity_calls_a_strict_sidecar_over_mutual_tls() {
    within(async {
        let ca = TestCa::new("mesh root");
        let app = upstream("app", Duration::ZERO).await;
        let server_files = IdentityFiles::new(&ca, BACKEND);
        let server_cfg = ConfigDir::new(&server_config("STRICT", Some("frontend")));
        let server = sidecar(&server_cfg, "backend", Some(app.addr), &server_files).await;

        let yaml = client_config(server.inbound, "");
        let config = mesh_core::istio::load(&[("client.yaml", &yaml)], &Default::default())
            .config
            .unwrap();
        for (identity, expected) in [
            (FRONTEND, (200, "app")),
            (OTHER, (403, "RBAC: access denied")),
        ] {
            let mesh = mesh_tower::embed::Mesh::builder()
                .config(config.clone())
                .identity(CredentialStore::new(ca.credentials(identity)))
                .build()
                .await
                .unwrap();
            let request = http::Request::get(format!("http://{HOST}/"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let response = tower::ServiceExt::oneshot(mesh.client(), request)
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(
                (status, String::from_utf8_lossy(&body).as_ref()),
                expected,
                "as {identity}"
            );
        }
        // Without an identity the ISTIO_MUTUAL destination cannot be reached.
        let mesh = mesh_tower::embed::Mesh::builder()
            .config(config)
            .build()
            .await
            .unwrap();
        let request = http::Request::get(format!("http://{HOST}/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = tower::ServiceExt::oneshot(mesh.client(), request)
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
        server.shutdown().await;
    })
    .await;
}
