//! Security benchmarks: authorization with 1,000 policies per request, and full mTLS
//! handshakes with SPIFFE verification against a plain rustls baseline (webpki verification
//! of DNS names, the same certificates), both in memory so only the CPU work is measured.

use criterion::{Criterion, criterion_group, criterion_main};
use mesh_core::model::{
    AuthorizationPolicy, AuthzAction, AuthzRule, ConditionMatch, OperationMatch, SourceMatch,
    ValueMatch,
};
use mesh_policy::authz::{Attributes, Decision, Engine};
use mesh_policy::credentials::CredentialStore;
use mesh_policy::testing::TestCa;
use mesh_policy::tls::{ClientAuth, client_config, server_config};
use mesh_policy::{PeerIdentity, SpiffeId};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use std::hint::black_box;
use std::sync::Arc;

// The sidecar's allocator, for the bare service and the stack alike (as in `layers.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn values(v: &[&str]) -> ValueMatch {
    ValueMatch {
        values: v.iter().map(|s| (*s).to_owned()).collect(),
        not_values: Vec::new(),
    }
}

/// 1,000 ALLOW policies, each with one rule over namespace, path prefix, method and a header;
/// only the last one matches the benchmark request.
fn policies(n: usize) -> Vec<AuthorizationPolicy> {
    (0..n)
        .map(|i| AuthorizationPolicy {
            name: format!("default/p{i}"),
            action: if i % 10 == 0 {
                AuthzAction::Deny
            } else {
                AuthzAction::Allow
            },
            rules: vec![AuthzRule {
                from: vec![SourceMatch {
                    namespaces: values(&[&format!("ns{i}")]),
                    ..SourceMatch::default()
                }],
                to: vec![OperationMatch {
                    methods: values(&["GET", "POST"]),
                    paths: values(&[&format!("/api/v{i}/*"), "/items/{*}/detail"]),
                    ..OperationMatch::default()
                }],
                when: vec![ConditionMatch {
                    key: "request.headers[x-tenant]".into(),
                    values: values(&[&format!("t{i}")]),
                }],
            }],
            dry_run: false,
        })
        .collect()
}

fn authz(c: &mut Criterion) {
    let engine = Engine::new(&policies(1000)).unwrap();
    let peer =
        PeerIdentity::from(SpiffeId::parse("spiffe://cluster.local/ns/ns999/sa/web").unwrap());
    let mut headers = http::HeaderMap::new();
    headers.insert("x-tenant", http::HeaderValue::from_static("t999"));
    let allowed = Attributes {
        peer: Some(&peer),
        headers: Some(&headers),
        ..Attributes::new("GET", "/api/v999/users?x=1")
    };
    assert_eq!(engine.evaluate(&allowed).decision, Decision::Allow);
    let denied = Attributes {
        peer: Some(&peer),
        headers: Some(&headers),
        ..Attributes::new("DELETE", "/api/v999/users")
    };
    assert_eq!(engine.evaluate(&denied).decision, Decision::Deny);
    let mut group = c.benchmark_group("authz_1000_policies");
    group.bench_function("allow_last_rule", |b| {
        b.iter(|| black_box(engine.evaluate(black_box(&allowed))))
    });
    group.bench_function("deny_no_match", |b| {
        b.iter(|| black_box(engine.evaluate(black_box(&denied))))
    });
    group.bench_function("compile", |b| {
        let p = policies(1000);
        b.iter(|| black_box(Engine::new(black_box(&p)).unwrap()))
    });
    group.finish();
}

fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) {
    let name = ServerName::try_from("localhost").unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let mut buf = Vec::with_capacity(8192);
    for _ in 0..10 {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets().unwrap();
        }
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets().unwrap();
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            return;
        }
    }
    panic!("handshake did not finish");
}

fn no_resumption(config: &Arc<ClientConfig>) -> Arc<ClientConfig> {
    let mut config = ClientConfig::clone(config);
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

fn handshakes(c: &mut Criterion) {
    let ca = TestCa::new("bench root");
    let server_leaf = ca.issue("spiffe://cluster.local/ns/backend/sa/api");
    let client_leaf = ca.issue("spiffe://cluster.local/ns/frontend/sa/web");
    let creds =
        |leaf: &mesh_policy::testing::Issued| CredentialStore::new(leaf.credentials(&ca).unwrap());

    // Mesh: SPIFFE verification on both sides, certificates read from the rotating store.
    let mesh_server = server_config(creds(&server_leaf), ClientAuth::Required).unwrap();
    let mesh_client = no_resumption(
        &client_config(
            creds(&client_leaf),
            vec![SpiffeId::parse("spiffe://cluster.local/ns/backend/sa/api").unwrap()],
        )
        .unwrap(),
    );

    // Baseline: plain rustls, webpki verification (DNS name `localhost`), client auth required.
    let provider = mesh_policy::credentials::provider();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.bundle_pem().as_bytes()).unwrap())
        .unwrap();
    let roots = Arc::new(roots);
    let cert = |leaf: &mesh_policy::testing::Issued| {
        (
            vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
        )
    };
    let (chain, key) = cert(&server_leaf);
    let mut plain_server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .unwrap(),
        )
        .with_single_cert(chain, key)
        .unwrap();
    plain_server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let (chain, key) = cert(&client_leaf);
    let mut plain_client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    plain_client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    plain_client.resumption = Resumption::disabled();
    let (plain_client, plain_server) = (Arc::new(plain_client), Arc::new(plain_server));

    let mut group = c.benchmark_group("mtls_handshake");
    group.bench_function("mesh_spiffe", |b| {
        b.iter(|| handshake(&mesh_client, &mesh_server))
    });
    group.bench_function("rustls_baseline", |b| {
        b.iter(|| handshake(&plain_client, &plain_server))
    });
    group.finish();
}

criterion_group!(benches, authz, handshakes);
criterion_main!(benches);
