//! `ClusterLoadAssignment` -> endpoints.

use super::{FieldError, FieldResult};
use envoy_types::pb::envoy::config::core::v3::{Metadata, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::google::protobuf::value::Kind;
use mesh_core::model::{Address, Endpoint, HealthStatus, Labels, Locality};
use std::net::IpAddr;

/// A translated endpoint set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdsEndpoints {
    /// The EDS name (the cluster name, or its `eds_cluster_config.service_name`).
    pub cluster_name: String,
    /// The endpoints.
    pub endpoints: Vec<mesh_core::model::Endpoint>,
    /// The `load_balancing_weight` of each locality that sets one, by `region/zone/subzone`:
    /// they apply when the cluster sets `locality_weighted_lb_config` (as Envoy, which
    /// ignores them otherwise).
    pub locality_weights: Vec<(String, u32)>,
}

pub(super) fn translate(cla: &ClusterLoadAssignment) -> FieldResult<XdsEndpoints> {
    if cla.cluster_name.is_empty() {
        return Err(FieldError::new("cluster_name", "must not be empty"));
    }
    Ok(XdsEndpoints {
        cluster_name: cla.cluster_name.clone(),
        endpoints: endpoints(cla, false)?,
        locality_weights: locality_weights(cla)?,
    })
}

fn locality(l: &LocalityLbEndpoints) -> Locality {
    l.locality
        .as_ref()
        .map(|l| Locality {
            region: l.region.clone(),
            zone: l.zone.clone(),
            subzone: l.sub_zone.clone(),
        })
        .unwrap_or_default()
}

/// The weights of the localities of `cla` that set one.
pub(super) fn locality_weights(cla: &ClusterLoadAssignment) -> FieldResult<Vec<(String, u32)>> {
    let mut out: Vec<(String, u32)> = Vec::new();
    for (i, l) in cla.endpoints.iter().enumerate() {
        let Some(weight) = l.load_balancing_weight.as_ref().map(|w| w.value) else {
            continue;
        };
        let field = format!("endpoints[{i}].load_balancing_weight");
        if weight == 0 {
            return Err(FieldError::new(field, "must be at least 1"));
        }
        let name = locality(l).to_string();
        match out.iter().find(|(n, _)| *n == name) {
            // The model weighs a locality once, whatever its priority.
            Some((_, w)) if *w != weight => {
                return Err(FieldError::new(
                    field,
                    format!("locality {name} is weighted {w} at another priority"),
                ));
            }
            Some(_) => {}
            None => out.push((name, weight)),
        }
    }
    Ok(out)
}

/// The endpoints of `cla`; with `dns`, socket addresses may be host names.
pub(super) fn endpoints(cla: &ClusterLoadAssignment, dns: bool) -> FieldResult<Vec<Endpoint>> {
    let mut out = Vec::new();
    for (i, l) in cla.endpoints.iter().enumerate() {
        let locality = locality(l);
        if l.lb_config.is_some() {
            return Err(FieldError::new(
                format!("endpoints[{i}].lb_config"),
                "LEDS is not supported",
            ));
        }
        for (j, e) in l.lb_endpoints.iter().enumerate() {
            let field = format!("endpoints[{i}].lb_endpoints[{j}]");
            out.push(lb_endpoint(e, &locality, l.priority, dns).map_err(|e| e.within(&field))?);
        }
    }
    Ok(out)
}

fn lb_endpoint(
    e: &envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint,
    locality: &Locality,
    priority: u32,
    dns: bool,
) -> FieldResult<Endpoint> {
    let ep = match &e.host_identifier {
        Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => ep,
        Some(lb_endpoint::HostIdentifier::EndpointName(_)) => {
            return Err(FieldError::new(
                "endpoint_name",
                "named endpoints are not supported",
            ));
        }
        None => return Err(FieldError::new("endpoint", "is required")),
    };
    let sa = match ep.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(sa)) => sa,
        _ => {
            return Err(FieldError::new(
                "endpoint.address",
                "a socket_address is required",
            ));
        }
    };
    let port = match sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => {
            u16::try_from(p).ok().filter(|p| *p != 0).ok_or_else(|| {
                FieldError::new(
                    "endpoint.address.socket_address.port_value",
                    format!("{p} is not a port"),
                )
            })?
        }
        _ => {
            return Err(FieldError::new(
                "endpoint.address.socket_address.port_value",
                "is required",
            ));
        }
    };
    let address = match sa.address.parse::<IpAddr>() {
        Ok(ip) => Address::Ip(ip),
        Err(_) if dns && !sa.address.is_empty() => Address::Dns(sa.address.clone()),
        Err(_) => {
            return Err(FieldError::new(
                "endpoint.address.socket_address.address",
                format!("{:?} is not an IP address", sa.address),
            ));
        }
    };
    let health = match e.health_status {
        0 | 1 => HealthStatus::Healthy,
        3 => HealthStatus::Draining,
        5 => HealthStatus::Degraded,
        // UNHEALTHY, TIMEOUT (read by Envoy as UNHEALTHY) and unknown values.
        _ => HealthStatus::Unhealthy,
    };
    let weight = e.load_balancing_weight.as_ref().map_or(1, |w| w.value);
    if weight == 0 {
        return Err(FieldError::new(
            "load_balancing_weight",
            "must be at least 1",
        ));
    }
    let istio = istio_metadata(e.metadata.as_ref());
    Ok(Endpoint {
        address,
        port,
        labels: istio.labels,
        weight,
        locality: locality.clone(),
        health,
        service_account: istio.service_account,
        namespace: istio.namespace,
        priority,
        workload: istio.workload,
        cluster_id: istio.cluster_id,
    })
}

/// What an endpoint's `filter_metadata.istio` says of its workload.
#[derive(Debug, Default, PartialEq)]
struct IstioMetadata {
    labels: Labels,
    service_account: Option<String>,
    namespace: Option<String>,
    workload: Option<String>,
    cluster_id: Option<String>,
}

/// An endpoint's `filter_metadata.istio`, as istiod writes it: `workload` is
/// `NAME;NAMESPACE;CANONICAL_SERVICE;CANONICAL_REVISION;CLUSTER_ID` (the form Istio's stats
/// filter reads for the destination's labels when the peer sends no metadata of its own); the
/// canonical service and revision become the labels Istio's injector gives a pod. `labels`,
/// `namespace` and `service_account` are read too (a control plane may send them; a field in
/// `labels` wins over `workload`'s).
fn istio_metadata(m: Option<&Metadata>) -> IstioMetadata {
    let mut out = IstioMetadata::default();
    let Some(istio) = m.and_then(|m| m.filter_metadata.get("istio")) else {
        return out;
    };
    let known = |v: &str| (!v.is_empty()).then(|| v.to_owned());
    let mut from_workload = Labels::new();
    for (k, v) in &istio.fields {
        match (k.as_str(), &v.kind) {
            ("labels", Some(Kind::StructValue(s))) => {
                for (lk, lv) in &s.fields {
                    if let Some(Kind::StringValue(lv)) = &lv.kind {
                        out.labels.insert(lk.clone(), lv.clone());
                    }
                }
            }
            ("service_account", Some(Kind::StringValue(s))) => out.service_account = known(s),
            ("namespace", Some(Kind::StringValue(s))) => out.namespace = known(s),
            ("workload", Some(Kind::StringValue(s))) => {
                // Fewer than five fields: not Istio's form (its reader ignores it too).
                let parts: Vec<&str> = s.split(';').collect();
                if let [name, namespace, service, revision, cluster, ..] = parts[..] {
                    out.workload = known(name);
                    out.namespace = out.namespace.take().or_else(|| known(namespace));
                    out.cluster_id = known(cluster);
                    for (key, value) in [
                        ("service.istio.io/canonical-name", service),
                        ("service.istio.io/canonical-revision", revision),
                    ] {
                        if !value.is_empty() {
                            from_workload.insert(key.to_owned(), value.to_owned());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    for (k, v) in from_workload {
        out.labels.entry(k).or_insert(v);
    }
    out
}
