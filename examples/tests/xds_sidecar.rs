//! `mesh-proxy run --xds ADDR`: the sidecar configured by a control plane alone, its status
//! in /config_dump, and an update taking effect.

mod common;

use common::*;
use mesh_xds_client::test_util::{ManagementServer, ServerSnapshot, fixtures};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_mesh-proxy");
const A: &str = "outbound|80|a|hello.default.svc.cluster.local";
const B: &str = "outbound|80|b|hello.default.svc.cluster.local";

fn snapshot(
    version: &str,
    weights: &[(&str, u32)],
    a: std::net::SocketAddr,
    b: std::net::SocketAddr,
) -> ServerSnapshot {
    let mut s = ServerSnapshot::new(version);
    s.listener(fixtures::listener(80, "80"))
        .route(fixtures::route_config(
            "80",
            &["hello", "hello:80"],
            weights,
        ))
        .cluster(fixtures::eds_cluster(A))
        .endpoints(fixtures::endpoints(A, &[a]))
        .cluster(fixtures::eds_cluster(B))
        .endpoints(fixtures::endpoints(B, &[b]));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_routes_by_xds_alone_and_follows_updates() {
    let a = upstream("a", Duration::ZERO).await;
    let b = upstream("b", Duration::ZERO).await;
    let server = ManagementServer::start(
        "127.0.0.1:0".parse().unwrap(),
        snapshot("1", &[(A, 100)], a.addr, b.addr),
    )
    .await
    .unwrap();
    let xds = server.addr().to_string();
    let sidecar = SidecarProcess::start(BIN, &["--xds", &xds]);
    let (outbound, admin) = (sidecar.addr("outbound"), sidecar.addr("admin"));
    let c = client(outbound, false);
    // Wait (bounded) for the first snapshot to arrive.
    let mut first = String::new();
    for _ in 0..200 {
        first = get(&c, "hello", "/", &[]).await.1;
        if first == "a" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(first, "a");

    server.set_snapshot(snapshot("2", &[(B, 100)], a.addr, b.addr));
    let mut now = String::new();
    for _ in 0..200 {
        now = get(&c, "hello", "/", &[]).await.1;
        if now == "b" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(now, "b", "the update took effect");

    let (_, dump, _) = get(&client(admin, false), "localhost", "/config_dump", &[]).await;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        dump["xds"]["server"]
            .as_str()
            .map(|s| s.contains(&server.addr().port().to_string())),
        Some(true),
        "{}",
        dump["xds"]
    );
    assert!(
        dump["xds"]["resources"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    );

    assert_eq!(sidecar.terminate().await, Some(0));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_id_flag_is_what_the_control_plane_sees() {
    let a = upstream("a", Duration::ZERO).await;
    let server = ManagementServer::start(
        "127.0.0.1:0".parse().unwrap(),
        snapshot("1", &[(A, 100)], a.addr, a.addr),
    )
    .await
    .unwrap();
    let xds = server.addr().to_string();
    let node = "sidecar~10.1.2.3~reviews-v1-abc.default~default.svc.cluster.local";
    let sidecar = SidecarProcess::start(BIN, &["--xds", &xds, "--node-id", node]);
    let first = tokio::time::timeout(
        Duration::from_secs(20),
        server.wait_for_request(|r| r.node_id.is_some()),
    )
    .await
    .expect("the sidecar sends its node");
    assert_eq!(first.node_id.as_deref(), Some(node));
    assert_eq!(sidecar.terminate().await, Some(0));
    server.shutdown().await;
}

/// Rewrites the config dump fixture's pod addresses to local upstreams.
fn envoy_config_file(to: &[(&str, std::net::SocketAddr)]) -> tempfile::NamedTempFile {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mesh-xds-client/tests/fixtures/config_dump.json");
    let mut text = std::fs::read_to_string(path).unwrap();
    for (pod, addr) in to {
        text = text.replace(
            &format!("\"address\": \"{pod}\", \"port_value\": 9080"),
            &format!(
                "\"address\": \"{}\", \"port_value\": {}",
                addr.ip(),
                addr.port()
            ),
        );
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_runs_from_an_envoy_config_dump() {
    let v1 = upstream("v1", Duration::ZERO).await;
    let v2 = upstream("v2", Duration::ZERO).await;
    let file = envoy_config_file(&[
        ("10.44.0.11", v1.addr),
        ("10.44.0.12", v2.addr),
        ("10.44.1.12", v2.addr),
    ]);
    let path = file.path().to_str().unwrap().to_owned();
    let sidecar = SidecarProcess::start(BIN, &["--envoy-config", &path]);
    let c = client(sidecar.addr("outbound"), false);
    // Loaded before the listeners bind: the first request is routed.
    let (status, body, _) = get(&c, "reviews:9080", "/r", &[("end-user", "jason")]).await;
    assert_eq!((status, body.as_str()), (200, "v2"));
    let (status, body, _) = get(&c, "reviews.default.svc.cluster.local", "/", &[]).await;
    assert_eq!(status, 200);
    assert!(body == "v1" || body == "v2", "{body}");
    assert_eq!(get(&c, "details", "/", &[]).await.0, 404);
    assert_eq!(sidecar.terminate().await, Some(0));
}

#[test]
fn a_malformed_envoy_config_is_a_config_error_naming_the_field() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mesh-xds-client/tests/fixtures/malformed_cluster.json");
    let out = std::process::Command::new(BIN)
        .args(["run", "--outbound-port", "0", "--inbound-port", "0"])
        .args([
            "--admin-port",
            "0",
            "--health-port",
            "0",
            "--listen-address",
            "127.0.0.1",
        ])
        .arg("--envoy-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("outlier_detection.interval: "), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_mesh_is_driven_by_xds_through_its_config_store() {
    use mesh_core::{model::MeshConfig, store::ConfigStore};
    use mesh_xds_client::client::{XdsClient, XdsClientConfig};
    use std::sync::Arc;
    use tower::ServiceExt;

    let a = upstream("a", Duration::ZERO).await;
    let b = upstream("b", Duration::ZERO).await;
    let server = ManagementServer::start(
        "127.0.0.1:0".parse().unwrap(),
        snapshot("1", &[(B, 100)], a.addr, b.addr),
    )
    .await
    .unwrap();
    // The two lines an embedding service adds: the xDS client publishing into a store, and
    // the mesh built over that store.
    let workload = mesh_core::model::Workload::default();
    let store = Arc::new(ConfigStore::new(MeshConfig::default()));
    let node = mesh_xds_client::node::NodeIdentity::from_workload(
        &workload,
        [127, 0, 0, 1].into(),
        "embedded-0",
    )
    .to_node();
    let config = XdsClientConfig::new(
        vec![server.addr().to_string()],
        mesh_xds_client::protocol::Mode::Sotw,
        node,
        workload,
    );
    let xds = XdsClient::new(config, store.clone()).spawn();
    let mesh = mesh_tower::embed::Mesh::builder()
        .config_store(store)
        .build()
        .await
        .unwrap();

    let mut body = String::new();
    for _ in 0..200 {
        let req = http::Request::get("http://hello/")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = mesh.client().oneshot(req).await.unwrap();
        body = String::from_utf8_lossy(
            &http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes(),
        )
        .into_owned();
        if body == "b" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(body, "b", "routed by the control plane's weights");
    assert!(mesh.version() > 0);
    xds.abort();
}

/// An embedded mesh (the embedding API: the port is the URI's, else the scheme's) routes by
/// the route configuration of the port a request is addressed to, as Envoy's per-port
/// outbound listeners do; before, every port's routes were merged and port 8080's, first by
/// listener name, answered for names both ports claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_mesh_routes_by_the_route_configuration_of_the_addressed_port() {
    use mesh_core::{model::MeshConfig, store::ConfigStore};
    use mesh_xds_client::client::{XdsClient, XdsClientConfig};
    use std::sync::Arc;
    use tower::ServiceExt;

    let a = upstream("a", Duration::ZERO).await;
    let b = upstream("b", Duration::ZERO).await;
    let server = ManagementServer::start(
        "127.0.0.1:0".parse().unwrap(),
        two_port_xds_snapshot(a.addr, b.addr),
    )
    .await
    .unwrap();
    let workload = mesh_core::model::Workload::default();
    let store = Arc::new(ConfigStore::new(MeshConfig::default()));
    let node = mesh_xds_client::node::NodeIdentity::from_workload(
        &workload,
        [127, 0, 0, 1].into(),
        "embedded-0",
    )
    .to_node();
    let config = XdsClientConfig::new(
        vec![server.addr().to_string()],
        mesh_xds_client::protocol::Mode::Sotw,
        node,
        workload,
    );
    let xds = XdsClient::new(config, store.clone()).spawn();
    let mut status = xds.status();
    tokio::time::timeout(
        Duration::from_secs(20),
        status.wait_for(|s| s.published.is_some()),
    )
    .await
    .expect("the control plane's snapshot within 20 s")
    .unwrap();
    let ports: Vec<u16> = store.load().routes.ports().map(|(p, _)| p).collect();
    assert_eq!(ports, [8080, 9080]);
    let mesh = mesh_tower::embed::Mesh::builder()
        .config_store(store)
        .build()
        .await
        .unwrap();

    let call = |uri: &'static str, host: &'static str| {
        let client = mesh.client();
        async move {
            let req = http::Request::get(uri)
                .header("host", host)
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let response = client.oneshot(req).await.unwrap();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            String::from_utf8_lossy(&body).into_owned()
        }
    };
    // Port 9080's own routes, its catch-all included (port 8080's `*` claims first merged).
    assert_eq!(call("http://reviews:9080/", "reviews").await, "b");
    assert_eq!(call("http://ratings:9080/", "ratings").await, "b");
    assert_eq!(call("http://ratings:8080/", "ratings").await, "a");
    assert_eq!(call("http://reviews:8080/", "reviews").await, "a");
    // No port: 80, which no listener serves: every port's routes, merged by listener name.
    assert_eq!(call("http://reviews/", "reviews").await, "a");
    xds.abort();
    server.shutdown().await;
}
