//! Envoy JSON fixtures (`tests/fixtures/*.json`, written in Envoy's canonical proto3 JSON the
//! way an admin `/config_dump`, a bootstrap and a discovery response carry them, in istiod's
//! shapes): decoded, translated into the mesh model, and used to route real requests on
//! 127.0.0.1 through the outbound stack — directly, and served over ADS by the test
//! management server to the real client.
//!
//! The fixtures name pod addresses (`10.44.0.11:9080`); to route real requests the tests
//! rewrite the endpoints' `socket_address` in the parsed JSON to local upstreams, so the files
//! stay as Envoy would print them.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use mesh_core::model::{
    ClusterName, HealthStatus, LbAlgorithm, MeshConfig, RetryCondition, RouteAction, Workload,
};
use mesh_core::store::ConfigStore;
use mesh_tower::outbound::Outbound;
use mesh_tower::rng::Rng;
use mesh_xds_client::client::{XdsClient, XdsClientConfig};
use mesh_xds_client::json::{EnvoyConfig, JsonError, load_config_dump};
use mesh_xds_client::node::NodeIdentity;
use mesh_xds_client::protocol::Mode;
use mesh_xds_client::resource::ResourceType;
use mesh_xds_client::test_util::{ManagementServer, ServerSnapshot};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// Every wait is bounded by this; a hang guard, not a timing assertion.
const BOUND: Duration = Duration::from_secs(20);

const V1: &str = "outbound|9080|v1|reviews.default.svc.cluster.local";
const V2: &str = "outbound|9080|v2|reviews.default.svc.cluster.local";

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An upstream answering `name path x-mesh-source`.
async fn upstream(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<_>| async move {
                    let source = req
                        .headers()
                        .get("x-mesh-source")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_owned();
                    let body = format!("{name} {} {source}", req.uri().path());
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        body,
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Rewrites every endpoint `socket_address` whose address is a key of `to` (in place).
fn retarget(value: &mut Value, to: &BTreeMap<&str, SocketAddr>) {
    match value {
        Value::Object(obj) => {
            if let Some(Value::Object(sa)) = obj.get_mut("socket_address")
                && let Some(addr) = sa.get("address").and_then(Value::as_str)
                && let Some(local) = to.get(addr)
            {
                sa.insert("address".into(), Value::from(local.ip().to_string()));
                sa.insert("port_value".into(), Value::from(local.port()));
            }
            obj.values_mut().for_each(|v| retarget(v, to));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| retarget(v, to)),
        _ => {}
    }
}

fn load(name: &str, to: &BTreeMap<&str, SocketAddr>) -> EnvoyConfig {
    let mut value: Value = serde_json::from_str(&fixture(name)).unwrap();
    retarget(&mut value, to);
    load_config_dump(&value.to_string()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

async fn call(outbound: &Outbound, host: &str, path: &str, user: Option<&str>) -> (u16, String) {
    let mut req = http::Request::builder()
        .uri(format!("http://{host}{path}"))
        .header("host", host);
    if let Some(user) = user {
        req = req.header("end-user", user);
    }
    let resp = outbound
        .clone()
        .oneshot(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn config_dump_translates_into_the_model() {
    let dump = load_config_dump(&fixture("config_dump.json")).unwrap();
    let kinds: Vec<ResourceType> = dump.resources.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            ResourceType::Cluster,
            ResourceType::Cluster,
            ResourceType::Listener,
            ResourceType::RouteConfiguration,
            ResourceType::ClusterLoadAssignment,
            ResourceType::ClusterLoadAssignment,
        ]
    );
    assert!(
        dump.resources
            .iter()
            .all(|r| r.version == "2026-11-25T16:00:00Z/12")
    );
    assert_eq!(
        dump.resources[2].at,
        "configs[2].dynamic_listeners[0].active_state.listener"
    );

    let config = dump.translate(&Workload::default()).unwrap();
    let v1 = config.cluster(&ClusterName::new(V1)).unwrap();
    let v2 = config.cluster(&ClusterName::new(V2)).unwrap();
    assert_eq!(v1.policy.load_balancer.algorithm, LbAlgorithm::LeastRequest);
    assert_eq!(v1.subset.as_deref(), Some("v1"));
    assert_eq!(
        v1.policy.connection_pool.connect_timeout,
        Duration::from_secs(10)
    );
    assert_eq!(v1.policy.connection_pool.max_connections, u32::MAX);
    let od = v1.policy.outlier_detection.as_ref().unwrap();
    assert_eq!(od.consecutive_5xx_errors, Some(5));
    assert_eq!(od.base_ejection_time, Duration::from_secs(30));
    assert_eq!(od.max_ejection_percent, 50);
    assert_eq!(v2.policy.connection_pool.max_connections, 100);
    assert_eq!(v2.policy.connection_pool.http1_max_pending_requests, 10);
    assert_eq!(v2.policy.connection_pool.max_requests_per_connection, 100);
    assert_eq!(
        v2.policy.connection_pool.http_idle_timeout,
        Some(Duration::from_secs(3600))
    );
    // EDS: two localities for v2, with their weights and health.
    assert_eq!(v1.endpoints.len(), 1);
    assert_eq!(v2.endpoints.len(), 2);
    assert_eq!(v2.endpoints[0].locality.zone, "us-east1-b");
    assert_eq!(v2.endpoints[1].locality.zone, "us-east1-c");
    assert!(
        v2.endpoints
            .iter()
            .all(|e| e.health == HealthStatus::Healthy)
    );
    assert!(
        config
            .service("reviews.default.svc.cluster.local")
            .is_some()
    );

    let vh = config.routes.find("reviews").unwrap();
    assert_eq!(vh.routes.len(), 2);
    let jason = &vh.routes[0];
    assert_eq!(jason.timeout, Some(Duration::from_millis(2500)));
    let retry = jason.retry.as_ref().unwrap();
    assert_eq!(retry.attempts, 2);
    assert!(retry.retry_on.contains(RetryCondition::ConnectFailure));
    let default = &vh.routes[1];
    assert_eq!(default.timeout, None, "0s is no timeout");
    let retry = default.retry.as_ref().unwrap();
    assert_eq!(
        (retry.attempts, retry.per_try_timeout, retry.backoff_base),
        (3, Some(Duration::from_secs(1)), Duration::from_millis(50))
    );
    let RouteAction::Forward(f) = &default.action else {
        panic!("{:?}", default.action);
    };
    let split: Vec<(&str, u32)> = f
        .destinations
        .iter()
        .map(|d| (d.cluster.as_str(), d.weight))
        .collect();
    assert_eq!(split, [(V1, 90), (V2, 10)]);
}

#[tokio::test]
async fn config_dump_routes_real_requests() {
    let (v1, v2b, v2c) = (
        upstream("v1").await,
        upstream("v2").await,
        upstream("v2").await,
    );
    let to = BTreeMap::from([("10.44.0.11", v1), ("10.44.0.12", v2b), ("10.44.1.12", v2c)]);
    let config = load("config_dump.json", &to)
        .translate(&Workload::default())
        .unwrap();
    let store = Arc::new(ConfigStore::new(config));
    let outbound = Outbound::builder(store).rng(Rng::with_seed(7)).build();

    // The header route sends jason to v2.
    for _ in 0..4 {
        assert_eq!(
            call(&outbound, "reviews:9080", "/reviews/1", Some("jason")).await,
            (200, "v2 /reviews/1 -".to_owned())
        );
    }
    // The 90/10 split over 200 requests with a fixed seed: both subsets serve, v1 most.
    let mut by = BTreeMap::<String, usize>::new();
    for _ in 0..200 {
        let (status, body) = call(&outbound, "reviews.default.svc.cluster.local", "/", None).await;
        assert_eq!(status, 200);
        *by.entry(body.split(' ').next().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(by["v1"] > by["v2"], "{by:?}");
    assert!(by.get("v2").copied().unwrap_or_default() > 0, "{by:?}");
    // An unknown host has no route.
    assert_eq!(call(&outbound, "details", "/", None).await.0, 404);
}

#[tokio::test]
async fn bootstrap_static_resources_route_real_requests() {
    let ratings = upstream("ratings").await;
    let config = load("bootstrap.json", &BTreeMap::from([("10.44.2.5", ratings)]))
        .translate(&Workload::default())
        .unwrap();
    let outbound = Outbound::builder(Arc::new(ConfigStore::new(config))).build();
    assert_eq!(
        call(&outbound, "ratings", "/ratings/7", None).await,
        (200, "ratings /v1/ratings/7 bootstrap".to_owned())
    );
    assert_eq!(
        call(&outbound, "ratings", "/health", None).await,
        (200, "ok".to_owned())
    );
}

/// The same dump, served over ADS by the management server to the real client: what the
/// client publishes routes like the dump.
#[tokio::test]
async fn config_dump_served_over_ads() {
    let (v1, v2) = (upstream("v1").await, upstream("v2").await);
    let to = BTreeMap::from([("10.44.0.11", v1), ("10.44.0.12", v2), ("10.44.1.12", v2)]);
    let dump = load("config_dump.json", &to);
    let mut snapshot = ServerSnapshot::new("12");
    for r in &dump.resources {
        let name = mesh_xds_client::translate::decode(r.kind, &r.any)
            .unwrap()
            .name()
            .to_owned();
        snapshot.insert_any(r.kind, &name, r.any.clone());
    }
    let server = ManagementServer::start("127.0.0.1:0".parse().unwrap(), snapshot)
        .await
        .unwrap();
    let store = Arc::new(ConfigStore::new(MeshConfig::default()));
    let workload = Workload::default();
    let node = NodeIdentity::from_workload(&workload, [127, 0, 0, 1].into(), "productpage-0");
    let handle = XdsClient::new(
        XdsClientConfig::new(vec![server.uri()], Mode::Delta, node.to_node(), workload),
        store.clone(),
    )
    .spawn();
    let mut status = handle.status();
    tokio::time::timeout(BOUND, status.wait_for(|s| s.published.is_some()))
        .await
        .expect("the dump's resources are published")
        .unwrap();
    assert!(store.load().config.routes.find("reviews").is_some());
    let outbound = Outbound::builder(store).build();
    assert_eq!(
        call(&outbound, "reviews", "/x", Some("jason")).await,
        (200, "v2 /x -".to_owned())
    );
    handle.abort();
}

#[test]
fn malformed_json_names_the_field() {
    let err = load_config_dump(&fixture("malformed_cluster.json")).unwrap_err();
    let JsonError::Invalid { at, reason } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(at, "outlier_detection.interval", "{err}");
    assert!(!reason.is_empty());
    assert!(err.to_string().starts_with("outlier_detection.interval: "));
}

#[test]
fn untranslatable_resource_is_refused_with_its_place_and_field() {
    let doc = load_config_dump(&fixture("invalid_route.json")).unwrap();
    assert_eq!(doc.resources[0].version, "13");
    let errors = doc.translate(&Workload::default()).unwrap_err();
    let [JsonError::Resource { at, source }] = errors.as_slice() else {
        panic!("{errors:?}");
    };
    assert_eq!(at, "resources[0]");
    assert_eq!(source.name, "9080");
    assert_eq!(
        source.field,
        "virtual_hosts[0].routes[0].match.safe_regex.regex"
    );
}
