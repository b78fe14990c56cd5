//! The Istio YAML loader: what it resolves, and the finding (with its field path) for each
//! kind of bad input.

use mesh_core::istio::{self, BuildOutcome, Severity};
use mesh_core::model::{
    AbortError, ClusterName, MtlsMode, OutboundTrafficPolicy, PathNormalization, RouteAction,
    Workload,
};

const REGISTRY: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: reviews }
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{ number: 9080, name: http, protocol: HTTP }]
  endpoints:
  - { address: 127.0.0.1, ports: { http: 19081 }, labels: { app: reviews, version: v1 } }
  - { address: 127.0.0.1, ports: { http: 19082 }, labels: { app: reviews, version: v2 } }
  - { address: 127.0.0.1, ports: { http: 19083 }, labels: { app: reviews, version: v3 } }
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: { name: reviews }
spec:
  host: reviews
  trafficPolicy:
    outlierDetection: { consecutive5xxErrors: 3, baseEjectionTime: 15s }
  subsets:
  - { name: v1, labels: { version: v1 } }
  - { name: v2, labels: { version: v2 } }
"#;

fn load(extra: &str) -> BuildOutcome {
    istio::load(
        &[("registry.yaml", REGISTRY), ("test.yaml", extra)],
        &Workload::default(),
    )
}

/// The one error the config produces, as `check` prints it.
fn single_error(extra: &str) -> String {
    let outcome = load(extra);
    let errors: Vec<String> = outcome.errors().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    assert!(
        outcome.config.is_none(),
        "a config with errors is not built"
    );
    errors[0].clone()
}

fn vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: reviews }}\nspec:\n  hosts: [reviews]\n  http:\n{http}"
    )
}

#[test]
fn a_canary_split_resolves_to_weighted_subset_clusters() {
    let outcome = load(&vs(
        "  - route:\n    - { destination: { host: reviews, subset: v1 }, weight: 90 }\n    - { destination: { host: reviews, subset: v2 }, weight: 10 }\n",
    ));
    assert!(outcome.diagnostics.is_empty(), "{:#?}", outcome.diagnostics);
    let config = outcome.config.expect("valid");
    for authority in [
        "reviews",
        "reviews:9080",
        "reviews.default",
        "reviews.default.svc:9080",
        "reviews.default.svc.cluster.local:9080",
        "REVIEWS.default.svc.cluster.local",
    ] {
        let vhost = config
            .routes
            .find(authority)
            .unwrap_or_else(|| panic!("{authority} routes"));
        let RouteAction::Forward(forward) = &vhost.routes[0].action else {
            panic!("forward route");
        };
        let split: Vec<(&str, u32)> = forward
            .destinations
            .iter()
            .map(|d| (d.cluster.as_str(), d.weight))
            .collect();
        assert_eq!(
            split,
            [
                ("outbound|9080|v1|reviews.default.svc.cluster.local", 90),
                ("outbound|9080|v2|reviews.default.svc.cluster.local", 10)
            ]
        );
    }
    assert!(config.routes.find("ratings").is_none());
    let v2 = config
        .cluster(&ClusterName::outbound(
            9080,
            Some("v2"),
            "reviews.default.svc.cluster.local",
        ))
        .expect("subset cluster");
    let ports: Vec<u16> = v2.endpoints.iter().map(|e| e.port).collect();
    assert_eq!(
        ports,
        [19082],
        "a subset holds the endpoints its labels select"
    );
    let od = v2
        .policy
        .outlier_detection
        .as_ref()
        .expect("inherited from the rule");
    assert_eq!(od.consecutive_5xx_errors, Some(3));
    let all = config
        .cluster(&ClusterName::outbound(
            9080,
            None,
            "reviews.default.svc.cluster.local",
        ))
        .expect("service cluster");
    assert_eq!(all.endpoints.len(), 3);
}

#[test]
fn a_service_without_virtual_service_gets_a_default_route_with_istio_retries() {
    let outcome = load("");
    let config = outcome.config.expect("valid");
    let route = &config
        .routes
        .find("reviews:9080")
        .expect("default vhost")
        .routes[0];
    assert!(route.matches.is_empty());
    assert_eq!(route.retry.as_ref().map(|r| r.attempts), Some(2));
}

/// The (cluster, weight) pairs of the first route for `reviews`.
fn split_of(outcome: BuildOutcome) -> Vec<(String, u32)> {
    assert!(!outcome.has_errors(), "{:#?}", outcome.diagnostics);
    let config = outcome.config.expect("valid");
    let RouteAction::Forward(forward) =
        &config.routes.find("reviews").expect("vhost").routes[0].action
    else {
        panic!("forward route");
    };
    forward
        .destinations
        .iter()
        .map(|d| (d.cluster.as_str().to_owned(), d.weight))
        .collect()
}

#[test]
fn a_lone_destination_takes_all_traffic_whatever_its_weight() {
    for weight in ["weight: 50", "weight: 0", "weight: 250"] {
        let outcome = load(&vs(&format!(
            "  - route:\n    - {{ destination: {{ host: reviews, subset: v1 }}, {weight} }}\n"
        )));
        assert!(outcome.diagnostics.is_empty(), "{:#?}", outcome.diagnostics);
        assert_eq!(
            split_of(outcome),
            [(
                "outbound|9080|v1|reviews.default.svc.cluster.local".to_owned(),
                100
            )],
            "{weight}"
        );
    }
}

#[test]
fn weights_are_relative_and_need_not_sum_to_100() {
    let outcome = load(&vs(
        "  - route:\n    - { destination: { host: reviews, subset: v1 }, weight: 1 }\n    - { destination: { host: reviews, subset: v2 }, weight: 3 }\n",
    ));
    let config = outcome.config.clone().expect("valid");
    assert_eq!(
        split_of(outcome),
        [
            (
                "outbound|9080|v1|reviews.default.svc.cluster.local".to_owned(),
                1
            ),
            (
                "outbound|9080|v2|reviews.default.svc.cluster.local".to_owned(),
                3
            ),
        ]
    );
    // What the split layer does with them: a uniform draw below the total, 1 in 4 to v1.
    let RouteAction::Forward(forward) = &config.routes.find("reviews").unwrap().routes[0].action
    else {
        panic!()
    };
    assert_eq!(forward.total_weight(), 4);
    let shares: Vec<&str> = (0..4)
        .map(|draw| forward.pick(draw).expect("in range").cluster.as_str())
        .collect();
    assert_eq!(
        shares.iter().filter(|c| c.contains("|v1|")).count(),
        1,
        "{shares:?}"
    );
    assert_eq!(shares.iter().filter(|c| c.contains("|v2|")).count(), 3);
}

#[test]
fn a_zero_weight_destination_beside_others_gets_nothing() {
    let outcome = load(&vs(
        "  - route:\n    - { destination: { host: reviews, subset: v1 }, weight: 0 }\n    - { destination: { host: reviews, subset: v2 }, weight: 7 }\n",
    ));
    let config = outcome.config.expect("valid");
    let RouteAction::Forward(forward) = &config.routes.find("reviews").unwrap().routes[0].action
    else {
        panic!()
    };
    assert!((0..forward.total_weight()).all(|draw| {
        forward
            .pick(draw)
            .unwrap()
            .cluster
            .as_str()
            .contains("|v2|")
    }));
}

#[test]
fn several_destinations_all_weighing_zero_are_an_error_on_the_route() {
    let e = single_error(&vs(
        "  - route:\n    - { destination: { host: reviews, subset: v1 } }\n    - { destination: { host: reviews, subset: v2 }, weight: 0 }\n",
    ));
    assert_eq!(
        e,
        "test.yaml: VirtualService default/reviews: spec.http[0].route: weights sum to 0: with several destinations at least one weight must be positive"
    );
}

#[test]
fn a_negative_weight_names_its_destination() {
    let outcome = load(&vs(
        "  - route:\n    - { destination: { host: reviews, subset: v1 }, weight: 110 }\n    - { destination: { host: reviews, subset: v2 }, weight: -10 }\n",
    ));
    let errors: Vec<String> = outcome.errors().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [
            "test.yaml: VirtualService default/reviews: spec.http[0].route[1].weight: weight -10 is negative"
        ]
    );
}

#[test]
fn an_unknown_field_is_an_error_with_its_path() {
    let e = single_error(&vs(
        "  - route:\n    - destination: { host: reviews, subst: v1 }\n",
    ));
    assert!(
        e.starts_with("test.yaml: VirtualService default/reviews: spec.http[0].route[0].destination.subst: unknown field `subst`"),
        "{e}"
    );
}

#[test]
fn unknown_fields_under_metadata_are_tolerated() {
    let outcome = load(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: r, labels: { a: b }, uid: x, generation: 3 }\nspec: { hosts: [reviews], http: [{ route: [{ destination: { host: reviews } }] }] }\n",
    );
    assert!(outcome.diagnostics.is_empty(), "{:#?}", outcome.diagnostics);
}

#[test]
fn a_subset_no_destination_rule_defines_is_an_error() {
    let e = single_error(&vs(
        "  - route:\n    - destination: { host: reviews, subset: v3 }\n",
    ));
    assert!(
        e.ends_with("spec.http[0].route[0].destination.subset: subset \"v3\" is not defined by any DestinationRule for host \"reviews.default.svc.cluster.local\""),
        "{e}"
    );
}

#[test]
fn a_host_the_registry_does_not_know_is_an_error() {
    let e = single_error(&vs("  - route:\n    - destination: { host: ratings }\n"));
    assert!(
        e.ends_with("spec.http[0].route[0].destination.host: host \"ratings.default.svc.cluster.local\" is not in the service registry (no ServiceEntry defines it)"),
        "{e}"
    );
}

#[test]
fn a_bad_regex_names_the_regex_field() {
    let e = single_error(&vs(
        "  - match: [{ uri: { regex: \"/v1/(unclosed\" } }]\n    route:\n    - destination: { host: reviews }\n",
    ));
    assert!(
        e.contains("spec.http[0].match[0].uri.regex: invalid regex \"/v1/(unclosed\""),
        "{e}"
    );
}

#[test]
fn a_bad_duration_names_the_field() {
    let e = single_error(&vs(
        "  - timeout: 5x\n    route:\n    - destination: { host: reviews }\n",
    ));
    assert!(
        e.contains("spec.http[0].timeout: invalid duration \"5x\""),
        "{e}"
    );
    let e = single_error(&vs(
        "  - retries: { attempts: 3, perTryTimeout: 2y }\n    route:\n    - destination: { host: reviews }\n",
    ));
    assert!(
        e.contains("spec.http[0].retries.perTryTimeout: invalid duration \"2y\""),
        "{e}"
    );
}

#[test]
fn a_duplicate_resource_is_an_error_naming_the_first_file() {
    let outcome = istio::load(
        &[("registry.yaml", REGISTRY), ("again.yaml", REGISTRY)],
        &Workload::default(),
    );
    let errors: Vec<String> = outcome.errors().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [
            "again.yaml: ServiceEntry default/reviews: metadata.name: duplicate ServiceEntry default/reviews: already defined in registry.yaml",
            "again.yaml: DestinationRule default/reviews: metadata.name: duplicate DestinationRule default/reviews: already defined in registry.yaml",
        ]
    );
}

#[test]
fn two_virtual_services_for_one_host_are_a_warning_and_the_first_wins() {
    let first = vs("  - route:\n    - destination: { host: reviews, subset: v1 }\n");
    let second = first
        .replace("name: reviews", "name: reviews-2")
        .replace("subset: v1", "subset: v2");
    let outcome = istio::load(
        &[
            ("registry.yaml", REGISTRY),
            ("a.yaml", &first),
            ("b.yaml", &second),
        ],
        &Workload::default(),
    );
    assert!(!outcome.has_errors());
    let warning = &outcome.diagnostics[0];
    assert_eq!(warning.severity, Severity::Warning);
    assert_eq!(warning.field, "spec.hosts[0]");
    assert!(
        warning
            .message
            .contains("VirtualService default/reviews already routes")
    );
    let config = outcome.config.expect("warnings do not block");
    let RouteAction::Forward(f) = &config.routes.find("reviews").unwrap().routes[0].action else {
        panic!()
    };
    assert_eq!(
        f.destinations[0].cluster.as_str(),
        "outbound|9080|v1|reviews.default.svc.cluster.local"
    );
}

#[test]
fn malformed_yaml_reports_line_and_column() {
    let outcome = load("apiVersion: networking.istio.io/v1\nkind: [unclosed\n");
    let e = outcome.errors().next().expect("an error").to_string();
    assert!(e.starts_with("test.yaml: invalid YAML at line "), "{e}");
}

#[test]
fn wrong_types_and_huge_numbers_are_errors_not_panics() {
    let e = single_error(&vs(
        "  - route:\n    - { destination: { host: reviews }, weight: lots }\n",
    ));
    assert!(e.contains("spec.http[0].route[0].weight"), "{e}");
    let e = single_error(&vs(
        "  - route:\n    - { destination: { host: reviews }, weight: 99999999999999999999999 }\n",
    ));
    assert!(e.contains("spec.http[0].route[0].weight"), "{e}");
    let e = single_error(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: big }\nspec: { hosts: [big.example.com], ports: [{ number: 70000, name: http }], resolution: DNS }\n",
    );
    assert!(
        e.contains("spec.ports[0].number: port 70000 is out of range"),
        "{e}"
    );
}

#[test]
fn empty_files_and_empty_documents_are_fine() {
    for text in ["", "---\n", "# only a comment\n", "---\n---\n"] {
        let outcome = load(text);
        assert!(
            outcome.diagnostics.is_empty(),
            "{text:?}: {:#?}",
            outcome.diagnostics
        );
    }
}

#[test]
fn api_versions_are_checked_per_group() {
    let e = single_error(
        "apiVersion: security.istio.io/v1\nkind: VirtualService\nmetadata: { name: x }\nspec: {}\n",
    );
    assert!(
        e.contains("apiVersion: unsupported apiVersion \"security.istio.io/v1\""),
        "{e}"
    );
}

#[test]
fn deprecated_fault_percent_fields_are_accepted() {
    let outcome = load(&vs(
        "  - fault:\n      delay: { fixedDelay: 7s, percent: 50 }\n      abort: { httpStatus: 500, percent: 10 }\n    route:\n    - destination: { host: reviews, subset: v1 }\n",
    ));
    assert!(outcome.diagnostics.is_empty(), "{:#?}", outcome.diagnostics);
    let config = outcome.config.unwrap();
    let fault = config.routes.find("reviews").unwrap().routes[0]
        .fault
        .clone()
        .unwrap();
    assert_eq!(fault.delay.unwrap().percentage.ppm(), 500_000);
    assert_eq!(fault.abort.unwrap().percentage.ppm(), 100_000);
}

#[test]
fn header_and_path_matches_keep_rule_order() {
    let outcome = load(&vs(concat!(
        "  - match: [{ headers: { end-user: { exact: jason } } }]\n",
        "    route: [{ destination: { host: reviews, subset: v2 } }]\n",
        "  - match: [{ uri: { prefix: /api }, method: { exact: GET }, queryParams: { debug: {} } }]\n",
        "    route: [{ destination: { host: reviews, subset: v1 } }]\n",
        "  - route: [{ destination: { host: reviews } }]\n",
    )));
    let config = outcome.config.expect("valid");
    let routes = &config.routes.find("reviews").unwrap().routes;
    assert_eq!(routes.len(), 3);
    assert_eq!(routes[0].name, "reviews.0");
    assert_eq!(routes[0].matches[0].headers[0].0, "end-user");
    assert_eq!(
        routes[1].matches[0].query_params[0],
        ("debug".to_owned(), None)
    );
    assert!(routes[2].matches.is_empty());
}

#[test]
fn security_resources_narrow_to_the_workload() {
    let workload = Workload {
        labels: [("app".to_owned(), "reviews".to_owned())].into(),
        ..Workload::default()
    };
    let text = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: mesh, namespace: istio-system }
spec: { mtls: { mode: PERMISSIVE } }
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: reviews }
spec:
  selector: { matchLabels: { app: reviews } }
  mtls: { mode: STRICT }
  portLevelMtls: { "9090": { mode: DISABLE } }
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: reviews-viewer }
spec:
  selector: { matchLabels: { app: reviews } }
  action: ALLOW
  rules:
  - from: [{ source: { principals: [cluster.local/ns/default/sa/productpage] } }]
    to: [{ operation: { methods: [GET], paths: ["/reviews*"] } }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: ratings-only }
spec:
  selector: { matchLabels: { app: ratings } }
  rules: [{}]
"#;
    let outcome = istio::load(&[("sec.yaml", text)], &workload);
    let config = outcome.config.expect("valid");
    assert_eq!(config.peer_authentication.mode_for(9080), MtlsMode::Strict);
    assert_eq!(config.peer_authentication.mode_for(9090), MtlsMode::Disable);
    assert_eq!(
        config.authorization.len(),
        1,
        "the ratings policy does not apply"
    );
    assert_eq!(config.authorization[0].name, "default/reviews-viewer");

    let bad = text.replace("paths: [\"/reviews*\"]", "ports: [\"http\"]");
    let outcome = istio::load(&[("sec.yaml", &bad)], &workload);
    let e = outcome.errors().next().expect("an error").to_string();
    assert!(
        e.contains("spec.rules[0].to[0].operation.ports[0]: \"http\" is not a port number"),
        "{e}"
    );
}

/// The effective PeerAuthentication of an `app: reviews` workload in `default` under `text`.
fn peer_auth(text: &str) -> (mesh_core::model::PeerAuthentication, Vec<istio::Diagnostic>) {
    let workload = Workload {
        labels: [("app".to_owned(), "reviews".to_owned())].into(),
        ..Workload::default()
    };
    let outcome = istio::load(&[("pa.yaml", text)], &workload);
    let config = outcome.config.expect("valid");
    (config.peer_authentication, outcome.diagnostics)
}

#[test]
fn port_level_unset_inherits_the_workload_mode() {
    let (pa, _) = peer_auth(
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: reviews }
spec:
  selector: { matchLabels: { app: reviews } }
  mtls: { mode: STRICT }
  portLevelMtls: { "8080": { mode: UNSET }, "8081": {}, "9090": { mode: DISABLE } }
"#,
    );
    assert_eq!(pa.mode_for(8080), MtlsMode::Strict);
    assert_eq!(pa.mode_for(8081), MtlsMode::Strict);
    assert_eq!(pa.mode_for(9090), MtlsMode::Disable);
    assert_eq!(pa.mode_for(80), MtlsMode::Strict);
    // And the workload's UNSET inherits the namespace's mode, for every port.
    let (pa, _) = peer_auth(
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default }
spec: { mtls: { mode: STRICT } }
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: reviews }
spec:
  selector: { matchLabels: { app: reviews } }
  portLevelMtls: { "8080": { mode: UNSET } }
"#,
    );
    assert_eq!(pa.mode_for(9080), MtlsMode::Strict);
    assert_eq!(pa.mode_for(8080), MtlsMode::Strict);
}

/// In namespace `root`: a selector-less STRICT PeerAuthentication, and one with a selector
/// for `app: reviews` that turns mTLS off (which Istio ignores in the root namespace).
fn root_peer_authentications(root: &str) -> String {
    format!(
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{ name: mesh, namespace: {root} }}
spec: {{ mtls: {{ mode: STRICT }} }}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{ name: reviews-off, namespace: {root} }}
spec:
  selector: {{ matchLabels: {{ app: reviews }} }}
  mtls: {{ mode: DISABLE }}
"#
    )
}

#[test]
fn a_root_namespace_peer_authentication_with_a_selector_is_ignored() {
    let (pa, diagnostics) = peer_auth(&root_peer_authentications("istio-system"));
    assert_eq!(pa.mode_for(9080), MtlsMode::Strict);
    assert_eq!(pa.sources, ["istio-system/mesh"]);
    let warnings: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("reviews-off")
            && warnings[0].contains("spec.selector")
            && warnings[0].contains("ignored"),
        "{warnings:#?}"
    );
}

#[test]
fn a_peer_authentication_selector_without_labels_is_namespace_wide() {
    // Istio treats `selector: {}` like no selector: the namespace's policy, which a workload
    // policy overrides and which overrides the mesh's.
    let ns_wide = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: mesh, namespace: istio-system }
spec: { mtls: { mode: STRICT } }
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: empty-selector }
spec:
  selector: {}
  mtls: { mode: PERMISSIVE }
"#;
    let (pa, _) = peer_auth(ns_wide);
    assert_eq!(pa.mode_for(9080), MtlsMode::Permissive);
    assert_eq!(pa.sources, ["istio-system/mesh", "default/empty-selector"]);
    let with_workload = format!(
        "{ns_wide}---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{ name: reviews }}
spec:
  selector: {{ matchLabels: {{ app: reviews }} }}
  mtls: {{ mode: DISABLE }}
"
    );
    let (pa, _) = peer_auth(&with_workload);
    assert_eq!(pa.mode_for(9080), MtlsMode::Disable);
    // Namespace-wide, so it cannot have port-level modes.
    let ports = ns_wide.replace(
        "  selector: {}\n",
        "  selector: {}\n  portLevelMtls: { \"80\": { mode: STRICT } }\n",
    );
    let outcome = istio::load(&[("pa.yaml", &ports)], &Workload::default());
    let e = outcome.errors().next().expect("an error").to_string();
    assert!(
        e.contains("spec.portLevelMtls.80: portLevelMtls needs a selector"),
        "{e}"
    );
}

#[test]
fn the_bundled_examples_load_without_findings() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config");
    let read = |rel: &str| {
        let path = root.join(rel);
        (
            rel.to_owned(),
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}")),
        )
    };
    let quickstart = read("quickstart/mesh.yaml");
    let outcome = istio::load(&[(&quickstart.0, &quickstart.1)], &Workload::default());
    assert!(outcome.diagnostics.is_empty(), "{:#?}", outcome.diagnostics);

    let services = read("bookinfo/services.yaml");
    for rules in [
        "bookinfo/destination-rules.yaml",
        "bookinfo/destination-rules-mtls.yaml",
    ] {
        let rules = read(rules);
        for scenario in [
            "bookinfo/virtual-service-all-v1.yaml",
            "bookinfo/virtual-service-reviews-90-10.yaml",
            "bookinfo/virtual-service-reviews-jason-v2-v3.yaml",
            "bookinfo/virtual-service-ratings-test-delay.yaml",
            "bookinfo/virtual-service-ratings-test-abort.yaml",
            "bookinfo/fault-injection-details-v1.yaml",
            "bookinfo/egress-google-apis.yaml",
            "bookinfo/security.yaml",
        ] {
            let scenario = read(scenario);
            let files = [
                (services.0.as_str(), services.1.as_str()),
                (rules.0.as_str(), rules.1.as_str()),
                (scenario.0.as_str(), scenario.1.as_str()),
            ];
            let outcome = istio::load(&files, &Workload::default());
            assert!(
                outcome.diagnostics.is_empty(),
                "{} + {}: {:#?}",
                rules.0,
                scenario.0,
                outcome.diagnostics
            );
        }
    }
}

const RATINGS: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: ratings }
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{ number: 9080, name: http, protocol: HTTP }]
  endpoints:
  - { address: 127.0.0.1, ports: { http: 19091 }, labels: { version: v1 } }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: ratings
  annotations: ANNOTATIONS
spec:
  host: ratings
  subsets:
  - { name: v1, labels: { version: v1 } }
  - name: rr
    labels: { version: v1 }
    trafficPolicy: { loadBalancer: { simple: ROUND_ROBIN } }
"#;

#[test]
fn the_peak_ewma_annotation_replaces_least_request_but_not_an_explicit_algorithm() {
    use mesh_core::model::LbAlgorithm;
    use std::time::Duration;
    let yaml = RATINGS.replace(
        "ANNOTATIONS",
        r#"{ loadbalancer.mesh.io/algorithm: PEAK_EWMA, loadbalancer.mesh.io/peak-ewma-decay: 5s }"#,
    );
    let config = load(&yaml).config.expect("valid");
    let algorithm = |subset: Option<&str>| {
        let name = ClusterName::outbound(9080, subset, "ratings.default.svc.cluster.local");
        config.clusters[&name]
            .policy
            .load_balancer
            .algorithm
            .clone()
    };
    let ewma = LbAlgorithm::PeakEwma {
        decay: Duration::from_secs(5),
    };
    assert_eq!(algorithm(None), ewma);
    assert_eq!(algorithm(Some("v1")), ewma);
    assert_eq!(algorithm(Some("rr")), LbAlgorithm::RoundRobin);
}

#[test]
fn a_bad_load_balancer_annotation_names_the_annotation() {
    let yaml = RATINGS.replace(
        "ANNOTATIONS",
        r#"{ loadbalancer.mesh.io/algorithm: FASTEST }"#,
    );
    let e = single_error(&yaml);
    assert!(
        e.ends_with(
            "metadata.annotations.loadbalancer.mesh.io/algorithm: unknown load balancer \"FASTEST\": expected PEAK_EWMA"
        ),
        "{e}"
    );
    let yaml = RATINGS.replace(
        "ANNOTATIONS",
        r#"{ loadbalancer.mesh.io/peak-ewma-decay: 5s }"#,
    );
    assert!(single_error(&yaml).ends_with("needs loadbalancer.mesh.io/algorithm: PEAK_EWMA"));
}

#[test]
fn latency_outlier_annotations_set_the_rule_on_every_cluster_of_the_host() {
    use mesh_core::model::LatencyOutlierRule;
    use std::time::Duration;
    let yaml = RATINGS.replace(
        "ANNOTATIONS",
        r#"{ outlier.mesh.io/latency-factor: "2.5", outlier.mesh.io/latency-ejection-time: 1m }"#,
    );
    let config = load(&yaml).config.expect("valid");
    for subset in [None, Some("v1"), Some("rr")] {
        let name = ClusterName::outbound(9080, subset, "ratings.default.svc.cluster.local");
        assert_eq!(
            config.clusters[&name].policy.latency_outlier,
            Some(LatencyOutlierRule {
                factor_percent: 250,
                base_ejection_time: Duration::from_secs(60),
                min_endpoints: 3,
            })
        );
    }
    let yaml = RATINGS.replace(
        "ANNOTATIONS",
        r#"{ outlier.mesh.io/latency-factor: "0.5" }"#,
    );
    assert!(
        single_error(&yaml).ends_with(
            "metadata.annotations.outlier.mesh.io/latency-factor: \"0.5\" is not a factor above 1 (at most 100)"
        )
    );
}

#[test]
fn service_entry_addresses_are_kept_and_a_bad_one_names_its_index() {
    let se = |addresses: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: db }}
spec:
  hosts: [db.default.svc.cluster.local]
  addresses: {addresses}
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 5432, name: tcp, protocol: TCP }}]
  endpoints: [{{ address: 127.0.0.1 }}]
"
        )
    };
    let config = load(&se("[10.96.0.10, 240.240.0.0/16]"))
        .config
        .expect("valid");
    let db = config.service("db.default.svc.cluster.local").unwrap();
    let addresses: Vec<String> = db.addresses.iter().map(ToString::to_string).collect();
    assert_eq!(addresses, ["10.96.0.10/32", "240.240.0.0/16"]);
    let e = single_error(&se("[10.96.0.10, not-an-ip]"));
    assert!(
        e.ends_with("spec.addresses[1]: \"not-an-ip\" is not an IP address or CIDR range"),
        "{e}"
    );
}

/// A VirtualService in `team-b` aborting every request to reviews, exported to `export_to`.
fn team_b_abort(export_to: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: reviews-abort, namespace: team-b }}
spec:
  hosts: [reviews.default.svc.cluster.local]
  {export_to}
  http:
  - fault: {{ abort: {{ httpStatus: 503 }} }}
    route: [{{ destination: {{ host: reviews.default.svc.cluster.local }} }}]
"
    )
}

#[test]
fn a_virtual_service_applies_only_where_it_is_exported() {
    let fault_for_default_workload = |export_to: &str| {
        let outcome = load(&team_b_abort(export_to));
        assert!(outcome.diagnostics.is_empty(), "{:#?}", outcome.diagnostics);
        let config = outcome.config.expect("valid");
        config.routes.find("reviews:9080").expect("vhost").routes[0]
            .fault
            .as_ref()
            .and_then(|f| f.abort.clone())
            .map(|a| a.error)
    };
    assert_eq!(
        fault_for_default_workload("exportTo: [\".\"]"),
        None,
        "exported to team-b only: the default route"
    );
    assert_eq!(fault_for_default_workload("exportTo: [\"~\"]"), None);
    assert_eq!(
        fault_for_default_workload("exportTo: [other, team-b]"),
        None
    );
    for visible in [
        "",
        "exportTo: []",
        "exportTo: [default]",
        "exportTo: [\"*\"]",
        "exportTo: [\".\", default]",
    ] {
        assert_eq!(
            fault_for_default_workload(visible),
            Some(AbortError::Http(503)),
            "{visible}"
        );
    }
    // A workload in team-b sees it under ".".
    let team_b = Workload {
        namespace: "team-b".to_owned(),
        ..Workload::default()
    };
    let outcome = istio::load(
        &[
            ("registry.yaml", REGISTRY),
            ("test.yaml", &team_b_abort("exportTo: [\".\"]")),
        ],
        &team_b,
    );
    let config = outcome.config.expect("valid");
    let route = &config
        .routes
        .find("reviews.default.svc.cluster.local:9080")
        .unwrap()
        .routes[0];
    assert!(route.fault.is_some());
}

#[test]
fn a_bad_export_to_entry_names_its_index() {
    let e = single_error(&team_b_abort("exportTo: [default, \"Team_C\"]"));
    assert_eq!(
        e,
        "test.yaml: VirtualService team-b/reviews-abort: spec.exportTo[1]: \"Team_C\" is not `.`, `*`, `~` or a namespace name"
    );
    let e = single_error(&team_b_abort("exportTo: [\"*\", default]"));
    assert!(
        e.ends_with("spec.exportTo: `*` cannot be combined with other entries"),
        "{e}"
    );
}

#[test]
fn a_destination_rule_applies_only_where_it_is_exported() {
    let rule = |export_to: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: ratings-lb, namespace: team-b }}
spec:
  host: ratings.default.svc.cluster.local
  {export_to}
  trafficPolicy: {{ loadBalancer: {{ simple: ROUND_ROBIN }} }}
"
        )
    };
    let algorithm = |export_to: &str| {
        let ratings = RATINGS.replace("  annotations: ANNOTATIONS\n", "");
        let ratings = ratings.replace(
            "  host: ratings\n",
            "  host: ratings\n  exportTo: [\"~\"]\n",
        );
        let outcome = istio::load(
            &[("ratings.yaml", &ratings), ("test.yaml", &rule(export_to))],
            &Workload::default(),
        );
        assert!(!outcome.has_errors(), "{:#?}", outcome.diagnostics);
        let config = outcome.config.expect("valid");
        config
            .cluster(&ClusterName::outbound(
                9080,
                None,
                "ratings.default.svc.cluster.local",
            ))
            .expect("cluster")
            .policy
            .load_balancer
            .algorithm
            .clone()
    };
    use mesh_core::model::LbAlgorithm;
    assert_eq!(algorithm("exportTo: [\".\"]"), LbAlgorithm::LeastRequest);
    assert_eq!(algorithm("exportTo: [default]"), LbAlgorithm::RoundRobin);
    assert_eq!(algorithm(""), LbAlgorithm::RoundRobin);
}

#[test]
fn port_level_settings_reset_the_sections_they_omit() {
    use mesh_core::model::LbAlgorithm;
    let services = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: details }
spec:
  hosts: [details.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - { number: 9080, name: http, protocol: HTTP }
  - { number: 9090, name: http-admin, protocol: HTTP }
  endpoints:
  - { address: 127.0.0.1, ports: { http: 19101, http-admin: 19102 }, labels: { version: v1 } }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: details }
spec:
  host: details
  trafficPolicy:
    outlierDetection: { consecutive5xxErrors: 4 }
    connectionPool: { tcp: { maxConnections: 7 } }
    portLevelSettings:
    - port: { number: 9080 }
      loadBalancer: { simple: ROUND_ROBIN }
  subsets:
  - name: v1
    labels: { version: v1 }
    trafficPolicy: { connectionPool: { tcp: { maxConnections: 9 } } }
"#;
    let outcome = istio::load(&[("details.yaml", services)], &Workload::default());
    assert!(outcome.diagnostics.is_empty(), "{:#?}", outcome.diagnostics);
    let config = outcome.config.expect("valid");
    let policy = |port, subset| {
        config
            .cluster(&ClusterName::outbound(
                port,
                subset,
                "details.default.svc.cluster.local",
            ))
            .expect("cluster")
            .policy
            .clone()
    };
    let on_9080 = policy(9080, None);
    assert_eq!(on_9080.load_balancer.algorithm, LbAlgorithm::RoundRobin);
    assert_eq!(on_9080.outlier_detection, None, "not inherited");
    assert_eq!(
        on_9080.connection_pool,
        mesh_core::model::ConnectionPool::default()
    );
    let on_9090 = policy(9090, None);
    assert_eq!(on_9090.load_balancer.algorithm, LbAlgorithm::LeastRequest);
    assert_eq!(
        on_9090.outlier_detection.map(|o| o.consecutive_5xx_errors),
        Some(Some(4))
    );
    assert_eq!(on_9090.connection_pool.max_connections, 7);
    // A subset builds on the rule's policy as resolved for the port.
    let v1_on_9080 = policy(9080, Some("v1"));
    assert_eq!(v1_on_9080.load_balancer.algorithm, LbAlgorithm::RoundRobin);
    assert_eq!(v1_on_9080.outlier_detection, None);
    assert_eq!(v1_on_9080.connection_pool.max_connections, 9);
    let v1_on_9090 = policy(9090, Some("v1"));
    assert!(v1_on_9090.outlier_detection.is_some());
    assert_eq!(v1_on_9090.connection_pool.max_connections, 9);
}

/// A second DestinationRule for reviews, `reviews-b`, with `spec` under `spec:`.
fn second_rule(spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: reviews-b }}\nspec:\n  host: reviews.default.svc.cluster.local\n{spec}"
    )
}

#[test]
fn destination_rules_for_one_host_merge_their_subsets() {
    // REGISTRY's rule defines v1 and v2 and an outlier policy; this one adds v3.
    let rule = second_rule(
        "  trafficPolicy: { loadBalancer: { simple: RANDOM } }\n  subsets:\n  - { name: v3, labels: { version: v3 } }\n",
    );
    let route = vs("  - route:\n    - destination: { host: reviews, subset: v3 }\n");
    let outcome = istio::load(
        &[
            ("registry.yaml", REGISTRY),
            ("b.yaml", &rule),
            ("vs.yaml", &route),
        ],
        &Workload::default(),
    );
    assert!(outcome.diagnostics.is_empty(), "{:#?}", outcome.diagnostics);
    let config = outcome.config.expect("valid");
    let v3 = config
        .cluster(&ClusterName::outbound(
            9080,
            Some("v3"),
            "reviews.default.svc.cluster.local",
        ))
        .expect("the merged subset has a cluster");
    let ports: Vec<u16> = v3.endpoints.iter().map(|e| e.port).collect();
    assert_eq!(ports, [19083]);
    assert!(
        v3.policy.outlier_detection.is_some(),
        "the first rule's policy is kept"
    );
    assert_eq!(
        v3.policy.load_balancer.algorithm,
        mesh_core::model::LbAlgorithm::LeastRequest,
        "the second rule's policy is not used when the first has one"
    );
}

#[test]
fn a_merged_rule_supplies_the_policy_the_first_lacks() {
    let first = REGISTRY.replace(
        "  trafficPolicy:\n    outlierDetection: { consecutive5xxErrors: 3, baseEjectionTime: 15s }\n",
        "",
    );
    let rule = second_rule("  trafficPolicy: { loadBalancer: { simple: RANDOM } }\n");
    let outcome = istio::load(
        &[("registry.yaml", &first), ("b.yaml", &rule)],
        &Workload::default(),
    );
    assert!(outcome.diagnostics.is_empty(), "{:#?}", outcome.diagnostics);
    let config = outcome.config.expect("valid");
    let v1 = config
        .cluster(&ClusterName::outbound(
            9080,
            Some("v1"),
            "reviews.default.svc.cluster.local",
        ))
        .unwrap();
    assert_eq!(
        v1.policy.load_balancer.algorithm,
        mesh_core::model::LbAlgorithm::Random
    );
}

#[test]
fn a_subset_name_both_rules_define_is_a_warning_and_the_first_wins() {
    let rule = second_rule("  subsets:\n  - { name: v2, labels: { version: v3 } }\n");
    let outcome = istio::load(
        &[("registry.yaml", REGISTRY), ("b.yaml", &rule)],
        &Workload::default(),
    );
    assert!(!outcome.has_errors(), "{:#?}", outcome.diagnostics);
    let warnings: Vec<String> = outcome
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        warnings,
        [
            "b.yaml: warning: DestinationRule default/reviews-b: spec.subsets[0].name: DestinationRule default/reviews already defines subset \"v2\" for host \"reviews.default.svc.cluster.local\"; this one is ignored"
        ]
    );
    let config = outcome.config.expect("warnings do not block");
    let v2 = config
        .cluster(&ClusterName::outbound(
            9080,
            Some("v2"),
            "reviews.default.svc.cluster.local",
        ))
        .unwrap();
    let ports: Vec<u16> = v2.endpoints.iter().map(|e| e.port).collect();
    assert_eq!(ports, [19082], "the first rule's labels select");
}

#[test]
fn a_delegate_virtual_service_without_hosts_is_ignored_with_a_warning() {
    let root = vs(
        "  - match: [{ uri: { prefix: /api } }]\n    delegate: { name: reviews-api }\n  - route:\n    - destination: { host: reviews, subset: v2 }\n",
    );
    let delegate = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews-api }
spec:
  http:
  - route:
    - destination: { host: reviews, subset: v1 }
";
    let outcome = istio::load(
        &[
            ("registry.yaml", REGISTRY),
            ("root.yaml", &root),
            ("delegate.yaml", delegate),
        ],
        &Workload::default(),
    );
    assert!(!outcome.has_errors(), "{:#?}", outcome.diagnostics);
    let fields: Vec<(&str, &str, Severity)> = outcome
        .diagnostics
        .iter()
        .map(|d| (d.file.as_str(), d.field.as_str(), d.severity))
        .collect();
    assert_eq!(
        fields,
        [
            ("root.yaml", "spec.http[0].delegate", Severity::Warning),
            ("delegate.yaml", "spec.hosts", Severity::Warning),
        ]
    );
    let config = outcome.config.expect("warnings do not block");
    let routes = &config.routes.find("reviews").unwrap().routes;
    assert_eq!(routes.len(), 1, "the delegate rule is dropped");
    let RouteAction::Forward(f) = &routes[0].action else {
        panic!()
    };
    assert_eq!(
        f.destinations[0].cluster.as_str(),
        "outbound|9080|v2|reviews.default.svc.cluster.local"
    );
}

/// The retry policy of the first rule of a VirtualService for reviews with `retries`.
fn retry_of(retries: &str) -> Option<mesh_core::model::RetryPolicy> {
    let outcome = load(&vs(&format!(
        "  - retries: {retries}\n    route:\n    - destination: {{ host: reviews }}\n"
    )));
    assert!(outcome.diagnostics.is_empty(), "{:#?}", outcome.diagnostics);
    let config = outcome.config.expect("valid");
    config.routes.find("reviews").unwrap().routes[0]
        .retry
        .clone()
}

#[test]
fn retries_without_attempts_are_disabled() {
    assert_eq!(retry_of("{}"), None, "unset attempts is 0: no retries");
    assert_eq!(retry_of("{ attempts: 0 }"), None);
    assert_eq!(retry_of("{ backoff: 50ms }"), None);
    let three = retry_of("{ attempts: 3, perTryTimeout: 2s }").expect("retries");
    assert_eq!(three.attempts, 3);
    assert!(three.ignore_previous_hosts, "Istio's default");
    let same_hosts = retry_of("{ attempts: 1, retryIgnorePreviousHosts: false }").unwrap();
    assert!(!same_hosts.ignore_previous_hosts);
    assert_eq!(
        three.per_try_timeout,
        Some(std::time::Duration::from_secs(2))
    );
}

#[test]
fn a_retry_setting_without_attempts_is_an_error_on_attempts() {
    let e = single_error(&vs(
        "  - retries: { perTryTimeout: 2s, retryOn: 5xx }\n    route:\n    - destination: { host: reviews }\n",
    ));
    assert_eq!(
        e,
        "test.yaml: VirtualService default/reviews: spec.http[0].retries.attempts: attempts is 0 or unset, which disables retries, yet perTryTimeout, retryOn are set; set attempts"
    );
    let e = single_error(&vs(
        "  - retries: { attempts: 0, retryRemoteLocalities: true }\n    route:\n    - destination: { host: reviews }\n",
    ));
    assert!(e.contains("retries.attempts: "), "{e}");
    assert!(e.contains("yet retryRemoteLocalities is set"), "{e}");
}

#[test]
fn service_entries_that_select_the_workload_name_its_services() {
    let workload = Workload {
        namespace: "shop".to_owned(),
        labels: [("app".to_owned(), "ratings".to_owned())].into(),
        ..Workload::default()
    };
    let entry_on = |name: &str, namespace: &str, app: &str, ports: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: {name}, namespace: {namespace} }}
spec:
  hosts: [{name}.{namespace}.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: {ports}
  workloadSelector: {{ labels: {{ app: {app} }} }}
"
        )
    };
    let entry = |name: &str, namespace: &str, app: &str| {
        entry_on(
            name,
            namespace,
            app,
            "[{ number: 80, name: http, protocol: HTTP }]",
        )
    };
    let text = [
        entry("ratings-v2", "shop", "ratings"),
        entry("ratings", "shop", "ratings"),
        // Another port of the workload, reached through port 9090 of its service.
        entry_on(
            "ratings-admin",
            "shop",
            "ratings",
            "[{ number: 9090, name: admin, protocol: HTTP, targetPort: 8081 }]",
        ),
        // Another app, and the same labels in another namespace: not this workload.
        entry("reviews", "shop", "reviews"),
        entry("ratings", "other", "ratings"),
        entry_on(
            "reviews-admin",
            "shop",
            "reviews",
            "[{ number: 8081, name: admin, protocol: HTTP }]",
        ),
    ]
    .join("---\n");
    let outcome = istio::load(&[("mesh.yaml", text.as_str())], &workload);
    let config = outcome.config.expect("valid");
    assert_eq!(
        config.workload_services,
        [
            "ratings-admin.shop.svc.cluster.local",
            "ratings-v2.shop.svc.cluster.local",
            "ratings.shop.svc.cluster.local"
        ]
    );
    // Per workload port: the target port names the admin service; two services on port 80,
    // the first by name.
    assert_eq!(
        config.workload_service_ports,
        [
            (80, "ratings-v2.shop.svc.cluster.local".to_owned()),
            (8081, "ratings-admin.shop.svc.cluster.local".to_owned())
        ]
        .into()
    );
}

/// The names of the authorization policies that apply, in order.
fn policy_names(config: &mesh_core::model::MeshConfig) -> Vec<&str> {
    config
        .authorization
        .iter()
        .map(|p| p.name.as_str())
        .collect()
}

#[test]
fn the_root_namespace_is_an_option_and_istio_system_is_only_its_default() {
    // A selector-less DENY of `path` named `namespace/name`.
    let deny = |namespace: &str, name: &str, path: &str| {
        format!(
            "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{ name: {name}, namespace: {namespace} }}
spec:
  action: DENY
  rules: [{{ to: [{{ operation: {{ paths: [\"{path}\"] }} }}] }}]
"
        )
    };
    let text = root_peer_authentications("istio-config")
        + &deny("istio-config", "deny-admin", "/admin/*")
        + &deny("istio-system", "old-root", "/old/*");
    let text = text.as_str();
    let workload = Workload {
        labels: [("app".to_owned(), "reviews".to_owned())].into(),
        ..Workload::default()
    };
    let options = istio::MeshOptions {
        root_namespace: "istio-config".into(),
        path_normalization: PathNormalization::MergeSlashes,
    };
    let outcome = istio::load_with(&[("mesh.yaml", text)], &workload, &options);
    let config = outcome.config.expect("valid");
    // The root namespace's selector-less policies apply mesh-wide; istio-system is now just a
    // namespace this workload is not in.
    assert_eq!(config.peer_authentication.mode_for(9080), MtlsMode::Strict);
    assert_eq!(config.peer_authentication.sources, ["istio-config/mesh"]);
    assert_eq!(policy_names(&config), ["istio-config/deny-admin"]);
    assert_eq!(config.path_normalization, PathNormalization::MergeSlashes);
    // A selector in the root namespace is ignored there, with a warning naming it.
    let warnings: Vec<String> = outcome
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("reviews-off") && w.contains("root namespace istio-config")),
        "{warnings:#?}"
    );

    // With Istio's defaults, the same files give the opposite.
    let config = istio::load(&[("mesh.yaml", text)], &workload)
        .config
        .expect("valid");
    assert_eq!(
        config.peer_authentication.mode_for(9080),
        MtlsMode::Permissive
    );
    assert!(config.peer_authentication.sources.is_empty());
    assert_eq!(policy_names(&config), ["istio-system/old-root"]);
    assert_eq!(config.path_normalization, PathNormalization::Base);
}

/// A `ratings` service and its DestinationRule with `traffic_policy`.
fn ratings_rule(traffic_policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{ name: ratings }}\n\
         spec:\n  hosts: [ratings.default.svc.cluster.local]\n  resolution: STATIC\n  \
         ports: [{{ number: 9080, name: http, protocol: HTTP }}]\n  endpoints: [{{ address: 127.0.0.1 }}]\n\
         ---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: ratings }}\n\
         spec:\n  host: ratings\n  trafficPolicy: {traffic_policy}\n"
    )
}

#[test]
fn settings_that_change_the_wire_and_are_not_supported_are_errors_not_ignored() {
    for (policy, field) in [
        (
            "{ proxyProtocol: { version: V1 } }",
            "spec.trafficPolicy.proxyProtocol",
        ),
        (
            "{ tunnel: { protocol: CONNECT, targetHost: a, targetPort: 1 } }",
            "spec.trafficPolicy.tunnel",
        ),
        (
            "{ tls: { mode: SIMPLE, caCertificates: /ca.pem, subjectAltNames: [\"spiffe://td/ns/a/sa/b\"] } }",
            "spec.trafficPolicy.tls.subjectAltNames[0]",
        ),
        (
            "{ tls: { mode: SIMPLE, caCertificates: /ca.pem, subjectAltNames: [\"not a name\"] } }",
            "spec.trafficPolicy.tls.subjectAltNames[0]",
        ),
        (
            "{ tls: { mode: ISTIO_MUTUAL, caCrl: /crl.pem } }",
            "spec.trafficPolicy.tls",
        ),
        (
            "{ loadBalancer: { consistentHash: { httpCookie: { name: s, ttl: 1s, attributes: [{ name: \"Same;Site\", value: Lax }] } } } }",
            "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes[0]",
        ),
    ] {
        let error = single_error(&ratings_rule(policy));
        assert!(error.contains(field), "{policy}: {error}");
    }
}

#[test]
fn file_tls_keeps_its_crl_and_dns_names_and_cookie_attributes() {
    let outcome = load(&ratings_rule(
        "{ tls: { mode: SIMPLE, caCertificates: /ca.pem, caCrl: /crl.pem, subjectAltNames: [api.example.com, 10.0.0.1] }, \
         loadBalancer: { consistentHash: { httpCookie: { name: s, ttl: 1s, attributes: [{ name: SameSite, value: Lax }, { name: Secure }] } } } }",
    ));
    assert_eq!(outcome.errors().count(), 0, "{:?}", outcome.diagnostics);
    let config = outcome.config.expect("config");
    let cluster = config
        .clusters
        .values()
        .find(|c| c.service.as_str() == "ratings.default.svc.cluster.local" && c.subset.is_none())
        .expect("cluster");
    let tls = cluster.policy.tls.as_ref().expect("tls");
    assert_eq!(tls.ca_crl.as_deref(), Some("/crl.pem"));
    assert_eq!(tls.subject_alt_names, ["api.example.com", "10.0.0.1"]);
    let mesh_core::model::LbAlgorithm::ConsistentHash(ch) = &cluster.policy.load_balancer.algorithm
    else {
        panic!("{:?}", cluster.policy.load_balancer)
    };
    let mesh_core::model::HashKey::Cookie { attributes, .. } = &ch.key else {
        panic!("{:?}", ch.key)
    };
    assert_eq!(
        attributes,
        &[
            ("SameSite".to_owned(), "Lax".to_owned()),
            ("Secure".to_owned(), String::new())
        ]
    );
}

#[test]
fn sidecar_settings_left_unapplied_are_reported() {
    let sidecar = |spec: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{ name: default }}\nspec: {spec}\n"
        )
    };
    let error = single_error(&sidecar("{ outboundTrafficPolicy: { mode: REGISTRY } }"));
    assert!(
        error.contains("spec.outboundTrafficPolicy.mode") && error.contains("REGISTRY_ONLY"),
        "{error}"
    );
    let error = single_error(&sidecar(
        "{ outboundTrafficPolicy: { mode: REGISTRY_ONLY, egressProxy: { host: egress, port: { number: 80 } } } }",
    ));
    assert!(
        error.contains("spec.outboundTrafficPolicy.egressProxy"),
        "{error}"
    );
    for (mode, policy) in [
        ("", OutboundTrafficPolicy::AllowAny),
        (
            "outboundTrafficPolicy: { mode: ALLOW_ANY }",
            OutboundTrafficPolicy::AllowAny,
        ),
        (
            "outboundTrafficPolicy: { mode: REGISTRY_ONLY }",
            OutboundTrafficPolicy::RegistryOnly,
        ),
    ] {
        let outcome = load(&sidecar(&format!("{{ {mode} }}")));
        assert_eq!(outcome.errors().count(), 0, "{:?}", outcome.diagnostics);
        assert_eq!(
            outcome.config.unwrap().outbound_traffic_policy,
            policy,
            "{mode}"
        );
    }
    let error = single_error(&sidecar(
        "{ ingress: [{ port: { number: 8443, protocol: HTTPS, name: https }, tls: { mode: SIMPLE } }] }",
    ));
    assert!(error.contains("spec.ingress[0].tls"), "{error}");
    let outcome = load(&sidecar(
        "{ egress: [{ hosts: [\"./*\"] }], outboundTrafficPolicy: { mode: ALLOW_ANY }, inboundConnectionPool: { http: { http1MaxPendingRequests: 1 } } }",
    ));
    assert_eq!(outcome.errors().count(), 0, "{:?}", outcome.diagnostics);
    let warnings: Vec<String> = outcome
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .map(|d| d.field.clone())
        .collect();
    assert_eq!(warnings, ["spec.inboundConnectionPool"]);
}

#[test]
fn a_sidecar_s_egress_hosts_scope_the_services_the_workload_sees() {
    // `reviews` (namespace default) from the registry, and `ledger` in namespace bank.
    let ledger = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
        metadata: { name: ledger, namespace: bank }\nspec:\n  hosts: [ledger.bank.svc.cluster.local]\n  \
        resolution: STATIC\n  ports: [{ number: 80, name: http, protocol: HTTP }]\n  \
        endpoints: [{ address: 127.0.0.1 }]\n";
    let with_egress = |hosts: &str| {
        format!(
            "{ledger}---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{ name: default }}\n\
             spec: {{ egress: [{{ hosts: {hosts} }}] }}\n"
        )
    };
    let seen = |hosts: &str| {
        let outcome = load(&with_egress(hosts));
        assert_eq!(outcome.errors().count(), 0, "{:#?}", outcome.diagnostics);
        let config = outcome.config.unwrap();
        let services: Vec<String> = config.services.keys().cloned().collect();
        // Clusters and virtual hosts follow the services.
        for c in config.clusters.values() {
            assert!(services.contains(&c.service.to_string()), "{}", c.name);
        }
        let routed = |host: &str| config.routes.find(host).is_some();
        assert_eq!(
            routed("reviews.default.svc.cluster.local"),
            services.iter().any(|s| s.starts_with("reviews."))
        );
        assert_eq!(
            routed("ledger.bank.svc.cluster.local"),
            services.iter().any(|s| s.starts_with("ledger."))
        );
        services
    };
    let reviews = "reviews.default.svc.cluster.local";
    let ledger_host = "ledger.bank.svc.cluster.local";
    assert_eq!(seen("[\"./*\"]"), [reviews]);
    assert_eq!(seen("[\"bank/*\"]"), [ledger_host]);
    assert_eq!(seen("[\"*/*.bank.svc.cluster.local\"]"), [ledger_host]);
    assert_eq!(seen("[\"*/*\"]"), [ledger_host, reviews]);
    assert_eq!(seen("[\"~/*\"]"), Vec::<String>::new());
    // Without egress listeners, everything.
    let outcome = load(ledger);
    assert_eq!(outcome.config.unwrap().services.len(), 2);
    // Bad entries name their field.
    let error = single_error(&with_egress("[\"reviews\"]"));
    assert!(error.contains("spec.egress[0].hosts[0]"), "{error}");
    let error = single_error(&with_egress("[\"./re*views\"]"));
    assert!(error.contains("spec.egress[0].hosts[0]"), "{error}");
}

#[test]
fn an_egress_listener_bound_to_a_port_decides_what_is_seen_on_that_port() {
    // `ledger` (namespace bank) serves HTTP on 80 and 8080; `reviews` (default) on 9080.
    let ledger = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
        metadata: { name: ledger, namespace: bank }\nspec:\n  hosts: [ledger.bank.svc.cluster.local]\n  \
        resolution: STATIC\n  ports: [{ number: 80, name: http, protocol: HTTP }, { number: 8080, name: http-alt, protocol: HTTP }]\n  \
        endpoints: [{ address: 127.0.0.1 }]\n";
    let with_egress = |listeners: &str| {
        format!(
            "{ledger}---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{ name: default }}\n\
             spec: {{ egress: {listeners} }}\n"
        )
    };
    // (service, port) pairs seen, checked against the clusters and virtual hosts.
    let seen = |listeners: &str| {
        let outcome = load(&with_egress(listeners));
        assert_eq!(outcome.errors().count(), 0, "{:#?}", outcome.diagnostics);
        let config = outcome.config.unwrap();
        let mut seen = Vec::new();
        for (host, service) in &config.services {
            for port in &service.ports {
                seen.push(format!("{host}:{}", port.number));
            }
        }
        let mut clusters: Vec<String> = config
            .clusters
            .values()
            .filter(|c| c.subset.is_none())
            .map(|c| format!("{}:{}", c.service, c.port))
            .collect();
        clusters.sort();
        assert_eq!(clusters, seen, "clusters follow the ports");
        for name in [
            "ledger.bank.svc.cluster.local",
            "reviews.default.svc.cluster.local",
        ] {
            for port in [80, 8080, 9080] {
                let key = format!("{name}:{port}");
                assert_eq!(
                    config.routes.find(&key).is_some(),
                    seen.contains(&key),
                    "virtual host {key}"
                );
            }
        }
        seen
    };
    let ledger_80 = "ledger.bank.svc.cluster.local:80";
    let ledger_8080 = "ledger.bank.svc.cluster.local:8080";
    let reviews = "reviews.default.svc.cluster.local:9080";
    // A listener on 8080 alone: only that port of what it imports.
    assert_eq!(
        seen("[{ port: { number: 8080, protocol: HTTP, name: http }, hosts: [\"*/*\"] }]"),
        [ledger_8080]
    );
    // Port 80 is decided by its own listener (which imports only this namespace); every other
    // port by the catch-all, which imports everything.
    assert_eq!(
        seen(
            "[{ port: { number: 80, protocol: HTTP, name: http }, hosts: [\"./*\"] }, \
               { hosts: [\"*/*\"] }]"
        ),
        [ledger_8080, reviews]
    );
    assert_eq!(
        seen(
            "[{ port: { number: 80, protocol: HTTP, name: http }, hosts: [\"bank/*\"] }, \
               { hosts: [\"./*\"] }]"
        ),
        [ledger_80, reviews]
    );
    // Istio's validation: one listener per port, the port-less one last and alone.
    let error = single_error(&with_egress(
        "[{ port: { number: 80, protocol: HTTP, name: a }, hosts: [\"*/*\"] }, \
          { port: { number: 80, protocol: HTTP, name: b }, hosts: [\"*/*\"] }]",
    ));
    assert!(error.contains("spec.egress[1].port.number"), "{error}");
    let error = single_error(&with_egress(
        "[{ hosts: [\"*/*\"] }, { port: { number: 80, protocol: HTTP, name: a }, hosts: [\"*/*\"] }]",
    ));
    assert!(error.contains("spec.egress[0].port"), "{error}");
    let error = single_error(&with_egress(
        "[{ port: { number: 0, protocol: HTTP, name: a }, hosts: [\"*/*\"] }]",
    ));
    assert!(error.contains("spec.egress[0].port.number"), "{error}");
}

fn cors_of(outcome: BuildOutcome) -> mesh_core::model::CorsPolicy {
    assert!(outcome.diagnostics.is_empty(), "{:#?}", outcome.diagnostics);
    let config = outcome.config.expect("valid");
    let vhost = config.routes.find("reviews:9080").expect("routed");
    *vhost.routes[0].cors.clone().expect("a CORS policy")
}

#[test]
fn a_cors_policy_maps_to_the_route_as_istiod_translates_it() {
    use mesh_core::model::{CorsPolicy, StringMatch};
    let policy = cors_of(load(&vs(r#"  - corsPolicy:
      allowOrigins:
      - exact: https://example.com
      - prefix: https://app.
      - regex: "https://.*\\.example\\.org"
      allowMethods: [GET, POST]
      allowHeaders: [Content-Type, x-custom]
      exposeHeaders: [x-trace]
      maxAge: 24h
      allowCredentials: true
      unmatchedPreflights: IGNORE
    route:
    - destination: { host: reviews }
"#)));
    assert_eq!(
        CorsPolicy {
            allow_origins: policy.allow_origins.clone(),
            ..policy.clone()
        },
        CorsPolicy {
            allow_origins: policy.allow_origins.clone(),
            allow_methods: "GET,POST".into(),
            allow_headers: "Content-Type,x-custom".into(),
            expose_headers: "x-trace".into(),
            max_age: Some(86_400),
            allow_credentials: true,
            forward_unmatched_preflights: false,
        }
    );
    assert_eq!(policy.allow_origins.len(), 3);
    assert_eq!(
        policy.allow_origins[0],
        StringMatch::Exact("https://example.com".into())
    );
    assert!(policy.allows_origin("https://app.example.com"));
    assert!(policy.allows_origin("https://a.example.org"));
    assert!(!policy.allows_origin("https://a.example.org.evil"));
    assert!(!policy.allows_origin("https://example.com.evil"));

    // The deprecated list is exact origins; unmatched preflights are forwarded by default.
    let policy = cors_of(load(&vs(
        "  - corsPolicy: { allowOrigin: [\"https://old.example\"] }\n    route:\n    - destination: { host: reviews }\n",
    )));
    assert_eq!(
        policy.allow_origins,
        [StringMatch::Exact("https://old.example".into())]
    );
    assert!(policy.forward_unmatched_preflights);
    assert!(!policy.allow_credentials);
    assert_eq!(policy.max_age, None);
}

#[test]
fn a_rule_without_cors_policy_has_none() {
    let outcome = load(&vs("  - route:\n    - destination: { host: reviews }\n"));
    let config = outcome.config.expect("valid");
    assert!(
        config.routes.find("reviews").unwrap().routes[0]
            .cors
            .is_none()
    );
}

#[test]
fn each_bad_cors_field_is_an_error_with_its_path() {
    let rule = |cors: &str| {
        single_error(&vs(&format!(
            "  - corsPolicy: {cors}\n    route:\n    - destination: {{ host: reviews }}\n"
        )))
    };
    for (cors, expected) in [
        (
            r#"{ allowOrigins: [{ exact: a }, { regex: "(unclosed" }] }"#,
            "spec.http[0].corsPolicy.allowOrigins[1].regex: invalid regex \"(unclosed\"",
        ),
        (
            "{ allowOrigins: [{}] }",
            "spec.http[0].corsPolicy.allowOrigins[0]: set one of exact, prefix, regex",
        ),
        (
            "{ maxAge: 5x }",
            "spec.http[0].corsPolicy.maxAge: invalid duration \"5x\"",
        ),
        (
            "{ maxAge: 1500ms }",
            "spec.http[0].corsPolicy.maxAge: maxAge \"1500ms\" must be whole seconds",
        ),
        (
            "{ unmatchedPreflights: DROP }",
            "spec.http[0].corsPolicy.unmatchedPreflights: unknown value \"DROP\": expected FORWARD or IGNORE",
        ),
        (
            "{ allowOrigin: [a], allowOrigins: [{ exact: b }] }",
            "spec.http[0].corsPolicy: set only one of allowOrigins and the deprecated allowOrigin",
        ),
        (
            "{ allowMethods: [GET, FETCH] }",
            "spec.http[0].corsPolicy.allowMethods[1]: \"FETCH\" is not a supported HTTP method",
        ),
        (
            "{ exposeHeaders: [\"bad header\"] }",
            "spec.http[0].corsPolicy.exposeHeaders[0]: invalid header name \"bad header\"",
        ),
    ] {
        let e = rule(cors);
        assert!(e.contains(expected), "{cors}: {e}");
    }
}

#[test]
fn a_cors_policy_on_a_redirect_is_a_warning() {
    let outcome = load(&vs(
        "  - corsPolicy: { allowOrigins: [{ exact: a }] }\n    redirect: { uri: /elsewhere }\n",
    ));
    assert!(outcome.config.is_some());
    let warnings: Vec<String> = outcome
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        warnings.len() == 1
            && warnings[0].contains(
                "spec.http[0].corsPolicy: corsPolicy has no effect on a redirect or directResponse rule"
            ),
        "{warnings:#?}"
    );
}

/// An EC P-256 public key as a JWKS (the point of the P-256 generator, valid on the curve).
const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256","x":"axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY","y":"T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU"}]}"#;

fn request_authn(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{ name: {name}, namespace: {ns} }}\nspec:\n{spec}\n---\n"
    )
}

#[test]
fn request_authentication_is_scoped_like_authorization_and_sorted_by_issuer() {
    let rule = |iss: &str| format!("  - {{ issuer: \"{iss}\", jwks: '{JWKS}' }}");
    let yaml = [
        request_authn("istio-system", "mesh", &format!("  jwtRules:\n{}", rule("z-mesh"))),
        request_authn(
            "shop",
            "web",
            &format!(
                "  selector: {{ matchLabels: {{ app: web }} }}\n  jwtRules:\n{}\n  - {{ issuer: a-web, jwks: '{JWKS}', audiences: [api], forwardOriginalToken: true, fromHeaders: [{{ name: X-Token, prefix: \"JWT \" }}], fromParams: [t], fromCookies: [s], outputPayloadToHeader: X-Payload, outputClaimToHeaders: [{{ header: X-Sub, claim: sub }}], timeout: 2s }}",
                rule("m-web")
            ),
        ),
        request_authn(
            "shop",
            "other",
            &format!("  selector: {{ matchLabels: {{ app: other }} }}\n  jwtRules:\n{}", rule("other")),
        ),
        request_authn("elsewhere", "ns", &format!("  jwtRules:\n{}", rule("elsewhere"))),
    ]
    .concat();
    let workload = Workload {
        namespace: "shop".into(),
        labels: [("app".to_owned(), "web".to_owned())].into(),
        ..Workload::default()
    };
    let outcome = istio::load(&[("ra.yaml", &yaml)], &workload);
    assert!(!outcome.has_errors(), "{:?}", outcome.diagnostics);
    let ra = outcome.config.unwrap().request_authentication;
    let issuers: Vec<&str> = ra.rules.iter().map(|r| r.issuer.as_str()).collect();
    assert_eq!(issuers, ["a-web", "m-web", "z-mesh"]);
    assert_eq!(ra.sources, ["istio-system/mesh", "shop/web"]);
    let a = &ra.rules[0];
    assert_eq!(a.audiences, ["api"]);
    assert!(a.forward_original_token);
    assert_eq!(a.from_headers[0].name, "x-token");
    assert_eq!(a.from_headers[0].prefix, "JWT ");
    assert_eq!(
        (a.from_params.clone(), a.from_cookies.clone()),
        (vec!["t".into()], vec!["s".into()])
    );
    assert_eq!(a.output_payload_to_header.as_deref(), Some("x-payload"));
    assert_eq!(a.output_claim_to_headers[0].header, "x-sub");
    assert_eq!(a.timeout, Some(std::time::Duration::from_secs(2)));
    assert!(!a.uses_default_locations());
    assert!(ra.rules[1].uses_default_locations());
    match &a.keys {
        mesh_core::model::JwksSource::Inline(jwks) => {
            assert_eq!(jwks.keys[0].kid.as_deref(), Some("k1"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn each_invalid_jwt_rule_field_is_named() {
    let one = |rule: &str| {
        single_error(&request_authn(
            "default",
            "jwt",
            &format!("  jwtRules:\n  - {{ {rule} }}"),
        ))
    };
    let cases = [
        (format!("jwks: '{JWKS}'"), "spec.jwtRules[0].issuer: issuer is required"),
        ("issuer: i, jwks: 'not json'".to_owned(), "spec.jwtRules[0].jwks: invalid JWKS: not valid JSON"),
        (
            r#"issuer: i, jwks: '{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}'"#.to_owned(),
            "spec.jwtRules[0].jwks.keys[0].kty: invalid JWKS: unsupported key type \"oct\"",
        ),
        (
            r#"issuer: i, jwks: '{"keys":[{"kty":"EC","crv":"P-256","alg":"HS256","x":"AA","y":"AA"}]}'"#.to_owned(),
            "spec.jwtRules[0].jwks.keys[0].alg: invalid JWKS: unsupported algorithm \"HS256\"",
        ),
        (
            r#"issuer: i, jwks: '{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}'"#.to_owned(),
            "spec.jwtRules[0].jwks.keys[0].n: invalid JWKS: RSA modulus of 24 bits",
        ),
        ("issuer: i".to_owned(), "spec.jwtRules[0].jwks: set jwks (or jwksUri)"),
        ("issuer: i, jwksUri: ftp://keys".to_owned(), "spec.jwtRules[0].jwksUri: \"ftp://keys\" is not an http:// or https:// URI"),
        (format!("issuer: i, jwks: '{JWKS}', fromHeaders: [{{ name: \"bad header\" }}]"), "spec.jwtRules[0].fromHeaders[0].name: \"bad header\" is not a valid header name"),
        (format!("issuer: i, jwks: '{JWKS}', fromParams: [\"\"]"), "spec.jwtRules[0].fromParams[0]: empty name"),
        (format!("issuer: i, jwks: '{JWKS}', outputPayloadToHeader: \"a:b\""), "spec.jwtRules[0].outputPayloadToHeader: \"a:b\" is not a valid header name"),
        (format!("issuer: i, jwks: '{JWKS}', outputClaimToHeaders: [{{ header: x, claim: \"\" }}]"), "spec.jwtRules[0].outputClaimToHeaders[0].claim: empty claim"),
        (format!("issuer: i, jwks: '{JWKS}', timeout: 5x"), "spec.jwtRules[0].timeout: invalid duration"),
        (format!("issuer: i, jwks: '{JWKS}', audiences: [\"\"]"), "spec.jwtRules[0].audiences[0]: empty audience"),
        (format!("issuer: i, jwks: '{JWKS}', unknownField: 1"), "spec.jwtRules[0].unknownField: unknown field `unknownField`"),
    ];
    for (rule, want) in cases {
        let got = one(&rule);
        assert!(
            got.contains(&format!("RequestAuthentication default/jwt: {want}")),
            "{rule}\n  got:  {got}\n  want: {want}"
        );
    }
}

#[test]
fn request_principals_and_request_auth_conditions_load() {
    let policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: p }\nspec:\n  rules:\n  - from: [{ source: { requestPrincipals: [\"*\"], notRequestPrincipals: [\"bad/*\"] } }]\n    when:\n    - { key: request.auth.principal, values: [\"i/s\"] }\n    - { key: request.auth.audiences, values: [api] }\n    - { key: request.auth.presenter, values: [cli] }\n    - { key: \"request.auth.claims[groups]\", values: [dev] }\n    - { key: \"request.auth.claims[realm][role]\", values: [ops] }\n";
    let outcome = load(policy);
    assert!(!outcome.has_errors(), "{:?}", outcome.diagnostics);
    let p = &outcome.config.unwrap().authorization[0];
    assert_eq!(p.rules[0].from[0].request_principals.values, ["*"]);
    assert_eq!(p.rules[0].from[0].request_principals.not_values, ["bad/*"]);
    let bad = single_error(&policy.replace("[realm][role]", "[realm]role"));
    assert!(bad.contains("spec.rules[0].when[4].key"), "{bad}");
}
