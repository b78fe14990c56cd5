//! Conformance scenario through a real gRPC connection on 127.0.0.1, run once over
//! state-of-the-world ADS and once over delta ADS: initial sync, update, removal, NACK of an
//! invalid resource with the previous version still serving, control plane killed and
//! restarted. Each step is checked by routing real requests through the mesh's outbound stack
//! to real upstream servers.

use bytes::Bytes;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
use http_body_util::{BodyExt, Empty, Full};
use mesh_core::model::{ClusterName, MeshConfig, Workload};
use mesh_core::store::ConfigStore;
use mesh_tower::outbound::Outbound;
use mesh_xds_client::client::{XdsClient, XdsClientConfig, XdsStatus};
use mesh_xds_client::node::NodeIdentity;
use mesh_xds_client::protocol::Mode;
use mesh_xds_client::protocol::backoff::BackoffConfig;
use mesh_xds_client::resource::ResourceType;
use mesh_xds_client::test_util::{ManagementServer, RecordedRequest, ServerSnapshot, fixtures};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tower::ServiceExt;

/// Every wait in these tests is bounded by this; it is a hang guard, not a timing assertion.
const BOUND: Duration = Duration::from_secs(20);

const A: &str = "outbound|80|a|hello.default.svc.cluster.local";
const B: &str = "outbound|80|b|hello.default.svc.cluster.local";

/// An upstream that answers every request with its name.
async fn upstream(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        name,
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

/// Routes one request for `hello` through the outbound stack; returns status and body.
async fn call(outbound: &Outbound) -> (u16, String) {
    let req = http::Request::builder()
        .uri("http://hello/")
        .header("host", "hello")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = outbound.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `hello` routed to `cluster`, whose endpoint is `addr`; `extra` clusters exist beside it.
fn snapshot(
    version: &str,
    cluster: &str,
    addr: SocketAddr,
    extra: &[(&str, SocketAddr)],
) -> ServerSnapshot {
    let mut s = ServerSnapshot::new(version);
    s.listener(fixtures::listener(80, "80"))
        .route(fixtures::route_config(
            "80",
            &["hello", "hello:80"],
            &[(cluster, 100)],
        ))
        .cluster(fixtures::eds_cluster(cluster))
        .endpoints(fixtures::endpoints(cluster, &[addr]));
    for (name, addr) in extra {
        s.cluster(fixtures::eds_cluster(name))
            .endpoints(fixtures::endpoints(name, &[*addr]));
    }
    s
}

async fn wait_status(
    status: &mut watch::Receiver<XdsStatus>,
    what: &str,
    pred: impl FnMut(&XdsStatus) -> bool,
) {
    tokio::time::timeout(BOUND, status.wait_for(pred))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap();
}

async fn wait_request(
    server: &ManagementServer,
    what: &str,
    pred: impl FnMut(&RecordedRequest) -> bool,
) -> RecordedRequest {
    tokio::time::timeout(BOUND, server.wait_for_request(pred))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn routes_to(config: &MeshConfig, cluster: &str) -> bool {
    let Some(vh) = config.routes.find("hello") else {
        return false;
    };
    matches!(&vh.routes[0].action, mesh_core::model::RouteAction::Forward(f)
        if f.destinations.len() == 1 && f.destinations[0].cluster.as_str() == cluster)
}

/// Each step of the scenario; both protocol variants run the same table.
#[derive(Debug)]
enum Step {
    /// Serve `hello -> cluster` (plus `extra` clusters) as `version`; wait until the store
    /// routes `hello` there, and check that requests reach `expect`.
    Serve {
        version: &'static str,
        cluster: &'static str,
        upstream: &'static str,
        extra: &'static [(&'static str, &'static str)],
        expect: &'static str,
    },
    /// Serve a version whose route configuration has an invalid regex; wait for the NACK and
    /// check that requests still reach `expect`.
    ServeInvalid {
        version: &'static str,
        expect: &'static str,
    },
    /// Kill the control plane; requests must keep reaching `expect`.
    Kill { expect: &'static str },
    /// Restart the control plane on the same address with `hello -> cluster`; the client must
    /// resubscribe (with the versions it holds) and converge.
    Restart {
        version: &'static str,
        cluster: &'static str,
        upstream: &'static str,
        expect: &'static str,
    },
}

const SCENARIO: &[Step] = &[
    // Initial sync.
    Step::Serve {
        version: "1",
        cluster: A,
        upstream: "a",
        extra: &[],
        expect: "a",
    },
    // Update: a new cluster appears and the route moves to it.
    Step::Serve {
        version: "2",
        cluster: B,
        upstream: "b",
        extra: &[(A, "a")],
        expect: "b",
    },
    // Removal: cluster A and its endpoints go away.
    Step::Serve {
        version: "3",
        cluster: B,
        upstream: "b",
        extra: &[],
        expect: "b",
    },
    // NACK: the last good version keeps serving.
    Step::ServeInvalid {
        version: "4",
        expect: "b",
    },
    // Control plane lost: the snapshot keeps serving.
    Step::Kill { expect: "b" },
    // Control plane back with new config.
    Step::Restart {
        version: "5",
        cluster: A,
        upstream: "a",
        expect: "a",
    },
];

async fn run_scenario(mode: Mode) {
    let upstreams = [("a", upstream("a").await), ("b", upstream("b").await)];
    let addr_of = |name: &str| upstreams.iter().find(|(n, _)| *n == name).unwrap().1;

    let mut server = Some(
        ManagementServer::start("127.0.0.1:0".parse().unwrap(), ServerSnapshot::new("0"))
            .await
            .unwrap(),
    );
    let server_addr = server.as_ref().unwrap().addr();
    let workload = Workload::default();
    let node =
        NodeIdentity::from_workload(&workload, "127.0.0.1".parse().unwrap(), "hello-0").to_node();
    let node_id = node.id.clone();
    let store = Arc::new(ConfigStore::new(MeshConfig::default()));
    let mut config =
        XdsClientConfig::new(vec![format!("http://{server_addr}")], mode, node, workload);
    config.backoff = BackoffConfig {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        ..BackoffConfig::default()
    };
    let handle = XdsClient::new(config, store.clone()).spawn();
    let mut status = handle.status();
    let outbound = Outbound::builder(store.clone()).build();

    let check_traffic = |expect: &'static str| {
        let outbound = outbound.clone();
        async move {
            for _ in 0..5 {
                assert_eq!(call(&outbound).await, (200, expect.to_owned()), "{mode:?}");
            }
        }
    };

    for step in SCENARIO {
        match step {
            Step::Serve {
                version,
                cluster,
                upstream,
                extra,
                expect,
            } => {
                let extra: Vec<(&str, SocketAddr)> =
                    extra.iter().map(|(c, u)| (*c, addr_of(u))).collect();
                let s = snapshot(version, cluster, addr_of(upstream), &extra);
                server.as_ref().unwrap().set_snapshot(s);
                let store2 = store.clone();
                let wanted: Vec<&str> = std::iter::once(*cluster)
                    .chain(extra.iter().map(|(c, _)| *c))
                    .collect();
                wait_status(
                    &mut status,
                    &format!("{mode:?} version {version}"),
                    move |_| {
                        let cfg = store2.load();
                        routes_to(&cfg, cluster)
                            && cfg.clusters.len() == wanted.len()
                            && wanted.iter().all(|c| {
                                cfg.cluster(&ClusterName::new(*c))
                                    .is_some_and(|c| c.endpoints.len() == 1)
                            })
                    },
                )
                .await;
                check_traffic(expect).await;
                // Every type was ACKed (SotW: with this version).
                let srv = server.as_ref().unwrap();
                for kind in [
                    ResourceType::Listener,
                    ResourceType::RouteConfiguration,
                    ResourceType::Cluster,
                    ResourceType::ClusterLoadAssignment,
                ] {
                    wait_request(srv, &format!("{mode:?} ACK of {kind} v{version}"), |r| {
                        r.kind() == Some(kind)
                            && r.error.is_none()
                            && !r.response_nonce.is_empty()
                            && (mode == Mode::Delta || r.version_info == *version)
                    })
                    .await;
                }
            }
            Step::ServeInvalid { version, expect } => {
                let before = store.version();
                let srv = server.as_ref().unwrap();
                let mut s = srv.snapshot().with_version(*version);
                let mut rc = fixtures::route_config("80", &["hello"], &[(B, 100)]);
                rc.virtual_hosts[0].routes[0]
                    .r#match
                    .as_mut()
                    .unwrap()
                    .path_specifier = Some(PathSpecifier::SafeRegex(RegexMatcher {
                    regex: "/(unclosed".into(),
                    ..Default::default()
                }));
                s.route(rc);
                srv.set_snapshot(s);
                let nack =
                    wait_request(srv, &format!("{mode:?} NACK"), |r| r.error.is_some()).await;
                let error = nack.error.clone().unwrap();
                assert_eq!(nack.kind(), Some(ResourceType::RouteConfiguration));
                assert!(
                    error.contains("RouteConfiguration 80: virtual_hosts[0].routes[0].match.safe_regex.regex: invalid regex"),
                    "{error}"
                );
                if mode == Mode::Sotw {
                    assert_eq!(
                        nack.version_info, "3",
                        "a NACK carries the last accepted version"
                    );
                }
                wait_status(&mut status, "NACK recorded", |s| s.nacks >= 1).await;
                assert_eq!(
                    store.version(),
                    before,
                    "the last good snapshot keeps serving"
                );
                let rejection = store.last_rejection().unwrap();
                assert_eq!(rejection.source, "xds");
                assert!(rejection.errors[0].contains("invalid regex"));
                check_traffic(expect).await;
                let st = status.borrow().clone();
                let rds = st
                    .resources
                    .iter()
                    .find(|r| r.kind == ResourceType::RouteConfiguration)
                    .unwrap();
                assert!(
                    matches!(
                        rds.state,
                        mesh_xds_client::protocol::ResourceState::Nacked { .. }
                    ),
                    "{rds:?}"
                );
            }
            Step::Kill { expect } => {
                server.take().unwrap().shutdown().await;
                wait_status(&mut status, "disconnect", |s| {
                    s.server.is_none() && s.last_error.is_some()
                })
                .await;
                check_traffic(expect).await;
            }
            Step::Restart {
                version,
                cluster,
                upstream,
                expect,
            } => {
                let s = snapshot(version, cluster, addr_of(upstream), &[]);
                let srv = ManagementServer::start(server_addr, s).await.unwrap();
                // Resubscription, with what the client holds.
                let first = wait_request(&srv, "resubscription", |r| {
                    r.kind() == Some(ResourceType::Cluster)
                })
                .await;
                assert_eq!(
                    first.node_id.as_deref().or(Some(node_id.as_str())),
                    Some(node_id.as_str())
                );
                match mode {
                    Mode::Sotw => assert_eq!(first.version_info, "4", "{first:?}"),
                    Mode::Delta => assert_eq!(
                        first
                            .initial_resource_versions
                            .keys()
                            .map(String::as_str)
                            .collect::<Vec<_>>(),
                        vec![B],
                        "{first:?}"
                    ),
                }
                let store2 = store.clone();
                wait_status(&mut status, "restart convergence", move |_| {
                    routes_to(&store2.load(), cluster)
                })
                .await;
                check_traffic(expect).await;
                server = Some(srv);
            }
        }
    }
    // The node identity reached the server on the first request of each stream.
    let reqs = server.as_ref().unwrap().requests();
    assert_eq!(reqs[0].node_id.as_deref(), Some(node_id.as_str()));
    drop(handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_scenario() {
    run_scenario(Mode::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_scenario() {
    run_scenario(Mode::Delta).await;
}
