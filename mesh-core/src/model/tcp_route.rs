//! Routes for opaque TCP (a VirtualService's `tcp` rules, Istio's TCP traffic shifting).
//!
//! Istio applies a VirtualService's `tcp` rules on the outbound listener of each of its hosts'
//! TCP ports: a connection to the service's address and port goes to a weighted choice of
//! the first matching rule's destinations (`outbound|PORT|SUBSET|HOST`), else to the
//! service's own cluster. [`MeshConfig::tcp_routes`](super::MeshConfig::tcp_routes) keys the
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
//! assert!(route.matches("10.96.0.10:5432".parse().unwrap(), &w));
//! assert!(!route.matches("10.96.0.10:3306".parse().unwrap(), &w));
//! // A draw in 0..total_weight(): the first 80 go to v1, the last 20 to v2.
//! assert_eq!(route.total_weight(), 100);
//! assert_eq!(route.pick(79).unwrap().as_str(), "outbound|5432|v1|db.default.svc.cluster.local");
//! assert_eq!(route.pick(80).unwrap().as_str(), "outbound|5432|v2|db.default.svc.cluster.local");
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

/// Istio's `L4MatchAttributes` for a sidecar: every given condition must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TcpRouteMatch {
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
    /// service's address and port) takes this rule.
    pub fn matches(&self, destination: SocketAddr, workload: &Workload) -> bool {
        self.matches.is_empty()
            || self
                .matches
                .iter()
                .any(|m| m.matches(destination, workload))
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
    /// Whether every condition holds for a connection from `workload` to `destination`.
    pub fn matches(&self, destination: SocketAddr, workload: &Workload) -> bool {
        self.port.is_none_or(|p| p == destination.port())
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
