//! DestinationRules: subsets and traffic policies, and the clusters they produce
//! (`outbound|PORT|SUBSET|HOST`, one per service port and subset, as istiod names them).

use super::registry::Registry;
use super::{At, Findings, exported_to, qualify, values};
use crate::istio::{Resource, Spec, api};
use crate::model::{
    ClientTls, Cluster, ClusterName, ConnectionPool, ConsistentHash, HashKey, HashTable, Labels,
    LatencyOutlierRule, LbAlgorithm, LoadBalancer, LocalityDistribute, LocalityFailover,
    LocalityLb, OutlierDetection, TcpKeepalive, TlsMode, TrafficPolicy, Workload, selects,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A subset: its label selector and its own policy overrides.
#[derive(Debug)]
pub(super) struct SubsetRule {
    pub(super) labels: Labels,
    policy: Option<api::TrafficPolicy>,
}

/// The DestinationRule that applies to one host (rules sharing a host and selector merged).
#[derive(Debug)]
pub(super) struct HostRule {
    policy: Option<api::TrafficPolicy>,
    pub(super) subsets: BTreeMap<String, SubsetRule>,
    /// The algorithm the rule's annotations ask for, replacing LEAST_REQUEST.
    extension: Option<LbAlgorithm>,
    /// The latency outlier rule its annotations set.
    latency_outlier: Option<LatencyOutlierRule>,
}

/// The annotation turning the latency outlier rule on: how many times the median latency
/// is too slow (a number above 1, e.g. `"3"` or `"2.5"`).
pub(crate) const LATENCY_FACTOR_ANNOTATION: &str = "outlier.mesh.io/latency-factor";
/// The latency outlier's base ejection time (default 30 s).
pub(crate) const LATENCY_EJECTION_ANNOTATION: &str = "outlier.mesh.io/latency-ejection-time";
/// The fewest endpoints with a latency estimate before the rule applies (default 3).
pub(crate) const LATENCY_MIN_ENDPOINTS_ANNOTATION: &str = "outlier.mesh.io/latency-min-endpoints";

/// The latency outlier rule a DestinationRule's annotations set.
fn latency_outlier(
    annotations: &BTreeMap<String, String>,
    at: &mut At<'_>,
) -> Option<LatencyOutlierRule> {
    let field = |key: &str| format!("metadata.annotations.{key}");
    let Some(factor) = annotations.get(LATENCY_FACTOR_ANNOTATION) else {
        for key in [
            LATENCY_EJECTION_ANNOTATION,
            LATENCY_MIN_ENDPOINTS_ANNOTATION,
        ] {
            if annotations.contains_key(key) {
                at.error(&field(key), format!("needs {LATENCY_FACTOR_ANNOTATION}"));
            }
        }
        return None;
    };
    let factor_percent = at.check(
        &field(LATENCY_FACTOR_ANNOTATION),
        factor
            .parse::<f64>()
            .ok()
            .filter(|f| *f > 1.0 && *f <= 100.0)
            .map(|f| (f * 100.0).round() as u32)
            .ok_or_else(|| format!("{factor:?} is not a factor above 1 (at most 100)")),
    )?;
    let base_ejection_time = match annotations.get(LATENCY_EJECTION_ANNOTATION) {
        Some(d) => at.check(
            &field(LATENCY_EJECTION_ANNOTATION),
            values::duration(d, false),
        )?,
        None => std::time::Duration::from_secs(30),
    };
    let min_endpoints = match annotations.get(LATENCY_MIN_ENDPOINTS_ANNOTATION) {
        Some(n) => at.check(
            &field(LATENCY_MIN_ENDPOINTS_ANNOTATION),
            n.parse::<u32>()
                .ok()
                .filter(|n| *n >= 2)
                .ok_or_else(|| format!("{n:?} is not a whole number of at least 2")),
        )?,
        None => 3,
    };
    Some(LatencyOutlierRule {
        factor_percent,
        base_ejection_time,
        min_endpoints,
    })
}

/// The DestinationRule annotation choosing a load balancer beyond Istio's: `PEAK_EWMA`.
pub(crate) const ALGORITHM_ANNOTATION: &str = "loadbalancer.mesh.io/algorithm";
/// The decay of the peak-EWMA latency estimate (default 10 s).
pub(crate) const PEAK_EWMA_DECAY_ANNOTATION: &str = "loadbalancer.mesh.io/peak-ewma-decay";

/// The algorithm a DestinationRule's annotations ask for.
fn algorithm_extension(
    annotations: &BTreeMap<String, String>,
    at: &mut At<'_>,
) -> Option<LbAlgorithm> {
    let decay_field = format!("metadata.annotations.{PEAK_EWMA_DECAY_ANNOTATION}");
    let decay = match annotations.get(PEAK_EWMA_DECAY_ANNOTATION) {
        Some(d) => Some(at.check(&decay_field, values::duration(d, false))?),
        None => None,
    };
    match annotations.get(ALGORITHM_ANNOTATION).map(String::as_str) {
        None => {
            if decay.is_some() {
                at.error(
                    &decay_field,
                    format!("needs {ALGORITHM_ANNOTATION}: PEAK_EWMA"),
                );
            }
            None
        }
        Some("PEAK_EWMA") => Some(LbAlgorithm::PeakEwma {
            decay: decay.unwrap_or(std::time::Duration::from_secs(10)),
        }),
        Some(other) => {
            at.error(
                &format!("metadata.annotations.{ALGORITHM_ANNOTATION}"),
                format!("unknown load balancer {other:?}: expected PEAK_EWMA"),
            );
            None
        }
    }
}

/// DestinationRules by fully qualified host.
#[derive(Debug, Default)]
pub(super) struct DestinationRules {
    pub(super) by_host: BTreeMap<String, HostRule>,
}

impl DestinationRules {
    pub(super) fn build(
        resources: &[&Resource],
        registry: &Registry,
        workload: &Workload,
        findings: &mut Findings,
    ) -> Self {
        let mut rules = DestinationRules::default();
        // The first rule for each host, and its workload selector.
        let mut owners: BTreeMap<String, (String, Option<Labels>)> = BTreeMap::new();
        for res in resources {
            let Spec::DestinationRule(dr) = &res.spec else {
                continue;
            };
            let mut at = findings.at(res);
            if let Some(selector) = &dr.workload_selector
                && !selects(&selector.labels, &workload.labels)
            {
                continue;
            }
            if !exported_to(&dr.export_to, &res.namespace, &workload.namespace, &mut at) {
                continue; // Not visible from the workload's namespace.
            }
            let host = qualify(&dr.host, &res.namespace, &workload.cluster_domain);
            if dr.host.is_empty() {
                at.error("spec.host", "host is required");
                continue;
            }
            if registry.get(&host).is_none() && !host.contains('*') {
                at.warn(
                    "spec.host",
                    format!(
                        "host {host:?} is not in the service registry (no ServiceEntry defines it)"
                    ),
                );
            }
            if let Some(tp) = &dr.traffic_policy {
                check_policy(tp, "spec.trafficPolicy", &mut at);
            }
            let extension = algorithm_extension(&res.annotations, &mut at);
            let latency = latency_outlier(&res.annotations, &mut at);
            let mut subsets = BTreeMap::new();
            for (i, subset) in dr.subsets.iter().enumerate() {
                let field = format!("spec.subsets[{i}]");
                if subset.name.is_empty() {
                    at.error(&format!("{field}.name"), "subset name is required");
                    continue;
                }
                if subsets.contains_key(&subset.name) {
                    at.error(
                        &format!("{field}.name"),
                        format!("duplicate subset name {:?}", subset.name),
                    );
                    continue;
                }
                if let Some(tp) = &subset.traffic_policy {
                    check_policy(tp, &format!("{field}.trafficPolicy"), &mut at);
                }
                subsets.insert(
                    subset.name.clone(),
                    SubsetRule {
                        labels: subset.labels.clone(),
                        policy: subset.traffic_policy.clone(),
                    },
                );
            }
            let selector = dr.workload_selector.as_ref().map(|s| &s.labels);
            if let Some((owner, owner_selector)) = owners.get(&host) {
                let rule = rules.by_host.get_mut(&host);
                match rule {
                    // Istio merges rules for one host that share their selector (or both
                    // have none): new subsets are added, the first rule's policy kept.
                    Some(rule) if owner_selector.as_ref() == selector => {
                        for (i, subset) in dr.subsets.iter().enumerate() {
                            let Some(new) = subsets.remove(&subset.name) else {
                                continue; // Already reported above.
                            };
                            if rule.subsets.contains_key(&subset.name) {
                                at.warn(
                                    &format!("spec.subsets[{i}].name"),
                                    format!(
                                        "{owner} already defines subset {:?} for host {host:?}; this one is ignored",
                                        subset.name
                                    ),
                                );
                                continue;
                            }
                            rule.subsets.insert(subset.name.clone(), new);
                        }
                        if rule.policy.is_none() {
                            rule.policy.clone_from(&dr.traffic_policy);
                        }
                        if rule.extension.is_none() {
                            rule.extension = extension;
                        }
                        if rule.latency_outlier.is_none() {
                            rule.latency_outlier = latency;
                        }
                    }
                    _ => at.warn(
                        "spec.host",
                        format!(
                            "{owner} already applies to host {host:?} with another workloadSelector; this DestinationRule is ignored"
                        ),
                    ),
                }
                continue;
            }
            owners.insert(host.clone(), (res.key(), selector.cloned()));
            rules.by_host.insert(
                host,
                HostRule {
                    policy: dr.traffic_policy.clone(),
                    subsets,
                    extension,
                    latency_outlier: latency,
                },
            );
        }
        rules
    }
}

/// Every cluster: one per service port, and one per (service port, subset).
pub(super) fn clusters(
    registry: &Registry,
    rules: &DestinationRules,
) -> BTreeMap<ClusterName, Arc<Cluster>> {
    let mut clusters = BTreeMap::new();
    for (host, entry) in &registry.entries {
        let rule = rules.by_host.get(host);
        for port in &entry.service.ports {
            let endpoints = entry.endpoints(port);
            let base = resolve(
                &TrafficPolicy::default(),
                rule.and_then(|r| r.policy.as_ref()),
                port.number,
            );
            let mut add = |subset: Option<(&String, &SubsetRule)>| {
                let name = ClusterName::outbound(port.number, subset.map(|s| s.0.as_str()), host);
                let (labels, mut policy) = match subset {
                    Some((_, s)) => (
                        s.labels.clone(),
                        resolve(&base, s.policy.as_ref(), port.number),
                    ),
                    None => (Labels::new(), base.clone()),
                };
                // The annotation replaces the default least-request, not an explicit choice.
                if let Some(extension) = rule.and_then(|r| r.extension.as_ref())
                    && policy.load_balancer.algorithm == LbAlgorithm::LeastRequest
                {
                    policy.load_balancer.algorithm = extension.clone();
                }
                policy.latency_outlier = rule.and_then(|r| r.latency_outlier);
                let endpoints = endpoints
                    .iter()
                    .filter(|e| selects(&labels, &e.labels))
                    .cloned()
                    .collect();
                clusters.insert(
                    name.clone(),
                    Arc::new(Cluster {
                        name,
                        service: host.clone(),
                        port: port.number,
                        subset: subset.map(|s| s.0.clone()),
                        subset_labels: labels,
                        protocol: port.protocol,
                        endpoints,
                        policy,
                    }),
                );
            };
            add(None);
            for subset in rule.iter().flat_map(|r| r.subsets.iter()) {
                add(Some(subset));
            }
        }
    }
    clusters
}

/// Validates a traffic policy, recording findings under `field`.
fn check_policy(tp: &api::TrafficPolicy, field: &str, at: &mut At<'_>) {
    // Both change what goes on the wire before the first request byte: an upstream that
    // expects them would refuse every connection, so they are refused here instead of
    // silently left out.
    if tp.proxy_protocol.is_some() {
        at.error(
            &format!("{field}.proxyProtocol"),
            "sending the PROXY protocol header upstream is not supported by this proxy",
        );
    }
    if tp.tunnel.is_some() {
        at.error(
            &format!("{field}.tunnel"),
            "tunneling upstream connections (HTTP CONNECT / POST) is not supported by this proxy",
        );
    }
    let mut policy = TrafficPolicy::default();
    overlay(
        &mut policy,
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        tp.tls.as_ref(),
        field,
        Some(at),
    );
    for (i, pls) in tp.port_level_settings.iter().enumerate() {
        let pfield = format!("{field}.portLevelSettings[{i}]");
        match &pls.port {
            Some(p) => {
                at.check(&format!("{pfield}.port.number"), values::port(p.number));
            }
            None => at.error(&format!("{pfield}.port"), "port is required"),
        }
        overlay(
            &mut policy,
            pls.load_balancer.as_ref(),
            pls.connection_pool.as_ref(),
            pls.outlier_detection.as_ref(),
            pls.tls.as_ref(),
            &pfield,
            Some(at),
        );
    }
}

/// `base` with `tp` laid over it, section by section, as Istio merges a subset's policy over
/// the rule's; then, when `tp` has settings for `port`, those alone (omitted sections reset to
/// their defaults, not inherited).
fn resolve(base: &TrafficPolicy, tp: Option<&api::TrafficPolicy>, port: u16) -> TrafficPolicy {
    let mut policy = base.clone();
    let Some(tp) = tp else {
        return policy;
    };
    overlay(
        &mut policy,
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        tp.tls.as_ref(),
        "",
        None,
    );
    if let Some(pls) = tp
        .port_level_settings
        .iter()
        .find(|p| p.port.as_ref().is_some_and(|s| s.number == u32::from(port)))
    {
        // Port-level settings do not inherit: a section they omit takes its default
        // (Istio's MergeTrafficPolicy replaces all four sections).
        let mut port_policy = TrafficPolicy::default();
        overlay(
            &mut port_policy,
            pls.load_balancer.as_ref(),
            pls.connection_pool.as_ref(),
            pls.outlier_detection.as_ref(),
            pls.tls.as_ref(),
            "",
            None,
        );
        policy.load_balancer = port_policy.load_balancer;
        policy.connection_pool = port_policy.connection_pool;
        policy.outlier_detection = port_policy.outlier_detection;
        policy.tls = port_policy.tls;
    }
    policy
}

/// Replaces each section of `policy` that is set. With `at`, records findings; without, a
/// bad value (already reported by [`check_policy`]) keeps the default.
fn overlay(
    policy: &mut TrafficPolicy,
    lb: Option<&api::LoadBalancerSettings>,
    pool: Option<&api::ConnectionPoolSettings>,
    outlier: Option<&api::OutlierDetection>,
    tls: Option<&api::ClientTlsSettings>,
    field: &str,
    mut at: Option<&mut At<'_>>,
) {
    let mut report = |sub: &str, message: String| {
        if let Some(at) = at.as_deref_mut() {
            at.error(&format!("{field}.{sub}"), message);
        }
    };
    if let Some(lb) = lb {
        policy.load_balancer = load_balancer(lb, &mut report);
    }
    if let Some(pool) = pool {
        policy.connection_pool = connection_pool(pool, &mut report);
    }
    if let Some(od) = outlier {
        policy.outlier_detection = Some(outlier_detection(od, &mut report));
    }
    if let Some(tls) = tls {
        policy.tls = client_tls(tls, &mut report);
    }
}

type Report<'a> = dyn FnMut(&str, String) + 'a;

fn ok_or<T>(report: &mut Report<'_>, field: &str, r: Result<T, String>) -> Option<T> {
    r.map_err(|m| report(field, m)).ok()
}

fn load_balancer(lb: &api::LoadBalancerSettings, report: &mut Report<'_>) -> LoadBalancer {
    let mut out = LoadBalancer::default();
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        report(
            "loadBalancer",
            "set only one of simple, consistentHash".to_owned(),
        );
    }
    if let Some(simple) = &lb.simple {
        out.algorithm = match simple.as_str() {
            "UNSPECIFIED" | "LEAST_REQUEST" | "LEAST_CONN" => LbAlgorithm::LeastRequest,
            "ROUND_ROBIN" => LbAlgorithm::RoundRobin,
            "RANDOM" => LbAlgorithm::Random,
            "PASSTHROUGH" => LbAlgorithm::Passthrough,
            other => {
                report(
                    "loadBalancer.simple",
                    format!(
                        "unknown load balancer {other:?}: expected LEAST_REQUEST, ROUND_ROBIN, RANDOM or PASSTHROUGH"
                    ),
                );
                LbAlgorithm::LeastRequest
            }
        };
    }
    if let Some(ch) = &lb.consistent_hash {
        let keys = [
            ch.http_header_name.clone().map(HashKey::Header),
            ch.http_cookie.as_ref().map(|c| HashKey::Cookie {
                name: c.name.clone(),
                path: c.path.clone(),
                ttl: c.ttl.as_ref().and_then(|t| values::duration(t, true).ok()),
                attributes: c
                    .attributes
                    .iter()
                    .map(|a| (a.name.clone(), a.value.clone().unwrap_or_default()))
                    .collect(),
            }),
            ch.use_source_ip.filter(|u| *u).map(|_| HashKey::SourceIp),
            ch.http_query_parameter_name
                .clone()
                .map(HashKey::QueryParameter),
        ];
        for (i, a) in ch
            .http_cookie
            .iter()
            .flat_map(|c| c.attributes.iter())
            .enumerate()
        {
            if let Err(reason) = cookie_attribute(&a.name, a.value.as_deref().unwrap_or("")) {
                report(
                    &format!("loadBalancer.consistentHash.httpCookie.attributes[{i}]"),
                    reason,
                );
            }
        }
        if let Some(ttl) = ch.http_cookie.as_ref().and_then(|c| c.ttl.as_ref()) {
            ok_or(
                report,
                "loadBalancer.consistentHash.httpCookie.ttl",
                values::duration(ttl, true),
            );
        }
        let mut keys = keys.into_iter().flatten();
        let key = keys.next();
        if keys.next().is_some() {
            report(
                "loadBalancer.consistentHash",
                "set only one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName"
                    .to_owned(),
            );
        }
        let table = match (&ch.ring_hash, &ch.maglev) {
            (Some(_), Some(_)) => {
                report(
                    "loadBalancer.consistentHash",
                    "set only one of ringHash, maglev".to_owned(),
                );
                HashTable::default()
            }
            (_, Some(m)) => HashTable::Maglev {
                table_size: m.table_size.unwrap_or(65_537),
            },
            (Some(r), None) => HashTable::RingHash {
                minimum_ring_size: r.minimum_ring_size.unwrap_or(1024),
            },
            (None, None) => HashTable::RingHash {
                minimum_ring_size: ch.minimum_ring_size.unwrap_or(1024),
            },
        };
        match key {
            Some(key) => out.algorithm = LbAlgorithm::ConsistentHash(ConsistentHash { key, table }),
            None => report(
                "loadBalancer.consistentHash",
                "a hash key is required: httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName".to_owned(),
            ),
        }
    }
    if let Some(loc) = &lb.locality_lb_setting
        && loc.enabled != Some(false)
    {
        let mut distribute = Vec::new();
        for (i, d) in loc.distribute.iter().enumerate() {
            let sum: u64 = d.to.values().map(|w| u64::from(*w)).sum();
            if sum != 100 {
                report(
                    &format!("loadBalancer.localityLbSetting.distribute[{i}].to"),
                    format!("weights sum to {sum}, expected 100"),
                );
            }
            distribute.push(LocalityDistribute {
                from: d.from.clone(),
                to: d.to.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            });
        }
        if !loc.distribute.is_empty() && !loc.failover.is_empty() {
            report(
                "loadBalancer.localityLbSetting",
                "set only one of distribute, failover".to_owned(),
            );
        }
        out.locality = Some(LocalityLb {
            distribute,
            failover: loc
                .failover
                .iter()
                .map(|f| LocalityFailover {
                    from: f.from.clone(),
                    to: f.to.clone(),
                })
                .collect(),
            failover_priority: loc.failover_priority.clone(),
        });
    }
    if let Some(w) = &lb.warmup_duration_secs {
        out.warmup = ok_or(
            report,
            "loadBalancer.warmupDurationSecs",
            values::duration(w, true),
        );
    }
    out
}

fn connection_pool(pool: &api::ConnectionPoolSettings, report: &mut Report<'_>) -> ConnectionPool {
    let mut out = ConnectionPool::default();
    let mut count = |field: &str, v: Option<i64>, target: &mut u32| {
        if let Some(Some(n)) = ok_or(report, field, values::count(v)) {
            *target = n;
        }
    };
    if let Some(tcp) = &pool.tcp {
        count(
            "connectionPool.tcp.maxConnections",
            tcp.max_connections,
            &mut out.max_connections,
        );
    }
    if let Some(http) = &pool.http {
        count(
            "connectionPool.http.http1MaxPendingRequests",
            http.http1_max_pending_requests,
            &mut out.http1_max_pending_requests,
        );
        count(
            "connectionPool.http.http2MaxRequests",
            http.http2_max_requests,
            &mut out.http2_max_requests,
        );
        count(
            "connectionPool.http.maxRequestsPerConnection",
            http.max_requests_per_connection,
            &mut out.max_requests_per_connection,
        );
        count(
            "connectionPool.http.maxRetries",
            http.max_retries,
            &mut out.max_retries,
        );
        let mut streams = 0;
        count(
            "connectionPool.http.maxConcurrentStreams",
            http.max_concurrent_streams,
            &mut streams,
        );
        out.max_concurrent_streams = (streams > 0).then_some(streams);
    }
    if let Some(tcp) = &pool.tcp {
        if let Some(t) = &tcp.connect_timeout
            && let Some(d) = ok_or(
                report,
                "connectionPool.tcp.connectTimeout",
                values::duration(t, false),
            )
        {
            out.connect_timeout = d;
        }
        out.max_connection_duration = ok_or(
            report,
            "connectionPool.tcp.maxConnectionDuration",
            values::opt_duration(tcp.max_connection_duration.as_ref()),
        )
        .flatten();
        out.tcp_idle_timeout = ok_or(
            report,
            "connectionPool.tcp.idleTimeout",
            values::opt_duration(tcp.idle_timeout.as_ref()),
        )
        .flatten();
        out.tcp_keepalive = tcp.tcp_keepalive.as_ref().map(|k| TcpKeepalive {
            probes: k.probes,
            time: ok_or(
                report,
                "connectionPool.tcp.tcpKeepalive.time",
                values::opt_duration(k.time.as_ref()),
            )
            .flatten(),
            interval: ok_or(
                report,
                "connectionPool.tcp.tcpKeepalive.interval",
                values::opt_duration(k.interval.as_ref()),
            )
            .flatten(),
        });
    }
    if let Some(http) = &pool.http {
        out.http_idle_timeout = ok_or(
            report,
            "connectionPool.http.idleTimeout",
            values::opt_duration(http.idle_timeout.as_ref()),
        )
        .flatten();
        out.h2_upgrade = match http.h2_upgrade_policy.as_deref() {
            None | Some("DEFAULT" | "DO_NOT_UPGRADE") => false,
            Some("UPGRADE") => true,
            Some(other) => {
                report(
                    "connectionPool.http.h2UpgradePolicy",
                    format!(
                        "unknown policy {other:?}: expected DEFAULT, DO_NOT_UPGRADE or UPGRADE"
                    ),
                );
                false
            }
        };
        out.use_client_protocol = http.use_client_protocol.unwrap_or(false);
    }
    out
}

fn outlier_detection(od: &api::OutlierDetection, report: &mut Report<'_>) -> OutlierDetection {
    let mut out = OutlierDetection::default();
    if let Some(n) = od.consecutive_5xx_errors {
        out.consecutive_5xx_errors = (n > 0).then_some(n);
    }
    if let Some(n) = od.consecutive_gateway_errors.or(od.consecutive_errors) {
        out.consecutive_gateway_errors = (n > 0).then_some(n);
    }
    out.consecutive_local_origin_failures = od.consecutive_local_origin_failures.filter(|n| *n > 0);
    out.split_external_local_origin_errors = od.split_external_local_origin_errors.unwrap_or(false);
    if od.consecutive_local_origin_failures.is_some() && !out.split_external_local_origin_errors {
        report(
            "outlierDetection.consecutiveLocalOriginFailures",
            "needs splitExternalLocalOriginErrors: true".to_owned(),
        );
    }
    if let Some(Some(d)) = ok_or(
        report,
        "outlierDetection.interval",
        values::opt_duration(od.interval.as_ref()),
    ) {
        out.interval = d;
    }
    if let Some(Some(d)) = ok_or(
        report,
        "outlierDetection.baseEjectionTime",
        values::opt_duration(od.base_ejection_time.as_ref()),
    ) {
        out.base_ejection_time = d;
    }
    if let Some(p) = od.max_ejection_percent
        && let Some(p) = ok_or(
            report,
            "outlierDetection.maxEjectionPercent",
            values::percent_u32(p),
        )
    {
        out.max_ejection_percent = p;
    }
    if let Some(p) = od.min_health_percent
        && let Some(p) = ok_or(
            report,
            "outlierDetection.minHealthPercent",
            values::percent_u32(p),
        )
    {
        out.min_health_percent = p;
    }
    out
}

/// A cookie attribute that fits a `Set-Cookie` header: a token for the name (RFC 6265's
/// `token`), and a value without `;`, quotes or control characters.
fn cookie_attribute(name: &str, value: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!("name {name:?} is not a cookie attribute name"));
    }
    if !value
        .bytes()
        .all(|b| (b.is_ascii_graphic() || b == b' ') && b != b';' && b != b'"')
    {
        return Err(format!(
            "value {value:?} of {name} cannot go in a Set-Cookie header"
        ));
    }
    Ok(())
}

/// A `subjectAltNames` entry of a SIMPLE / MUTUAL policy: a DNS name or an IP address.
fn san_name(name: &str) -> Result<(), String> {
    if name.contains("://") {
        return Err(format!(
            "{name:?}: URI names are verified only under ISTIO_MUTUAL; with SIMPLE or MUTUAL give the DNS names or IP addresses the server's certificate is valid for"
        ));
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    values::hostname(name, false)
        .map_err(|_| format!("{name:?} is neither a DNS name nor an IP address"))
}

fn client_tls(tls: &api::ClientTlsSettings, report: &mut Report<'_>) -> Option<ClientTls> {
    let mode = match tls.mode.as_deref() {
        None | Some("DISABLE") => TlsMode::Disable,
        Some("SIMPLE") => TlsMode::Simple,
        Some("MUTUAL") => TlsMode::Mutual,
        Some("ISTIO_MUTUAL") => TlsMode::IstioMutual,
        Some(other) => {
            report(
                "tls.mode",
                format!(
                    "unknown TLS mode {other:?}: expected DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL"
                ),
            );
            return None;
        }
    };
    if mode == TlsMode::Mutual
        && tls.credential_name.is_none()
        && (tls.client_certificate.is_none() || tls.private_key.is_none())
    {
        report(
            "tls",
            "MUTUAL needs clientCertificate and privateKey (or credentialName)".to_owned(),
        );
    }
    if mode == TlsMode::IstioMutual
        && (tls.client_certificate.is_some()
            || tls.private_key.is_some()
            || tls.ca_certificates.is_some()
            || tls.ca_crl.is_some())
    {
        report(
            "tls",
            "ISTIO_MUTUAL uses the mesh's certificates: clientCertificate, privateKey, caCertificates and caCrl must be empty".to_owned(),
        );
    }
    if matches!(mode, TlsMode::Simple | TlsMode::Mutual) {
        // Verified as names the certificate must be valid for (Envoy's SAN matchers); a URI
        // (`spiffe://...`) would need a matcher of its own, which this proxy does not have
        // outside ISTIO_MUTUAL.
        for (i, name) in tls.subject_alt_names.iter().enumerate() {
            if let Err(reason) = san_name(name) {
                report(&format!("tls.subjectAltNames[{i}]"), reason);
            }
        }
    }
    (mode != TlsMode::Disable).then(|| ClientTls {
        mode,
        client_certificate: tls.client_certificate.clone(),
        private_key: tls.private_key.clone(),
        ca_certificates: tls.ca_certificates.clone(),
        ca_crl: tls.ca_crl.clone(),
        credential_name: tls.credential_name.clone(),
        subject_alt_names: tls.subject_alt_names.clone(),
        sni: tls.sni.clone(),
        insecure_skip_verify: tls.insecure_skip_verify.unwrap_or(false),
    })
}
