//! Routes for opaque TCP and TLS passthrough (a VirtualService's `tcp` rules, Istio's TCP
//! traffic shifting, and its `tls` rules, SNI routing).
//!
//! Istio applies a VirtualService's `tcp` rules on the outbound listener of each of its hosts'
//! TCP ports (every non-HTTP port, TLS and HTTPS included), and its `tls` rules on its hosts'
//! TLS and HTTPS ports, before the `tcp` ones: a connection to the service's address and port
//! goes to a weighted choice of the first matching rule's destinations
//! (`outbound|PORT|SUBSET|HOST`), else to the service's own cluster. A `tls` rule's matches
//! name the server names ([`TcpRouteMatch::sni_hosts`]) the connection's ClientHello must ask
//! for, so the forwarder reads the ClientHello (without consuming it) on the ports that have
//! one ([`TcpRoute::needs_sni`]) and only there. [`MeshConfig::tcp_routes`](super::MeshConfig::tcp_routes) keys the
//! rules by that own cluster's name, which is what the TCP forwarder resolves a service's
//! address to, so finding them costs one map lookup per connection.
//!
//! The rules are plain data; drawing the weighted destination is the forwarder's (it holds
//! the random number generator).
//!
//! ```
//! use mesh_core::model::{ClusterName, TcpRoute, TcpRouteMatch, TcpWeightedCluster, Workload};
//! let host = "db.default.svc.cluster.local";
//! let route = TcpRoute {
//!     name: "db.0".into(),
//!     matches: vec![TcpRouteMatch { port: Some(5432), ..TcpRouteMatch::default() }],
//!     destinations: vec![
//!         TcpWeightedCluster { cluster: ClusterName::outbound(5432, Some("v1"), host), weight: 80 },
//!         TcpWeightedCluster { cluster: ClusterName::outbound(5432, Some("v2"), host), weight: 20 },
//!     ],
//! };
//! let w = Workload::default();
//! assert!(route.matches("10.96.0.10:5432".parse().unwrap(), None, &w));
//! assert!(!route.matches("10.96.0.10:3306".parse().unwrap(), None, &w));
//! // A draw in 0..total_weight(): the first 80 go to v1, the last 20 to v2.
//! assert_eq!(route.total_weight(), 100);
//! assert_eq!(route.pick(79).unwrap().as_str(), "outbound|5432|v1|db.default.svc.cluster.local");
//! assert_eq!(route.pick(80).unwrap().as_str(), "outbound|5432|v2|db.default.svc.cluster.local");
//!
//! // A `tls` rule: by the server name the client asks for (a wildcard takes any subdomain).
//! let tls = TcpRoute {
//!     name: "db.tls.0".into(),
//!     matches: vec![TcpRouteMatch { sni_hosts: vec!["*.example.com".into()], ..TcpRouteMatch::default() }],
//!     destinations: route.destinations[..1].to_vec(),
//! };
//! let dst = "10.96.0.10:443".parse().unwrap();
//! assert!(tls.needs_sni());
//! assert!(tls.matches(dst, Some("a.example.com"), &w));
//! assert!(tls.matches(dst, Some("A.b.Example.com"), &w));
//! assert!(!tls.matches(dst, Some("example.com"), &w));
//! assert!(!tls.matches(dst, None, &w), "no SNI: no tls rule");
//! ```

use super::{ClusterName, Labels, Workload, selects};
use std::net::SocketAddr;

/// One `tcp` rule: where the connections it matches go.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TcpRoute {
    /// The rule's name for logs: `<VirtualService>.<index>`.
    pub name: String,
    /// The rule applies when any of these holds; empty: to every connection.
    pub matches: Vec<TcpRouteMatch>,
    /// The destinations, each taking `weight / total_weight()` of the connections (a weight
    /// of 0 none). The Istio loader gives a lone destination 100.
    pub destinations: Vec<TcpWeightedCluster>,
}

/// Istio's `L4MatchAttributes` (a `tcp` rule's match) or `TLSMatchAttributes` (a `tls`
/// rule's: with server names) for a sidecar: every given condition must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TcpRouteMatch {
    /// The server name (SNI) of the connection's TLS ClientHello is one of these: a name
    /// (compared without case), `*.` and a suffix (any name ending in `.` and the suffix), or
    /// `*` (any name). Empty: any connection, with or without SNI (a `tcp` rule); a `tls`
    /// rule's matches always name some, and a connection that is not TLS or asks for no name
    /// matches none of them.
    pub sni_hosts: Vec<String>,
    /// The connection's destination port.
    pub port: Option<u16>,
    /// The connection's original destination address is in one of these (empty: any).
    pub destination_subnets: Vec<ipnet::IpNet>,
    /// The calling workload's labels must include these.
    pub source_labels: Labels,
    /// The calling workload's namespace.
    pub source_namespace: Option<String>,
}

/// A destination cluster of a [`TcpRoute`] with its relative weight.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TcpWeightedCluster {
    /// The cluster (`outbound|PORT|SUBSET|HOST`).
    pub cluster: ClusterName,
    /// Its relative weight.
    pub weight: u32,
}

impl TcpRoute {
    /// Whether a connection from `workload` to `destination` (its original destination: the
    /// service's address and port) whose ClientHello asked for server name `sni` (`None`: no
    /// name, or not TLS) takes this rule.
    pub fn matches(&self, destination: SocketAddr, sni: Option<&str>, workload: &Workload) -> bool {
        self.matches.is_empty()
            || self
                .matches
                .iter()
                .any(|m| m.matches(destination, sni, workload))
    }

    /// Whether a match of this rule needs the connection's server name (a `tls` rule): the
    /// forwarder reads the ClientHello only for ports with such a rule.
    pub fn needs_sni(&self) -> bool {
        self.matches.iter().any(|m| !m.sni_hosts.is_empty())
    }

    /// The sum of the destinations' weights (saturating).
    pub fn total_weight(&self) -> u32 {
        self.destinations
            .iter()
            .fold(0u32, |sum, d| sum.saturating_add(d.weight))
    }

    /// The destination a draw in `0..total_weight()` lands on: the first `weight` draws the
    /// first destination, the next ones the second, ...; `None` past the total.
    pub fn pick(&self, draw: u32) -> Option<&ClusterName> {
        let mut left = draw;
        self.destinations.iter().find_map(|d| {
            if left < d.weight {
                Some(&d.cluster)
            } else {
                left -= d.weight;
                None
            }
        })
    }
}

impl TcpRouteMatch {
    /// Whether every condition holds for a connection from `workload` to `destination` whose
    /// ClientHello asked for server name `sni`.
    pub fn matches(&self, destination: SocketAddr, sni: Option<&str>, workload: &Workload) -> bool {
        (self.sni_hosts.is_empty()
            || sni.is_some_and(|sni| self.sni_hosts.iter().any(|h| sni_matches(h, sni))))
            && self.port.is_none_or(|p| p == destination.port())
            && (self.destination_subnets.is_empty()
                || self
                    .destination_subnets
                    .iter()
                    .any(|net| net.contains(&destination.ip())))
            && selects(&self.source_labels, &workload.labels)
            && self
                .source_namespace
                .as_ref()
                .is_none_or(|ns| *ns == workload.namespace)
    }
}

/// Whether server name `sni` is `pattern`'s: the same name without case, any name under a
/// `*.` suffix (`*.example.com` takes `a.example.com` and `a.b.example.com`, not
/// `example.com`), any name for `*`. As Envoy's `filter_chain_match.server_names`.
fn sni_matches(pattern: &str, sni: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some("") => true,
        Some(suffix) if suffix.starts_with('.') => {
            sni.len() > suffix.len()
                && sni
                    .get(sni.len() - suffix.len()..)
                    .is_some_and(|end| end.eq_ignore_ascii_case(suffix))
        }
        _ => pattern.eq_ignore_ascii_case(sni),
    }
}
