//! A 10,000-endpoint EDS update applied end to end: protobuf decode, validation and
//! translation, snapshot assembly, and the swap into the config store.

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use mesh_core::model::{MeshConfig, Workload};
use mesh_core::store::ConfigStore;
use mesh_xds_client::protocol::{AdsState, Mode, ProtocolConfig};
use mesh_xds_client::resource::ResourceType;
use mesh_xds_client::test_util::{fixtures, pack};
use std::net::SocketAddr;
use tokio::time::Instant;

const C: &str = "outbound|80||big.default.svc.cluster.local";

fn response(
    kind: ResourceType,
    version: &str,
    resources: Vec<envoy_types::pb::google::protobuf::Any>,
) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        resources,
        type_url: kind.type_url().into(),
        nonce: version.into(),
        ..Default::default()
    }
}

fn eds_update(port: u16, version: &str) -> DiscoveryResponse {
    let addrs: Vec<SocketAddr> = (0..10_000u32)
        .map(|i| SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], port)))
        .collect();
    response(
        ResourceType::ClusterLoadAssignment,
        version,
        vec![pack(&fixtures::endpoints(C, &addrs))],
    )
}

fn bench(c: &mut Criterion) {
    let now = Instant::now();
    let mut state = AdsState::new(ProtocolConfig::new(Mode::Sotw, Default::default()));
    state.connected(now);
    state.handle_sotw(
        response(
            ResourceType::Cluster,
            "1",
            vec![pack(&fixtures::eds_cluster(C))],
        ),
        now,
    );
    state.handle_sotw(
        response(
            ResourceType::Listener,
            "1",
            vec![pack(&fixtures::listener(80, "80"))],
        ),
        now,
    );
    state.handle_sotw(
        response(
            ResourceType::RouteConfiguration,
            "1",
            vec![pack(&fixtures::route_config("80", &["big"], &[(C, 100)]))],
        ),
        now,
    );
    let store = ConfigStore::new(MeshConfig::default());
    let workload = Workload::default();
    let updates = [eds_update(8080, "a"), eds_update(9090, "b")];
    println!(
        "EDS message: {} bytes",
        prost::Message::encoded_len(&updates[0])
    );
    let mut turn = 0usize;
    c.bench_function("eds_10k_endpoints_decode_validate_swap", |b| {
        b.iter_batched(
            || {
                turn += 1;
                updates[turn % 2].clone()
            },
            |update| {
                let handled = state.handle_sotw(update, now);
                assert!(handled.changed && handled.rejected.is_empty());
                let config = state.snapshot(&workload).expect("complete");
                store.publish(config)
            },
            BatchSize::LargeInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
