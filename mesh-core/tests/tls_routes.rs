//! VirtualService `tls` rules (SNI routing of TLS passthrough): what the loader resolves them
//! to (by service TLS or HTTPS port, ahead of the `tcp` rules), which connections they take,
//! and the finding (with its field path) for each kind of bad rule.

use mesh_core::istio::{self, BuildOutcome, Severity};
use mesh_core::model::{ClusterName, MeshConfig, TcpRoute, TcpRouteMatch, Workload};
use std::net::SocketAddr;

const HOST: &str = "edge.example.com";

/// Service `edge.example.com` (address 10.96.0.20): TLS port 443, HTTPS port 8443, TCP port
/// 9000; subsets v1, v2.
const REGISTRY: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: edge }
spec:
  hosts: [edge.example.com]
  addresses: [10.96.0.20]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - { number: 443, name: tls, protocol: TLS }
  - { number: 8443, name: https, protocol: HTTPS }
  - { number: 9000, name: tcp, protocol: TCP }
  endpoints:
  - { address: 127.0.0.1, labels: { version: v1 } }
  - { address: 127.0.0.2, labels: { version: v2 } }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: edge }
spec:
  host: edge.example.com
  subsets:
  - { name: v1, labels: { version: v1 } }
  - { name: v2, labels: { version: v2 } }
"#;

/// The VirtualService `edge` with `hosts` (flow-style list) and `rules` (its `tls` and `tcp`
/// keys, indented two spaces), loaded with the registry.
fn load_with(hosts: &str, rules: &str) -> BuildOutcome {
    let vs = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: edge }}\n\
         spec:\n  hosts: {hosts}\n{rules}"
    );
    istio::load(
        &[("registry.yaml", REGISTRY), ("test.yaml", vs.as_str())],
        &Workload::default(),
    )
}

const HOSTS: &str = "[edge.example.com, '*.example.com']";

fn config(rules: &str) -> MeshConfig {
    let outcome = load_with(HOSTS, rules);
    assert!(outcome.diagnostics.is_empty(), "{:#?}", outcome.diagnostics);
    outcome.config.expect("valid")
}

/// The errors, as `check` prints them, without the file and resource.
fn errors_with(hosts: &str, rules: &str) -> Vec<String> {
    let outcome = load_with(hosts, rules);
    assert!(
        outcome.config.is_none(),
        "a config with errors is not built"
    );
    outcome
        .errors()
        .map(|d| format!("{}: {}", d.field, d.message))
        .collect()
}

fn errors(rules: &str) -> Vec<String> {
    errors_with(HOSTS, rules)
}

fn own(port: u16) -> ClusterName {
    ClusterName::outbound(port, None, HOST)
}

fn cluster(port: u16, subset: Option<&str>) -> String {
    ClusterName::outbound(port, subset, HOST).to_string()
}

fn names(routes: &[TcpRoute]) -> Vec<&str> {
    routes.iter().map(|r| r.name.as_str()).collect()
}

/// The cluster a connection to `10.96.0.20:port` asking for `sni` takes (`None`: the port's
/// own).
fn taken(config: &MeshConfig, port: u16, sni: Option<&str>) -> Option<String> {
    let dst = SocketAddr::from(([10, 96, 0, 20], port));
    config
        .tcp_route(&own(port), dst, sni)
        .map(|r| r.destinations[0].cluster.to_string())
}

const RULES: &str = "  tls:
  - match: [{ sniHosts: [a.example.com] }]
    route: [{ destination: { host: edge.example.com, subset: v1 } }]
  - match: [{ sniHosts: ['*.example.com'], port: 8443 }]
    route: [{ destination: { host: edge.example.com, subset: v2 } }]
  tcp:
  - route: [{ destination: { host: edge.example.com, subset: v2, port: { number: 9000 } } }]
";

#[test]
fn tls_rules_route_tls_and_https_ports_by_sni_ahead_of_tcp_rules() {
    let config = config(RULES);
    // The TLS port: the first tls rule (the second is for 8443), then the tcp rule.
    let on_443 = &config.tcp_routes[&own(443)];
    assert_eq!(names(on_443), ["edge.tls.0", "edge.0"]);
    assert_eq!(
        on_443[0].matches,
        [TcpRouteMatch {
            sni_hosts: vec!["a.example.com".to_owned()],
            ..TcpRouteMatch::default()
        }]
    );
    assert_eq!(
        on_443[0].destinations[0].cluster.to_string(),
        cluster(443, Some("v1"))
    );
    assert!(on_443[0].needs_sni() && !on_443[1].needs_sni());
    // The HTTPS port: both tls rules. The TCP port: the tcp rule only.
    assert_eq!(
        names(&config.tcp_routes[&own(8443)]),
        ["edge.tls.0", "edge.tls.1", "edge.0"]
    );
    assert_eq!(names(&config.tcp_routes[&own(9000)]), ["edge.0"]);
    assert_eq!(config.tcp_routes.len(), 3, "{:?}", config.tcp_routes.keys());

    // By SNI: exact names (without case), wildcards (any depth under the suffix), and no
    // name (not TLS) falling through to the tcp rule.
    assert_eq!(
        taken(&config, 443, Some("a.example.com")),
        Some(cluster(443, Some("v1")))
    );
    assert_eq!(
        taken(&config, 443, Some("A.Example.COM")),
        Some(cluster(443, Some("v1")))
    );
    let tcp_rule = Some(cluster(9000, Some("v2")));
    assert_eq!(taken(&config, 443, Some("b.example.com")), tcp_rule);
    assert_eq!(taken(&config, 443, None), tcp_rule);
    assert_eq!(
        taken(&config, 8443, Some("a.example.com")),
        Some(cluster(8443, Some("v1")))
    );
    for wildcard in ["b.example.com", "x.y.example.com"] {
        assert_eq!(
            taken(&config, 8443, Some(wildcard)),
            Some(cluster(8443, Some("v2"))),
            "{wildcard}"
        );
    }
    assert_eq!(taken(&config, 8443, Some("example.com")), tcp_rule);
    assert_eq!(taken(&config, 9000, Some("a.example.com")), tcp_rule);
}

#[test]
fn without_a_tcp_rule_an_unmatched_connection_goes_to_the_ports_own_cluster() {
    let config = config(
        "  tls:\n  - match: [{ sniHosts: [a.example.com], sourceNamespace: default, destinationSubnets: [10.96.0.0/16] }]\n    route:\n    - { destination: { host: edge.example.com, subset: v1 }, weight: 75 }\n    - { destination: { host: edge.example.com, subset: v2 }, weight: 25 }\n",
    );
    let on_443 = &config.tcp_routes[&own(443)];
    assert_eq!(
        on_443[0].matches,
        [TcpRouteMatch {
            sni_hosts: vec!["a.example.com".to_owned()],
            destination_subnets: vec!["10.96.0.0/16".parse().unwrap()],
            source_namespace: Some("default".to_owned()),
            ..TcpRouteMatch::default()
        }]
    );
    let weights: Vec<u32> = on_443[0].destinations.iter().map(|d| d.weight).collect();
    assert_eq!(weights, [75, 25]);
    assert_eq!(
        taken(&config, 443, Some("a.example.com")),
        Some(cluster(443, Some("v1")))
    );
    assert_eq!(taken(&config, 443, Some("b.example.com")), None);
    assert_eq!(taken(&config, 443, None), None);
    assert!(
        !config.tcp_routes.contains_key(&own(9000)),
        "tls rules are not a TCP port's"
    );
}

#[test]
fn sni_host_errors_name_their_fields() {
    assert_eq!(
        errors(
            "  tls:\n  - match: [{ sniHosts: [a.example.com, other.org] }]\n    route: [{ destination: { host: edge.example.com } }]\n"
        ),
        [
            "spec.tls[0].match[0].sniHosts[1]: SNI host \"other.org\" is not within any of the VirtualService's hosts [edge.example.com, *.example.com]"
        ]
    );
    assert_eq!(
        errors(
            "  tls:\n  - match: [{ port: 443 }]\n    route: [{ destination: { host: edge.example.com } }]\n"
        ),
        ["spec.tls[0].match[0].sniHosts: a tls match needs at least one SNI host"]
    );
    assert_eq!(
        errors("  tls:\n  - route: [{ destination: { host: edge.example.com } }]\n"),
        ["spec.tls[0].match: a tls rule needs at least one match (with sniHosts)"]
    );
    assert_eq!(
        errors(
            "  tls:\n  - match: [{ sniHosts: [a..example.com] }]\n    route: [{ destination: { host: edge.example.com } }]\n"
        ),
        ["spec.tls[0].match[0].sniHosts[0]: invalid host name \"a..example.com\""]
    );
    assert_eq!(
        errors("  tls:\n  - match: [{ sniHosts: [a.example.com] }]\n"),
        ["spec.tls[0].route: a tls rule needs a route with at least one destination"]
    );
    let bad = errors(
        "  tls:\n  - match: [{ sniHosts: [a.example.com] }, { sniHosts: [b.example.com], destinationSubnets: [10.0.0.0/99] }]\n    route:\n    - { destination: { host: edge.example.com, subset: v1 }, weight: -1 }\n",
    );
    assert_eq!(
        bad,
        [
            "spec.tls[0].match[1].destinationSubnets[0]: \"10.0.0.0/99\" is not an IP address or CIDR range",
            "spec.tls[0].route[0].weight: weight -1 is negative",
        ]
    );
    let unknown_field = errors(
        "  tls:\n  - match: [{ sniHosts: [a.example.com], sourceSubnet: 10.0.0.0/8 }]\n    route: [{ destination: { host: edge.example.com } }]\n",
    );
    assert!(
        unknown_field[0].starts_with("spec.tls[0].match[0].sourceSubnet: unknown field"),
        "{unknown_field:?}"
    );
}

#[test]
fn a_wildcard_sni_host_must_fall_within_a_wildcard_host() {
    let rule = |sni: &str| {
        format!(
            "  tls:\n  - match: [{{ sniHosts: ['{sni}'] }}]\n    route: [{{ destination: {{ host: edge.example.com }} }}]\n"
        )
    };
    // Within `*.example.com` (and an IP address is always taken, as Istio's validation does).
    for ok in [
        "*.example.com",
        "*.a.example.com",
        "b.c.example.com",
        "10.96.0.20",
    ] {
        let outcome = load_with(HOSTS, &rule(ok));
        assert!(
            outcome.diagnostics.is_empty(),
            "{ok}: {:#?}",
            outcome.diagnostics
        );
    }
    assert_eq!(
        errors(&rule("*.com")),
        [
            "spec.tls[0].match[0].sniHosts[0]: SNI host \"*.com\" is not within any of the VirtualService's hosts [edge.example.com, *.example.com]"
        ]
    );
    // A wildcard is not within a plain host name.
    assert_eq!(
        errors_with("[edge.example.com]", &rule("*.example.com")),
        [
            "spec.tls[0].match[0].sniHosts[0]: SNI host \"*.example.com\" is not within any of the VirtualService's hosts [edge.example.com]"
        ]
    );
    assert!(
        load_with("[edge.example.com]", &rule("edge.example.com"))
            .diagnostics
            .is_empty()
    );
    // `*` as a host takes every name.
    assert!(
        load_with("[edge.example.com, '*']", &rule("*.org"))
            .diagnostics
            .is_empty()
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
fn tls_rules_for_hosts_without_tls_ports_are_a_warning_and_gateway_matches_are_dropped() {
    let tcp_only = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: db }
spec:
  hosts: [db.example.com]
  addresses: [10.96.0.30]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{ number: 5432, name: tcp, protocol: TCP }]
  endpoints: [{ address: 127.0.0.3 }]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: db }
spec:
  hosts: [db.example.com]
  tls: [{ match: [{ sniHosts: [db.example.com] }], route: [{ destination: { host: db.example.com } }] }]
"#;
    let outcome = istio::load(&[("db.yaml", tcp_only)], &Workload::default());
    assert_eq!(
        warnings(&outcome),
        ["spec.tls"],
        "{:#?}",
        outcome.diagnostics
    );
    assert!(
        outcome.diagnostics[0]
            .message
            .contains("no host of this VirtualService"),
        "{:#?}",
        outcome.diagnostics
    );
    assert!(outcome.config.expect("valid").tcp_routes.is_empty());

    // A rule whose every match is for a gateway is not a sidecar's; a match for `mesh` is.
    let config = config(
        "  tls:\n  - match: [{ sniHosts: [a.example.com], gateways: [egress] }]\n    route: [{ destination: { host: edge.example.com, subset: v1 } }]\n  - match: [{ sniHosts: [a.example.com], gateways: [egress] }, { sniHosts: [b.example.com], gateways: [mesh] }]\n    route: [{ destination: { host: edge.example.com, subset: v2 } }]\n",
    );
    let on_443 = &config.tcp_routes[&own(443)];
    assert_eq!(names(on_443), ["edge.tls.1"]);
    assert_eq!(on_443[0].matches.len(), 1);
    assert_eq!(on_443[0].matches[0].sni_hosts, ["b.example.com"]);
}
