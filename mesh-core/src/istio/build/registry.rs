//! The service registry: ServiceEntries (with inline endpoints or WorkloadEntries chosen by a
//! selector) become services and their instances.

use super::{At, Findings, qualify, values};
use crate::istio::{Resource, Spec, api};
use crate::model::{
    Address, Endpoint, HealthStatus, Labels, Locality, Resolution, Service, ServiceLocation,
    ServicePort, selects,
};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// One instance of a service, before it is bound to a port.
#[derive(Clone, Debug)]
pub(super) struct Instance {
    address: Address,
    /// Port name -> the instance's port for it.
    ports: BTreeMap<String, u16>,
    labels: Labels,
    weight: u32,
    locality: Locality,
    service_account: Option<String>,
    namespace: String,
}

/// A service and its instances.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) service: Service,
    instances: Vec<Instance>,
}

impl Entry {
    /// The endpoints that serve `port` of the service.
    pub(super) fn endpoints(&self, port: &ServicePort) -> Vec<Endpoint> {
        self.instances
            .iter()
            .map(|i| Endpoint {
                address: i.address.clone(),
                port: i
                    .ports
                    .get(&port.name)
                    .copied()
                    .or(port.target_port)
                    .unwrap_or(port.number),
                labels: i.labels.clone(),
                weight: i.weight,
                locality: i.locality.clone(),
                health: HealthStatus::Healthy,
                service_account: i.service_account.clone(),
                namespace: Some(i.namespace.clone()),
                priority: 0,
                workload: None,
                cluster_id: None,
            })
            .collect()
    }
}

/// Every known service, by fully qualified host name.
#[derive(Debug, Default)]
pub(super) struct Registry {
    pub(super) entries: BTreeMap<String, Entry>,
    /// The hosts of the ServiceEntries whose `workloadSelector` selects the local workload
    /// (in its namespace): the services it is an instance of.
    pub(super) local: std::collections::BTreeSet<String>,
    /// Of those, the service each workload port serves (the first host by name per port).
    pub(super) local_ports: BTreeMap<u16, String>,
}

impl Registry {
    pub(super) fn build(
        resources: &[&Resource],
        workload: &crate::model::Workload,
        findings: &mut Findings,
    ) -> Self {
        let domain = &workload.cluster_domain;
        // WorkloadEntries first: ServiceEntries select them.
        let mut workload_entries: Vec<(&Resource, Instance)> = Vec::new();
        for res in resources {
            if let Spec::WorkloadEntry(we) = &res.spec {
                let mut at = findings.at(res);
                if let Some(instance) =
                    instance(we, "spec", Resolution::Static, &res.namespace, &mut at)
                {
                    workload_entries.push((res, instance));
                }
            }
        }
        let mut registry = Registry::default();
        let mut owners: BTreeMap<String, String> = BTreeMap::new();
        for res in resources {
            let Spec::ServiceEntry(se) = &res.spec else {
                continue;
            };
            let mut at = findings.at(res);
            let Some((service_template, instances)) =
                service_entry(se, res, &workload_entries, &mut at)
            else {
                continue;
            };
            let selects_me = se.workload_selector.as_ref().is_some_and(|selector| {
                res.namespace == workload.namespace && selects(&selector.labels, &workload.labels)
            });
            for (i, host) in se.hosts.iter().enumerate() {
                let hostname = qualify(host, &res.namespace, domain);
                if let Some(owner) = owners.get(&hostname) {
                    at.warn(
                        &format!("spec.hosts[{i}]"),
                        format!("host {hostname:?} is already defined by {owner}; this entry is ignored for it"),
                    );
                    continue;
                }
                owners.insert(hostname.clone(), res.key());
                if selects_me {
                    registry.local.insert(hostname.clone());
                    for port in &service_template.ports {
                        let on_workload = port.target_port.unwrap_or(port.number);
                        registry
                            .local_ports
                            .entry(on_workload)
                            .and_modify(|host| {
                                if hostname < *host {
                                    host.clone_from(&hostname);
                                }
                            })
                            .or_insert_with(|| hostname.clone());
                    }
                }
                let mut service = service_template.clone();
                let mut instances = instances.clone();
                if service.resolution == Resolution::Dns && instances.is_empty() {
                    // DNS without endpoints: the host itself is the endpoint.
                    instances.push(Instance {
                        address: Address::Dns(hostname.clone()),
                        ports: BTreeMap::new(),
                        labels: Labels::new(),
                        weight: 1,
                        locality: Locality::default(),
                        service_account: None,
                        namespace: res.namespace.clone(),
                    });
                }
                service.hostname = hostname.clone();
                registry
                    .entries
                    .insert(hostname, Entry { service, instances });
            }
        }
        registry
    }

    /// The service with fully qualified name `host`.
    pub(super) fn get(&self, host: &str) -> Option<&Entry> {
        self.entries.get(host)
    }

    /// The model's service map.
    pub(super) fn services(&self) -> BTreeMap<String, Arc<Service>> {
        self.entries
            .iter()
            .map(|(host, e)| (host.clone(), Arc::new(e.service.clone())))
            .collect()
    }
}

fn service_entry(
    se: &api::ServiceEntry,
    res: &Resource,
    workload_entries: &[(&Resource, Instance)],
    at: &mut At<'_>,
) -> Option<(Service, Vec<Instance>)> {
    let mut ok = true;
    if se.hosts.is_empty() {
        at.error("spec.hosts", "at least one host is required");
        ok = false;
    }
    for (i, host) in se.hosts.iter().enumerate() {
        if let Err(reason) = values::hostname(host, true) {
            at.error(&format!("spec.hosts[{i}]"), reason);
            ok = false;
        }
    }
    let resolution = match se.resolution.as_deref() {
        None | Some("NONE") => Resolution::None,
        Some("STATIC") => Resolution::Static,
        Some("DNS" | "DNS_ROUND_ROBIN") => Resolution::Dns,
        Some(other) => {
            at.error(
                "spec.resolution",
                format!(
                    "unknown resolution {other:?}: expected NONE, STATIC, DNS or DNS_ROUND_ROBIN"
                ),
            );
            return None;
        }
    };
    let location = match se.location.as_deref() {
        None | Some("MESH_EXTERNAL") => ServiceLocation::MeshExternal,
        Some("MESH_INTERNAL") => ServiceLocation::MeshInternal,
        Some(other) => {
            at.error(
                "spec.location",
                format!("unknown location {other:?}: expected MESH_EXTERNAL or MESH_INTERNAL"),
            );
            return None;
        }
    };
    if se.ports.is_empty() {
        at.error("spec.ports", "at least one port is required");
        ok = false;
    }
    let mut ports: Vec<ServicePort> = Vec::new();
    for (i, p) in se.ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let number = at.check(&format!("{field}.number"), values::port(p.number));
        let target_port = p
            .target_port
            .and_then(|t| at.check(&format!("{field}.targetPort"), values::port(t)));
        let protocol = at.check(
            &format!("{field}.protocol"),
            values::protocol(p.protocol.as_deref(), &p.name),
        );
        if p.name.is_empty() {
            at.error(&format!("{field}.name"), "port name is required");
            ok = false;
        }
        if ports.iter().any(|q| q.name == p.name && !p.name.is_empty()) {
            at.error(
                &format!("{field}.name"),
                format!("duplicate port name {:?}", p.name),
            );
            ok = false;
        }
        match (number, protocol) {
            (Some(number), Some(protocol)) if ports.iter().all(|q| q.number != number) => ports
                .push(ServicePort {
                    number,
                    name: p.name.clone(),
                    protocol,
                    target_port,
                }),
            (Some(number), Some(_)) => {
                at.error(
                    &format!("{field}.number"),
                    format!("duplicate port {number}"),
                );
                ok = false;
            }
            _ => ok = false,
        }
    }
    let mut instances = Vec::new();
    if !se.endpoints.is_empty() && se.workload_selector.is_some() {
        at.error(
            "spec.workloadSelector",
            "set either endpoints or workloadSelector, not both",
        );
        ok = false;
    }
    if resolution == Resolution::None && !se.endpoints.is_empty() {
        at.error("spec.endpoints", "endpoints need resolution STATIC or DNS");
        ok = false;
    }
    for (i, we) in se.endpoints.iter().enumerate() {
        let field = format!("spec.endpoints[{i}]");
        match instance(we, &field, resolution, &res.namespace, at) {
            Some(instance) => {
                for name in instance.ports.keys() {
                    if !se.ports.iter().any(|p| &p.name == name) {
                        at.error(
                            &format!("{field}.ports.{name}"),
                            format!("no service port is named {name:?}"),
                        );
                        ok = false;
                    }
                }
                instances.push(instance);
            }
            None => ok = false,
        }
    }
    if let Some(selector) = &se.workload_selector {
        instances.extend(
            workload_entries
                .iter()
                .filter(|(we_res, we)| {
                    we_res.namespace == res.namespace && selects(&selector.labels, &we.labels)
                })
                .map(|(_, we)| we.clone()),
        );
    }
    let mut addresses = Vec::new();
    for (i, a) in se.addresses.iter().enumerate() {
        let parsed = a
            .parse::<ipnet::IpNet>()
            .or_else(|_| a.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| format!("{a:?} is not an IP address or CIDR range"));
        match at.check(&format!("spec.addresses[{i}]"), parsed) {
            Some(net) => addresses.push(net),
            None => ok = false,
        }
    }
    ok.then(|| {
        let service = Service {
            hostname: String::new(),
            namespace: res.namespace.clone(),
            ports,
            resolution,
            location,
            subject_alt_names: se.subject_alt_names.clone(),
            addresses,
        };
        (service, instances)
    })
}

fn instance(
    we: &api::WorkloadEntry,
    field: &str,
    resolution: Resolution,
    namespace: &str,
    at: &mut At<'_>,
) -> Option<Instance> {
    let address_field = format!("{field}.address");
    let address = match we.address.as_deref() {
        None | Some("") => {
            at.error(&address_field, "address is required");
            return None;
        }
        Some(a) if a.starts_with("unix://") => {
            at.error(
                &address_field,
                "unix domain socket endpoints are not supported",
            );
            return None;
        }
        Some(a) => match a.parse::<IpAddr>() {
            Ok(ip) => Address::Ip(ip),
            Err(_) if resolution == Resolution::Dns => {
                at.check(&address_field, values::hostname(a, false))?;
                Address::Dns(a.to_ascii_lowercase())
            }
            Err(_) => {
                at.error(
                    &address_field,
                    format!("{a:?} is not an IP address (a host name needs resolution DNS)"),
                );
                return None;
            }
        },
    };
    let mut ports = BTreeMap::new();
    for (name, number) in &we.ports {
        ports.insert(
            name.clone(),
            at.check(&format!("{field}.ports.{name}"), values::port(*number))?,
        );
    }
    Some(Instance {
        address,
        ports,
        labels: we.labels.clone(),
        weight: we.weight.filter(|w| *w > 0).unwrap_or(1),
        locality: we
            .locality
            .as_deref()
            .map(Locality::parse)
            .unwrap_or_default(),
        service_account: we.service_account.clone(),
        namespace: namespace.to_owned(),
    })
}
