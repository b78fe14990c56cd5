use super::*;
use crate::test_util::{fixtures, pack};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::Resource;

fn node() -> Node {
    Node {
        id: "sidecar~10.0.0.1~app-0.default~default.svc.cluster.local".into(),
        ..Default::default()
    }
}

fn state(mode: Mode) -> AdsState {
    AdsState::new(ProtocolConfig::new(mode, node()))
}

fn sotw(r: &Request) -> &DiscoveryRequest {
    match r {
        Request::Sotw(r) => r,
        Request::Delta(_) => panic!("expected a SotW request, got {r:?}"),
    }
}

fn delta(r: &Request) -> &DeltaDiscoveryRequest {
    match r {
        Request::Delta(r) => r,
        Request::Sotw(_) => panic!("expected a delta request, got {r:?}"),
    }
}

fn response(
    kind: ResourceType,
    version: &str,
    nonce: &str,
    resources: Vec<Any>,
) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        resources,
        type_url: kind.type_url().into(),
        nonce: nonce.into(),
        ..Default::default()
    }
}

fn delta_response(
    kind: ResourceType,
    nonce: &str,
    resources: Vec<(&str, &str, Any)>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        resources: resources
            .into_iter()
            .map(|(name, version, any)| Resource {
                name: name.into(),
                version: version.into(),
                resource: Some(any),
                ..Default::default()
            })
            .collect(),
        type_url: kind.type_url().into(),
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
        nonce: nonce.into(),
        ..Default::default()
    }
}

const C1: &str = "outbound|80||a.default.svc.cluster.local";
const C2: &str = "outbound|80||b.default.svc.cluster.local";

fn ep() -> std::net::SocketAddr {
    "10.1.0.1:8080".parse().unwrap()
}

#[test]
fn sotw_initial_requests_are_wildcard_cds_and_lds_with_the_node_once() {
    let mut s = state(Mode::Sotw);
    let reqs = s.connected(Instant::now());
    let kinds: Vec<&str> = reqs.iter().map(Request::type_url).collect();
    assert_eq!(
        kinds,
        [
            ResourceType::Cluster.type_url(),
            ResourceType::Listener.type_url()
        ]
    );
    assert!(sotw(&reqs[0]).node.is_some());
    assert!(
        sotw(&reqs[1]).node.is_none(),
        "the node goes on the first request only"
    );
    for r in &reqs {
        assert!(sotw(r).resource_names.is_empty());
        assert_eq!(sotw(r).response_nonce, "");
        assert_eq!(sotw(r).version_info, "");
    }
}

#[test]
fn sotw_cds_ack_then_eds_subscription_then_complete_snapshot() {
    let now = Instant::now();
    let mut s = state(Mode::Sotw);
    s.connected(now);
    let h = s.handle_sotw(
        response(
            ResourceType::Cluster,
            "v1",
            "n1",
            vec![pack(&fixtures::eds_cluster(C1))],
        ),
        now,
    );
    assert!(h.changed && h.rejected.is_empty());
    assert_eq!(h.requests.len(), 2, "{:?}", h.requests);
    let ack = sotw(&h.requests[0]);
    assert_eq!(
        (
            ack.type_url.as_str(),
            ack.version_info.as_str(),
            ack.response_nonce.as_str()
        ),
        (ResourceType::Cluster.type_url(), "v1", "n1")
    );
    assert!(ack.error_detail.is_none());
    let eds = sotw(&h.requests[1]);
    assert_eq!(eds.type_url, ResourceType::ClusterLoadAssignment.type_url());
    assert_eq!(eds.resource_names, [C1]);
    assert_eq!(s.next_deadline(), Some(now + Duration::from_secs(15)));

    // LDS with an RDS name.
    let h = s.handle_sotw(
        response(
            ResourceType::Listener,
            "v1",
            "n2",
            vec![pack(&fixtures::listener(80, "80"))],
        ),
        now,
    );
    let rds = sotw(&h.requests[1]);
    assert_eq!(rds.type_url, ResourceType::RouteConfiguration.type_url());
    assert_eq!(rds.resource_names, ["80"]);
    assert!(!s.is_complete(), "RDS and EDS are still missing");
    assert!(s.snapshot(&Workload::default()).is_none());

    s.handle_sotw(
        response(
            ResourceType::RouteConfiguration,
            "v1",
            "n3",
            vec![pack(&fixtures::route_config("80", &["a"], &[(C1, 100)]))],
        ),
        now,
    );
    assert!(!s.is_complete());
    let h = s.handle_sotw(
        response(
            ResourceType::ClusterLoadAssignment,
            "v1",
            "n4",
            vec![pack(&fixtures::endpoints(C1, &[ep()]))],
        ),
        now,
    );
    assert_eq!(h.requests.len(), 1, "only the ACK");
    assert!(s.is_complete());
    assert_eq!(s.next_deadline(), None);
    let snap = s.snapshot(&Workload::default()).unwrap();
    let cluster = snap
        .cluster(&mesh_core::model::ClusterName::new(C1))
        .unwrap();
    assert_eq!(cluster.endpoints.len(), 1);
    assert_eq!(cluster.port, 80);
    assert_eq!(cluster.service, "a.default.svc.cluster.local");
    assert_eq!(snap.routes.find("a").unwrap().routes.len(), 1);
    assert!(snap.service("a.default.svc.cluster.local").is_some());
}

fn synced(mode: Mode, now: Instant) -> AdsState {
    let mut s = state(mode);
    s.connected(now);
    match mode {
        Mode::Sotw => {
            s.handle_sotw(
                response(
                    ResourceType::Cluster,
                    "v1",
                    "n1",
                    vec![
                        pack(&fixtures::eds_cluster(C1)),
                        pack(&fixtures::eds_cluster(C2)),
                    ],
                ),
                now,
            );
            s.handle_sotw(
                response(
                    ResourceType::Listener,
                    "v1",
                    "n2",
                    vec![pack(&fixtures::listener(80, "80"))],
                ),
                now,
            );
            s.handle_sotw(
                response(
                    ResourceType::RouteConfiguration,
                    "v1",
                    "n3",
                    vec![pack(&fixtures::route_config(
                        "80",
                        &["a"],
                        &[(C1, 90), (C2, 10)],
                    ))],
                ),
                now,
            );
            s.handle_sotw(
                response(
                    ResourceType::ClusterLoadAssignment,
                    "v1",
                    "n4",
                    vec![
                        pack(&fixtures::endpoints(C1, &[ep()])),
                        pack(&fixtures::endpoints(C2, &[ep()])),
                    ],
                ),
                now,
            );
        }
        Mode::Delta => {
            s.handle_delta(
                delta_response(
                    ResourceType::Cluster,
                    "n1",
                    vec![
                        (C1, "1", pack(&fixtures::eds_cluster(C1))),
                        (C2, "1", pack(&fixtures::eds_cluster(C2))),
                    ],
                    &[],
                ),
                now,
            );
            s.handle_delta(
                delta_response(
                    ResourceType::Listener,
                    "n2",
                    vec![("0.0.0.0_80", "1", pack(&fixtures::listener(80, "80")))],
                    &[],
                ),
                now,
            );
            s.handle_delta(
                delta_response(
                    ResourceType::RouteConfiguration,
                    "n3",
                    vec![(
                        "80",
                        "1",
                        pack(&fixtures::route_config("80", &["a"], &[(C1, 90), (C2, 10)])),
                    )],
                    &[],
                ),
                now,
            );
            s.handle_delta(
                delta_response(
                    ResourceType::ClusterLoadAssignment,
                    "n4",
                    vec![
                        (C1, "1", pack(&fixtures::endpoints(C1, &[ep()]))),
                        (C2, "1", pack(&fixtures::endpoints(C2, &[ep()]))),
                    ],
                    &[],
                ),
                now,
            );
        }
    }
    assert!(s.is_complete());
    s
}

#[test]
fn sotw_nack_keeps_the_previous_version_and_names_the_resource() {
    let now = Instant::now();
    let mut s = synced(Mode::Sotw, now);
    let before = s.snapshot(&Workload::default());
    let generation = s.generation();
    let mut bad = fixtures::eds_cluster(C2);
    bad.lb_policy = 99;
    let h = s.handle_sotw(
        response(
            ResourceType::Cluster,
            "v2",
            "n9",
            vec![pack(&fixtures::eds_cluster(C1)), pack(&bad)],
        ),
        now,
    );
    assert!(!h.changed);
    assert_eq!(h.requests.len(), 1);
    let nack = sotw(&h.requests[0]);
    assert_eq!(
        nack.version_info, "v1",
        "a NACK carries the last accepted version"
    );
    assert_eq!(nack.response_nonce, "n9");
    let detail = nack.error_detail.as_ref().unwrap();
    assert_eq!(detail.code, 3);
    assert!(
        detail
            .message
            .starts_with(&format!("Cluster {C2}: lb_policy: unknown policy 99")),
        "{}",
        detail.message
    );
    assert_eq!(h.rejected.len(), 1);
    assert_eq!(s.generation(), generation);
    assert_eq!(s.snapshot(&Workload::default()), before);
    let st = s
        .status()
        .into_iter()
        .find(|r| r.name == C2 && r.kind == ResourceType::Cluster)
        .unwrap();
    assert!(matches!(st.state, ResourceState::Nacked { .. }));
    assert_eq!(st.version.as_deref(), Some("v1"));

    // The next good response is ACKed with its version and clears the NACK.
    let h = s.handle_sotw(
        response(
            ResourceType::Cluster,
            "v3",
            "n10",
            vec![
                pack(&fixtures::eds_cluster(C1)),
                pack(&fixtures::eds_cluster(C2)),
            ],
        ),
        now,
    );
    assert!(sotw(&h.requests[0]).error_detail.is_none());
    assert_eq!(sotw(&h.requests[0]).version_info, "v3");
    assert!(
        s.status()
            .iter()
            .all(|r| !matches!(r.state, ResourceState::Nacked { .. }))
    );
}

#[test]
fn sotw_removal_from_the_wildcard_set_unsubscribes_its_endpoints() {
    let now = Instant::now();
    let mut s = synced(Mode::Sotw, now);
    let h = s.handle_sotw(
        response(
            ResourceType::Cluster,
            "v2",
            "n5",
            vec![pack(&fixtures::eds_cluster(C1))],
        ),
        now,
    );
    assert!(h.changed);
    let eds = sotw(&h.requests[1]);
    assert_eq!(eds.type_url, ResourceType::ClusterLoadAssignment.type_url());
    assert_eq!(eds.resource_names, [C1]);
    assert_eq!(
        eds.version_info, "v1",
        "subscription changes carry the type's own version"
    );
    assert_eq!(eds.response_nonce, "n4");
    let snap = s.snapshot(&Workload::default()).unwrap();
    assert_eq!(snap.clusters.len(), 1);
    assert!(s.status().iter().all(|r| r.name != C2));
}

#[test]
fn does_not_exist_timer_completes_the_snapshot_without_the_resource() {
    let now = Instant::now();
    let mut s = state(Mode::Sotw);
    s.connected(now);
    s.handle_sotw(
        response(
            ResourceType::Cluster,
            "v1",
            "n1",
            vec![pack(&fixtures::eds_cluster(C1))],
        ),
        now,
    );
    s.handle_sotw(response(ResourceType::Listener, "v1", "n2", vec![]), now);
    assert!(!s.is_complete());
    let deadline = s.next_deadline().unwrap();
    assert_eq!(deadline, now + Duration::from_secs(15));
    assert!(!s.on_timer(deadline - Duration::from_millis(1)));
    assert!(!s.is_complete());
    assert!(s.on_timer(deadline));
    assert!(s.is_complete());
    let snap = s.snapshot(&Workload::default()).unwrap();
    assert!(
        snap.cluster(&mesh_core::model::ClusterName::new(C1))
            .unwrap()
            .endpoints
            .is_empty()
    );
    let st = s
        .status()
        .into_iter()
        .find(|r| r.kind == ResourceType::ClusterLoadAssignment)
        .unwrap();
    assert_eq!(st.state, ResourceState::DoesNotExist);

    // It arrives late: accepted.
    let h = s.handle_sotw(
        response(
            ResourceType::ClusterLoadAssignment,
            "v1",
            "n3",
            vec![pack(&fixtures::endpoints(C1, &[ep()]))],
        ),
        now,
    );
    assert!(h.changed);
    assert_eq!(
        s.snapshot(&Workload::default())
            .unwrap()
            .clusters
            .values()
            .next()
            .unwrap()
            .endpoints
            .len(),
        1
    );
}

#[test]
fn timers_stop_while_disconnected_and_restart_on_connect() {
    let now = Instant::now();
    let mut s = state(Mode::Sotw);
    s.connected(now);
    s.handle_sotw(
        response(
            ResourceType::Cluster,
            "v1",
            "n1",
            vec![pack(&fixtures::eds_cluster(C1))],
        ),
        now,
    );
    assert!(s.next_deadline().is_some());
    s.disconnected();
    assert_eq!(s.next_deadline(), None);
    let later = now + Duration::from_secs(100);
    let reqs = s.connected(later);
    assert_eq!(s.next_deadline(), Some(later + Duration::from_secs(15)));
    // The reconnect carries the accepted CDS version and the EDS names.
    let cds = reqs
        .iter()
        .map(sotw)
        .find(|r| r.type_url == ResourceType::Cluster.type_url())
        .unwrap();
    assert_eq!(cds.version_info, "v1");
    assert_eq!(cds.response_nonce, "", "nonces belong to the old stream");
    let eds = reqs
        .iter()
        .map(sotw)
        .find(|r| r.type_url == ResourceType::ClusterLoadAssignment.type_url())
        .unwrap();
    assert_eq!(eds.resource_names, [C1]);
}

#[test]
fn wildcard_types_complete_empty_when_the_server_says_nothing() {
    let now = Instant::now();
    let mut s = state(Mode::Delta);
    s.connected(now);
    assert!(!s.is_complete());
    assert!(s.on_timer(now + Duration::from_secs(15)));
    assert!(s.is_complete());
    assert_eq!(
        s.snapshot(&Workload::default()).unwrap(),
        MeshConfig {
            workload: Workload::default(),
            ..MeshConfig::default()
        }
    );
}

#[test]
fn delta_subscribes_by_difference_and_resumes_with_initial_versions() {
    let now = Instant::now();
    let mut s = state(Mode::Delta);
    let reqs = s.connected(now);
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(delta(r).resource_names_subscribe, ["*"]);
    }
    assert!(delta(&reqs[0]).node.is_some() && delta(&reqs[1]).node.is_none());

    let h = s.handle_delta(
        delta_response(
            ResourceType::Cluster,
            "n1",
            vec![(C1, "c1", pack(&fixtures::eds_cluster(C1)))],
            &[],
        ),
        now,
    );
    let ack = delta(&h.requests[0]);
    assert_eq!(ack.response_nonce, "n1");
    assert!(ack.resource_names_subscribe.is_empty() && ack.error_detail.is_none());
    let sub = delta(&h.requests[1]);
    assert_eq!(sub.type_url, ResourceType::ClusterLoadAssignment.type_url());
    assert_eq!(sub.resource_names_subscribe, [C1]);

    // A second cluster: only the new name is subscribed.
    let h = s.handle_delta(
        delta_response(
            ResourceType::Cluster,
            "n2",
            vec![(C2, "c2", pack(&fixtures::eds_cluster(C2)))],
            &[],
        ),
        now,
    );
    assert_eq!(delta(&h.requests[1]).resource_names_subscribe, [C2]);
    assert!(delta(&h.requests[1]).resource_names_unsubscribe.is_empty());

    // Removal of the first: its endpoints are unsubscribed.
    let h = s.handle_delta(
        delta_response(ResourceType::Cluster, "n3", vec![], &[C1]),
        now,
    );
    assert!(h.changed);
    assert_eq!(delta(&h.requests[1]).resource_names_unsubscribe, [C1]);
    assert!(delta(&h.requests[1]).resource_names_subscribe.is_empty());

    // Reconnect: wildcard again, with what is held.
    s.disconnected();
    let reqs = s.connected(now);
    let cds = reqs
        .iter()
        .map(delta)
        .find(|r| r.type_url == ResourceType::Cluster.type_url())
        .unwrap();
    assert_eq!(cds.resource_names_subscribe, ["*"]);
    assert_eq!(
        cds.initial_resource_versions.get(C2).map(String::as_str),
        Some("c2")
    );
    assert_eq!(cds.initial_resource_versions.len(), 1);
    let eds = reqs
        .iter()
        .map(delta)
        .find(|r| r.type_url == ResourceType::ClusterLoadAssignment.type_url())
        .unwrap();
    assert_eq!(eds.resource_names_subscribe, [C2]);
}

#[test]
fn delta_removal_of_a_named_resource_marks_it_absent() {
    let now = Instant::now();
    let mut s = synced(Mode::Delta, now);
    let h = s.handle_delta(
        delta_response(ResourceType::ClusterLoadAssignment, "n5", vec![], &[C2]),
        now,
    );
    assert!(h.changed);
    assert!(s.is_complete(), "removed means known not to exist");
    let snap = s.snapshot(&Workload::default()).unwrap();
    assert!(
        snap.cluster(&mesh_core::model::ClusterName::new(C2))
            .unwrap()
            .endpoints
            .is_empty()
    );
}

#[test]
fn delta_nack_names_the_resource_and_keeps_the_old_one() {
    let now = Instant::now();
    let mut s = synced(Mode::Delta, now);
    let before = s.snapshot(&Workload::default());
    let mut rc = fixtures::route_config("80", &["a"], &[(C1, 90), (C2, 10)]);
    rc.virtual_hosts[0].domains.clear();
    let h = s.handle_delta(
        delta_response(
            ResourceType::RouteConfiguration,
            "n6",
            vec![("80", "2", pack(&rc))],
            &[],
        ),
        now,
    );
    let nack = delta(&h.requests[0]);
    assert_eq!(nack.response_nonce, "n6");
    assert_eq!(
        nack.error_detail.as_ref().unwrap().message,
        "RouteConfiguration 80: virtual_hosts[0].domains: at least one domain is required"
    );
    assert_eq!(s.snapshot(&Workload::default()), before);
}

#[test]
fn mismatched_names_duplicates_and_unknown_types_are_nacked() {
    let now = Instant::now();
    let mut s = state(Mode::Delta);
    s.connected(now);
    let h = s.handle_delta(
        delta_response(
            ResourceType::Cluster,
            "n1",
            vec![("other", "1", pack(&fixtures::eds_cluster(C1)))],
            &[],
        ),
        now,
    );
    assert!(h.requests[0].is_nack());
    assert_eq!(h.rejected[0].name, "other");

    let mut s = state(Mode::Sotw);
    s.connected(now);
    let c = pack(&fixtures::eds_cluster(C1));
    let h = s.handle_sotw(
        response(ResourceType::Cluster, "1", "n1", vec![c.clone(), c]),
        now,
    );
    assert!(h.requests[0].is_nack());
    assert_eq!(h.rejected[0].reason, "appears twice in one response");

    let mut resp = response(ResourceType::Cluster, "1", "n2", vec![]);
    resp.type_url = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig".into();
    let h = s.handle_sotw(resp, now);
    assert!(h.requests[0].is_nack());

    // A resource of the wrong type inside a response.
    let h = s.handle_sotw(
        response(
            ResourceType::Cluster,
            "1",
            "n3",
            vec![pack(&fixtures::listener(80, "80"))],
        ),
        now,
    );
    assert!(
        h.rejected[0].reason.contains("in a Cluster response"),
        "{:?}",
        h.rejected
    );
}

#[test]
fn resources_wrapped_in_the_resource_envelope_are_unwrapped() {
    let now = Instant::now();
    let mut s = state(Mode::Sotw);
    s.connected(now);
    let wrapped = pack(&Resource {
        name: C1.into(),
        resource: Some(pack(&fixtures::eds_cluster(C1))),
        ..Default::default()
    });
    let h = s.handle_sotw(
        response(ResourceType::Cluster, "1", "n1", vec![wrapped]),
        now,
    );
    assert!(h.rejected.is_empty() && h.changed);
}

#[test]
fn unchanged_resources_do_not_bump_the_generation() {
    let now = Instant::now();
    let mut s = synced(Mode::Sotw, now);
    let g = s.generation();
    let h = s.handle_sotw(
        response(
            ResourceType::Cluster,
            "v2",
            "n7",
            vec![
                pack(&fixtures::eds_cluster(C1)),
                pack(&fixtures::eds_cluster(C2)),
            ],
        ),
        now,
    );
    assert!(!h.changed);
    assert_eq!(s.generation(), g);
    assert_eq!(sotw(&h.requests[0]).version_info, "v2");
}
