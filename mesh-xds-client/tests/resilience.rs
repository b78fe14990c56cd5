//! Failure handling through real gRPC on 127.0.0.1: fallback to the next control plane,
//! starting from a saved snapshot while the control plane is down, TLS and mTLS to the
//! control plane, SDS secrets.

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use mesh_core::model::{ClusterName, MeshConfig, Workload};
use mesh_core::store::ConfigStore;
use mesh_xds_client::client::{XdsClient, XdsClientConfig, XdsHandle, XdsStatus};
use mesh_xds_client::node::NodeIdentity;
use mesh_xds_client::protocol::Mode;
use mesh_xds_client::protocol::backoff::BackoffConfig;
use mesh_xds_client::resource::ResourceType;
use mesh_xds_client::test_util::{ManagementServer, ServerSnapshot, fixtures};
use mesh_xds_client::translate::SecretKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const BOUND: Duration = Duration::from_secs(20);
const C: &str = "outbound|80||hello.default.svc.cluster.local";

fn snapshot(version: &str) -> ServerSnapshot {
    let mut s = ServerSnapshot::new(version);
    s.listener(fixtures::listener(80, "80"))
        .route(fixtures::route_config("80", &["hello"], &[(C, 100)]))
        .cluster(fixtures::eds_cluster(C))
        .endpoints(fixtures::endpoints(
            C,
            &["127.0.0.1:18081".parse().unwrap()],
        ));
    s
}

fn config(servers: Vec<String>, mode: Mode) -> XdsClientConfig {
    let workload = Workload::default();
    let node =
        NodeIdentity::from_workload(&workload, "127.0.0.1".parse().unwrap(), "hello-0").to_node();
    let mut c = XdsClientConfig::new(servers, mode, node, workload);
    c.backoff = BackoffConfig {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
        ..BackoffConfig::default()
    };
    c.connect_timeout = Duration::from_secs(2);
    c
}

async fn wait(
    status: &mut watch::Receiver<XdsStatus>,
    what: &str,
    pred: impl FnMut(&XdsStatus) -> bool,
) {
    tokio::time::timeout(BOUND, status.wait_for(pred))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap();
}

fn routes_hello(store: &ConfigStore) -> bool {
    let snap = store.load();
    snap.routes.find("hello").is_some()
        && snap
            .cluster(&ClusterName::new(C))
            .is_some_and(|c| c.endpoints.len() == 1)
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn spawn(config: XdsClientConfig) -> (Arc<ConfigStore>, XdsHandle) {
    let store = Arc::new(ConfigStore::new(MeshConfig::default()));
    let handle = XdsClient::new(config, store.clone()).spawn();
    (store, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_to_the_next_server() {
    for mode in [Mode::Sotw, Mode::Delta] {
        let dead = closed_port().await;
        let server = ManagementServer::start("127.0.0.1:0".parse().unwrap(), snapshot("1"))
            .await
            .unwrap();
        let (store, handle) = spawn(config(vec![dead.to_string(), server.uri()], mode));
        let mut status = handle.status();
        let store2 = store.clone();
        wait(&mut status, "sync through the second server", move |_| {
            routes_hello(&store2)
        })
        .await;
        assert_eq!(
            status.borrow().server.as_deref(),
            Some(server.uri().as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_from_the_saved_snapshot_while_the_control_plane_is_down() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [Mode::Sotw, Mode::Delta] {
        // One file per mode: a save still in flight when a client is dropped must not leak
        // into the next run.
        let file = dir.path().join(format!("xds-{mode:?}.snapshot"));
        let server = ManagementServer::start("127.0.0.1:0".parse().unwrap(), snapshot("1"))
            .await
            .unwrap();
        let addr = server.addr();
        let mut c = config(vec![server.uri()], mode);
        c.snapshot_file = Some(file.clone());
        let (store, handle) = spawn(c.clone());
        let mut status = handle.status();
        let store2 = store.clone();
        wait(&mut status, "first sync", move |s| {
            routes_hello(&store2) && s.published.is_some()
        })
        .await;
        assert!(!status.borrow().restored);
        drop(handle);
        server.shutdown().await;
        assert!(file.exists(), "the snapshot was saved");

        // A new sidecar: the control plane is down, the saved snapshot serves.
        let (store, handle) = spawn(c.clone());
        let mut status = handle.status();
        let store2 = store.clone();
        wait(&mut status, "restored snapshot", move |s| {
            s.restored && routes_hello(&store2)
        })
        .await;
        let restored_version = store.version();

        // The control plane comes back with the same resources: nothing to publish. With
        // new ones: published.
        let server = ManagementServer::start(addr, snapshot("1")).await.unwrap();
        wait(&mut status, "reconnect", |s| {
            s.server.is_some() && s.responses > 0
        })
        .await;
        let mut next = snapshot("2");
        next.endpoints(fixtures::endpoints(
            C,
            &["127.0.0.1:18082".parse().unwrap()],
        ));
        server.set_snapshot(next);
        let store2 = store.clone();
        wait(&mut status, "update after restore", move |_| {
            store2
                .load()
                .cluster(&ClusterName::new(C))
                .is_some_and(|c| c.endpoints[0].port == 18082)
        })
        .await;
        assert!(store.version() > restored_version);
        drop(handle);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_snapshot_file_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("xds.snapshot");
    std::fs::write(&file, b"\xff\xff\xff\xff not a snapshot").unwrap();
    let server = ManagementServer::start("127.0.0.1:0".parse().unwrap(), snapshot("1"))
        .await
        .unwrap();
    let mut c = config(vec![server.uri()], Mode::Sotw);
    c.snapshot_file = Some(file);
    let (store, handle) = spawn(c);
    let mut status = handle.status();
    let store2 = store.clone();
    wait(&mut status, "sync", move |_| routes_hello(&store2)).await;
    assert!(!status.borrow().restored);
}

struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |san: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![san.to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca_pem: ca_cert.pem(),
        server: leaf("localhost"),
        client: leaf("client.mesh"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_the_control_plane() {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
    let pki = pki();
    let server_tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&pki.server.0, &pki.server.1))
        .client_ca_root(Certificate::from_pem(&pki.ca_pem));
    let server =
        ManagementServer::start_tls("127.0.0.1:0".parse().unwrap(), snapshot("1"), server_tls)
            .await
            .unwrap();
    let uri = format!("https://{}", server.addr());
    let client_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");

    // Without a client certificate the server refuses the stream.
    let mut c = config(vec![uri.clone()], Mode::Sotw);
    c.tls = Some(client_tls.clone());
    let (_store, handle) = spawn(c);
    let mut status = handle.status();
    wait(&mut status, "refusal", |s| s.last_error.is_some()).await;
    assert_eq!(status.borrow().responses, 0);
    drop(handle);

    let mut c = config(vec![uri], Mode::Delta);
    c.tls = Some(client_tls.identity(Identity::from_pem(&pki.client.0, &pki.client.1)));
    let (store, handle) = spawn(c);
    let mut status = handle.status();
    let store2 = store.clone();
    wait(&mut status, "sync over mTLS", move |_| {
        routes_hello(&store2)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_secrets_follow_the_cluster_tls_context_and_rotate() {
    use envoy_types::pb::envoy::config::core::v3::{TransportSocket, transport_socket};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CommonTlsContext, SdsSecretConfig, UpstreamTlsContext, common_tls_context,
    };
    let inline = |s: &str| DataSource {
        specifier: Some(data_source::Specifier::InlineString(s.to_owned())),
        ..Default::default()
    };
    let cert = |pem: &str| Secret {
        name: "default".into(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(pem)),
            private_key: Some(inline("KEY")),
            ..Default::default()
        })),
    };
    let root = Secret {
        name: "ROOTCA".into(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(inline("ROOT")),
                ..Default::default()
            },
        )),
    };
    let sds = |name: &str| SdsSecretConfig {
        name: name.into(),
        ..Default::default()
    };
    let tls = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds("default")],
            validation_context_type: Some(
                common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(
                    "ROOTCA",
                )),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut cluster = fixtures::eds_cluster(C);
    cluster.transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(
            mesh_xds_client::test_util::pack(&tls),
        )),
    });
    let mut s = snapshot("1");
    s.cluster(cluster).secret(cert("CERT-1")).secret(root);
    let server = ManagementServer::start("127.0.0.1:0".parse().unwrap(), s.clone())
        .await
        .unwrap();
    let (_store, handle) = spawn(config(vec![server.uri()], Mode::Sotw));
    let mut secrets = handle.secrets();
    let chain = |s: &mesh_xds_client::client::Secrets| match s.get("default").map(|s| &s.kind) {
        Some(SecretKind::Certificate { chain_pem, .. }) => {
            Some(String::from_utf8_lossy(chain_pem).into_owned())
        }
        _ => None,
    };
    tokio::time::timeout(
        BOUND,
        secrets.wait_for(|s| chain(s).as_deref() == Some("CERT-1") && s.contains_key("ROOTCA")),
    )
    .await
    .unwrap()
    .unwrap();
    let req = server
        .wait_for_request(|r| r.kind() == Some(ResourceType::Secret) && !r.names.is_empty())
        .await;
    assert_eq!(req.names, ["ROOTCA", "default"]);

    // Rotation.
    s = s.with_version("2");
    s.secret(cert("CERT-2"));
    server.set_snapshot(s);
    tokio::time::timeout(
        BOUND,
        secrets.wait_for(|s| chain(s).as_deref() == Some("CERT-2")),
    )
    .await
    .unwrap()
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returns_to_the_primary_when_it_comes_back() {
    let primary_addr = closed_port().await;
    let fallback = ManagementServer::start("127.0.0.1:0".parse().unwrap(), snapshot("1"))
        .await
        .unwrap();
    let mut c = config(
        vec![format!("http://{primary_addr}"), fallback.uri()],
        Mode::Sotw,
    );
    c.primary_retry = Duration::from_millis(50);
    let (store, handle) = spawn(c);
    let mut status = handle.status();
    let store2 = store.clone();
    wait(&mut status, "sync through the fallback", move |_| {
        routes_hello(&store2)
    })
    .await;
    assert_eq!(
        status.borrow().server.as_deref(),
        Some(fallback.uri().as_str())
    );

    let mut next = snapshot("2");
    next.endpoints(fixtures::endpoints(
        C,
        &["127.0.0.1:18083".parse().unwrap()],
    ));
    let primary = ManagementServer::start(primary_addr, next).await.unwrap();
    let primary_uri = primary.uri();
    wait(&mut status, "switch to the primary", move |s| {
        s.server.as_deref() == Some(primary_uri.as_str())
    })
    .await;
    let store2 = store.clone();
    wait(&mut status, "primary's config", move |_| {
        store2
            .load()
            .cluster(&ClusterName::new(C))
            .is_some_and(|c| c.endpoints[0].port == 18083)
    })
    .await;
}
