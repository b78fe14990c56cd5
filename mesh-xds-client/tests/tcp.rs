//! istiod's outbound listener on a service's address (`10.96.0.20_5432`, a tcp_proxy
//! splitting connections 80/20 over two subsets) drives the TCP forwarder: a connection to
//! the service's address is the service's, and each reaches the subset the seeded draw says.
//! Upstreams are real sockets on 127.0.0.1 (each greets a connection with its name, then
//! echoes); the intercepted connection is handed to `TcpOutbound::forward` with the original
//! destination a capture listener would report.

use envoy_types::pb::envoy::config::core::v3::address;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy,
    tcp_proxy::{ClusterSpecifier, WeightedCluster, weighted_cluster::ClusterWeight},
};
use envoy_types::pb::google::protobuf::BoolValue;
use mesh_core::model::{ClusterName, MeshConfig, Workload};
use mesh_core::store::ConfigStore;
use mesh_tower::balance::BalanceLayer;
use mesh_tower::rng::Rng;
use mesh_tower::server::ConnectionInfo;
use mesh_tower::tcp::{TcpOutbound, TcpTarget};
use mesh_xds_client::resource::ResourceType;
use mesh_xds_client::test_util::{fixtures, pack};
use mesh_xds_client::translate::{Decoded, Resources, assemble, decode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const OWN: &str = "outbound|5432||db.default.svc.cluster.local";
const V1: &str = "outbound|5432|v1|db.default.svc.cluster.local";
const V2: &str = "outbound|5432|v2|db.default.svc.cluster.local";

/// An upstream on 127.0.0.1 greeting each connection with `name` (two bytes), then echoing.
async fn echo(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut from, mut to) = stream.split();
                if to.write_all(name.as_bytes()).await.is_ok() {
                    let _ = tokio::io::copy(&mut from, &mut to).await;
                }
            });
        }
    });
    addr
}

/// istiod's `10.96.0.20_5432`: one chain whose tcp_proxy splits over `v1` and `v2`.
fn vip_listener() -> Listener {
    let proxy = TcpProxy {
        stat_prefix: "db.default".into(),
        cluster_specifier: Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: [(V1, 80), (V2, 20)]
                .into_iter()
                .map(|(name, weight)| ClusterWeight {
                    name: name.into(),
                    weight,
                    ..Default::default()
                })
                .collect(),
        })),
        ..Default::default()
    };
    let mut l = fixtures::listener(5432, "unused");
    l.name = "10.96.0.20_5432".into();
    if let Some(address::Address::SocketAddress(s)) =
        l.address.as_mut().and_then(|a| a.address.as_mut())
    {
        s.address = "10.96.0.20".into();
    }
    l.bind_to_port = Some(BoolValue { value: false });
    l.filter_chains = vec![FilterChain {
        filters: vec![Filter {
            name: "envoy.filters.network.tcp_proxy".into(),
            config_type: Some(filter::ConfigType::TypedConfig(pack(&proxy))),
        }],
        ..Default::default()
    }];
    l
}

/// The snapshot istiod's resources make: the listener, and EDS clusters `db` (both
/// endpoints), `v1` and `v2` (one each).
fn config(v1: SocketAddr, v2: SocketAddr) -> MeshConfig {
    let decoded = |kind, any| decode(kind, &any).unwrap();
    let Decoded::Listener(l) = decoded(ResourceType::Listener, pack(&vip_listener())) else {
        panic!("a listener")
    };
    let clusters: Vec<_> = [OWN, V1, V2]
        .into_iter()
        .map(
            |c| match decoded(ResourceType::Cluster, pack(&fixtures::eds_cluster(c))) {
                Decoded::Cluster(c) => *c,
                other => panic!("{other:?}"),
            },
        )
        .collect();
    let endpoints: Vec<_> = [(OWN, vec![v1, v2]), (V1, vec![v1]), (V2, vec![v2])]
        .into_iter()
        .map(|(c, addrs)| {
            match decoded(
                ResourceType::ClusterLoadAssignment,
                pack(&fixtures::endpoints(c, &addrs)),
            ) {
                Decoded::ClusterLoadAssignment(e) => e,
                other => panic!("{other:?}"),
            }
        })
        .collect();
    let mut res = Resources::default();
    res.listeners.insert(&l.name, &l);
    for c in &clusters {
        res.clusters.insert(c.cluster.name.as_str(), c);
    }
    for e in &endpoints {
        res.endpoints.insert(&e.cluster_name, e);
    }
    assemble(&res, &Workload::default())
}

/// Carries one intercepted connection to `dst` through `outbound`: the name of the upstream
/// that answered.
async fn through(outbound: &TcpOutbound, dst: SocketAddr) -> String {
    let (mut app, proxy_side) = tokio::io::duplex(64);
    let outbound = outbound.clone();
    let conn = ConnectionInfo {
        peer: ([127, 0, 0, 1], 40000).into(),
        local: dst,
        redirected: true,
    };
    let task = tokio::spawn(async move { outbound.forward(proxy_side, conn).await });
    app.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(10), app.read_exact(&mut got))
        .await
        .expect("carried within 10 s")
        .expect("carried, not closed");
    task.abort();
    assert_eq!(&got[2..], b"ping", "echoed through the forwarder");
    String::from_utf8_lossy(&got[..2]).into_owned()
}

#[tokio::test]
async fn a_connection_to_the_service_address_takes_istiods_tcp_split() {
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let store = Arc::new(ConfigStore::new(config(v1, v2)));
    let vip: SocketAddr = "10.96.0.20:5432".parse().unwrap();
    // The service's, not a passthrough to 10.96.0.20 (resolving draws: another forwarder).
    let Some(TcpTarget::Cluster { cluster, .. }) = TcpOutbound::new(store.clone()).resolve(vip)
    else {
        panic!("the service's address resolves to a cluster");
    };
    assert_eq!(cluster.service.as_str(), "db.default.svc.cluster.local");
    assert_ne!(
        cluster.name,
        ClusterName::new(OWN),
        "a subset drawn by the split"
    );
    let outbound = TcpOutbound::new(store).balancer(BalanceLayer::new(Rng::with_seed(7)));

    const N: usize = 50;
    let mut reached = Vec::new();
    for _ in 0..N {
        reached.push(through(&outbound, vip).await);
    }
    // Round-robin over one endpoint draws nothing: the split's draws are the seed's, in order.
    let replay = Rng::with_seed(7);
    let expected: Vec<String> = (0..N)
        .map(|_| if replay.below(100) < 80 { "v1" } else { "v2" }.to_owned())
        .collect();
    assert_eq!(reached, expected);
    assert!(reached.iter().any(|r| r == "v2") && reached.iter().any(|r| r == "v1"));
}
