//! VirtualService `tcp` rules: what the loader resolves them to (by service TCP port), and the
//! finding (with its field path) for each kind of bad rule.

use mesh_core::istio::{self, BuildOutcome, Severity};
use mesh_core::model::{ClusterName, MeshConfig, TcpRoute, TcpRouteMatch, Workload};
use std::net::SocketAddr;

const HOST: &str = "db.default.svc.cluster.local";

/// Service `db` (address 10.96.0.10): TCP ports 5432 and 3306, HTTP port 8080; subsets v1, v2.
const REGISTRY: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: db }
spec:
  hosts: [db.default.svc.cluster.local]
  addresses: [10.96.0.10]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - { number: 5432, name: postgres, protocol: TCP }
  - { number: 3306, name: mysql, protocol: TCP }
  - { number: 8080, name: http, protocol: HTTP }
  endpoints:
  - { address: 127.0.0.1, labels: { version: v1 } }
  - { address: 127.0.0.2, labels: { version: v2 } }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: db }
spec:
  host: db
  subsets:
  - { name: v1, labels: { version: v1 } }
  - { name: v2, labels: { version: v2 } }
"#;

fn load_as(workload: &Workload, tcp: &str) -> BuildOutcome {
    let vs = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: db }}\n\
         spec:\n  hosts: [db]\n  tcp:\n{tcp}"
    );
    istio::load(
        &[("registry.yaml", REGISTRY), ("test.yaml", vs.as_str())],
        workload,
    )
}

fn load(tcp: &str) -> BuildOutcome {
    load_as(&Workload::default(), tcp)
}

fn config(tcp: &str) -> MeshConfig {
    let outcome = load(tcp);
    assert!(outcome.diagnostics.is_empty(), "{:#?}", outcome.diagnostics);
    outcome.config.expect("valid")
}

/// The errors, as `check` prints them, without the file and resource.
fn errors(tcp: &str) -> Vec<String> {
    let outcome = load(tcp);
    assert!(
        outcome.config.is_none(),
        "a config with errors is not built"
    );
    outcome
        .errors()
        .map(|d| format!("{}: {}", d.field, d.message))
        .collect()
}

fn own(port: u16) -> ClusterName {
    ClusterName::outbound(port, None, HOST)
}

/// Each rule's destinations as `(cluster, weight)`.
fn splits(routes: &[TcpRoute]) -> Vec<Vec<(String, u32)>> {
    routes
        .iter()
        .map(|r| {
            r.destinations
                .iter()
                .map(|d| (d.cluster.as_str().to_owned(), d.weight))
                .collect()
        })
        .collect()
}

fn cluster(port: u16, subset: &str) -> String {
    ClusterName::outbound(port, Some(subset), HOST).to_string()
}

#[test]
fn tcp_rules_become_weighted_subset_clusters_on_each_tcp_port() {
    let config = config(
        "  - match: [{ port: 5432 }]\n    route:\n    - { destination: { host: db, subset: v1 }, weight: 80 }\n    - { destination: { host: db, subset: v2 }, weight: 20 }\n  - route: [{ destination: { host: db, subset: v2 } }]\n",
    );
    // Port 5432: both rules, in order; their destinations take the routed port.
    let on_5432 = &config.tcp_routes[&own(5432)];
    assert_eq!(
        splits(on_5432),
        [
            vec![(cluster(5432, "v1"), 80), (cluster(5432, "v2"), 20)],
            vec![(cluster(5432, "v2"), 100)],
        ]
    );
    assert_eq!(on_5432[0].name, "db.0");
    assert_eq!(
        on_5432[0].matches,
        [TcpRouteMatch {
            port: Some(5432),
            ..TcpRouteMatch::default()
        }]
    );
    assert!(on_5432[1].matches.is_empty(), "no match: every connection");
    // Port 3306: only the rule without a port match. The HTTP port gets none.
    assert_eq!(
        splits(&config.tcp_routes[&own(3306)]),
        [vec![(cluster(3306, "v2"), 100)]]
    );
    assert_eq!(config.tcp_routes.len(), 2, "{:?}", config.tcp_routes.keys());
    // Every destination is a cluster of the snapshot.
    for routes in config.tcp_routes.values() {
        for d in routes.iter().flat_map(|r| &r.destinations) {
            assert!(config.cluster(&d.cluster).is_some(), "{}", d.cluster);
        }
    }
}

#[test]
fn a_destination_port_is_kept_and_weights_are_relative_as_for_http() {
    let config = config(
        "  - route:\n    - { destination: { host: db, subset: v1, port: { number: 3306 } }, weight: 1 }\n    - { destination: { host: db, subset: v2 }, weight: 3 }\n",
    );
    assert_eq!(
        splits(&config.tcp_routes[&own(5432)]),
        [vec![(cluster(3306, "v1"), 1), (cluster(5432, "v2"), 3)]]
    );
    // A lone destination takes everything, whatever its weight.
    let config =
        self::config("  - route: [{ destination: { host: db, subset: v1 }, weight: 7 }]\n");
    assert_eq!(
        splits(&config.tcp_routes[&own(5432)]),
        [vec![(cluster(5432, "v1"), 100)]]
    );
}

#[test]
fn match_fields_are_kept_and_gateway_only_matches_dropped() {
    let config = config(
        "  - match:\n    - { destinationSubnets: [10.96.0.0/16, 10.1.2.3], sourceLabels: { app: web }, sourceNamespace: shop, gateways: [mesh] }\n    - { port: 5432, gateways: [istio-system/ingress] }\n    route: [{ destination: { host: db, subset: v1 } }]\n  - match: [{ gateways: [ingress] }]\n    route: [{ destination: { host: db, subset: v2 } }]\n",
    );
    let routes = &config.tcp_routes[&own(5432)];
    assert_eq!(routes.len(), 1, "the gateway-only rule is not a sidecar's");
    assert_eq!(
        routes[0].matches,
        [TcpRouteMatch {
            sni_hosts: Vec::new(),
            port: None,
            destination_subnets: vec![
                "10.96.0.0/16".parse().unwrap(),
                "10.1.2.3/32".parse().unwrap()
            ],
            source_labels: [("app".to_owned(), "web".to_owned())].into(),
            source_namespace: Some("shop".to_owned()),
        }]
    );
}

#[test]
fn the_workload_and_the_destination_decide_which_rule_a_connection_takes() {
    let rules = "  - match: [{ sourceLabels: { app: web } }]\n    route: [{ destination: { host: db, subset: v1 } }]\n  - match: [{ sourceNamespace: shop }]\n    route: [{ destination: { host: db, subset: v2 } }]\n  - match: [{ destinationSubnets: [10.96.0.0/24] }]\n    route: [{ destination: { host: db, subset: v2, port: { number: 3306 } } }]\n";
    let vip: SocketAddr = "10.96.0.10:5432".parse().unwrap();
    let taken = |workload: Workload, dst: SocketAddr| {
        let config = load_as(&workload, rules).config.expect("valid");
        config
            .tcp_route(&own(5432), dst, None)
            .map(|r| r.destinations[0].cluster.to_string())
    };
    let mut web = Workload::default();
    web.labels.insert("app".into(), "web".into());
    assert_eq!(taken(web, vip), Some(cluster(5432, "v1")));
    let shop = Workload {
        namespace: "shop".into(),
        ..Workload::default()
    };
    assert_eq!(taken(shop, vip), Some(cluster(5432, "v2")));
    // Neither label nor namespace: the subnet rule, for addresses in it only.
    assert_eq!(taken(Workload::default(), vip), Some(cluster(3306, "v2")));
    assert_eq!(
        taken(Workload::default(), "10.96.1.10:5432".parse().unwrap()),
        None,
        "no rule matches: the service's own cluster"
    );
}

#[test]
fn weight_and_destination_errors_name_their_fields() {
    assert_eq!(
        errors(
            "  - route:\n    - { destination: { host: db, subset: v1 } }\n    - { destination: { host: db, subset: v2 }, weight: 0 }\n"
        ),
        [
            "spec.tcp[0].route: weights sum to 0: with several destinations at least one weight must be positive"
        ]
    );
    assert_eq!(
        errors(
            "  - route:\n    - { destination: { host: db, subset: v1 }, weight: 110 }\n    - { destination: { host: db, subset: v2 }, weight: -10 }\n"
        ),
        ["spec.tcp[0].route[1].weight: weight -10 is negative"]
    );
    assert_eq!(
        errors("  - route: [{ destination: { host: db, subset: v3 } }]\n"),
        [format!(
            "spec.tcp[0].route[0].destination.subset: subset \"v3\" is not defined by any DestinationRule for host \"{HOST}\""
        )]
    );
    let unknown = errors("  - route: [{ destination: { host: cache } }]\n");
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert!(
        unknown[0].starts_with("spec.tcp[0].route[0].destination.host: "),
        "{unknown:?}"
    );
    assert_eq!(
        errors("  - route: [{ destination: { host: db, port: { number: 9999 } } }]\n"),
        [format!(
            "spec.tcp[0].route[0].destination.port.number: host \"{HOST}\" has no port 9999"
        )]
    );
    assert_eq!(
        errors("  - match: [{ port: 5432 }]\n"),
        ["spec.tcp[0].route: a tcp rule needs a route with at least one destination"]
    );
    let bad = errors(
        "  - match: [{ destinationSubnets: [10.96.0.0/40], port: 70000 }]\n    route: [{ destination: { host: db } }]\n",
    );
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(bad[0].starts_with("spec.tcp[0].match[0].port: "), "{bad:?}");
    assert_eq!(
        bad[1],
        "spec.tcp[0].match[0].destinationSubnets[0]: \"10.96.0.0/40\" is not an IP address or CIDR range"
    );
    let unknown_field = errors("  - route: [{ destination: { host: db }, headers: {} }]\n");
    assert!(
        unknown_field[0].starts_with("spec.tcp[0].route[0].headers: unknown field `headers`"),
        "{unknown_field:?}"
    );
}

fn warnings(outcome: &BuildOutcome) -> Vec<&str> {
    outcome
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .map(|d| d.field.as_str())
        .collect()
}

#[test]
fn tcp_rules_are_applied_beside_tls_rules_for_hosts_without_tls_ports() {
    let outcome = load(
        "  - route: [{ destination: { host: db, subset: v1 } }]\n  tls:\n  - match: [{ sniHosts: [db] }]\n    route: [{ destination: { host: db } }]\n",
    );
    assert!(outcome.config.is_some(), "{:#?}", outcome.diagnostics);
    // No TLS or HTTPS port: the tls rules apply to nothing (tls_routes.rs tests the rest).
    assert_eq!(
        warnings(&outcome),
        ["spec.tls"],
        "{:#?}",
        outcome.diagnostics
    );
    assert!(
        outcome.diagnostics[0]
            .message
            .starts_with("no host of this VirtualService is a service with a TLS or HTTPS port"),
        "{:#?}",
        outcome.diagnostics
    );
    let config = outcome.config.unwrap();
    assert_eq!(config.tcp_routes.len(), 2);
    assert!(config.tcp_routes.values().flatten().all(|r| !r.needs_sni()));
}

#[test]
fn tcp_rules_for_a_host_without_tcp_ports_are_a_warning() {
    let http_only = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: web }
spec:
  hosts: [web.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{ number: 80, name: http, protocol: HTTP }]
  endpoints: [{ address: 127.0.0.3 }]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: web }
spec:
  hosts: [web]
  tcp: [{ route: [{ destination: { host: web } }] }]
"#;
    let outcome = istio::load(&[("web.yaml", http_only)], &Workload::default());
    assert_eq!(
        warnings(&outcome),
        ["spec.tcp"],
        "{:#?}",
        outcome.diagnostics
    );
    assert!(outcome.config.expect("valid").tcp_routes.is_empty());
}

#[test]
fn deprecated_source_subnet_is_a_warning() {
    let outcome = load(
        "  - match: [{ sourceSubnet: 10.0.0.0/8 }]\n    route: [{ destination: { host: db } }]\n",
    );
    assert_eq!(
        warnings(&outcome),
        ["spec.tcp[0].match[0].sourceSubnet"],
        "{:#?}",
        outcome.diagnostics
    );
    assert!(outcome.config.is_some());
}

#[test]
fn a_gateway_virtual_service_routes_no_sidecar_tcp() {
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: db }\n\
              spec:\n  hosts: [db]\n  gateways: [ingress]\n  tcp: [{ route: [{ destination: { host: db, subset: v1 } }] }]\n";
    let outcome = istio::load(
        &[("registry.yaml", REGISTRY), ("test.yaml", vs)],
        &Workload::default(),
    );
    assert!(outcome.config.expect("valid").tcp_routes.is_empty());
}
