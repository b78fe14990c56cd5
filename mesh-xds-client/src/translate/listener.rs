//! `Listener` -> the route configuration(s) it serves.

use super::{FieldError, FieldResult, XdsRouteConfig, rbac, route, unpack};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as PbLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as RbacFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter,
    http_connection_manager::{PathWithEscapedSlashesAction, RouteSpecifier},
    http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier,
};
use mesh_core::model::{AuthorizationPolicy, LocalRateLimit, PathNormalization};
use std::net::IpAddr;

const HCM: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
const ROUTER: &str = "envoy.filters.http.router";
const FAULT: &str = "envoy.filters.http.fault";
const RBAC: &str = "envoy.filters.http.rbac";
const LOCAL_RATE_LIMIT: &str = "envoy.filters.http.local_ratelimit";
const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
const JWT_AUTHN: &str = "envoy.filters.http.jwt_authn";
const JWT_AUTHN_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";

/// HTTP filters that carry no behaviour this mesh must reproduce (telemetry, ALPN hints), or
/// whose behaviour comes with each route (CORS: the filter's own config is empty, and each
/// route's policy is in its `typed_per_filter_config`, which the route translation reads):
/// accepted. Istio's sidecar configures each of them.
const BENIGN_HTTP_FILTERS: &[&str] = &[
    "istio.metadata_exchange",
    "istio.stats",
    "istio.alpn",
    "envoy.filters.http.grpc_stats",
    "envoy.filters.http.cors",
];

/// Network filters that only observe (Istio's telemetry): accepted and ignored.
const BENIGN_NETWORK_FILTERS: &[&str] = &["istio.metadata_exchange", "istio.stats"];

/// A translated listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdsListener {
    /// The listener's name.
    pub name: String,
    /// Where its routes come from.
    pub routes: ListenerRoutes,
    /// Whether the listener is for inbound traffic (`traffic_direction: INBOUND`); inbound
    /// listeners do not contribute outbound routes.
    pub inbound: bool,
    /// The port it listens on, when it has a socket address.
    pub port: Option<u16>,
    /// Whether it listens on every address (`0.0.0.0` or `::`, Istio's `0.0.0.0_PORT`) rather
    /// than one (`10.0.0.1_8080`); `false` without a socket address.
    pub any_address: bool,
    /// Whether it hands connections on to the listener of their original destination
    /// (`use_original_dst`: Istio's `virtualOutbound` on 15001). Its own port serves no
    /// routes of its own.
    pub use_original_dst: bool,
    /// For the `use_original_dst` listener: whether its catch-all chain sends opaque TCP to
    /// `BlackHoleCluster` (istiod's `outboundTrafficPolicy: REGISTRY_ONLY`) rather than
    /// `PassthroughCluster`.
    pub blocks_unknown: bool,
    /// For an inbound listener: what its HTTP filter chains enforce.
    pub inbound_http: Option<InboundHttp>,
    /// The one address it is bound to (`10.96.0.20` of istiod's `10.96.0.20_5432`, a
    /// service's virtual address); `None` on every address or without a socket address.
    pub address: Option<IpAddr>,
    /// For an outbound listener bound to one address (not `use_original_dst`): its filter
    /// chains that proxy opaque TCP (`envoy.filters.network.tcp_proxy`, no HTTP connection
    /// manager), in Envoy's order (`filter_chains`, then `default_filter_chain`).
    pub tcp_chains: Vec<TcpChain>,
}

/// An outbound filter chain proxying opaque TCP: istiod writes one per VirtualService `tls`
/// rule match (with `server_names`), one per `tcp` rule (`weighted_clusters`), and one to the
/// service port's own cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpChain {
    /// Where it is in the listener (`filter_chains[1]`, `default_filter_chain`).
    pub path: String,
    /// The server names the chain takes (`filter_chain_match.server_names`); empty: any
    /// connection.
    pub server_names: Vec<String>,
    /// The destination addresses it takes (`filter_chain_match.prefix_ranges`, a `tcp` rule's
    /// `destinationSubnets`); empty: any.
    pub destination_subnets: Vec<ipnet::IpNet>,
    /// The tcp_proxy's destinations with their weights: one cluster (weight 1), or its
    /// `weighted_clusters`.
    pub clusters: Vec<(String, u32)>,
    /// Whether the destinations are `weighted_clusters` rather than one `cluster`.
    pub weighted: bool,
}

/// What an inbound listener's HTTP filter chains enforce (istiod's `virtualInbound`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InboundHttp {
    /// The authorization policies of the `envoy.filters.http.rbac` filters, enforced and
    /// (from `shadow_rules`) dry-run; each distinct policy once, in chain order.
    pub authorization: Vec<AuthorizationPolicy>,
    /// The ports of the HTTP filter chains (`filter_chain_match.destination_port`), with the
    /// token bucket of their `envoy.filters.http.local_ratelimit` filter if it enforces one.
    pub ports: std::collections::BTreeMap<u16, Option<LocalRateLimit>>,
    /// Network RBAC filters on TCP chains, accepted and not enforced (the sidecar's inbound
    /// side authorizes HTTP requests).
    pub tcp_rbac_filters: usize,
    /// The path normalization of the HTTP chains' connection managers (one for all: chains
    /// that disagree are an error); `None` without an HTTP chain.
    pub path_normalization: Option<PathNormalization>,
}

impl XdsListener {
    /// The RDS names it needs.
    pub fn rds_names(&self) -> impl Iterator<Item = &str> {
        match &self.routes {
            ListenerRoutes::Rds(name) => Some(name.as_str()),
            _ => None,
        }
        .into_iter()
    }
}

/// Where a listener's routes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenerRoutes {
    /// A route configuration fetched by RDS under this name.
    Rds(String),
    /// A route configuration inline in the listener.
    Inline(XdsRouteConfig),
    /// No HTTP routes (a TCP listener).
    None,
}

pub(super) fn translate(l: &Listener) -> FieldResult<XdsListener> {
    if l.name.is_empty() {
        return Err(FieldError::new("name", "must not be empty"));
    }
    let socket = l.address.as_ref().and_then(|a| match &a.address {
        Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s)) => {
            Some(s)
        }
        _ => None,
    });
    let port = socket.and_then(|s| match s.port_specifier {
        Some(
            envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p),
        ) => u16::try_from(p).ok(),
        _ => None,
    });
    let ip = socket.and_then(|s| s.address.parse::<IpAddr>().ok());
    let any_address = ip.is_some_and(|ip| ip.is_unspecified());
    let address = ip.filter(|ip| !ip.is_unspecified());
    let use_original_dst = l.use_original_dst.as_ref().is_some_and(|b| b.value);
    if let Some(api) = &l.api_listener {
        // gRPC-style API listener: the HCM is the listener itself.
        let any = api
            .api_listener
            .as_ref()
            .ok_or_else(|| FieldError::new("api_listener.api_listener", "missing"))?;
        let hcm: HttpConnectionManager =
            unpack(any, "").map_err(|e| e.within("api_listener.api_listener"))?;
        let routes = http_connection_manager(&hcm).map_err(|e| e.within("api_listener"))?;
        return Ok(XdsListener {
            name: l.name.clone(),
            routes,
            inbound: false,
            port,
            any_address,
            use_original_dst,
            blocks_unknown: false,
            inbound_http: None,
            address,
            tcp_chains: Vec::new(),
        });
    }

    // core.v3.TrafficDirection.INBOUND
    if l.traffic_direction == 1 {
        // The sidecar serves inbound traffic itself (its inbound port, the local app, the
        // mTLS mode); what it takes from the control plane's inbound listener is what the
        // HTTP chains enforce: RBAC (authorization) and local rate limits, per port.
        return Ok(XdsListener {
            name: l.name.clone(),
            routes: ListenerRoutes::None,
            inbound: true,
            port,
            any_address,
            use_original_dst,
            blocks_unknown: false,
            inbound_http: Some(inbound(l)?),
            address,
            tcp_chains: Vec::new(),
        });
    }
    let mut routes = ListenerRoutes::None;
    let chains = chains_with_paths(l);
    for (path, chain) in chains {
        let chain_routes = filter_chain(chain).map_err(|e| e.within(&path))?;
        match (&routes, chain_routes) {
            (_, ListenerRoutes::None) => {}
            (ListenerRoutes::None, r) => routes = r,
            (existing, r) if *existing == r => {}
            _ => {
                return Err(FieldError::new(
                    path,
                    "filter chains with different route configurations in one listener are not supported",
                ));
            }
        }
    }
    let tcp_chains = match address {
        Some(_) if !use_original_dst => tcp_chains(l)?,
        _ => Vec::new(),
    };
    Ok(XdsListener {
        name: l.name.clone(),
        routes,
        inbound: false,
        port,
        any_address,
        use_original_dst,
        blocks_unknown: use_original_dst
            && catch_all_tcp_cluster(l).as_deref() == Some("BlackHoleCluster"),
        inbound_http: None,
        address,
        tcp_chains,
    })
}

/// `l`'s filter chains, then its default chain, each with its field path for errors.
fn chains_with_paths(l: &Listener) -> impl Iterator<Item = (String, &FilterChain)> {
    l.filter_chains
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("filter_chains[{i}]"), c))
        .chain(
            l.default_filter_chain
                .iter()
                .map(|c| ("default_filter_chain".to_owned(), c)),
        )
}

/// The chains of an outbound listener bound to one address that proxy opaque TCP (those
/// with an HTTP connection manager serve HTTP routes instead), with what they match on.
///
/// Of `filter_chain_match`: `server_names` (a `tls` rule's `sniHosts`) and `prefix_ranges`
/// (a `tcp` rule's `destinationSubnets`) are read; `transport_protocol` and
/// `application_protocols` (istiod's `tls` / protocol-sniffing hints) and `destination_port`
/// (the listener's own port on istiod's listeners) are accepted; a chain matching on the
/// client (`source_prefix_ranges`, `direct_source_prefix_ranges`, `source_ports`,
/// `source_type`) or an address suffix is refused: the forwarder could not honour it.
fn tcp_chains(l: &Listener) -> FieldResult<Vec<TcpChain>> {
    let chains = chains_with_paths(l);
    let mut out = Vec::new();
    for (path, chain) in chains {
        let mut proxy = None;
        let mut http = false;
        for (i, f) in chain.filters.iter().enumerate() {
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                continue;
            };
            if f.name == HCM || any.type_url.ends_with(".HttpConnectionManager") {
                http = true;
            } else if is_tcp_proxy(f, any) {
                let target = tcp_proxy(any)
                    .map_err(|e| e.within(format!("{path}.filters[{i}].typed_config")))?;
                proxy = Some(target);
            }
        }
        let (Some((clusters, weighted)), false) = (proxy, http) else {
            continue;
        };
        let m = chain.filter_chain_match.clone().unwrap_or_default();
        let at = |field: &str| format!("{path}.filter_chain_match.{field}");
        let refused = [
            ("source_prefix_ranges", !m.source_prefix_ranges.is_empty()),
            (
                "direct_source_prefix_ranges",
                !m.direct_source_prefix_ranges.is_empty(),
            ),
            ("source_ports", !m.source_ports.is_empty()),
            ("source_type", m.source_type != 0),
            ("address_suffix", !m.address_suffix.is_empty()),
        ];
        if let Some((field, _)) = refused.iter().find(|(_, set)| *set) {
            return Err(FieldError::new(
                at(field),
                "matching opaque TCP on this is not supported",
            ));
        }
        let destination_subnets = m
            .prefix_ranges
            .iter()
            .enumerate()
            .map(|(i, c)| {
                rbac::cidr(c)
                    .map_err(|e| e.within(at(&format!("prefix_ranges[{i}]"))))?
                    .parse::<ipnet::IpNet>()
                    .map_err(|e| FieldError::new(at(&format!("prefix_ranges[{i}]")), e.to_string()))
            })
            .collect::<FieldResult<Vec<_>>>()?;
        out.push(TcpChain {
            path,
            server_names: m.server_names,
            destination_subnets,
            clusters,
            weighted,
        });
    }
    Ok(out)
}

fn is_tcp_proxy(f: &Filter, any: &envoy_types::pb::google::protobuf::Any) -> bool {
    f.name == TCP_PROXY
        || any.type_url
            == "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
}

/// A tcp_proxy's destinations with their weights (one `cluster` takes weight 1), and whether
/// they are `weighted_clusters`.
///
/// Accepted and ignored, as istiod sets them: `stat_prefix` and the access log settings
/// (telemetry); `idle_timeout`, `downstream_idle_timeout`, `upstream_idle_timeout` (the
/// forwarder closes idle connections by the cluster's idle timeout); `max_connect_attempts`
/// and `backoff_options` (the forwarder connects once, and a failure closes the client's
/// connection, as after Envoy's last attempt); `hash_policy` (istiod's source-IP hash: the
/// cluster's own load balancer picks the endpoint); `check_drain_close`;
/// `max_downstream_connection_duration` (istiod's DestinationRule
/// `connectionPool.tcp.maxConnectionDuration`: the forwarder does not end TCP connections by
/// age, from Istio YAML either, and refusing it would refuse the whole listener update).
/// Refused, as they would change where or how bytes go: `metadata_match` (here or on a
/// weighted cluster: endpoint subsets by metadata), `tunneling_config` (HTTP CONNECT tunnels),
/// `on_demand` (on-demand cluster discovery), `proxy_protocol_tlvs` and an
/// `upstream_connect_mode` other than `IMMEDIATE`.
fn tcp_proxy(
    any: &envoy_types::pb::google::protobuf::Any,
) -> FieldResult<(Vec<(String, u32)>, bool)> {
    let p: TcpProxy = unpack(any, "")?;
    let refused = [
        ("metadata_match", p.metadata_match.is_some()),
        ("tunneling_config", p.tunneling_config.is_some()),
        ("on_demand", p.on_demand.is_some()),
        ("proxy_protocol_tlvs", !p.proxy_protocol_tlvs.is_empty()),
        ("upstream_connect_mode", p.upstream_connect_mode != 0),
    ];
    if let Some((field, _)) = refused.iter().find(|(_, set)| *set) {
        return Err(FieldError::new(
            *field,
            "is not supported by the TCP forwarder",
        ));
    }
    match p.cluster_specifier {
        Some(ClusterSpecifier::Cluster(name)) if !name.is_empty() => Ok((vec![(name, 1)], false)),
        Some(ClusterSpecifier::Cluster(_)) => Err(FieldError::new("cluster", "must not be empty")),
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            if w.clusters.is_empty() {
                return Err(FieldError::new(
                    "weighted_clusters.clusters",
                    "must not be empty",
                ));
            }
            let mut out = Vec::with_capacity(w.clusters.len());
            for (i, c) in w.clusters.into_iter().enumerate() {
                let at = format!("weighted_clusters.clusters[{i}]");
                if c.name.is_empty() {
                    return Err(FieldError::new(format!("{at}.name"), "must not be empty"));
                }
                if c.weight == 0 {
                    return Err(FieldError::new(
                        format!("{at}.weight"),
                        "must be at least 1",
                    ));
                }
                if c.metadata_match.is_some() {
                    return Err(FieldError::new(
                        format!("{at}.metadata_match"),
                        "is not supported by the TCP forwarder",
                    ));
                }
                out.push((c.name, c.weight));
            }
            Ok((out, true))
        }
        None => Err(FieldError::new(
            "cluster_specifier",
            "one of cluster or weighted_clusters is required",
        )),
    }
}

/// The cluster the listener's catch-all chain proxies opaque TCP to: its
/// `default_filter_chain`, else a chain matching every connection (an empty
/// `filter_chain_match`), as istiod writes `virtualOutbound`'s passthrough chain.
fn catch_all_tcp_cluster(l: &Listener) -> Option<String> {
    let chain = l.default_filter_chain.as_ref().or_else(|| {
        l.filter_chains.iter().find(|c| {
            c.filter_chain_match
                .as_ref()
                .is_none_or(|m| *m == Default::default())
        })
    })?;
    chain.filters.iter().find_map(|f| {
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            return None;
        };
        if !any
            .type_url
            .ends_with("envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy")
        {
            return None;
        }
        let proxy: TcpProxy = unpack(any, "").ok()?;
        match proxy.cluster_specifier? {
            ClusterSpecifier::Cluster(name) => Some(name),
            ClusterSpecifier::WeightedClusters(_) => None,
        }
    })
}

/// The inbound listener's HTTP chains: their RBAC policies and rate limits.
fn inbound(l: &Listener) -> FieldResult<InboundHttp> {
    let mut out = InboundHttp::default();
    let chains = chains_with_paths(l);
    for (path, chain) in chains {
        let port = chain
            .filter_chain_match
            .as_ref()
            .and_then(|m| m.destination_port.as_ref())
            .map(|p| u16::try_from(p.value))
            .transpose()
            .map_err(|_| {
                FieldError::new("filter_chain_match.destination_port", "is not a port")
                    .within(&path)
            })?;
        for (i, f) in chain.filters.iter().enumerate() {
            let at = format!("{path}.filters[{i}]");
            inbound_network_filter(f, port, &mut out).map_err(|e| e.within(&at))?;
        }
    }
    Ok(out)
}

fn inbound_network_filter(f: &Filter, port: Option<u16>, out: &mut InboundHttp) -> FieldResult<()> {
    let any = match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => any,
        Some(filter::ConfigType::ConfigDiscovery(_)) => {
            return Err(FieldError::new(
                "config_discovery",
                "extension config discovery (ECDS) is not supported",
            ));
        }
        None => return Err(FieldError::new("typed_config", "missing")),
    };
    let is_hcm = any.type_url
        == "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
    if is_hcm || f.name == HCM {
        let hcm: HttpConnectionManager = unpack(any, "typed_config")?;
        return inbound_hcm(&hcm, port, out).map_err(|e| e.within("typed_config"));
    }
    if f.name == NETWORK_RBAC
        || any.type_url == "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
    {
        out.tcp_rbac_filters += 1;
        return Ok(());
    }
    if BENIGN_NETWORK_FILTERS.contains(&f.name.as_str())
        || f.name == TCP_PROXY
        || any.type_url
            == "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
    {
        return Ok(());
    }
    Err(FieldError::new(
        "name",
        format!(
            "network filter {} ({}) is not supported",
            f.name, any.type_url
        ),
    ))
}

/// The path normalization an inbound connection manager asks for, as one of Istio's modes:
/// istiod's inbound HCM sets `normalize_path` (every mode but `NONE`), `merge_slashes`
/// (`MERGE_SLASHES`, `DECODE_AND_MERGE_SLASHES`) and `path_with_escaped_slashes_action`
/// (`UNESCAPE_AND_FORWARD` for `DECODE_AND_MERGE_SLASHES`, else `KEEP_UNCHANGED`). Absent
/// fields are Envoy's defaults: no normalization, no merging, escaped slashes kept. Any other
/// combination, and an action that answers instead of forwarding (`REJECT_REQUEST`,
/// `UNESCAPE_AND_REDIRECT`), is not one this proxy can honour: an error naming the field.
fn path_normalization(hcm: &HttpConnectionManager) -> FieldResult<PathNormalization> {
    const ACTION: &str = "path_with_escaped_slashes_action";
    if hcm.path_normalization_options.is_some() {
        return Err(FieldError::new(
            "path_normalization_options",
            "a path forwarded differently from the one the filters see is not supported",
        ));
    }
    let unescape =
        match PathWithEscapedSlashesAction::try_from(hcm.path_with_escaped_slashes_action) {
            Ok(
                PathWithEscapedSlashesAction::ImplementationSpecificDefault
                | PathWithEscapedSlashesAction::KeepUnchanged,
            ) => false,
            Ok(PathWithEscapedSlashesAction::UnescapeAndForward) => true,
            Ok(action) => {
                return Err(FieldError::new(
                    ACTION,
                    format!(
                        "{} is not supported: escaped slashes are kept (KEEP_UNCHANGED) or decoded \
                     and forwarded (UNESCAPE_AND_FORWARD, Istio's DECODE_AND_MERGE_SLASHES)",
                        action.as_str_name()
                    ),
                ));
            }
            Err(_) => {
                return Err(FieldError::new(
                    ACTION,
                    format!("unknown value {}", hcm.path_with_escaped_slashes_action),
                ));
            }
        };
    let normalize = hcm.normalize_path.as_ref().is_some_and(|b| b.value);
    match (normalize, hcm.merge_slashes, unescape) {
        (false, false, false) => Ok(PathNormalization::None),
        (true, false, false) => Ok(PathNormalization::Base),
        (true, true, false) => Ok(PathNormalization::MergeSlashes),
        (true, true, true) => Ok(PathNormalization::DecodeAndMergeSlashes),
        (false, true, _) => Err(FieldError::new(
            "merge_slashes",
            "merging slashes without normalize_path is not one of Istio's path normalizations",
        )),
        (_, false, true) => Err(FieldError::new(
            ACTION,
            "UNESCAPE_AND_FORWARD without normalize_path and merge_slashes is not one of \
             Istio's path normalizations",
        )),
    }
}

fn inbound_hcm(
    hcm: &HttpConnectionManager,
    port: Option<u16>,
    out: &mut InboundHttp,
) -> FieldResult<()> {
    let mode = path_normalization(hcm)?;
    match out.path_normalization {
        Some(existing) if existing != mode => {
            return Err(FieldError::new(
                "normalize_path",
                format!("path normalization {mode} differs from another filter chain's {existing}"),
            ));
        }
        _ => out.path_normalization = Some(mode),
    }
    let mut limit = None;
    for (i, f) in hcm.http_filters.iter().enumerate() {
        let at = format!("http_filters[{i}]");
        let last = i + 1 == hcm.http_filters.len();
        let typed = |f: &HttpFilter| match &f.config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => Ok(any.clone()),
            _ => Err(FieldError::new("typed_config", "missing").within(&at)),
        };
        if f.name == RBAC {
            let cfg: RbacFilter = unpack(&typed(f)?, "typed_config").map_err(|e| e.within(&at))?;
            for p in rbac::rbac_filter(&cfg).map_err(|e| e.within(format!("{at}.typed_config")))? {
                match out.authorization.iter().find(|q| q.name == p.name) {
                    Some(q) if *q == p => {}
                    Some(_) => {
                        return Err(FieldError::new(
                            format!("{at}.typed_config"),
                            format!(
                                "policy {} differs from the one of another filter chain",
                                p.name
                            ),
                        ));
                    }
                    None => out.authorization.push(p),
                }
            }
        } else if f.name == LOCAL_RATE_LIMIT {
            let cfg: PbLocalRateLimit =
                unpack(&typed(f)?, "typed_config").map_err(|e| e.within(&at))?;
            limit =
                rbac::local_rate_limit(&cfg).map_err(|e| e.within(format!("{at}.typed_config")))?;
        } else {
            http_filter(f, last).map_err(|e| e.within(&at))?;
        }
    }
    if !hcm.http_filters.iter().any(is_router) {
        return Err(FieldError::new(
            "http_filters",
            "no envoy.filters.http.router filter",
        ));
    }
    let port = port.unwrap_or(0);
    match out.ports.get(&port) {
        Some(existing) if *existing != limit => Err(FieldError::new(
            "http_filters",
            format!("port {port} has filter chains with different rate limits"),
        )),
        _ => {
            out.ports.insert(port, limit);
            Ok(())
        }
    }
}

fn filter_chain(chain: &FilterChain) -> FieldResult<ListenerRoutes> {
    let mut routes = ListenerRoutes::None;
    for (i, f) in chain.filters.iter().enumerate() {
        let path = format!("filters[{i}]");
        routes = network_filter(f).map_err(|e| e.within(&path))?;
    }
    Ok(routes)
}

fn network_filter(f: &Filter) -> FieldResult<ListenerRoutes> {
    let any = match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => any,
        Some(filter::ConfigType::ConfigDiscovery(_)) => {
            return Err(FieldError::new(
                "config_discovery",
                "extension config discovery (ECDS) is not supported",
            ));
        }
        None => return Err(FieldError::new("typed_config", "missing")),
    };
    let is_hcm = any.type_url
        == "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
    if is_hcm || f.name == HCM {
        let hcm: HttpConnectionManager = unpack(any, "typed_config")?;
        return http_connection_manager(&hcm).map_err(|e| e.within("typed_config"));
    }
    if BENIGN_NETWORK_FILTERS.contains(&f.name.as_str()) {
        return Ok(ListenerRoutes::None);
    }
    if is_tcp_proxy(f, any) {
        // Opaque TCP adds no HTTP routes. On a listener bound to a service's address, its
        // destinations (`weighted_clusters`: a VirtualService's `tcp` rules) and the chain's
        // `server_names` (its `tls` rules) are read by `tcp_chains` into `tcp_chains`, which
        // `assemble` turns into the service's address and `MeshConfig::tcp_routes`.
        tcp_proxy(any).map_err(|e| e.within("typed_config"))?;
        return Ok(ListenerRoutes::None);
    }
    Err(FieldError::new(
        "name",
        format!(
            "network filter {} ({}) is not supported",
            f.name, any.type_url
        ),
    ))
}

fn http_connection_manager(hcm: &HttpConnectionManager) -> FieldResult<ListenerRoutes> {
    for (i, f) in hcm.http_filters.iter().enumerate() {
        http_filter(f, i + 1 == hcm.http_filters.len())
            .map_err(|e| e.within(format!("http_filters[{i}]")))?;
    }
    if !hcm.http_filters.iter().any(is_router) {
        return Err(FieldError::new(
            "http_filters",
            "no envoy.filters.http.router filter",
        ));
    }
    match &hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => {
            if rds.route_config_name.is_empty() {
                return Err(FieldError::new(
                    "rds.route_config_name",
                    "must not be empty",
                ));
            }
            Ok(ListenerRoutes::Rds(rds.route_config_name.clone()))
        }
        Some(RouteSpecifier::RouteConfig(rc)) => route::translate(rc)
            .map(ListenerRoutes::Inline)
            .map_err(|e| e.within("route_config")),
        Some(RouteSpecifier::ScopedRoutes(_)) => Err(FieldError::new(
            "scoped_routes",
            "scoped route configurations are not supported",
        )),
        None => Err(FieldError::new(
            "route_specifier",
            "one of rds or route_config is required",
        )),
    }
}

fn is_router(f: &HttpFilter) -> bool {
    f.name == ROUTER
        || matches!(&f.config_type, Some(http_filter::ConfigType::TypedConfig(a))
            if a.type_url == "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router")
}

fn http_filter(f: &HttpFilter, last: bool) -> FieldResult<()> {
    if is_router(f) {
        return if last {
            Ok(())
        } else {
            Err(FieldError::new(
                "name",
                "the router filter must be the last filter",
            ))
        };
    }
    // Refused even when optional or disabled (a route can enable it): Envoy enforces it, and
    // ignoring it would let requests with forged or expired tokens through, or without a
    // request principal through policies that expect one. RequestAuthentication comes from
    // the Istio YAML files instead.
    let is_jwt = f.name == JWT_AUTHN
        || matches!(&f.config_type, Some(http_filter::ConfigType::TypedConfig(a))
            if a.type_url == JWT_AUTHN_TYPE);
    if is_jwt {
        return Err(FieldError::new(
            "name",
            format!(
                "HTTP filter {JWT_AUTHN} (JWT authentication) is not supported from xDS; \
                 give the RequestAuthentication in the Istio YAML files"
            ),
        ));
    }
    if f.disabled || f.is_optional || BENIGN_HTTP_FILTERS.contains(&f.name.as_str()) {
        return Ok(());
    }
    if f.name == FAULT {
        // The filter's own config applies to every route; Istio leaves it empty and puts faults
        // in each route's typed_per_filter_config, which is what the mesh supports.
        if let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type {
            let fault: HttpFault = unpack(any, "typed_config")?;
            if fault.delay.is_some() || fault.abort.is_some() {
                return Err(FieldError::new(
                    "typed_config",
                    "listener-wide fault injection is not supported; use the route's typed_per_filter_config",
                ));
            }
        }
        return Ok(());
    }
    Err(FieldError::new(
        "name",
        format!("HTTP filter {} is not supported", f.name),
    ))
}
