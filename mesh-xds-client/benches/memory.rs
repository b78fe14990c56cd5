//! Memory held by a 1,000-cluster snapshot (10 endpoints each, one route per cluster): the
//! resident-set growth of building it through the ADS state machine, and of the published
//! `MeshConfig` alone. Linux only (reads `/proc/self/statm`).

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use mesh_core::model::Workload;
use mesh_xds_client::protocol::{AdsState, Mode, ProtocolConfig};
use mesh_xds_client::resource::ResourceType;
use mesh_xds_client::test_util::{fixtures, pack};
use std::net::SocketAddr;
use tokio::time::Instant;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn response(
    kind: ResourceType,
    resources: Vec<envoy_types::pb::google::protobuf::Any>,
) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: "1".into(),
        resources,
        type_url: kind.type_url().into(),
        nonce: "1".into(),
        ..Default::default()
    }
}

fn main() {
    const CLUSTERS: u32 = 1_000;
    let names: Vec<String> = (0..CLUSTERS)
        .map(|i| format!("outbound|80||svc-{i}.default.svc.cluster.local"))
        .collect();
    let clusters = names
        .iter()
        .map(|n| pack(&fixtures::eds_cluster(n)))
        .collect();
    let routes = vec![pack(&{
        let mut rc = fixtures::route_config("80", &["svc-0"], &[(&names[0], 100)]);
        rc.virtual_hosts = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                fixtures::route_config(
                    "80",
                    &[&format!("svc-{i}"), &format!("svc-{i}:80")],
                    &[(n, 100)],
                )
                .virtual_hosts
                .remove(0)
            })
            .collect();
        rc
    })];
    let endpoints = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let addrs: Vec<SocketAddr> = (0..10u8)
                .map(|e| SocketAddr::from(([10, (i >> 8) as u8, i as u8, e], 8080)))
                .collect();
            pack(&fixtures::endpoints(n, &addrs))
        })
        .collect();
    let responses = [
        response(ResourceType::Cluster, clusters),
        response(
            ResourceType::Listener,
            vec![pack(&fixtures::listener(80, "80"))],
        ),
        response(ResourceType::RouteConfiguration, routes),
        response(ResourceType::ClusterLoadAssignment, endpoints),
    ];
    let wire: usize = responses.iter().map(prost::Message::encoded_len).sum();

    let now = Instant::now();
    let before = rss_bytes();
    let mut state = AdsState::new(ProtocolConfig::new(Mode::Sotw, Default::default()));
    state.connected(now);
    for r in responses {
        state.handle_sotw(r, now);
    }
    let after_state = rss_bytes();
    let config = state.snapshot(&Workload::default()).expect("complete");
    let after_config = rss_bytes();
    assert_eq!(config.clusters.len(), CLUSTERS as usize);
    println!("1,000 clusters x 10 endpoints, 1,000 virtual hosts");
    println!(
        "  wire size of the four responses: {:.1} MiB",
        wire as f64 / 1048576.0
    );
    println!(
        "  ADS state (decoded + raw resources): {:.1} MiB RSS growth",
        (after_state.saturating_sub(before)) as f64 / 1048576.0
    );
    println!(
        "  MeshConfig snapshot: {:.1} MiB RSS growth",
        (after_config.saturating_sub(after_state)) as f64 / 1048576.0
    );
    drop(config);
}
