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
