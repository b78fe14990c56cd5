//! VirtualService `tcp` and `tls` rules -> [`TcpRoute`]s by the service port they route, as
//! istiod writes them into the `tcp_proxy` of each of the VirtualService's hosts' TCP ports
//! (`buildOutboundNetworkFiltersWithWeightedClusters`); a `tls` rule's `sniHosts` become the
//! `server_names` of its filter chain, on TLS and HTTPS ports only
//! (`buildSidecarOutboundTLSFilterChainOpts`), ahead of the `tcp` rules' chains.
//!
//! A `tls` rule is checked as Istio's validation does: it needs a match, each match needs
//! `sniHosts`, and each of them must be a host name (a leading `*.` allowed) or an IP address
//! within one of the VirtualService's hosts as written (`*.example.com` within `*.com` or `*`;
//! `a.example.com` within `*.example.com`).
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
        let matches: Vec<_> = r
            .matches
            .iter()
            .enumerate()
            .map(|(i, m)| l4_match(m, &format!("{field}.match[{i}]"), at))
            .collect();
        self.l4_template(
            format!("{vs_name}.{index}"),
            matches,
            &r.route,
            "tcp",
            field,
            at,
        )
    }

    /// Converts a VirtualService's `tls` rules (`vs_hosts`: its hosts as written, which each
    /// `sniHosts` entry must fall within); the ones that cannot be used are left out (their
    /// errors are recorded), and so are rules for gateways only.
    pub(super) fn tls_templates(
        &self,
        rules: &[api::TlsRoute],
        vs_name: &str,
        vs_hosts: &[String],
        at: &mut At<'_>,
    ) -> Vec<TcpTemplate> {
        rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let field = format!("spec.tls[{i}]");
                if r.matches.is_empty() {
                    // Istio's validation: a tls rule routes by SNI, so it needs a match.
                    at.error(
                        &format!("{field}.match"),
                        "a tls rule needs at least one match (with sniHosts)",
                    );
                }
                let matches: Vec<_> = r
                    .matches
                    .iter()
                    .enumerate()
                    .map(|(j, m)| tls_match(m, &format!("{field}.match[{j}]"), vs_hosts, at))
                    .collect();
                let ok = !r.matches.is_empty();
                let template = self.l4_template(
                    format!("{vs_name}.tls.{i}"),
                    matches,
                    &r.route,
                    "tls",
                    &field,
                    at,
                );
                template.filter(|_| ok)
            })
            .collect()
    }

    /// A rule from its converted matches (`None`: a bad one, `Some(None)`: for gateways only)
    /// and its `route`.
    fn l4_template(
        &self,
        name: String,
        converted: Vec<Option<Option<TcpRouteMatch>>>,
        route: &[api::RouteDestination],
        kind: &str,
        field: &str,
        at: &mut At<'_>,
    ) -> Option<TcpTemplate> {
        let written = converted.len();
        let mut ok = true;
        let mut matches = Vec::new();
        for m in converted {
            match m {
                Some(Some(m)) => matches.push(m),
                Some(None) => {} // For gateways only.
                None => ok = false,
            }
        }
        let destinations = if route.is_empty() {
            at.error(
                &format!("{field}.route"),
                format!("a {kind} rule needs a route with at least one destination"),
            );
            None
        } else {
            // A tcp or tls destination is an http one without header operations: the same
            // checks.
            let route: Vec<api::HttpRouteDestination> = route
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
        if written > 0 && matches.is_empty() {
            return None; // Every match names gateways: not a sidecar rule.
        }
        Some(TcpTemplate {
            name,
            matches,
            destinations,
        })
    }
}

/// One `match` of a `tls` rule: an L4 match with server names; `Some(None)` when it only
/// applies to gateways.
fn tls_match(
    m: &api::TlsMatchAttributes,
    field: &str,
    vs_hosts: &[String],
    at: &mut At<'_>,
) -> Option<Option<TcpRouteMatch>> {
    let mut ok = true;
    if m.sni_hosts.is_empty() {
        at.error(
            &format!("{field}.sniHosts"),
            "a tls match needs at least one SNI host",
        );
        ok = false;
    }
    for (i, sni) in m.sni_hosts.iter().enumerate() {
        let checked = sni_host(sni, vs_hosts);
        ok &= at
            .check(&format!("{field}.sniHosts[{i}]"), checked)
            .is_some();
    }
    let l4 = api::L4MatchAttributes {
        destination_subnets: m.destination_subnets.clone(),
        port: m.port,
        source_subnet: None,
        source_labels: m.source_labels.clone(),
        gateways: m.gateways.clone(),
        source_namespace: m.source_namespace.clone(),
    };
    let converted = l4_match(&l4, field, at)?;
    if !ok {
        return None;
    }
    Some(converted.map(|l4| TcpRouteMatch {
        sni_hosts: m.sni_hosts.clone(),
        ..l4
    }))
}

/// Istio's `validateSniHost`: a host name (a leading `*.` or a lone `*` allowed) or an IP
/// address, within one of the VirtualService's hosts as written (`host.Name.SubsetOf`).
fn sni_host(sni: &str, vs_hosts: &[String]) -> Result<(), String> {
    if sni.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    values::hostname(sni, true)?;
    if vs_hosts.iter().any(|h| subset_of(sni, h)) {
        return Ok(());
    }
    Err(format!(
        "SNI host {sni:?} is not within any of the VirtualService's hosts [{}]",
        vs_hosts.join(", ")
    ))
}

/// Istio's `host.Name.SubsetOf`: every name `name` stands for is one of `of`'s.
fn subset_of(name: &str, of: &str) -> bool {
    match (name.strip_prefix('*'), of.strip_prefix('*')) {
        (Some(suffix), Some(of_suffix)) => suffix.ends_with(of_suffix),
        (Some(_), None) => false,
        (None, Some(of_suffix)) => name.ends_with(of_suffix),
        (None, None) => name == of,
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
        sni_hosts: Vec::new(),
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
