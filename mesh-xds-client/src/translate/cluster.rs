//! `Cluster` -> [`Cluster`] with its traffic policy.

use super::{FieldError, FieldResult, duration, endpoint, parse_istio_name, unpack};
use envoy_types::pb::envoy::config::cluster::v3::{self as pb, cluster};
use envoy_types::pb::envoy::config::core::v3::transport_socket;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, UpstreamTlsContext, common_tls_context,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use mesh_core::model::{
    ClientTls, Cluster, ClusterName, ConnectionPool, HashTable, LbAlgorithm, LoadBalancer,
    LocalityDistribute, LocalityLb, OutlierDetection, Protocol, Resolution, TlsMode, TrafficPolicy,
};
use std::time::Duration;

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// A translated cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdsCluster {
    /// The cluster; for EDS clusters its endpoints are filled in when assembled.
    pub cluster: Cluster,
    /// The EDS resource name holding its endpoints, for EDS clusters.
    pub eds_name: Option<String>,
    /// SDS secret names its TLS context refers to.
    pub sds_secrets: Vec<String>,
    /// Whether the name has Istio's `outbound|PORT|SUBSET|HOST` form.
    pub istio_name: bool,
    /// How the endpoints' addresses are resolved.
    pub resolution: Resolution,
    /// The ring-hash or Maglev table, for RING_HASH and MAGLEV clusters; the hash key comes
    /// from the routes' `hash_policy` when the snapshot is assembled.
    pub hash_table: Option<HashTable>,
    /// Whether `common_lb_config.locality_weighted_lb_config` is set: the EDS localities'
    /// weights then spread the traffic (filled in when assembled).
    pub locality_weighted: bool,
    /// For an inbound cluster (Istio's `inbound|PORT||`), the services it serves, from its
    /// `istio` metadata's `services` (each one's `host`), as Istio's stats filter reads them
    /// for the server side's `destination_service`.
    pub inbound_services: Vec<String>,
}

/// The hosts in an inbound cluster's `filter_metadata.istio.services` (a list of structs
/// with `host`, `name` and `namespace`, as istiod writes them); none for other clusters.
fn inbound_services(c: &pb::Cluster) -> Vec<String> {
    use envoy_types::pb::google::protobuf::value::Kind;
    if !c.name.starts_with("inbound|") {
        return Vec::new();
    }
    let services = c
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get("istio"))
        .and_then(|istio| istio.fields.get("services"))
        .and_then(|v| match &v.kind {
            Some(Kind::ListValue(list)) => Some(&list.values),
            _ => None,
        });
    services
        .into_iter()
        .flatten()
        .filter_map(|service| match &service.kind {
            Some(Kind::StructValue(s)) => match s.fields.get("host")?.kind.as_ref()? {
                Kind::StringValue(host) if !host.is_empty() => Some(host.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Envoy's locality weighted load balancing as the model's `distribute` rule, for any
/// workload locality (istiod sends the weights of Istio's `distribute` rule this way, already
/// resolved for the proxy's locality); `None` without weights.
pub(super) fn weighted_localities(weights: &[(String, u32)]) -> Option<LocalityLb> {
    (!weights.is_empty()).then(|| LocalityLb {
        distribute: vec![LocalityDistribute {
            from: "*".to_owned(),
            to: weights.to_vec(),
        }],
        ..LocalityLb::default()
    })
}

pub(super) fn translate(c: &pb::Cluster) -> FieldResult<XdsCluster> {
    if c.name.is_empty() {
        return Err(FieldError::new("name", "must not be empty"));
    }
    let parsed = parse_istio_name(&c.name);
    let (port, subset, service) = match parsed {
        Some((port, subset, host)) => (port, subset.map(str::to_owned), host.to_owned()),
        None => (0, None, c.name.clone()),
    };
    let discovery = match &c.cluster_discovery_type {
        None => cluster::DiscoveryType::Static,
        Some(cluster::ClusterDiscoveryType::Type(t)) => cluster::DiscoveryType::try_from(*t)
            .map_err(|_| FieldError::new("type", format!("unknown discovery type {t}")))?,
        Some(cluster::ClusterDiscoveryType::ClusterType(ct)) => {
            return Err(FieldError::new(
                "cluster_type",
                format!("custom cluster type {} is not supported", ct.name),
            ));
        }
    };
    let (mut algorithm, hash_table) = lb_algorithm(c)?;
    let locality_weighted = matches!(
        c.common_lb_config
            .as_ref()
            .and_then(|l| l.locality_config_specifier.as_ref()),
        Some(cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
    );
    let mut eds_name = None;
    let mut endpoints = Vec::new();
    let mut locality = None;
    let resolution = match discovery {
        cluster::DiscoveryType::Eds => {
            let service_name = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(&c.name);
            eds_name = Some(service_name.to_owned());
            Resolution::Static
        }
        cluster::DiscoveryType::Static
        | cluster::DiscoveryType::StrictDns
        | cluster::DiscoveryType::LogicalDns => {
            let dns = discovery != cluster::DiscoveryType::Static;
            if let Some(la) = &c.load_assignment {
                endpoints =
                    endpoint::endpoints(la, dns).map_err(|e| e.within("load_assignment"))?;
                if locality_weighted {
                    let weights =
                        endpoint::locality_weights(la).map_err(|e| e.within("load_assignment"))?;
                    locality = weighted_localities(&weights);
                }
            }
            if dns {
                Resolution::Dns
            } else {
                Resolution::Static
            }
        }
        cluster::DiscoveryType::OriginalDst => {
            algorithm = LbAlgorithm::Passthrough;
            Resolution::None
        }
    };
    if c.lb_subset_config.is_some() {
        return Err(FieldError::new(
            "lb_subset_config",
            "subset load balancing is not supported",
        ));
    }
    if !c.health_checks.is_empty() {
        return Err(FieldError::new(
            "health_checks",
            "active health checking is not supported",
        ));
    }
    if !c.filters.is_empty() {
        return Err(FieldError::new(
            "filters",
            "upstream network filters are not supported",
        ));
    }

    let mut pool = ConnectionPool {
        connect_timeout: c
            .connect_timeout
            .as_ref()
            .map(|d| duration(d, "connect_timeout"))
            .transpose()?
            .unwrap_or(Duration::from_secs(5)),
        ..ConnectionPool::default()
    };
    circuit_breakers(c.circuit_breakers.as_ref(), &mut pool)
        .map_err(|e| e.within("circuit_breakers"))?;
    if let Some(n) = &c.max_requests_per_connection {
        pool.max_requests_per_connection = n.value;
    }
    let mut protocol = if c.http2_protocol_options.is_some() {
        Protocol::Http2
    } else {
        Protocol::Http
    };
    if let Some(any) = c
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
    {
        let field = format!("typed_extension_protocol_options[{HTTP_PROTOCOL_OPTIONS}]");
        let opts: HttpProtocolOptions = unpack(any, &field)?;
        http_protocol_options(&opts, &mut pool, &mut protocol).map_err(|e| e.within(&field))?;
    }
    if let Some(extra) = c
        .typed_extension_protocol_options
        .keys()
        .find(|k| k.as_str() != HTTP_PROTOCOL_OPTIONS)
    {
        return Err(FieldError::new(
            format!("typed_extension_protocol_options[{extra}]"),
            "is not supported",
        ));
    }

    let outlier_detection = c
        .outlier_detection
        .as_ref()
        .map(|o| outlier(o).map_err(|e| e.within("outlier_detection")))
        .transpose()?;

    let mut sds_secrets = Vec::new();
    let tls = transport(c, &mut sds_secrets)?;

    Ok(XdsCluster {
        cluster: Cluster {
            name: ClusterName::new(c.name.as_str()),
            service,
            port,
            subset,
            subset_labels: Default::default(),
            protocol,
            endpoints,
            policy: TrafficPolicy {
                load_balancer: LoadBalancer {
                    algorithm,
                    locality,
                    warmup: None,
                },
                connection_pool: pool,
                outlier_detection,
                tls,
                latency_outlier: None,
            },
        },
        eds_name,
        sds_secrets,
        istio_name: parsed.is_some(),
        resolution,
        hash_table,
        locality_weighted,
        inbound_services: inbound_services(c),
    })
}

/// The algorithm, and the hash table of RING_HASH and MAGLEV clusters (whose algorithm is
/// completed with the routes' hash key at assembly; without one Envoy spreads requests at
/// random, and so does the mesh).
fn lb_algorithm(c: &pb::Cluster) -> FieldResult<(LbAlgorithm, Option<HashTable>)> {
    if c.load_balancing_policy.is_some() {
        return Err(FieldError::new(
            "load_balancing_policy",
            "is not supported; use lb_policy",
        ));
    }
    let ring = || match &c.lb_config {
        Some(cluster::LbConfig::RingHashLbConfig(r)) => {
            r.minimum_ring_size.as_ref().map_or(1024, |v| v.value)
        }
        _ => 1024,
    };
    let maglev = || match &c.lb_config {
        Some(cluster::LbConfig::MaglevLbConfig(m)) => {
            m.table_size.as_ref().map_or(65537, |v| v.value)
        }
        _ => 65537,
    };
    match cluster::LbPolicy::try_from(c.lb_policy) {
        Ok(cluster::LbPolicy::RoundRobin) => Ok((LbAlgorithm::RoundRobin, None)),
        Ok(cluster::LbPolicy::LeastRequest) => Ok((LbAlgorithm::LeastRequest, None)),
        Ok(cluster::LbPolicy::Random) => Ok((LbAlgorithm::Random, None)),
        Ok(cluster::LbPolicy::ClusterProvided) => Ok((LbAlgorithm::Passthrough, None)),
        Ok(cluster::LbPolicy::RingHash) => Ok((
            LbAlgorithm::Random,
            Some(HashTable::RingHash {
                minimum_ring_size: ring(),
            }),
        )),
        Ok(cluster::LbPolicy::Maglev) => Ok((
            LbAlgorithm::Random,
            Some(HashTable::Maglev {
                table_size: maglev(),
            }),
        )),
        _ => Err(FieldError::new(
            "lb_policy",
            format!("unknown policy {}", c.lb_policy),
        )),
    }
}

/// Envoy's circuit-breaker defaults when a cluster sets none: 1024 connections, pending and
/// active requests, and 3 retries.
fn circuit_breakers(
    cb: Option<&pb::CircuitBreakers>,
    pool: &mut ConnectionPool,
) -> FieldResult<()> {
    pool.max_connections = 1024;
    pool.http1_max_pending_requests = 1024;
    pool.http2_max_requests = 1024;
    pool.max_retries = 3;
    let Some(cb) = cb else { return Ok(()) };
    for (i, t) in cb.thresholds.iter().enumerate() {
        // Only the DEFAULT priority is used by this mesh (no priority routing).
        if t.priority != 0 {
            continue;
        }
        if let Some(budget) = &t.retry_budget {
            if budget.budget_interval.is_some() {
                return Err(FieldError::new(
                    format!("thresholds[{i}].retry_budget.budget_interval"),
                    "is not supported (the budget counts retries in flight)",
                ));
            }
            let percent = budget.budget_percent.as_ref().map_or(20.0, |p| p.value);
            if !(0.0..=100.0).contains(&percent) {
                return Err(FieldError::new(
                    format!("thresholds[{i}].retry_budget.budget_percent"),
                    format!("{percent} is not a percentage"),
                ));
            }
            pool.retry_budget = Some(mesh_core::model::ClusterRetryBudget {
                budget_per_mille: (percent * 10.0).round() as u32,
                min_retry_concurrency: budget.min_retry_concurrency.as_ref().map_or(3, |v| v.value),
            });
        }
        if let Some(v) = &t.max_connections {
            pool.max_connections = v.value;
        }
        if let Some(v) = &t.max_pending_requests {
            pool.http1_max_pending_requests = v.value;
        }
        if let Some(v) = &t.max_requests {
            pool.http2_max_requests = v.value;
        }
        if let Some(v) = &t.max_retries {
            pool.max_retries = v.value;
        }
    }
    Ok(())
}

fn http_protocol_options(
    o: &HttpProtocolOptions,
    pool: &mut ConnectionPool,
    protocol: &mut Protocol,
) -> FieldResult<()> {
    use http_protocol_options::UpstreamProtocolOptions as U;
    use http_protocol_options::explicit_http_config::ProtocolConfig as P;
    if let Some(common) = &o.common_http_protocol_options {
        if let Some(d) = &common.idle_timeout {
            pool.http_idle_timeout =
                Some(duration(d, "common_http_protocol_options.idle_timeout")?);
        }
        if let Some(d) = &common.max_connection_duration {
            pool.max_connection_duration = Some(duration(
                d,
                "common_http_protocol_options.max_connection_duration",
            )?);
        }
        if let Some(n) = &common.max_requests_per_connection {
            pool.max_requests_per_connection = n.value;
        }
    }
    match &o.upstream_protocol_options {
        Some(U::ExplicitHttpConfig(e)) => match &e.protocol_config {
            Some(P::Http2ProtocolOptions(h2)) => {
                *protocol = Protocol::Http2;
                pool.max_concurrent_streams = h2.max_concurrent_streams.as_ref().map(|v| v.value);
            }
            Some(P::HttpProtocolOptions(_)) | None => {}
            Some(P::Http3ProtocolOptions(_)) => {
                return Err(FieldError::new(
                    "explicit_http_config",
                    "HTTP/3 is not supported",
                ));
            }
        },
        Some(U::UseDownstreamProtocolConfig(_)) => pool.use_client_protocol = true,
        Some(U::AutoConfig(_)) => {
            return Err(FieldError::new(
                "auto_config",
                "ALPN protocol selection is not supported",
            ));
        }
        None => {}
    }
    if !o.http_filters.is_empty() {
        return Err(FieldError::new(
            "http_filters",
            "upstream HTTP filters are not supported",
        ));
    }
    Ok(())
}

fn outlier(o: &pb::OutlierDetection) -> FieldResult<OutlierDetection> {
    let enforcing = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>, default: u32| {
        v.as_ref().map_or(default, |v| v.value) > 0
    };
    let pct =
        |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>, default: u32, field: &str| {
            let value = v.as_ref().map_or(default, |v| v.value);
            if value > 100 {
                Err(FieldError::new(field, format!("{value} is above 100")))
            } else {
                Ok(value)
            }
        };
    let base_ejection_time = o
        .base_ejection_time
        .as_ref()
        .map(|d| duration(d, "base_ejection_time"))
        .transpose()?
        .unwrap_or(Duration::from_secs(30));
    let max_ejection_time = o
        .max_ejection_time
        .as_ref()
        .map(|d| duration(d, "max_ejection_time"))
        .transpose()?;
    // Envoy refuses the cluster too.
    if let Some(max) = max_ejection_time
        && max < base_ejection_time
    {
        return Err(FieldError::new(
            "max_ejection_time",
            format!("{max:?} is below base_ejection_time ({base_ejection_time:?})"),
        ));
    }
    Ok(OutlierDetection {
        consecutive_5xx_errors: enforcing(&o.enforcing_consecutive_5xx, 100)
            .then(|| o.consecutive_5xx.as_ref().map_or(5, |v| v.value)),
        consecutive_gateway_errors: enforcing(&o.enforcing_consecutive_gateway_failure, 0).then(
            || {
                o.consecutive_gateway_failure
                    .as_ref()
                    .map_or(5, |v| v.value)
            },
        ),
        consecutive_local_origin_failures: (o.split_external_local_origin_errors
            && enforcing(&o.enforcing_consecutive_local_origin_failure, 100))
        .then(|| {
            o.consecutive_local_origin_failure
                .as_ref()
                .map_or(5, |v| v.value)
        }),
        split_external_local_origin_errors: o.split_external_local_origin_errors,
        interval: o
            .interval
            .as_ref()
            .map(|d| duration(d, "interval"))
            .transpose()?
            .unwrap_or(Duration::from_secs(10)),
        base_ejection_time,
        max_ejection_time,
        max_ejection_percent: pct(&o.max_ejection_percent, 10, "max_ejection_percent")?,
        min_health_percent: 0,
    })
}

fn transport(c: &pb::Cluster, sds: &mut Vec<String>) -> FieldResult<Option<ClientTls>> {
    // Istio's auto-mTLS: a match on endpoint metadata `tlsMode: istio` selects mTLS. The mesh
    // applies its workload identity to in-mesh endpoints itself, so the TLS match is what
    // counts.
    let mut tls = None;
    for (i, m) in c.transport_socket_matches.iter().enumerate() {
        if let Some(ts) = &m.transport_socket
            && let Some(t) = transport_socket(ts, sds)
                .map_err(|e| e.within(format!("transport_socket_matches[{i}].transport_socket")))?
        {
            tls = Some(t);
        }
    }
    if let Some(ts) = &c.transport_socket
        && let Some(t) = transport_socket(ts, sds).map_err(|e| e.within("transport_socket"))?
    {
        tls = Some(t);
    }
    Ok(tls)
}

fn transport_socket(
    ts: &envoy_types::pb::envoy::config::core::v3::TransportSocket,
    sds: &mut Vec<String>,
) -> FieldResult<Option<ClientTls>> {
    let any = match &ts.config_type {
        Some(transport_socket::ConfigType::TypedConfig(a)) => a,
        None => return Ok(None),
    };
    if any
        .type_url
        .ends_with("envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer")
    {
        return Ok(None);
    }
    let ctx: UpstreamTlsContext = unpack(any, "typed_config")?;
    let common = ctx.common_tls_context.clone().unwrap_or_default();
    let (mode, ca_name) = tls_mode(&common, sds)?;
    Ok(Some(ClientTls {
        mode,
        client_certificate: None,
        private_key: None,
        ca_certificates: None,
        credential_name: ca_name,
        subject_alt_names: Vec::new(),
        sni: (!ctx.sni.is_empty()).then(|| ctx.sni.clone()),
        insecure_skip_verify: false,
        ca_crl: None,
    }))
}

fn tls_mode(
    common: &CommonTlsContext,
    sds: &mut Vec<String>,
) -> FieldResult<(TlsMode, Option<String>)> {
    use common_tls_context::ValidationContextType as V;
    if !common.tls_certificates.is_empty() {
        return Err(FieldError::new(
            "typed_config.common_tls_context.tls_certificates",
            "inline certificates are not supported; use SDS",
        ));
    }
    let cert_names: Vec<String> = common
        .tls_certificate_sds_secret_configs
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let validation = match &common.validation_context_type {
        Some(V::ValidationContextSdsSecretConfig(s)) => Some(s.name.clone()),
        Some(V::CombinedValidationContext(c)) => c
            .validation_context_sds_secret_config
            .as_ref()
            .map(|s| s.name.clone()),
        _ => None,
    };
    sds.extend(cert_names.iter().cloned());
    sds.extend(validation.iter().cloned());
    let mode = match (
        cert_names.first().map(String::as_str),
        validation.as_deref(),
    ) {
        // Istio's workload certificate and root.
        (Some("default"), Some("ROOTCA")) => TlsMode::IstioMutual,
        (Some(_), _) => TlsMode::Mutual,
        (None, _) => TlsMode::Simple,
    };
    Ok((mode, validation))
}
