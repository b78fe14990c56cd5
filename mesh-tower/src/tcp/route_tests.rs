//! VirtualService `tcp` rules in the TCP forwarders: which subset's endpoint each connection
//! reaches, with real sockets on 127.0.0.1 (each endpoint greets a connection with its name,
//! then echoes what it gets). Intercepted connections are handed to [`TcpOutbound::forward`]
//! with the original destination a capture listener would report.

use super::*;
use crate::rng::Rng;
use mesh_core::model::MeshConfig;
use tokio::io::AsyncReadExt;

const HOST: &str = "db.default.svc.cluster.local";
const VIP: &str = "10.96.0.10";

/// An upstream on 127.0.0.1 greeting each connection with `name` (two bytes), then echoing.
async fn echo(name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
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
    port
}

/// Service `db` (addresses 10.96.0.10 and 10.97.0.10, TCP ports 5432 and 5433) with endpoint
/// `v1` on 127.0.0.1 port `v1` and endpoint `v2` on port `v2` (for both service ports), its
/// subsets `v1` and `v2`, balanced round-robin, and the VirtualService `tcp` rules `tcp`
/// (YAML list items, indented two spaces).
fn config(v1: u16, v2: u16, tcp: &str) -> MeshConfig {
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: db }}
spec:
  hosts: [{HOST}]
  addresses: [{VIP}, 10.97.0.10]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{ number: 5432, name: tcp, protocol: TCP }}
  - {{ number: 5433, name: tcp-admin, protocol: TCP }}
  endpoints:
  - {{ address: 127.0.0.1, ports: {{ tcp: {v1}, tcp-admin: {v1} }}, labels: {{ version: v1 }} }}
  - {{ address: 127.0.0.1, ports: {{ tcp: {v2}, tcp-admin: {v2} }}, labels: {{ version: v2 }} }}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: db }}
spec:
  host: {HOST}
  trafficPolicy: {{ loadBalancer: {{ simple: ROUND_ROBIN }} }}
  subsets:
  - {{ name: v1, labels: {{ version: v1 }} }}
  - {{ name: v2, labels: {{ version: v2 }} }}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: db }}
spec:
  hosts: [{HOST}]
  tcp:
{tcp}"#
    );
    let loaded = mesh_core::istio::load(&[("db.yaml", yaml.as_str())], &Workload::default());
    loaded
        .config
        .unwrap_or_else(|| panic!("{:#?}", loaded.diagnostics))
}

/// Two upstreams named `v1` and `v2`, and `config` with them and the rules `tcp`.
async fn setup(tcp: &str) -> (MeshConfig, u16, u16) {
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    (config(v1, v2, tcp), v1, v2)
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Carries one intercepted connection to `dst` through `outbound`: the name of the upstream
/// that answered, or `None` when the forwarder closed it.
async fn through(outbound: &TcpOutbound, dst: SocketAddr) -> Option<String> {
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
    let read = tokio::time::timeout(Duration::from_secs(10), app.read_exact(&mut got))
        .await
        .expect("carried or closed within 10 s");
    task.abort();
    read.ok()?;
    assert_eq!(&got[2..], b"ping", "echoed through the forwarder");
    Some(String::from_utf8_lossy(&got[..2]).into_owned())
}

/// `n` connections to `dst`, one after the other.
async fn many(outbound: &TcpOutbound, dst: SocketAddr, n: usize) -> Vec<Option<String>> {
    let mut reached = Vec::new();
    for _ in 0..n {
        reached.push(through(outbound, dst).await);
    }
    reached
}

fn names(names: &[&str]) -> Vec<Option<String>> {
    names.iter().map(|n| Some((*n).to_owned())).collect()
}

#[tokio::test]
async fn an_80_20_split_sends_each_connection_where_the_seeded_draw_says() {
    let (config, ..) = setup(
        "  - route:\n    - { destination: { host: db, subset: v1 }, weight: 80 }\n    - { destination: { host: db, subset: v2 }, weight: 20 }\n",
    )
    .await;
    let store = Arc::new(ConfigStore::new(config));
    let outbound = TcpOutbound::new(store).balancer(BalanceLayer::new(Rng::with_seed(7)));
    const N: usize = 200;
    let reached = many(&outbound, addr(VIP, 5432), N).await;
    // Round-robin over one endpoint draws nothing: the split's draws are the seed's, in order.
    let replay = Rng::with_seed(7);
    let expected: Vec<Option<String>> = (0..N)
        .map(|_| Some(if replay.below(100) < 80 { "v1" } else { "v2" }.to_owned()))
        .collect();
    assert_eq!(reached, expected);
    let to_v1 = reached
        .iter()
        .filter(|r| r.as_deref() == Some("v1"))
        .count();
    assert!(
        (140..=180).contains(&to_v1),
        "80% of {N} give or take 20: {to_v1}"
    );
}

#[tokio::test]
async fn a_port_match_sends_each_port_to_its_own_subset() {
    let (config, ..) = setup(
        "  - match: [{ port: 5432 }]\n    route: [{ destination: { host: db, subset: v1 } }]\n  - match: [{ port: 5433 }]\n    route: [{ destination: { host: db, subset: v2 } }]\n",
    )
    .await;
    let outbound = TcpOutbound::new(Arc::new(ConfigStore::new(config)));
    assert_eq!(
        many(&outbound, addr(VIP, 5432), 3).await,
        names(&["v1", "v1", "v1"])
    );
    assert_eq!(
        many(&outbound, addr(VIP, 5433), 3).await,
        names(&["v2", "v2", "v2"])
    );
    // The routed cluster is the target, so its service names the metrics and its policy
    // (TLS, outlier detection, connection limit) applies.
    let Some(TcpTarget::Cluster { cluster, .. }) = outbound.resolve(addr(VIP, 5433)) else {
        panic!("a cluster");
    };
    assert_eq!(cluster.name, ClusterName::outbound(5433, Some("v2"), HOST));
    assert_eq!(cluster.service.as_str(), HOST);
}

#[tokio::test]
async fn a_destination_subnet_match_takes_only_addresses_in_it() {
    let (config, ..) = setup(
        "  - match: [{ destinationSubnets: [10.97.0.0/16] }]\n    route: [{ destination: { host: db, subset: v2 } }]\n",
    )
    .await;
    let outbound = TcpOutbound::new(Arc::new(ConfigStore::new(config)));
    assert_eq!(
        many(&outbound, addr("10.97.0.10", 5432), 4).await,
        names(&["v2", "v2", "v2", "v2"])
    );
    // The other address is not in the subnet: the service's own cluster, round-robin over
    // both endpoints.
    assert_eq!(
        many(&outbound, addr(VIP, 5432), 4).await,
        names(&["v1", "v2", "v1", "v2"])
    );
}

#[tokio::test]
async fn without_a_matching_rule_a_connection_goes_to_the_services_own_cluster() {
    let (config, ..) = setup(
        "  - match: [{ sourceNamespace: elsewhere }, { sourceLabels: { app: web } }]\n    route: [{ destination: { host: db, subset: v1 } }]\n",
    )
    .await;
    let store = Arc::new(ConfigStore::new(config.clone()));
    let outbound = TcpOutbound::new(store.clone());
    assert_eq!(
        many(&outbound, addr(VIP, 5432), 4).await,
        names(&["v1", "v2", "v1", "v2"])
    );
    // The workload with the label takes the rule (the snapshot's workload is the one matched).
    let mut web = config;
    web.workload.labels.insert("app".into(), "web".into());
    store.publish(web);
    assert_eq!(
        many(&outbound, addr(VIP, 5432), 4).await,
        names(&["v1", "v1", "v1", "v1"])
    );
}

#[tokio::test]
async fn a_connection_to_an_endpoints_own_address_is_not_routed() {
    let (config, _, v2) = setup("  - route: [{ destination: { host: db, subset: v1 } }]\n").await;
    let outbound = TcpOutbound::new(Arc::new(ConfigStore::new(config)));
    assert_eq!(
        many(&outbound, addr("127.0.0.1", v2), 2).await,
        names(&["v2", "v2"])
    );
    assert_eq!(
        many(&outbound, addr(VIP, 5432), 2).await,
        names(&["v1", "v1"])
    );
}

#[tokio::test]
async fn a_drawn_cluster_missing_from_the_snapshot_closes_the_connection() {
    let (mut config, ..) = setup("  - route: [{ destination: { host: db, subset: v2 } }]\n").await;
    config
        .clusters
        .remove(&ClusterName::outbound(5432, Some("v2"), HOST));
    let outbound = TcpOutbound::new(Arc::new(ConfigStore::new(config)));
    assert_eq!(many(&outbound, addr(VIP, 5432), 2).await, [None, None]);
    assert_eq!(outbound.resolve(addr(VIP, 5432)), None);
}

#[tokio::test]
async fn a_tcp_forward_port_takes_the_rules_of_its_service_port() {
    let (config, ..) = setup(
        "  - match: [{ port: 5432, destinationSubnets: [10.96.0.0/16] }]\n    route: [{ destination: { host: db, subset: v2 } }]\n",
    )
    .await;
    let store = Arc::new(ConfigStore::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    let forward = TcpForward::new(store, HOST, 5432);
    tokio::spawn(serve_tcp(listener, forward, std::future::pending()));
    for _ in 0..3 {
        let mut client = TcpStream::connect(local).await.unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut got))
            .await
            .expect("carried within 10 s")
            .unwrap();
        // Seen as a connection to the service's first address: the subnet matches.
        assert_eq!(&got, b"v2ping");
    }
}
