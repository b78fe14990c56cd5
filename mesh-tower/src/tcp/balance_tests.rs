//! The DestinationRule's `loadBalancer` for TCP: which endpoint each forwarded connection
//! reaches, with real sockets on 127.0.0.1 (algorithm, weights, least-request over open
//! connections, source-IP hashing, locality failover), and the open connections in
//! `/clusters`.

use super::testing::{HOST, cluster_name, db_config, forwarder};
use super::*;
use crate::admin::{Admin, Readiness};
use crate::rng::Rng;
use http_body_util::BodyExt;
use mesh_core::model::{Locality, MeshConfig};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tower::ServiceExt;

/// Test upstreams: listener `i` hands each connection it accepts to the test, as `i`, so the
/// test holds it open or drops it.
struct Upstreams {
    tx: mpsc::UnboundedSender<(usize, TcpStream)>,
    rx: mpsc::UnboundedReceiver<(usize, TcpStream)>,
}

impl Upstreams {
    fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self { tx, rx }
    }

    /// Listens on an ephemeral port as upstream `i`; the port.
    async fn listen(&self, i: usize) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if tx.send((i, stream)).is_err() {
                    break;
                }
            }
        });
        port
    }

    /// The next connection an upstream accepted, and which upstream.
    async fn accepted(&mut self) -> (usize, TcpStream) {
        tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("an upstream accepts within 10 s")
            .expect("the upstreams are listening")
    }

    /// Makes `n` connections through the forwarder on `local`, one after the other, each
    /// closed once an upstream has it; how many each upstream got.
    async fn count(&mut self, local: SocketAddr, n: usize, upstreams: usize) -> Vec<usize> {
        let mut counts = vec![0; upstreams];
        for _ in 0..n {
            let client = TcpStream::connect(local).await.unwrap();
            let (i, _upstream) = self.accepted().await;
            counts[i] += 1;
            drop(client);
        }
        counts
    }
}

/// [`db_config`] for a workload in `us-east/a`, `endpoints` as `(port, weight, locality)`.
fn config(endpoints: &[(u16, u32, &str)], policy: &str) -> MeshConfig {
    let workload = Workload {
        locality: Locality::parse("us-east/a"),
        ..Workload::default()
    };
    db_config(endpoints, policy, workload)
}

#[tokio::test]
async fn round_robin_and_random_split_connections_by_endpoint_weight() {
    for (algorithm, balancer) in [
        ("ROUND_ROBIN", BalanceLayer::default()),
        ("RANDOM", BalanceLayer::new(Rng::with_seed(11))),
    ] {
        let mut upstreams = Upstreams::new();
        let (heavy, light) = (upstreams.listen(0).await, upstreams.listen(1).await);
        let store = Arc::new(ConfigStore::new(config(
            &[(heavy, 3, "us-east/a"), (light, 1, "us-east/a")],
            &format!("{{ loadBalancer: {{ simple: {algorithm} }} }}"),
        )));
        let local = forwarder(&store, &balancer).await;
        let counts = upstreams.count(local, 400, 2).await;
        if algorithm == "ROUND_ROBIN" {
            // Weighted round-robin is exact: 3 of every 4 turns go to the weight-3 endpoint.
            assert_eq!(counts, [300, 100]);
        } else {
            // 300 expected, standard deviation under 9: the bound is over 5 of them (and the
            // seed is fixed); an even split (200) is far outside.
            assert!((255..=345).contains(&counts[0]), "{counts:?}");
        }
    }
}

#[tokio::test]
async fn least_request_sends_new_connections_away_from_an_endpoint_holding_open_ones() {
    let mut upstreams = Upstreams::new();
    let (busy, idle) = (upstreams.listen(0).await, upstreams.listen(1).await);
    let policy = "{ loadBalancer: { simple: LEAST_REQUEST } }";
    let store = Arc::new(ConfigStore::new(config(&[(busy, 1, "us-east/a")], policy)));
    let balancer = BalanceLayer::new(Rng::with_seed(3));
    let local = forwarder(&store, &balancer).await;
    // Three connections held open to the only endpoint.
    let mut held = Vec::new();
    for _ in 0..3 {
        let client = TcpStream::connect(local).await.unwrap();
        let (i, upstream) = upstreams.accepted().await;
        assert_eq!(i, 0);
        held.push((client, upstream));
    }
    let state = balancer
        .endpoint_state(&cluster_name(), &format!("127.0.0.1:{busy}"))
        .unwrap();
    assert_eq!(state.active.load(Ordering::Relaxed), 3);

    // A second endpoint joins (the first keeps its state): with 3 open at the first, the
    // next three, held open too, all go to the second (2 choices of 2 endpoints: the less
    // loaded one, every time).
    store.publish(config(
        &[(busy, 1, "us-east/a"), (idle, 1, "us-east/a")],
        policy,
    ));
    for _ in 0..3 {
        let client = TcpStream::connect(local).await.unwrap();
        let (i, upstream) = upstreams.accepted().await;
        assert_eq!(i, 1, "the endpoint with fewer open connections");
        held.push((client, upstream));
    }
}

#[tokio::test]
async fn use_source_ip_sends_every_connection_from_one_source_to_one_endpoint() {
    let mut upstreams = Upstreams::new();
    let mut ports = Vec::new();
    for i in 0..4 {
        ports.push((upstreams.listen(i).await, 1, "us-east/a"));
    }
    let store = Arc::new(ConfigStore::new(config(
        &ports,
        "{ loadBalancer: { consistentHash: { useSourceIp: true } } }",
    )));
    let balancer = BalanceLayer::new(Rng::with_seed(5));
    // Every connection comes from 127.0.0.1: one endpoint takes them all.
    let local = forwarder(&store, &balancer).await;
    let counts = upstreams.count(local, 20, 4).await;
    assert_eq!(counts.iter().filter(|n| **n > 0).count(), 1, "{counts:?}");

    // Intercepted TCP hashes the client's address the same way: the same source reaches
    // the same endpoint (the client addresses are only hashed; the traffic stays on
    // 127.0.0.1), and different sources spread over the endpoints.
    let outbound = TcpOutbound::new(store).balancer(balancer);
    let vip: SocketAddr = "10.96.0.10:5432".parse().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for last in 1..=16u8 {
        let source = [10, 0, 0, last];
        let first = intercepted(&outbound, &mut upstreams, source, vip).await;
        let again = intercepted(&outbound, &mut upstreams, source, vip).await;
        assert_eq!(first, again, "source {source:?} sticks to one endpoint");
        seen.insert(first);
    }
    assert!(seen.len() > 1, "16 sources all on endpoint {seen:?}");
}

/// Which upstream an intercepted connection from `source` to `dst` reaches.
async fn intercepted(
    outbound: &TcpOutbound,
    upstreams: &mut Upstreams,
    source: [u8; 4],
    dst: SocketAddr,
) -> usize {
    let (_app, proxy_side) = tokio::io::duplex(64);
    let outbound = outbound.clone();
    let conn = ConnectionInfo {
        peer: (source, 40000).into(),
        local: dst,
        redirected: true,
    };
    let task = tokio::spawn(async move { outbound.forward(proxy_side, conn).await });
    let (i, _upstream) = upstreams.accepted().await;
    task.abort();
    i
}

#[tokio::test]
async fn locality_keeps_connections_local_and_fails_over_when_the_local_endpoint_is_ejected() {
    let mut upstreams = Upstreams::new();
    let remote = upstreams.listen(0).await;
    let local_endpoint = {
        // Nothing listens yet: the local endpoint refuses until it is up.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    // Locality load balancing needs outlier detection, as in Istio.
    let store = Arc::new(ConfigStore::new(config(
        &[(remote, 1, "eu-west/b"), (local_endpoint, 1, "us-east/a")],
        "{ loadBalancer: { simple: ROUND_ROBIN }, \
           outlierDetection: { consecutive5xxErrors: 1, baseEjectionTime: 1h, maxEjectionPercent: 100 } }",
    )));
    let balancer = BalanceLayer::default();
    let local = forwarder(&store, &balancer).await;

    // The first connection goes to the workload's own locality, is refused there, and that
    // endpoint is ejected: the next ones fail over to the other region.
    let mut client = TcpStream::connect(local).await.unwrap();
    let mut buf = [0; 1];
    let closed = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "{closed:?}");
    assert!(upstreams.rx.try_recv().is_err(), "not the remote endpoint");
    assert_eq!(upstreams.count(local, 6, 2).await, [6, 0]);

    // Up again, and an hour later (the base ejection time) back from its ejection: every
    // connection stays local again. (The clock moves while nothing is in flight.)
    let listener = TcpListener::bind(("127.0.0.1", local_endpoint))
        .await
        .unwrap();
    let tx = upstreams.tx.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = tx.send((1, stream));
        }
    });
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(3600)).await;
    tokio::time::resume();
    assert_eq!(upstreams.count(local, 6, 2).await, [0, 6]);
}

/// Endpoint `port`'s `field` in `/clusters`.
async fn clusters_field(admin: &Admin, port: u16, field: &str) -> String {
    let response = admin
        .clone()
        .oneshot(
            http::Request::get("/clusters")
                .body(crate::body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let clusters = String::from_utf8(body.to_vec()).unwrap();
    let prefix = format!("{}::127.0.0.1:{port}::{field}::", cluster_name());
    clusters
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {clusters}"))
        .to_owned()
}

#[tokio::test]
async fn clusters_shows_open_tcp_connections_while_they_last() {
    let mut upstreams = Upstreams::new();
    let port = upstreams.listen(0).await;
    let store = Arc::new(ConfigStore::new(config(
        &[(port, 1, "us-east/a")],
        "{ loadBalancer: { simple: ROUND_ROBIN } }",
    )));
    let balancer = BalanceLayer::default();
    let admin = Admin::new(store.clone(), Readiness::default()).balancer(balancer.clone());
    let forward = TcpForward::new(store, HOST, 5432).balancer(balancer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();

    // Two connections carried, each by a forwarding task the test can wait for.
    let mut open = Vec::new();
    for _ in 0..2 {
        let client = TcpStream::connect(local).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let forward = forward.clone();
        let task = tokio::spawn(async move { forward.forward(stream).await });
        let (_, upstream) = upstreams.accepted().await;
        open.push((client, upstream, task));
    }
    assert_eq!(clusters_field(&admin, port, "cx_active").await, "2");
    assert_eq!(clusters_field(&admin, port, "rq_active").await, "2");

    // One closes at both ends: once its forwarding has ended, it no longer counts.
    let (client, upstream, task) = open.remove(0);
    drop((client, upstream));
    task.await.unwrap();
    assert_eq!(clusters_field(&admin, port, "cx_active").await, "1");
    assert_eq!(clusters_field(&admin, port, "rq_active").await, "1");
    let (client, upstream, task) = open.remove(0);
    drop((client, upstream));
    task.await.unwrap();
    assert_eq!(clusters_field(&admin, port, "cx_active").await, "0");
    assert_eq!(clusters_field(&admin, port, "rq_active").await, "0");
}
