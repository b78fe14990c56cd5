//! VirtualService `tcp` rules -> [`TcpRoute`]s by the service port they route, as istiod
//! writes them into the `tcp_proxy` of each of the VirtualService's hosts' TCP ports
//! (`buildOutboundNetworkFiltersWithWeightedClusters`).
//!
//! A rule's destinations are checked as an `http` rule's are (the same host, subset, port and
//! weight checks); a destination without a port takes its service's only port, else the
//! routed port, as istiod's `GetDestinationCluster`. A match naming gateways without `mesh`
//! does not apply to a sidecar, and neither does a match on another port than the one routed:
//! a rule left with none of its matches is not the port's.

use super::At;
use super::registry::Registry;
use super::routes::{Context, WeightedRef, dest_port};
use super::values;
use crate::istio::api;
use crate::model::{ClusterName, TcpRoute, TcpRouteMatch, TcpWeightedCluster};

/// A `tcp` rule with its destinations not yet bound to a port.
#[derive(Clone, Debug)]
pub(super) struct TcpTemplate {
    name: String,
    /// The matches that apply to sidecars; empty: every connection.
    matches: Vec<TcpRouteMatch>,
    destinations: Vec<WeightedRef>,
}

impl Context<'_> {
    /// Converts a VirtualService's `tcp` rules; the ones that cannot be used are left out
    /// (their errors are recorded), and so are rules for gateways only.
    pub(super) fn tcp_templates(
        &self,
        rules: &[api::TcpRoute],
        vs_name: &str,
        at: &mut At<'_>,
    ) -> Vec<TcpTemplate> {
        rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| self.tcp_template(r, &format!("spec.tcp[{i}]"), vs_name, i, at))
            .collect()
    }

    fn tcp_template(
        &self,
        r: &api::TcpRoute,
        field: &str,
        vs_name: &str,
        index: usize,
        at: &mut At<'_>,
    ) -> Option<TcpTemplate> {
        let mut ok = true;
        let mut matches = Vec::new();
        for (i, m) in r.matches.iter().enumerate() {
            match l4_match(m, &format!("{field}.match[{i}]"), at) {
                Some(Some(m)) => matches.push(m),
                Some(None) => {} // For gateways only.
                None => ok = false,
            }
        }
        let destinations = if r.route.is_empty() {
            at.error(
                &format!("{field}.route"),
                "a tcp rule needs a route with at least one destination",
            );
            None
        } else {
            // A tcp destination is an http one without header operations: the same checks.
            let route: Vec<api::HttpRouteDestination> = r
                .route
                .iter()
                .map(|d| api::HttpRouteDestination {
                    destination: d.destination.clone(),
                    weight: d.weight,
                    headers: None,
                })
                .collect();
            self.destinations(&route, &format!("{field}.route"), at)
        };
        let destinations = destinations.filter(|_| ok)?;
        if !r.matches.is_empty() && matches.is_empty() {
            return None; // Every match names gateways: not a sidecar rule.
        }
        Some(TcpTemplate {
            name: format!("{vs_name}.{index}"),
            matches,
            destinations,
        })
    }
}

/// One `match` of a `tcp` rule; `Some(None)` when it only applies to gateways.
fn l4_match(
    m: &api::L4MatchAttributes,
    field: &str,
    at: &mut At<'_>,
) -> Option<Option<TcpRouteMatch>> {
    let mut ok = true;
    let port = match m.port {
        None => None,
        Some(p) => {
            let port = at.check(&format!("{field}.port"), values::port(p));
            ok &= port.is_some();
            port
        }
    };
    let mut destination_subnets = Vec::new();
    for (i, s) in m.destination_subnets.iter().enumerate() {
        let parsed = s
            .parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| format!("{s:?} is not an IP address or CIDR range"));
        match at.check(&format!("{field}.destinationSubnets[{i}]"), parsed) {
            Some(net) => destination_subnets.push(net),
            None => ok = false,
        }
    }
    if m.source_subnet.is_some() {
        at.warn(
            &format!("{field}.sourceSubnet"),
            "sourceSubnet is deprecated and not implemented by Istio; it is ignored",
        );
    }
    if !ok {
        return None;
    }
    if !m.gateways.is_empty() && !m.gateways.iter().any(|g| g == "mesh") {
        return Some(None);
    }
    Some(Some(TcpRouteMatch {
        port,
        destination_subnets,
        source_labels: m.source_labels.clone(),
        source_namespace: m.source_namespace.clone(),
    }))
}

/// The rules of `templates` that apply to the service port `port`, with their destinations'
/// clusters named.
pub(super) fn bind(templates: &[TcpTemplate], port: u16, registry: &Registry) -> Vec<TcpRoute> {
    let mut routes = Vec::new();
    for t in templates {
        let mut matches = t.matches.clone();
        if !matches.is_empty() {
            matches.retain(|m| m.port.is_none_or(|p| p == port));
            if matches.is_empty() {
                continue; // Every match is for another port.
            }
        }
        routes.push(TcpRoute {
            name: t.name.clone(),
            matches,
            destinations: t
                .destinations
                .iter()
                .map(|w| TcpWeightedCluster {
                    cluster: ClusterName::outbound(
                        dest_port(&w.dest, Some(port), registry),
                        w.dest.subset.as_deref(),
                        &w.dest.host,
                    ),
                    weight: w.weight,
                })
                .collect(),
        });
    }
    routes
}
