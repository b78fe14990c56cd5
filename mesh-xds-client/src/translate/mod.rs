//! Translation of Envoy xDS resources into the mesh's config model.
//!
//! Each resource is decoded and checked on its own, when it arrives ([`decode`]): a resource
//! that uses a field this mesh cannot honour, and that would change behaviour, is an
//! [`InvalidResource`] naming the resource, the field path and the reason; the protocol turns it
//! into a NACK. Valid resources are kept in their translated form ([`Decoded`]) and put together
//! into one [`MeshConfig`] by [`assemble`] once the set is complete (every route configuration a
//! listener names and every endpoint set an EDS cluster names has arrived, or is known not to
//! exist).
//!
//! Mapping:
//! - `Listener` (HTTP connection manager, with `rds` or an inline `route_config`): each
//!   outbound listener's route configuration serves the port of its address
//!   (`address.socket_address.port_value`), as Envoy picks the route configuration by the
//!   listener a connection lands on and then the virtual host by authority: istiod's
//!   `0.0.0.0_9080` with RDS `"9080"` lists `reviews` and `reviews:9080`, and a request to
//!   port 9080 with `Host: reviews` meets port 9080's routes even when port 8080's also claim
//!   `reviews` (a VirtualService `match.port`, other subsets per port, each port's own `*`
//!   virtual host). The [`RouteTable`] keeps one table per port
//!   ([`RouteTable::with_ports`]); every outbound listener's virtual hosts are also merged, in
//!   listener-name order (the first to claim a domain keeps it), into the table that serves
//!   any other port. Listeners with `traffic_direction: INBOUND` do not contribute outbound
//!   routes; a listener with `use_original_dst` (istiod's `virtualOutbound` on 15001) serves no
//!   port table of its own.
//!
//!   Two listeners on one port (`0.0.0.0_8080` and `10.0.0.1_8080`) with different route
//!   configurations: Envoy hands a connection to `10.0.0.1:8080` to the listener bound to that
//!   address and any other connection to port 8080 to the `0.0.0.0` one. The table here is
//!   keyed by port alone: it holds the routes of the listener on every address first, then
//!   those of the listeners bound to one address (in name order) for the domains still
//!   unclaimed. So each service on the port keeps its own virtual host, and a domain both
//!   claim (a `*` catch-all) is the `0.0.0.0` listener's, as Envoy decides for every
//!   destination but the bound address.
//! - `Listener` bound to one address (istiod's `10.96.0.20_5432`, for each TCP, TLS and HTTPS
//!   port of a service with a virtual address): its `tcp_proxy` filter chains. The address
//!   becomes the service's (the TCP forwarder finds the service of an intercepted connection
//!   by it), and chains with `weighted_clusters`, another cluster than the port's own, or
//!   `server_names` become the port's [`TcpRoute`]s (VirtualService `tcp` and `tls` rules) in
//!   `MeshConfig::tcp_routes`, see `tcp_listeners`.
//! - `RouteConfiguration`: virtual hosts and routes, one to one.
//! - `Cluster`: a [`Cluster`], its service, port and subset parsed from Istio's
//!   `outbound|PORT|SUBSET|HOST` name when it has that form.
//! - `ClusterLoadAssignment`: the cluster's endpoints, with `istio` metadata labels; with the
//!   cluster's `locality_weighted_lb_config`, its localities' weights become a `distribute`
//!   rule from any locality (the form Istio's `localityLbSetting.distribute` takes in the
//!   Istio-YAML model).

// Control planes still send deprecated fields (istiod sets `append`, `exact_match`...):
// honouring them is the point, so their deprecation is not a warning here.
#[allow(deprecated)]
mod cluster;
#[allow(deprecated)]
mod endpoint;
#[allow(deprecated)]
mod listener;
#[allow(deprecated)]
mod rbac;
#[allow(deprecated)]
mod route;
mod secret;

pub use cluster::XdsCluster;
pub use endpoint::XdsEndpoints;
pub use listener::{InboundHttp, ListenerRoutes, TcpChain, XdsListener};
pub use route::XdsRouteConfig;
pub use secret::{SecretKind, XdsSecret};

use crate::resource::ResourceType;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use mesh_core::model::{
    AuthorizationPolicy, Cluster, ClusterName, ConsistentHash, HashKey, Hostname, InboundListener,
    LbAlgorithm, MeshConfig, OutboundTrafficPolicy, Protocol, RouteTable, Service, ServiceLocation,
    ServicePort, TcpRoute, TcpRouteMatch, TcpWeightedCluster, VirtualHost, Workload,
};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// A resource that cannot be applied: which one, which field, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name}: {field}: {reason}")]
pub struct InvalidResource {
    /// The resource's type.
    pub kind: ResourceType,
    /// The resource's name (empty when it could not be decoded far enough to have one).
    pub name: String,
    /// The path of the offending field (`filter_chains[0].filters[0].typed_config`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A field-level error inside one resource; the resource's type and name are added by
/// [`decode`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub(crate) field: String,
    pub(crate) reason: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Prefixes the field path with `parent`.
    pub(crate) fn within(mut self, parent: impl AsRef<str>) -> Self {
        let parent = parent.as_ref();
        self.field = if self.field.is_empty() {
            parent.to_owned()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

pub(crate) type FieldResult<T> = Result<T, FieldError>;

/// A resource decoded, checked and translated, ready to be assembled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A listener.
    Listener(XdsListener),
    /// A route configuration.
    RouteConfiguration(XdsRouteConfig),
    /// A cluster (endpoints empty for EDS clusters until assembled).
    Cluster(Box<XdsCluster>),
    /// A cluster's endpoints.
    ClusterLoadAssignment(XdsEndpoints),
    /// A TLS secret.
    Secret(XdsSecret),
}

impl Decoded {
    /// The resource's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Listener(l) => &l.name,
            Self::RouteConfiguration(r) => &r.name,
            Self::Cluster(c) => c.cluster.name.as_str(),
            Self::ClusterLoadAssignment(e) => &e.cluster_name,
            Self::Secret(s) => &s.name,
        }
    }

    /// The resource names of dependent types this resource refers to: RDS names of a
    /// listener, the EDS name and SDS names of a cluster.
    pub fn references(&self) -> Vec<(ResourceType, String)> {
        match self {
            Self::Listener(l) => l
                .rds_names()
                .map(|n| (ResourceType::RouteConfiguration, n.to_owned()))
                .collect(),
            Self::Cluster(c) => {
                let mut refs = Vec::new();
                if let Some(eds) = &c.eds_name {
                    refs.push((ResourceType::ClusterLoadAssignment, eds.clone()));
                }
                refs.extend(
                    c.sds_secrets
                        .iter()
                        .map(|s| (ResourceType::Secret, s.clone())),
                );
                refs
            }
            _ => Vec::new(),
        }
    }
}

/// Decodes, checks and translates one resource of type `kind` from its `Any` wrapper.
///
/// `expected_name`, when given (delta responses carry the name beside the resource), must
/// match the resource's own name.
pub fn decode(kind: ResourceType, any: &Any) -> Result<Decoded, InvalidResource> {
    let invalid = |name: &str, e: FieldError| InvalidResource {
        kind,
        name: name.to_owned(),
        field: e.field,
        reason: e.reason,
    };
    if any.type_url != kind.type_url() {
        return Err(invalid(
            "",
            FieldError::new("type_url", format!("{} in a {kind} response", any.type_url)),
        ));
    }
    match kind {
        ResourceType::Listener => {
            let msg = decode_message::<envoy_types::pb::envoy::config::listener::v3::Listener>(
                &any.value,
            )
            .map_err(|e| invalid("", e))?;
            listener::translate(&msg)
                .map(Decoded::Listener)
                .map_err(|e| invalid(&msg.name, e))
        }
        ResourceType::RouteConfiguration => {
            let msg =
                decode_message::<envoy_types::pb::envoy::config::route::v3::RouteConfiguration>(
                    &any.value,
                )
                .map_err(|e| invalid("", e))?;
            route::translate(&msg)
                .map(Decoded::RouteConfiguration)
                .map_err(|e| invalid(&msg.name, e))
        }
        ResourceType::Cluster => {
            let msg =
                decode_message::<envoy_types::pb::envoy::config::cluster::v3::Cluster>(&any.value)
                    .map_err(|e| invalid("", e))?;
            cluster::translate(&msg)
                .map(|c| Decoded::Cluster(Box::new(c)))
                .map_err(|e| invalid(&msg.name, e))
        }
        ResourceType::ClusterLoadAssignment => {
            let msg = decode_message::<
                envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment,
            >(&any.value)
            .map_err(|e| invalid("", e))?;
            endpoint::translate(&msg)
                .map(Decoded::ClusterLoadAssignment)
                .map_err(|e| invalid(&msg.cluster_name, e))
        }
        ResourceType::Secret => {
            let msg = decode_message::<
                envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret,
            >(&any.value)
            .map_err(|e| invalid("", e))?;
            secret::translate(&msg)
                .map(Decoded::Secret)
                .map_err(|e| invalid(&msg.name, e))
        }
    }
}

fn decode_message<M: prost::Message + Default>(bytes: &[u8]) -> FieldResult<M> {
    M::decode(bytes).map_err(|e| FieldError::new("", format!("protobuf decode error: {e}")))
}

/// Decodes an `Any` that must hold a `M`, naming `field` on error.
pub(crate) fn unpack<M: prost::Message + prost::Name + Default>(
    any: &Any,
    field: &str,
) -> FieldResult<M> {
    if any.type_url != M::type_url() {
        return Err(FieldError::new(
            field,
            format!("expected {}, got {}", M::type_url(), any.type_url),
        ));
    }
    M::decode(any.value.as_slice())
        .map_err(|e| FieldError::new(field, format!("protobuf decode error: {e}")))
}

/// A protobuf duration as a `Duration`; negative durations are an error.
pub(crate) fn duration(d: &PbDuration, field: &str) -> FieldResult<Duration> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(FieldError::new(
            field,
            format!("invalid duration {}s {}ns", d.seconds, d.nanos),
        ));
    }
    // Both non-negative: the casts cannot wrap.
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// The resources a complete snapshot is built from, by name.
#[derive(Clone, Debug, Default)]
pub struct Resources<'a> {
    /// Listeners.
    pub listeners: BTreeMap<&'a str, &'a XdsListener>,
    /// Route configurations.
    pub routes: BTreeMap<&'a str, &'a XdsRouteConfig>,
    /// Clusters.
    pub clusters: BTreeMap<&'a str, &'a XdsCluster>,
    /// Endpoint sets, by EDS name.
    pub endpoints: BTreeMap<&'a str, &'a XdsEndpoints>,
}

/// Puts the translated resources together into one snapshot for `workload`.
///
/// A listener naming a route configuration that does not exist contributes no routes; an EDS
/// cluster whose endpoints do not exist has none (requests to it fail with 503, as Envoy's do).
pub fn assemble(resources: &Resources<'_>, workload: &Workload) -> MeshConfig {
    let mut virtual_hosts = Vec::new();
    let mut hash_keys: BTreeMap<&str, &HashKey> = BTreeMap::new();
    // Where each route configuration's virtual hosts are in `virtual_hosts`, by RDS name:
    // several listeners may share one (Istio's per-port RDS, on `0.0.0.0_PORT` and
    // `IP_PORT` listeners alike), and it is added once.
    let mut rds_hosts: BTreeMap<&str, Range<usize>> = BTreeMap::new();
    // Each port's listeners' virtual hosts, in listener-name order, with whether the
    // listener is bound to one address.
    let mut port_hosts: BTreeMap<u16, Vec<(bool, Range<usize>)>> = BTreeMap::new();
    for listener in resources.listeners.values() {
        if listener.inbound {
            continue;
        }
        let hosts = match &listener.routes {
            ListenerRoutes::Rds(name) => match rds_hosts.get(name.as_str()) {
                Some(hosts) => Some(hosts.clone()),
                None => resources.routes.get(name.as_str()).map(|rc| {
                    let start = virtual_hosts.len();
                    let port = listener.port.filter(|_| rc.ignore_port_in_host_matching);
                    virtual_hosts.extend(rc.virtual_hosts.iter().map(|vh| with_port(vh, port)));
                    for (c, k) in &rc.hash_keys {
                        hash_keys.entry(c).or_insert(k);
                    }
                    rds_hosts.insert(name, start..virtual_hosts.len());
                    start..virtual_hosts.len()
                }),
            },
            ListenerRoutes::Inline(rc) => {
                let start = virtual_hosts.len();
                virtual_hosts.extend(rc.virtual_hosts.iter().cloned());
                for (c, k) in &rc.hash_keys {
                    hash_keys.entry(c).or_insert(k);
                }
                Some(start..virtual_hosts.len())
            }
            ListenerRoutes::None => None,
        };
        if let (Some(hosts), Some(port)) = (hosts, listener.port)
            && port != 0
            && !listener.use_original_dst
        {
            let listeners = port_hosts.entry(port).or_default();
            match listeners.iter_mut().find(|(_, r)| *r == hosts) {
                // One route configuration on `0.0.0.0_PORT` and `IP_PORT`: once, first.
                Some((bound, _)) => *bound &= !listener.any_address,
                None => listeners.push((!listener.any_address, hosts)),
            }
        }
    }
    // A port's table: the routes of its listener on every address first (the one Envoy hands
    // most connections to that port), then those of listeners bound to one address, for the
    // domains still unclaimed (see the module docs).
    let port_hosts: BTreeMap<u16, Vec<usize>> = port_hosts
        .into_iter()
        .map(|(port, mut listeners)| {
            listeners.sort_by_key(|(bound, _)| *bound);
            (port, listeners.into_iter().flat_map(|(_, r)| r).collect())
        })
        .collect();

    let mut clusters = BTreeMap::new();
    let mut services: BTreeMap<Hostname, Service> = BTreeMap::new();
    for xc in resources.clusters.values() {
        let mut cluster: Cluster = xc.cluster.clone();
        if let (Some(table), Some(key)) = (xc.hash_table, hash_keys.get(cluster.name.as_str())) {
            cluster.policy.load_balancer.algorithm = LbAlgorithm::ConsistentHash(ConsistentHash {
                key: (*key).clone(),
                table,
            });
        }
        if let Some(eds) = &xc.eds_name {
            let set = resources.endpoints.get(eds.as_str());
            cluster.endpoints = set.map(|e| e.endpoints.clone()).unwrap_or_default();
            if xc.locality_weighted
                && let Some(set) = set
            {
                cluster.policy.load_balancer.locality =
                    cluster::weighted_localities(&set.locality_weights);
            }
        }
        if xc.istio_name && cluster.port != 0 {
            let service = services
                .entry(cluster.service.clone())
                .or_insert_with(|| Service {
                    hostname: cluster.service.clone(),
                    namespace: namespace_of(&cluster.service, &workload.cluster_domain)
                        .unwrap_or_else(|| workload.namespace.clone()),
                    ports: Vec::new(),
                    resolution: xc.resolution,
                    location: ServiceLocation::MeshInternal,
                    subject_alt_names: Vec::new(),
                    addresses: Vec::new(),
                });
            if service.port(cluster.port).is_none() {
                service.ports.push(ServicePort {
                    number: cluster.port,
                    name: format!("{}-{}", port_name(cluster.protocol), cluster.port),
                    protocol: cluster.protocol,
                    target_port: None,
                });
            }
        }
        clusters.insert(cluster.name.clone(), Arc::new(cluster));
    }

    let tcp_routes = tcp_listeners(resources, &mut services, &clusters);

    // Inbound listeners (istiod's `virtualInbound`): authorization from their RBAC filters,
    // and one inbound listener per HTTP chain port, to the local app on that port, with its
    // rate limit. A policy named by two listeners is kept once. Their connection managers'
    // path normalization is the workload's.
    let mut authorization: Vec<AuthorizationPolicy> = Vec::new();
    let mut inbound = Vec::new();
    let mut path_normalization = None;
    for l in resources.listeners.values() {
        let Some(http) = &l.inbound_http else {
            continue;
        };
        path_normalization = path_normalization.or(http.path_normalization);
        for p in &http.authorization {
            if !authorization.iter().any(|q| q.name == p.name) {
                authorization.push(p.clone());
            }
        }
        for (port, limit) in &http.ports {
            if *port != 0 && !inbound.iter().any(|i: &InboundListener| i.port == *port) {
                inbound.push(InboundListener {
                    port: *port,
                    protocol: Protocol::Http,
                    default_endpoint: std::net::SocketAddr::from(([127, 0, 0, 1], *port)),
                    rate_limit: limit.clone(),
                });
            }
        }
    }

    MeshConfig {
        workload: workload.clone(),
        services: services
            .into_iter()
            .map(|(k, v)| (k, Arc::new(v)))
            .collect(),
        clusters,
        routes: RouteTable::with_ports(virtual_hosts, port_hosts),
        // From the tcp_proxy chains of the listeners bound to services' addresses
        // (`tcp_listeners`).
        tcp_routes,
        inbound,
        authorization,
        peer_authentication: Default::default(),
        // The jwt_authn filter is refused (listener.rs), so nothing authenticates end users.
        request_authentication: Default::default(),
        // istiod's REGISTRY_ONLY: HTTP meets its `block_all` catch-all virtual host (a direct
        // 502) in the routes; opaque TCP to a destination outside the registry goes where
        // `virtualOutbound`'s catch-all chain sends it, `BlackHoleCluster`.
        outbound_traffic_policy: if resources.listeners.values().any(|l| l.blocks_unknown) {
            OutboundTrafficPolicy::RegistryOnly
        } else {
            OutboundTrafficPolicy::AllowAny
        },
        // As istiod names them in its inbound clusters' metadata.
        workload_services: resources
            .clusters
            .values()
            .flat_map(|c| c.inbound_services.iter().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        // Each `inbound|PORT||` cluster's first service, by its port (Istio's stats filter
        // names the first of the cluster's `services`).
        workload_service_ports: resources
            .clusters
            .values()
            .filter_map(|c| {
                let port = c.cluster.name.as_str().strip_prefix("inbound|")?;
                let port = port.split('|').next()?.parse::<u16>().ok()?;
                Some((port, c.inbound_services.first()?.clone()))
            })
            .collect(),
        // The inbound connection manager's, as Envoy applies it; Istio's default without one.
        path_normalization: path_normalization.unwrap_or_default(),
    }
}

/// Opaque TCP and TLS on the outbound listeners bound to one address (istiod's
/// `10.96.0.20_5432`, on a service's virtual address, for each of its non-HTTP ports): the
/// address becomes the owning service's (so the TCP forwarder recognises a connection to it
/// as the service's, with mTLS and load balancing, rather than passing it through), and the
/// chains that do not simply go to the port's own cluster become its [`TcpRoute`]s.
///
/// The owner is the service of the chain every other connection lands on (no
/// `server_names`, no `prefix_ranges`), else of the first chain: its first cluster's host
/// (`outbound|PORT|SUBSET|HOST`). istiod's listener does not name the service; when a
/// VirtualService sends all of a port's traffic to another host, that host owns the address
/// here, which routes the same. Its routes, under the own cluster `outbound|PORT||HOST`
/// (PORT the listener's), are the chains with `server_names` (`tls` rules) first, then those
/// with `prefix_ranges`, then the rest, in chain order (as the Istio-YAML loader orders `tls`
/// before `tcp` rules), up to the first chain without conditions to the own cluster (the
/// fallback, as a connection no rule matches takes). A listener whose owner is not a service
/// here, or whose own cluster is not a cluster here, contributes nothing; of two listeners of
/// one service port (an IPv4 and an IPv6 address), both give an address and the first in
/// name order the routes.
fn tcp_listeners(
    resources: &Resources<'_>,
    services: &mut BTreeMap<Hostname, Service>,
    clusters: &BTreeMap<ClusterName, Arc<Cluster>>,
) -> BTreeMap<ClusterName, Vec<TcpRoute>> {
    let mut tcp_routes: BTreeMap<ClusterName, Vec<TcpRoute>> = BTreeMap::new();
    for l in resources.listeners.values() {
        let (Some(ip), Some(port)) = (l.address, l.port) else {
            continue;
        };
        if port == 0 || l.inbound || l.use_original_dst {
            continue;
        }
        let fallback = l
            .tcp_chains
            .iter()
            .find(|c| c.server_names.is_empty() && c.destination_subnets.is_empty())
            .or(l.tcp_chains.first());
        let Some((_, _, host)) = fallback
            .and_then(|c| c.clusters.first())
            .and_then(|(name, _)| parse_istio_name(name))
        else {
            continue;
        };
        let Some(service) = services.get_mut(host) else {
            continue;
        };
        let net = ipnet::IpNet::from(ip);
        if !service.addresses.contains(&net) {
            service.addresses.push(net);
        }
        let own = ClusterName::outbound(port, None, host);
        if !clusters.contains_key(&own) || tcp_routes.contains_key(&own) {
            continue;
        }
        let mut chains: Vec<&TcpChain> = l.tcp_chains.iter().collect();
        chains.sort_by_key(|c| (c.server_names.is_empty(), c.destination_subnets.is_empty()));
        let mut routes = Vec::new();
        for c in chains {
            let unconditional = c.server_names.is_empty() && c.destination_subnets.is_empty();
            if unconditional && matches!(c.clusters.as_slice(), [(name, _)] if name == own.as_str())
            {
                break;
            }
            routes.push(TcpRoute {
                name: format!("{}.{}", l.name, c.path),
                matches: vec![TcpRouteMatch {
                    sni_hosts: c.server_names.clone(),
                    port: Some(port),
                    destination_subnets: c.destination_subnets.clone(),
                    ..TcpRouteMatch::default()
                }],
                destinations: c
                    .clusters
                    .iter()
                    .map(|(name, weight)| TcpWeightedCluster {
                        cluster: ClusterName::new(name.clone()),
                        weight: *weight,
                    })
                    .collect(),
            });
            if unconditional {
                break;
            }
        }
        if !routes.is_empty() {
            tcp_routes.insert(own, routes);
        }
    }
    tcp_routes
}

/// `vh`, with `domain:port` added for each domain without a port when `port` is given (a
/// route configuration that ignores the port in host matching, served on that port).
fn with_port(vh: &VirtualHost, port: Option<u16>) -> VirtualHost {
    let mut vh = vh.clone();
    if let Some(port) = port {
        let extra: Vec<String> = vh
            .domains
            .iter()
            .filter(|d| !d.contains(':') && !d.starts_with('*'))
            .map(|d| format!("{d}:{port}"))
            .filter(|d| !vh.domains.contains(d))
            .collect();
        vh.domains.extend(extra);
    }
    vh
}

fn port_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Http => "http",
        Protocol::Http2 => "http2",
        Protocol::Grpc => "grpc",
        Protocol::Https => "https",
        Protocol::Tls => "tls",
        Protocol::Tcp => "tcp",
    }
}

/// `ns` from `name.ns.svc.<domain>`.
fn namespace_of(host: &str, domain: &str) -> Option<String> {
    let rest = host.strip_suffix(domain)?.strip_suffix(".svc.")?;
    let (_, ns) = rest.rsplit_once('.')?;
    Some(ns.to_owned())
}

/// Parses Istio's `outbound|PORT|SUBSET|HOST` cluster name.
pub(crate) fn parse_istio_name(name: &str) -> Option<(u16, Option<&str>, &str)> {
    let mut parts = name.splitn(4, '|');
    let direction = parts.next()?;
    if direction != "outbound" {
        return None;
    }
    let port = parts.next()?.parse().ok()?;
    let subset = parts.next()?;
    let host = parts.next()?;
    (!host.is_empty()).then_some((port, (!subset.is_empty()).then_some(subset), host))
}

#[cfg(test)]
mod tests;
