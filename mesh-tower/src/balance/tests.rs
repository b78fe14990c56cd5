use super::*;
use crate::body;
use crate::split::Target;
use mesh_core::model::{Address, LoadBalancer, Locality, OutlierDetection, TrafficPolicy};
use tower::ServiceExt;

fn endpoint(port: u16, weight: u32, region: &str) -> Endpoint {
    Endpoint {
        address: Address::Ip([127, 0, 0, 1].into()),
        port,
        labels: Default::default(),
        weight,
        locality: Locality {
            region: region.into(),
            zone: String::new(),
            subzone: String::new(),
        },
        health: HealthStatus::Healthy,
        service_account: None,
        namespace: None,
        priority: 0,
        workload: None,
        cluster_id: None,
    }
}

fn cluster(endpoints: Vec<Endpoint>, policy: TrafficPolicy) -> Arc<Cluster> {
    Arc::new(Cluster {
        name: ClusterName::new("outbound|80||hello.default.svc.cluster.local"),
        service: "hello.default.svc.cluster.local".into(),
        port: 80,
        subset: None,
        subset_labels: Default::default(),
        protocol: mesh_core::model::Protocol::Http,
        endpoints,
        policy,
    })
}

fn policy(algorithm: LbAlgorithm) -> TrafficPolicy {
    TrafficPolicy {
        load_balancer: LoadBalancer {
            algorithm,
            ..LoadBalancer::default()
        },
        ..TrafficPolicy::default()
    }
}

type Counts = Arc<Mutex<HashMap<u16, usize>>>;
type TestUpstream = tower::util::BoxCloneSyncService<Request<BoxBody>, Response<BoxBody>, BoxError>;

/// An upstream answering each endpoint port with the status `status(port)`, counting tries.
fn upstream(status: impl Fn(u16) -> u16 + Send + Sync + 'static) -> (TestUpstream, Counts) {
    let counts = Arc::new(Mutex::new(HashMap::default()));
    let status = Arc::new(status);
    let seen = counts.clone();
    let service = tower::service_fn(move |req: Request<BoxBody>| {
        let port = RequestContext::of(&req)
            .and_then(|c| c.upstream.as_ref())
            .unwrap()
            .authority
            .port_u16()
            .unwrap();
        *seen.lock().unwrap().entry(port).or_insert(0) += 1;
        let mut response = Response::new(body::empty());
        *response.status_mut() = http::StatusCode::from_u16(status(port)).unwrap();
        std::future::ready(Ok::<_, BoxError>(response))
    });
    (tower::util::BoxCloneSyncService::new(service), counts)
}

/// An upstream answering each endpoint port after `delay_ms(port)` milliseconds, counting
/// tries.
fn timed_upstream(delay_ms: impl Fn(u16) -> u64 + Send + Sync + 'static) -> (TestUpstream, Counts) {
    let counts: Counts = Arc::default();
    let seen = counts.clone();
    let delay_ms = Arc::new(delay_ms);
    let service = tower::service_fn(move |req: Request<BoxBody>| {
        let port = RequestContext::of(&req)
            .and_then(|c| c.upstream.as_ref())
            .unwrap()
            .authority
            .port_u16()
            .unwrap();
        *seen.lock().unwrap().entry(port).or_insert(0) += 1;
        let delay = Duration::from_millis(delay_ms(port));
        async move {
            tokio::time::sleep(delay).await;
            Ok::<_, BoxError>(Response::new(body::empty()))
        }
    });
    (TestUpstream::new(service), counts)
}

fn request(cluster: &Arc<Cluster>) -> Request<BoxBody> {
    let mut req = Request::new(body::empty());
    RequestContext::of_mut(&mut req).target = Some(Target {
        cluster: cluster.clone(),
    });
    req
}

#[tokio::test(start_paused = true)]
async fn round_robin_and_random_honour_weights() {
    for algorithm in [
        LbAlgorithm::RoundRobin,
        LbAlgorithm::Random,
        LbAlgorithm::LeastRequest,
    ] {
        let c = cluster(
            vec![endpoint(1, 1, ""), endpoint(2, 3, "")],
            policy(algorithm.clone()),
        );
        let (up, counts) = upstream(|_| 200);
        let svc = BalanceLayer::new(Rng::with_seed(5)).layer(up);
        for _ in 0..4_000 {
            svc.clone().oneshot(request(&c)).await.unwrap();
        }
        let counts = counts.lock().unwrap();
        let share = counts[&2] as f64 / 4_000.0;
        assert!((0.70..=0.80).contains(&share), "{algorithm:?}: {counts:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_endpoint_is_ejected_then_restored_and_the_cap_holds() {
    let od = OutlierDetection {
        consecutive_5xx_errors: Some(5),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_percent: 50,
        ..OutlierDetection::default()
    };
    let mut p = policy(LbAlgorithm::RoundRobin);
    p.outlier_detection = Some(od);
    let c = cluster(
        vec![
            endpoint(1, 1, ""),
            endpoint(2, 1, ""),
            endpoint(3, 1, ""),
            endpoint(4, 1, ""),
        ],
        p,
    );
    let (up, counts) = upstream(|port| if port == 1 { 500 } else { 200 });
    let layer = BalanceLayer::new(Rng::with_seed(5));
    let svc = layer.layer(up);
    for _ in 0..100 {
        svc.clone().oneshot(request(&c)).await.unwrap();
    }
    assert_eq!(
        counts.lock().unwrap()[&1],
        5,
        "ejected after exactly 5 consecutive 5xx"
    );
    let state = layer.endpoint_state(&c.name, "127.0.0.1:1").unwrap();
    assert!(state.outlier.is_ejected(Instant::now()));

    tokio::time::advance(Duration::from_secs(31)).await;
    for _ in 0..100 {
        svc.clone().oneshot(request(&c)).await.unwrap();
    }
    assert_eq!(
        counts.lock().unwrap()[&1],
        10,
        "back after the ejection time, ejected again"
    );
    assert_eq!(state.outlier.times_ejected(), 2);

    // A config swap that keeps the endpoint keeps its state.
    let swapped = cluster(c.endpoints.clone(), c.policy.clone());
    svc.clone().oneshot(request(&swapped)).await.unwrap();
    let again = layer.endpoint_state(&c.name, "127.0.0.1:1").unwrap();
    assert!(Arc::ptr_eq(&state, &again));
    assert!(again.outlier.is_ejected(Instant::now()));
}

fn with_health(mut e: Endpoint, health: HealthStatus) -> Endpoint {
    e.health = health;
    e
}

#[tokio::test(start_paused = true)]
async fn degraded_endpoints_serve_only_when_no_healthy_one_is_left() {
    for algorithm in [
        LbAlgorithm::RoundRobin,
        LbAlgorithm::Random,
        LbAlgorithm::LeastRequest,
    ] {
        // Healthy endpoints present: the degraded one gets nothing.
        let c = cluster(
            vec![
                endpoint(1, 1, ""),
                with_health(endpoint(2, 1, ""), HealthStatus::Degraded),
                endpoint(3, 1, ""),
            ],
            policy(algorithm.clone()),
        );
        let (up, counts) = upstream(|_| 200);
        let svc = BalanceLayer::new(Rng::with_seed(5)).layer(up);
        for _ in 0..200 {
            svc.clone().oneshot(request(&c)).await.unwrap();
        }
        let counts = counts.lock().unwrap().clone();
        assert_eq!(counts.get(&2), None, "{algorithm:?}: {counts:?}");
        assert_eq!(counts[&1] + counts[&3], 200, "{algorithm:?}");

        // Only degraded (and unhealthy) endpoints: the degraded ones serve.
        let c = cluster(
            vec![
                with_health(endpoint(1, 1, ""), HealthStatus::Unhealthy),
                with_health(endpoint(2, 1, ""), HealthStatus::Degraded),
                with_health(endpoint(3, 1, ""), HealthStatus::Degraded),
            ],
            policy(algorithm.clone()),
        );
        let (up, counts) = upstream(|_| 200);
        let svc = BalanceLayer::new(Rng::with_seed(5)).layer(up);
        for _ in 0..200 {
            svc.clone().oneshot(request(&c)).await.unwrap();
        }
        let counts = counts.lock().unwrap().clone();
        assert_eq!(counts.get(&1), None, "{algorithm:?}: {counts:?}");
        assert!(
            counts[&2] > 50 && counts[&3] > 50,
            "{algorithm:?}: {counts:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn degraded_endpoints_take_over_while_every_healthy_one_is_ejected() {
    let od = OutlierDetection {
        consecutive_5xx_errors: Some(1),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_percent: 100,
        ..OutlierDetection::default()
    };
    let mut p = policy(LbAlgorithm::RoundRobin);
    p.outlier_detection = Some(od);
    let c = cluster(
        vec![
            endpoint(1, 1, ""),
            with_health(endpoint(2, 1, ""), HealthStatus::Degraded),
        ],
        p,
    );
    let healthy_fails = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let fails = healthy_fails.clone();
    let (up, counts) = upstream(move |port| {
        if port == 1 && fails.load(Ordering::Relaxed) {
            500
        } else {
            200
        }
    });
    let svc = BalanceLayer::new(Rng::with_seed(5)).layer(up);
    for _ in 0..10 {
        svc.clone().oneshot(request(&c)).await.unwrap();
    }
    assert_eq!(
        counts.lock().unwrap().clone(),
        [(1, 1), (2, 9)].into_iter().collect(),
        "one 5xx ejects the healthy endpoint; the degraded one takes the rest"
    );
    // Back from ejection, the healthy endpoint has all the traffic again.
    healthy_fails.store(false, Ordering::Relaxed);
    tokio::time::advance(Duration::from_secs(31)).await;
    for _ in 0..10 {
        svc.clone().oneshot(request(&c)).await.unwrap();
    }
    assert_eq!(
        counts.lock().unwrap().clone(),
        [(1, 11), (2, 9)].into_iter().collect()
    );
}

#[tokio::test(start_paused = true)]
async fn at_most_max_ejection_percent_is_ejected_and_panic_mode_uses_all() {
    let mut od = OutlierDetection {
        consecutive_5xx_errors: Some(1),
        max_ejection_percent: 50,
        ..OutlierDetection::default()
    };
    let mut p = policy(LbAlgorithm::RoundRobin);
    p.outlier_detection = Some(od.clone());
    let c = cluster((1..=4).map(|port| endpoint(port, 1, "")).collect(), p);
    let (up, _) = upstream(|_| 500);
    let layer = BalanceLayer::new(Rng::with_seed(5));
    let svc = layer.layer(up);
    for _ in 0..40 {
        svc.clone().oneshot(request(&c)).await.unwrap();
    }
    let now = Instant::now();
    let ejected = (1..=4)
        .filter(|port| {
            layer
                .endpoint_state(&c.name, &format!("127.0.0.1:{port}"))
                .unwrap()
                .outlier
                .is_ejected(now)
        })
        .count();
    assert_eq!(ejected, 2, "never more than 50% of 4");

    // Panic mode: with minHealthPercent 75 and half ejected, traffic spreads over all four.
    od.min_health_percent = 75;
    let mut p = policy(LbAlgorithm::RoundRobin);
    p.outlier_detection = Some(od);
    let c2 = cluster(c.endpoints.clone(), p);
    let (up, counts) = upstream(|_| 200);
    let svc = layer.layer(up);
    for _ in 0..40 {
        svc.clone().oneshot(request(&c2)).await.unwrap();
    }
    assert_eq!(
        counts.lock().unwrap().len(),
        4,
        "{:?}",
        counts.lock().unwrap()
    );
}

#[tokio::test(start_paused = true)]
async fn consistent_hash_keeps_a_key_on_one_endpoint_across_swaps() {
    for table in [
        HashTable::RingHash {
            minimum_ring_size: 1024,
        },
        HashTable::Maglev { table_size: 65_537 },
    ] {
        let ch = ConsistentHash {
            key: HashKey::Header("x-user".into()),
            table,
        };
        let c = cluster(
            (1..=5).map(|port| endpoint(port, 1, "")).collect(),
            policy(LbAlgorithm::ConsistentHash(ch)),
        );
        let (up, counts) = upstream(|_| 200);
        let svc = BalanceLayer::new(Rng::with_seed(5)).layer(up);
        let send = |c: &Arc<Cluster>, user: &str| {
            let mut req = request(c);
            req.headers_mut()
                .insert("x-user", HeaderValue::from_str(user).unwrap());
            svc.clone().oneshot(req)
        };
        for _ in 0..10_000 {
            send(&c, "user-42").await.unwrap();
        }
        assert_eq!(
            counts.lock().unwrap().len(),
            1,
            "{table:?}: one endpoint for one key"
        );
        let swapped = cluster(c.endpoints.clone(), c.policy.clone());
        send(&swapped, "user-42").await.unwrap();
        assert_eq!(
            counts.lock().unwrap().len(),
            1,
            "{table:?}: the same after a swap"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_cookie_is_set_when_absent() {
    let ch = ConsistentHash {
        key: HashKey::Cookie {
            name: "session".into(),
            path: Some("/".into()),
            ttl: Some(Duration::from_secs(60)),
            attributes: vec![
                ("SameSite".into(), "Strict".into()),
                ("Secure".into(), String::new()),
            ],
        },
        table: HashTable::default(),
    };
    let c = cluster(
        vec![endpoint(1, 1, ""), endpoint(2, 1, "")],
        policy(LbAlgorithm::ConsistentHash(ch)),
    );
    let (up, _) = upstream(|_| 200);
    let response = BalanceLayer::new(Rng::with_seed(1))
        .layer(up)
        .oneshot(request(&c))
        .await
        .unwrap();
    let cookie = response.headers()[http::header::SET_COOKIE]
        .to_str()
        .unwrap();
    assert!(
        cookie.starts_with("session=")
            && cookie.contains("; Max-Age=60")
            && cookie.contains("; Path=/")
            && cookie.contains("; SameSite=Strict")
            && cookie.contains("; Secure;")
            && cookie.ends_with("; HttpOnly"),
        "{cookie}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_request_that_sets_the_cookie_goes_where_the_cookie_then_leads() {
    for table in [
        HashTable::RingHash {
            minimum_ring_size: 1024,
        },
        HashTable::Maglev { table_size: 65_537 },
    ] {
        let ch = ConsistentHash {
            key: HashKey::Cookie {
                name: "session".into(),
                path: None,
                ttl: Some(Duration::from_secs(60)),
                attributes: Vec::new(),
            },
            table,
        };
        let c = cluster(
            (1..=4).map(|port| endpoint(port, 1, "")).collect(),
            policy(LbAlgorithm::ConsistentHash(ch)),
        );
        let mut first_ports = std::collections::HashSet::new();
        for seed in 0..50 {
            let (up, counts) = upstream(|_| 200);
            let svc = BalanceLayer::new(Rng::with_seed(seed)).layer(up);
            let response = svc.clone().oneshot(request(&c)).await.unwrap();
            let first = *counts.lock().unwrap().keys().next().unwrap();
            first_ports.insert(first);
            let set_cookie = response.headers()[http::header::SET_COOKIE]
                .to_str()
                .unwrap()
                .to_owned();
            let pair = set_cookie.split(';').next().unwrap().to_owned();
            for _ in 0..3 {
                let mut again = request(&c);
                again
                    .headers_mut()
                    .insert(http::header::COOKIE, pair.parse().unwrap());
                let response = svc.clone().oneshot(again).await.unwrap();
                assert!(
                    !response.headers().contains_key(http::header::SET_COOKIE),
                    "a request with the cookie gets no new one"
                );
            }
            let counts = counts.lock().unwrap();
            assert_eq!(
                counts.len(),
                1,
                "{table:?} seed {seed}: {pair} went to {counts:?}"
            );
            assert_eq!(counts[&first], 4);
        }
        assert!(
            first_ports.len() > 1,
            "{table:?}: new cookies spread over the endpoints"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_new_cookie_is_made_from_the_client_connection_as_envoy_does() {
    let ch = ConsistentHash {
        key: HashKey::Cookie {
            name: "session".into(),
            path: None,
            ttl: Some(Duration::from_secs(60)),
            attributes: Vec::new(),
        },
        table: HashTable::default(),
    };
    let c = cluster(
        (1..=4).map(|port| endpoint(port, 1, "")).collect(),
        policy(LbAlgorithm::ConsistentHash(ch)),
    );
    let (up, _) = upstream(|_| 200);
    let svc = BalanceLayer::new(Rng::with_seed(1)).layer(up);
    let cookie_for = |peer: &str| {
        let mut req = request(&c);
        req.extensions_mut().insert(crate::server::ConnectionInfo {
            peer: peer.parse().unwrap(),
            local: "127.0.0.1:15001".parse().unwrap(),
        });
        let svc = svc.clone();
        async move {
            let response = svc.oneshot(req).await.unwrap();
            response.headers()[http::header::SET_COOKIE]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    let a = cookie_for("10.0.0.1:40000").await;
    assert_eq!(a, cookie_for("10.0.0.1:40000").await, "one per connection");
    assert_ne!(a, cookie_for("10.0.0.2:40000").await);
}

#[tokio::test(start_paused = true)]
async fn locality_keeps_traffic_local_and_fails_over_when_local_is_ejected() {
    let od = OutlierDetection {
        consecutive_5xx_errors: Some(1),
        max_ejection_percent: 100,
        ..OutlierDetection::default()
    };
    let mut p = policy(LbAlgorithm::RoundRobin);
    p.outlier_detection = Some(od);
    let c = cluster(
        vec![
            endpoint(1, 1, "us-east"),
            endpoint(2, 1, "us-east"),
            endpoint(3, 1, "eu-west"),
        ],
        p,
    );
    let snapshot = Arc::new(mesh_core::store::ConfigStore::new(
        mesh_core::model::MeshConfig {
            workload: mesh_core::model::Workload {
                locality: Locality::parse("us-east"),
                ..Default::default()
            },
            ..Default::default()
        },
    ));
    let routed = || {
        let store = snapshot.clone();
        // A Routed needs a route; build one through the route layer's public path.
        store.load()
    };
    let local_down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = local_down.clone();
    let (up, counts) = upstream(move |port| {
        if flag.load(Ordering::SeqCst) && port != 3 {
            500
        } else {
            200
        }
    });
    let svc = BalanceLayer::new(Rng::with_seed(5)).layer(up);
    let send = |snap: Arc<mesh_core::store::Snapshot>| {
        let mut req = request(&c);
        RequestContext::of_mut(&mut req).routed = Some(crate::route::Routed::for_tests(snap));
        svc.clone().oneshot(req)
    };
    for _ in 0..1_000 {
        send(routed()).await.unwrap();
    }
    assert_eq!(
        counts.lock().unwrap().get(&3),
        None,
        "all local while local is healthy: {:?}",
        counts.lock().unwrap()
    );
    local_down.store(true, Ordering::SeqCst);
    counts.lock().unwrap().clear();
    let mut failures = 0;
    for _ in 0..1_000 {
        if send(routed()).await.unwrap().status() != 200 {
            failures += 1;
        }
    }
    assert_eq!(
        failures, 2,
        "one failure per local endpoint, then they are ejected"
    );
    assert_eq!(counts.lock().unwrap()[&3], 998);
}

#[tokio::test(start_paused = true)]
async fn a_retry_leaves_the_locality_only_when_the_route_allows_it() {
    let mut p = policy(LbAlgorithm::RoundRobin);
    p.outlier_detection = Some(OutlierDetection::default());
    let c = cluster(
        vec![endpoint(1, 1, "us-east"), endpoint(2, 1, "eu-west")],
        p,
    );
    let store = mesh_core::store::ConfigStore::new(mesh_core::model::MeshConfig {
        workload: mesh_core::model::Workload {
            locality: Locality::parse("us-east"),
            ..Default::default()
        },
        ..Default::default()
    });
    for (remote, expect_remote) in [(false, false), (true, true)] {
        let (up, counts) = upstream(|_| 200);
        let svc = BalanceLayer::new(Rng::with_seed(5)).layer(up);
        for _ in 0..100 {
            let mut req = request(&c);
            RequestContext::of_mut(&mut req).routed =
                Some(crate::route::Routed::for_tests(store.load()));
            RequestContext::of_mut(&mut req).attempt = Some(crate::telemetry::Attempt {
                number: 2,
                remote_localities: remote,
            });
            svc.clone().oneshot(req).await.unwrap();
        }
        let went_remote = counts.lock().unwrap().contains_key(&2);
        assert_eq!(
            went_remote,
            expect_remote,
            "retryRemoteLocalities {remote}: {:?}",
            counts.lock().unwrap()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn distribute_splits_traffic_between_localities_by_weight() {
    use mesh_core::model::{LocalityDistribute, LocalityLb};
    let mut p = policy(LbAlgorithm::RoundRobin);
    p.load_balancer.locality = Some(LocalityLb {
        distribute: vec![LocalityDistribute {
            from: "us-east/*".into(),
            to: vec![("us-east/*".into(), 80), ("eu-west/*".into(), 20)],
        }],
        ..LocalityLb::default()
    });
    let c = cluster(
        vec![endpoint(1, 1, "us-east"), endpoint(2, 1, "eu-west")],
        p,
    );
    let store = mesh_core::store::ConfigStore::new(mesh_core::model::MeshConfig {
        workload: mesh_core::model::Workload {
            locality: Locality::parse("us-east/a"),
            ..Default::default()
        },
        ..Default::default()
    });
    let (up, counts) = upstream(|_| 200);
    let svc = BalanceLayer::new(Rng::with_seed(9)).layer(up);
    for _ in 0..2_000 {
        let mut req = request(&c);
        RequestContext::of_mut(&mut req).routed =
            Some(crate::route::Routed::for_tests(store.load()));
        svc.clone().oneshot(req).await.unwrap();
    }
    let east = counts.lock().unwrap()[&1] as f64 / 2_000.0;
    assert!(
        (0.76..=0.84).contains(&east),
        "{:?}",
        counts.lock().unwrap()
    );
}

#[tokio::test(start_paused = true)]
async fn eds_locality_weights_split_traffic_scaled_by_each_localitys_healthy_share() {
    use mesh_core::model::{LocalityDistribute, LocalityLb};
    // The form xDS locality weights take: a rule for any workload locality (the workload's
    // own locality is unknown here).
    let mut p = policy(LbAlgorithm::RoundRobin);
    p.load_balancer.locality = Some(LocalityLb {
        distribute: vec![LocalityDistribute {
            from: "*".into(),
            to: vec![("r/z1/".into(), 20), ("r/z2/".into(), 80)],
        }],
        ..LocalityLb::default()
    });
    let in_zone = |port: u16, zone: &str, health: HealthStatus| Endpoint {
        locality: Locality::parse(&format!("r/{zone}")),
        health,
        ..endpoint(port, 1, "")
    };
    let share_of_z1 = |c: Arc<Cluster>| async move {
        let (up, counts) = upstream(|_| 200);
        let svc = BalanceLayer::new(Rng::with_seed(7)).layer(up);
        for _ in 0..4_000 {
            svc.clone().oneshot(request(&c)).await.unwrap();
        }
        let counts = counts.lock().unwrap();
        (counts.get(&1).copied().unwrap_or(0) + counts.get(&2).copied().unwrap_or(0)) as f64
            / 4_000.0
    };
    let healthy = HealthStatus::Healthy;
    let c = cluster(
        vec![
            in_zone(1, "z1", healthy),
            in_zone(2, "z1", healthy),
            in_zone(3, "z2", healthy),
            in_zone(4, "z2", healthy),
            in_zone(5, "z2", healthy),
            in_zone(6, "z2", healthy),
        ],
        p.clone(),
    );
    let share = share_of_z1(c).await;
    assert!((0.16..=0.24).contains(&share), "z1 takes 20%: {share}");

    // One of z2's four endpoints healthy: z2 weighs 80 x min(1, 1.4 x 1/4) = 28 against 20.
    let c = cluster(
        vec![
            in_zone(1, "z1", healthy),
            in_zone(2, "z1", healthy),
            in_zone(3, "z2", healthy),
            in_zone(4, "z2", HealthStatus::Unhealthy),
            in_zone(5, "z2", HealthStatus::Unhealthy),
            in_zone(6, "z2", HealthStatus::Unhealthy),
        ],
        p,
    );
    let share = share_of_z1(c).await;
    assert!((0.37..=0.47).contains(&share), "z1 takes 20/48: {share}");
}

#[tokio::test(start_paused = true)]
async fn failover_priority_prefers_endpoints_sharing_the_workloads_labels() {
    use mesh_core::model::LocalityLb;
    let mut p = policy(LbAlgorithm::RoundRobin);
    p.outlier_detection = Some(OutlierDetection::default());
    p.load_balancer.locality = Some(LocalityLb {
        failover_priority: vec!["topology.istio.io/network".into()],
        ..LocalityLb::default()
    });
    let mut same = endpoint(1, 1, "us-east");
    same.labels
        .insert("topology.istio.io/network".into(), "net-a".into());
    let mut other = endpoint(2, 1, "us-east");
    other
        .labels
        .insert("topology.istio.io/network".into(), "net-b".into());
    let c = cluster(vec![same, other], p);
    let store = mesh_core::store::ConfigStore::new(mesh_core::model::MeshConfig {
        workload: mesh_core::model::Workload {
            locality: Locality::parse("us-east"),
            labels: [("topology.istio.io/network".to_owned(), "net-a".to_owned())].into(),
            ..Default::default()
        },
        ..Default::default()
    });
    let (up, counts) = upstream(|_| 200);
    let svc = BalanceLayer::new(Rng::with_seed(3)).layer(up);
    for _ in 0..200 {
        let mut req = request(&c);
        RequestContext::of_mut(&mut req).routed =
            Some(crate::route::Routed::for_tests(store.load()));
        svc.clone().oneshot(req).await.unwrap();
    }
    assert_eq!(
        counts.lock().unwrap().get(&2),
        None,
        "{:?}",
        counts.lock().unwrap()
    );
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_steers_traffic_away_from_a_slow_endpoint_and_back_when_it_recovers() {
    let decay = Duration::from_secs(10);
    let c = cluster(
        (1..=3).map(|p| endpoint(p, 1, "")).collect(),
        policy(LbAlgorithm::PeakEwma { decay }),
    );
    let slow = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let is_slow = slow.clone();
    // Endpoint 1 answers in 200 ms while `slow`, the others in 5 ms.
    let (up, counts) = timed_upstream(move |port| {
        if port == 1 && is_slow.load(Ordering::Relaxed) {
            200
        } else {
            5
        }
    });
    let svc = BalanceLayer::new(Rng::with_seed(9)).layer(up);
    // 8 concurrent clients, 1,500 requests in all.
    let run = |n: usize| {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (svc, c) = (svc.clone(), c.clone());
                async move {
                    for _ in 0..n / 8 {
                        svc.clone().oneshot(request(&c)).await.unwrap();
                    }
                }
            })
            .collect();
        futures_util::future::join_all(tasks)
    };
    run(1_500).await;
    let slow_share = {
        let counts = counts.lock().unwrap();
        counts.get(&1).copied().unwrap_or(0) as f64 / counts.values().sum::<usize>() as f64
    };
    assert!(
        slow_share < 0.05,
        "the slow endpoint got {slow_share:.3} of the traffic"
    );

    // Recovered: as its estimate decays it is tried again, and its fast answers win it back.
    slow.store(false, Ordering::Relaxed);
    tokio::time::sleep(decay * 5).await;
    counts.lock().unwrap().clear();
    run(3_000).await;
    let counts = counts.lock().unwrap();
    let share = counts.get(&1).copied().unwrap_or(0) as f64 / 3_000.0;
    assert!(share > 0.25, "after recovery: {counts:?}");
}

#[tokio::test(start_paused = true)]
async fn least_request_does_not_see_latency_but_peak_ewma_does() {
    // The same slow endpoint under LEAST_REQUEST with one client at a time: in-flight counts
    // are all zero, so it keeps its third of the traffic; that is the gap peak EWMA fills.
    let c = cluster(
        (1..=3).map(|p| endpoint(p, 1, "")).collect(),
        policy(LbAlgorithm::LeastRequest),
    );
    let (up, counts) = timed_upstream(|port| if port == 1 { 200 } else { 5 });
    let svc = BalanceLayer::new(Rng::with_seed(9)).layer(up);
    for _ in 0..600 {
        svc.clone().oneshot(request(&c)).await.unwrap();
    }
    let share = counts.lock().unwrap()[&1] as f64 / 600.0;
    assert!((0.25..0.42).contains(&share), "{share}");
}

#[tokio::test(start_paused = true)]
async fn the_latency_outlier_rule_ejects_an_endpoint_much_slower_than_its_peers() {
    let mut p = policy(LbAlgorithm::RoundRobin);
    p.latency_outlier = Some(mesh_core::model::LatencyOutlierRule {
        factor_percent: 300,
        base_ejection_time: Duration::from_secs(30),
        min_endpoints: 3,
    });
    let c = cluster((1..=4).map(|p| endpoint(p, 1, "")).collect(), p);
    // Endpoint 4 answers in 400 ms, the others in 10 ms: no errors at all.
    let (up, counts) = timed_upstream(|port| if port == 4 { 400 } else { 10 });
    let layer = BalanceLayer::new(Rng::with_seed(3));
    let svc = layer.clone().layer(up);
    for _ in 0..400 {
        svc.clone().oneshot(request(&c)).await.unwrap();
    }
    let state = layer.endpoint_state(&c.name, "127.0.0.1:4").unwrap();
    assert_eq!(state.outlier.times_ejected(), 1, "ejected once, for 30 s");
    let counts = counts.lock().unwrap();
    assert!(
        counts[&4] <= 2,
        "the slow endpoint stopped getting traffic: {counts:?}"
    );
    assert!(counts[&1] > 100 && counts[&2] > 100 && counts[&3] > 100);
}

#[tokio::test(start_paused = true)]
async fn eds_priorities_keep_traffic_on_priority_0_and_spill_as_it_is_ejected() {
    // Four endpoints at priority 0, two at priority 1; no workload locality at all.
    let mut endpoints: Vec<Endpoint> = (1..=6).map(|p| endpoint(p, 1, "")).collect();
    for e in &mut endpoints[4..] {
        e.priority = 1;
    }
    let od = OutlierDetection {
        consecutive_5xx_errors: Some(1),
        base_ejection_time: Duration::from_secs(300),
        max_ejection_percent: 100,
        ..OutlierDetection::default()
    };
    let mut p = policy(LbAlgorithm::RoundRobin);
    p.outlier_detection = Some(od);
    let c = cluster(endpoints, p);
    let failing = Arc::new(Mutex::new(Vec::<u16>::new()));
    let f = failing.clone();
    let (up, counts) = upstream(move |port| {
        if f.lock().unwrap().contains(&port) {
            500
        } else {
            200
        }
    });
    let svc = BalanceLayer::new(Rng::with_seed(11)).layer(up);
    let run = |n: usize| {
        let (svc, c) = (svc.clone(), c.clone());
        async move {
            for _ in 0..n {
                let _ = svc.clone().oneshot(request(&c)).await;
            }
        }
    };
    run(400).await;
    {
        let counts = counts.lock().unwrap();
        assert_eq!(
            counts.get(&5).copied().unwrap_or(0) + counts.get(&6).copied().unwrap_or(0),
            0,
            "priority 1 idle: {counts:?}"
        );
    }
    // Two of four priority-0 endpoints fail and are ejected: 50% healthy x 1.4 = 70% of the
    // traffic stays on priority 0, 30% spills to priority 1.
    failing.lock().unwrap().extend([1, 2]);
    run(20).await;
    counts.lock().unwrap().clear();
    run(2_000).await;
    let counts = counts.lock().unwrap();
    let p1 = counts.get(&5).copied().unwrap_or(0) + counts.get(&6).copied().unwrap_or(0);
    let share = p1 as f64 / 2_000.0;
    assert!(
        (0.25..=0.35).contains(&share),
        "priority 1 share {share}: {counts:?}"
    );
    assert_eq!(
        counts.get(&1).copied().unwrap_or(0) + counts.get(&2).copied().unwrap_or(0),
        0
    );
}

#[tokio::test]
async fn endpoints_eds_marks_unhealthy_lower_their_prioritys_health() {
    // Priority 0: four endpoints, three of them unhealthy or draining by EDS; priority 1: two.
    // Envoy: priority 0's health is 1/4 x 1.4 = 35%, so 65% of the traffic spills over.
    let mut endpoints: Vec<Endpoint> = (1..=6).map(|p| endpoint(p, 1, "")).collect();
    endpoints[1].health = HealthStatus::Unhealthy;
    endpoints[2].health = HealthStatus::Unhealthy;
    endpoints[3].health = HealthStatus::Draining;
    for e in &mut endpoints[4..] {
        e.priority = 1;
    }
    let c = cluster(endpoints, policy(LbAlgorithm::RoundRobin));
    let (up, counts) = upstream(|_| 200);
    let svc = BalanceLayer::new(Rng::with_seed(5)).layer(up);
    for _ in 0..2_000 {
        svc.clone().oneshot(request(&c)).await.unwrap();
    }
    let counts = counts.lock().unwrap();
    let on_0 = counts.get(&1).copied().unwrap_or(0);
    assert!(
        (0.30..=0.40).contains(&(on_0 as f64 / 2_000.0)),
        "priority 0's share: {counts:?}"
    );
    assert_eq!(on_0 + counts[&5] + counts[&6], 2_000, "{counts:?}");
}

#[tokio::test]
async fn a_try_counts_in_flight_until_it_answers_or_is_dropped() {
    let c = cluster(vec![endpoint(1, 1, "")], policy(LbAlgorithm::LeastRequest));
    let (answer, answered) = tokio::sync::oneshot::channel::<()>();
    let answered = Arc::new(Mutex::new(Some(answered)));
    // The first try waits until the test answers it; later ones never answer.
    let upstream = tower::service_fn(move |_req: Request<BoxBody>| {
        let waiting = answered.lock().unwrap().take();
        async move {
            match waiting {
                Some(waiting) => {
                    let _ = waiting.await;
                }
                None => std::future::pending::<()>().await,
            }
            Ok::<_, BoxError>(Response::new(body::empty()))
        }
    });
    let layer = BalanceLayer::new(Rng::with_seed(1));
    let svc = layer.layer(upstream);
    let active = || {
        let state = layer.endpoint_state(&c.name, "127.0.0.1:1").unwrap();
        state.active.load(Ordering::Relaxed)
    };

    let mut answered_try = Box::pin(svc.clone().oneshot(request(&c)));
    assert!(futures_util::poll!(answered_try.as_mut()).is_pending());
    assert_eq!(active(), 1);

    let mut dropped_try = Box::pin(svc.clone().oneshot(request(&c)));
    assert!(futures_util::poll!(dropped_try.as_mut()).is_pending());
    assert_eq!(active(), 2);
    drop(dropped_try);
    assert_eq!(active(), 1, "a dropped try no longer counts");

    answer.send(()).unwrap();
    assert_eq!(answered_try.await.unwrap().status(), 200);
    assert_eq!(active(), 0, "an answered try no longer counts");
}

#[tokio::test]
async fn the_response_names_the_endpoint_that_answered() {
    let c = cluster(
        vec![endpoint(1, 1, ""), endpoint(2, 1, "")],
        policy(LbAlgorithm::RoundRobin),
    );
    // A client that does not carry the request's context over to the response (as the
    // mesh's own does): the balancer adds the endpoint to the response's.
    let (up, _) = upstream(|_| 200);
    let svc = BalanceLayer::new(Rng::with_seed(5)).layer(up);
    let mut ports = Vec::new();
    for _ in 0..2 {
        let response = svc.clone().oneshot(request(&c)).await.unwrap();
        let upstream = RequestContext::of_response(&response)
            .and_then(|c| c.upstream.clone())
            .expect("the endpoint");
        let info = upstream.info.expect("what telemetry reports");
        assert_eq!(info.authority, upstream.authority.as_str());
        assert_eq!(info.service, "hello.default.svc.cluster.local");
        ports.push(upstream.authority.port_u16().unwrap());
    }
    ports.sort_unstable();
    assert_eq!(ports, [1, 2]);
}
