//! `RouteConfiguration` -> virtual hosts and routes.

use super::{FieldError, FieldResult, duration, parse_istio_name, unpack};
use envoy_types::pb::envoy::config::core::v3::{HeaderValueOption, data_source};
use envoy_types::pb::envoy::config::route::v3 as pb;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{HttpFault, fault_abort};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::google::protobuf::Any;
use mesh_core::model::{
    AbortError, ClusterName, DirectResponse, Fault, FaultAbort, FaultDelay, Forward, HashKey,
    HeaderOps, Mirror, Pattern, Percentage, Redirect, RedirectPort, RetryOn, RetryPolicy, Rewrite,
    Route, RouteAction, RouteMatch, StringMatch, VirtualHost, WeightedCluster,
};
use std::collections::BTreeMap;
use std::time::Duration;

const FAULT: &str = "envoy.filters.http.fault";

/// Envoy's route timeout when a route sets none.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// A translated route configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdsRouteConfig {
    /// Its name.
    pub name: String,
    /// Its virtual hosts, in order.
    pub virtual_hosts: Vec<VirtualHost>,
    /// The consistent-hash key of the routes that set a `hash_policy`, by destination
    /// cluster (the first route to name a cluster wins). The mesh keeps the hash key on the
    /// cluster, where the ring or Maglev table is.
    pub hash_keys: BTreeMap<String, HashKey>,
    /// `ignore_port_in_host_matching` (what istiod sets): the port of `Host` is not part of
    /// the match. The mesh's route table matches `host:port` exactly, so the snapshot adds
    /// `domain:PORT` for the port of each listener that uses this configuration.
    pub ignore_port_in_host_matching: bool,
}

pub(crate) fn translate(rc: &pb::RouteConfiguration) -> FieldResult<XdsRouteConfig> {
    if rc.vhds.is_some() {
        return Err(FieldError::new(
            "vhds",
            "on-demand virtual hosts (VHDS) are not supported",
        ));
    }
    let rc_request = header_ops(&rc.request_headers_to_add, &rc.request_headers_to_remove)
        .map_err(|e| e.within("request_headers_to_add"))?;
    let rc_response = header_ops(&rc.response_headers_to_add, &rc.response_headers_to_remove)
        .map_err(|e| e.within("response_headers_to_add"))?;
    let virtual_hosts = rc
        .virtual_hosts
        .iter()
        .enumerate()
        .map(|(i, vh)| {
            virtual_host(vh, &rc_request, &rc_response)
                .map_err(|e| e.within(format!("virtual_hosts[{i}]")))
        })
        .collect::<FieldResult<Vec<VirtualHost>>>()?;
    let mut hash_keys = BTreeMap::new();
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        for (j, r) in vh.routes.iter().enumerate() {
            let Some(pb::route::Action::Route(a)) = &r.action else {
                continue;
            };
            let Some(key) = hash_key(&a.hash_policy).map_err(|e| {
                e.within(format!("virtual_hosts[{i}].routes[{j}].route.hash_policy"))
            })?
            else {
                continue;
            };
            let RouteAction::Forward(f) = &virtual_hosts[i].routes[j].action else {
                continue;
            };
            for d in &f.destinations {
                hash_keys
                    .entry(d.cluster.as_str().to_owned())
                    .or_insert_with(|| key.clone());
            }
        }
    }
    Ok(XdsRouteConfig {
        name: rc.name.clone(),
        virtual_hosts,
        hash_keys,
        ignore_port_in_host_matching: rc.ignore_port_in_host_matching,
    })
}

fn virtual_host(
    vh: &pb::VirtualHost,
    rc_request: &HeaderOps,
    rc_response: &HeaderOps,
) -> FieldResult<VirtualHost> {
    if vh.domains.is_empty() {
        return Err(FieldError::new(
            "domains",
            "at least one domain is required",
        ));
    }
    if vh.require_tls != 0 {
        return Err(FieldError::new("require_tls", "is not supported"));
    }
    if vh.matcher.is_some() {
        return Err(FieldError::new(
            "matcher",
            "the generic matcher tree is not supported",
        ));
    }
    let mut request = header_ops(&vh.request_headers_to_add, &vh.request_headers_to_remove)
        .map_err(|e| e.within("request_headers_to_add"))?;
    let mut response = header_ops(&vh.response_headers_to_add, &vh.response_headers_to_remove)
        .map_err(|e| e.within("response_headers_to_add"))?;
    append_ops(&mut request, rc_request);
    append_ops(&mut response, rc_response);
    let vh_retry = vh
        .retry_policy
        .as_ref()
        .map(|r| retry_policy(r).map_err(|e| e.within("retry_policy")))
        .transpose()?;
    let vh_fault = per_filter_fault(&vh.typed_per_filter_config)
        .map_err(|e| e.within("typed_per_filter_config"))?;
    let routes = vh
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            route(r, &request, &response, vh_retry.as_ref(), vh_fault.as_ref())
                .map_err(|e| e.within(format!("routes[{i}]")))
        })
        .collect::<FieldResult<_>>()?;
    Ok(VirtualHost {
        name: vh.name.clone(),
        domains: vh.domains.clone(),
        routes,
    })
}

fn append_ops(into: &mut HeaderOps, from: &HeaderOps) {
    into.set.extend(from.set.iter().cloned());
    into.add.extend(from.add.iter().cloned());
    into.remove.extend(from.remove.iter().cloned());
}

fn route(
    r: &pb::Route,
    vh_request: &HeaderOps,
    vh_response: &HeaderOps,
    vh_retry: Option<&RetryPolicy>,
    vh_fault: Option<&Fault>,
) -> FieldResult<Route> {
    let m = r
        .r#match
        .as_ref()
        .ok_or_else(|| FieldError::new("match", "is required"))?;
    let route_match = route_match(m).map_err(|e| e.within("match"))?;
    let mut request_headers = header_ops(&r.request_headers_to_add, &r.request_headers_to_remove)
        .map_err(|e| e.within("request_headers_to_add"))?;
    let mut response_headers =
        header_ops(&r.response_headers_to_add, &r.response_headers_to_remove)
            .map_err(|e| e.within("response_headers_to_add"))?;
    append_ops(&mut request_headers, vh_request);
    append_ops(&mut response_headers, vh_response);
    let fault = per_filter_fault(&r.typed_per_filter_config)
        .map_err(|e| e.within("typed_per_filter_config"))?
        .or_else(|| vh_fault.cloned());

    let mut out = Route {
        name: r.name.clone(),
        matches: vec![route_match],
        action: RouteAction::DirectResponse(DirectResponse {
            status: 404,
            body: None,
        }),
        request_headers,
        response_headers,
        fault,
        mirrors: Vec::new(),
        retry: None,
        timeout: None,
        hedge: None,
        rate_limit: None,
    };
    match &r.action {
        Some(pb::route::Action::Route(action)) => {
            route_action(action, &mut out, vh_retry).map_err(|e| e.within("route"))?
        }
        Some(pb::route::Action::Redirect(redirect)) => {
            out.action =
                RouteAction::Redirect(redirect_action(redirect).map_err(|e| e.within("redirect"))?)
        }
        Some(pb::route::Action::DirectResponse(d)) => {
            let status = u16::try_from(d.status)
                .ok()
                .filter(|s| (200..600).contains(s))
                .ok_or_else(|| {
                    FieldError::new(
                        "direct_response.status",
                        format!("{} is not an HTTP status", d.status),
                    )
                })?;
            let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                None => None,
                Some(data_source::Specifier::InlineString(s)) => Some(s.clone().into_bytes()),
                Some(data_source::Specifier::InlineBytes(b)) => Some(b.clone()),
                Some(_) => {
                    return Err(FieldError::new(
                        "direct_response.body",
                        "only inline_string and inline_bytes are supported",
                    ));
                }
            };
            out.action = RouteAction::DirectResponse(DirectResponse { status, body });
        }
        Some(pb::route::Action::FilterAction(_)) => {
            return Err(FieldError::new("filter_action", "is not supported"));
        }
        Some(pb::route::Action::NonForwardingAction(_)) => {
            return Err(FieldError::new("non_forwarding_action", "is not supported"));
        }
        None => {
            return Err(FieldError::new(
                "action",
                "one of route, redirect or direct_response is required",
            ));
        }
    }
    Ok(out)
}

fn route_match(m: &pb::RouteMatch) -> FieldResult<RouteMatch> {
    use pb::route_match::PathSpecifier;
    let uri = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) if p.is_empty() || p == "/" => None,
        Some(PathSpecifier::Prefix(p)) => Some(StringMatch::Prefix(p.clone())),
        Some(PathSpecifier::Path(p)) => Some(StringMatch::Exact(p.clone())),
        Some(PathSpecifier::SafeRegex(r)) => Some(StringMatch::Regex(
            regex(r).map_err(|e| e.within("safe_regex"))?,
        )),
        Some(_) => {
            return Err(FieldError::new(
                "path_specifier",
                "only prefix, path and safe_regex are supported",
            ));
        }
        None => return Err(FieldError::new("path_specifier", "is required")),
    };
    let mut out = RouteMatch {
        uri,
        ..RouteMatch::default()
    };
    out.ignore_uri_case = m.case_sensitive.as_ref().is_some_and(|c| !c.value);
    if let Some(rf) = &m.runtime_fraction
        && rf
            .default_value
            .as_ref()
            .is_none_or(|f| percentage(f) != Percentage::ALL)
    {
        return Err(FieldError::new(
            "runtime_fraction",
            "fractional route matches are not supported",
        ));
    }
    if m.grpc.is_some() {
        return Err(FieldError::new("grpc", "is not supported"));
    }
    if m.tls_context.is_some() {
        return Err(FieldError::new("tls_context", "is not supported"));
    }
    if !m.cookies.is_empty() {
        return Err(FieldError::new("cookies", "is not supported"));
    }
    if !m.dynamic_metadata.is_empty() || !m.filter_state.is_empty() {
        return Err(FieldError::new("dynamic_metadata", "is not supported"));
    }
    for (i, h) in m.headers.iter().enumerate() {
        header_matcher(h, &mut out).map_err(|e| e.within(format!("headers[{i}]")))?;
    }
    for (i, q) in m.query_parameters.iter().enumerate() {
        use pb::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
        let matcher = match &q.query_parameter_match_specifier {
            Some(Q::StringMatch(s)) => Some(
                string_match(s)
                    .map_err(|e| e.within(format!("query_parameters[{i}].string_match")))?,
            ),
            Some(Q::PresentMatch(true)) => None,
            Some(Q::PresentMatch(false)) | None => {
                return Err(FieldError::new(
                    format!("query_parameters[{i}]"),
                    "a string_match or present_match: true is required",
                ));
            }
        };
        out.query_params.push((q.name.clone(), matcher));
    }
    Ok(out)
}

fn header_matcher(h: &pb::HeaderMatcher, out: &mut RouteMatch) -> FieldResult<()> {
    use pb::header_matcher::HeaderMatchSpecifier as H;
    let (matcher, present) = match &h.header_match_specifier {
        Some(H::ExactMatch(s)) => (Some(StringMatch::Exact(s.clone())), true),
        Some(H::PrefixMatch(s)) => (Some(StringMatch::Prefix(s.clone())), true),
        Some(H::SafeRegexMatch(r)) => (
            Some(StringMatch::Regex(
                regex(r).map_err(|e| e.within("safe_regex_match"))?,
            )),
            true,
        ),
        Some(H::StringMatch(s)) => (
            Some(string_match(s).map_err(|e| e.within("string_match"))?),
            true,
        ),
        Some(H::PresentMatch(p)) => (None, *p),
        None => (None, true),
        Some(_) => {
            return Err(FieldError::new(
                "header_match_specifier",
                "range, suffix and contains header matches are not supported",
            ));
        }
    };
    if h.treat_missing_header_as_empty {
        return Err(FieldError::new(
            "treat_missing_header_as_empty",
            "is not supported",
        ));
    }
    // `present_match: false` and `invert_match` each negate the match.
    let negated = if present {
        h.invert_match
    } else {
        !h.invert_match
    };
    let name = h.name.to_ascii_lowercase();
    if !negated {
        match (name.as_str(), &matcher) {
            (":method", Some(m)) => return set_once(&mut out.method, m, ":method"),
            (":authority", Some(m)) => return set_once(&mut out.authority, m, ":authority"),
            (":scheme", Some(m)) => return set_once(&mut out.scheme, m, ":scheme"),
            _ => {}
        }
    }
    if negated {
        out.without_headers.push((name, matcher));
    } else {
        out.headers.push((name, matcher));
    }
    Ok(())
}

fn set_once(slot: &mut Option<StringMatch>, m: &StringMatch, name: &str) -> FieldResult<()> {
    if slot.is_some() {
        return Err(FieldError::new("name", format!("{name} is matched twice")));
    }
    *slot = Some(m.clone());
    Ok(())
}

pub(crate) fn string_match(s: &StringMatcher) -> FieldResult<StringMatch> {
    use string_matcher::MatchPattern as M;
    if s.ignore_case {
        return Err(FieldError::new("ignore_case", "is not supported"));
    }
    match &s.match_pattern {
        Some(M::Exact(v)) => Ok(StringMatch::Exact(v.clone())),
        Some(M::Prefix(v)) => Ok(StringMatch::Prefix(v.clone())),
        Some(M::SafeRegex(r)) => Ok(StringMatch::Regex(
            regex(r).map_err(|e| e.within("safe_regex"))?,
        )),
        Some(_) => Err(FieldError::new(
            "match_pattern",
            "suffix, contains and custom string matches are not supported",
        )),
        None => Err(FieldError::new("match_pattern", "is required")),
    }
}

fn regex(r: &RegexMatcher) -> FieldResult<Pattern> {
    Pattern::new(&r.regex).map_err(|e| FieldError::new("regex", format!("invalid regex: {e}")))
}

/// A `FractionalPercent` as parts per million (values above 100% are capped, as Envoy does).
pub(crate) fn percentage(f: &FractionalPercent) -> Percentage {
    let per_million = match f.denominator {
        0 => u64::from(f.numerator) * 10_000,
        1 => u64::from(f.numerator) * 100,
        _ => u64::from(f.numerator),
    };
    Percentage::from_ppm(u32::try_from(per_million.min(1_000_000)).unwrap_or(1_000_000))
        .unwrap_or(Percentage::ALL)
}

fn route_action(
    a: &pb::RouteAction,
    out: &mut Route,
    vh_retry: Option<&RetryPolicy>,
) -> FieldResult<()> {
    use pb::route_action::{ClusterSpecifier, HostRewriteSpecifier};
    let destinations = match &a.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => vec![WeightedCluster {
            cluster: ClusterName::new(c.as_str()),
            weight: 100,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
        }],
        Some(ClusterSpecifier::Cluster(_)) => {
            return Err(FieldError::new("cluster", "must not be empty"));
        }
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            weighted_clusters(w).map_err(|e| e.within("weighted_clusters"))?
        }
        Some(_) => {
            return Err(FieldError::new(
                "cluster_specifier",
                "only cluster and weighted_clusters are supported",
            ));
        }
        None => return Err(FieldError::new("cluster_specifier", "is required")),
    };
    let mut rewrite = Rewrite::default();
    if !a.prefix_rewrite.is_empty() {
        rewrite.uri_prefix = Some(a.prefix_rewrite.clone());
    }
    if let Some(rr) = &a.regex_rewrite {
        let pattern = rr
            .pattern
            .as_ref()
            .ok_or_else(|| FieldError::new("regex_rewrite.pattern", "is required"))?;
        let p = Pattern::unanchored(&pattern.regex).map_err(|e| {
            FieldError::new("regex_rewrite.pattern.regex", format!("invalid regex: {e}"))
        })?;
        rewrite.uri_regex = Some((p, rr.substitution.clone()));
    }
    match &a.host_rewrite_specifier {
        Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => rewrite.authority = Some(h.clone()),
        Some(HostRewriteSpecifier::AutoHostRewrite(b)) if !b.value => {}
        Some(_) => {
            return Err(FieldError::new(
                "host_rewrite_specifier",
                "only host_rewrite_literal is supported",
            ));
        }
        None => {}
    }
    if a.path_rewrite_policy.is_some() || !a.path_rewrite.is_empty() {
        return Err(FieldError::new("path_rewrite_policy", "is not supported"));
    }
    if a.hedge_policy.is_some() {
        return Err(FieldError::new("hedge_policy", "is not supported"));
    }
    if a.cors.is_some() {
        return Err(FieldError::new("cors", "is not supported"));
    }
    if !a.rate_limits.is_empty() {
        return Err(FieldError::new("rate_limits", "is not supported"));
    }
    out.timeout = match &a.timeout {
        None => Some(DEFAULT_ROUTE_TIMEOUT),
        Some(t) => Some(duration(t, "timeout")?).filter(|d| !d.is_zero()),
    };
    out.retry = match &a.retry_policy {
        Some(r) => Some(retry_policy(r).map_err(|e| e.within("retry_policy"))?),
        None => vh_retry.cloned(),
    };
    for (i, m) in a.request_mirror_policies.iter().enumerate() {
        let field = format!("request_mirror_policies[{i}]");
        if m.cluster.is_empty() {
            return Err(FieldError::new(format!("{field}.cluster"), "is required"));
        }
        let share = m
            .runtime_fraction
            .as_ref()
            .and_then(|r| r.default_value.as_ref())
            .map_or(Percentage::ALL, percentage);
        let host = parse_istio_name(&m.cluster).map_or(m.cluster.as_str(), |(_, _, h)| h);
        out.mirrors.push(Mirror {
            cluster: ClusterName::new(m.cluster.as_str()),
            host: host.to_owned(),
            percentage: share,
        });
    }
    out.action = RouteAction::Forward(Forward {
        destinations,
        rewrite: (rewrite != Rewrite::default()).then_some(rewrite),
    });
    Ok(())
}

/// The hash key of a route's `hash_policy`: the first policy (Envoy falls through to the next
/// only when a request lacks the first one's input; the mesh hashes on one key).
fn hash_key(policies: &[pb::route_action::HashPolicy]) -> FieldResult<Option<HashKey>> {
    use pb::route_action::hash_policy::PolicySpecifier as P;
    let Some(first) = policies.first() else {
        return Ok(None);
    };
    let key = match &first.policy_specifier {
        Some(P::Header(h)) if h.regex_rewrite.is_none() => {
            HashKey::Header(h.header_name.to_ascii_lowercase())
        }
        Some(P::Cookie(c)) => HashKey::Cookie {
            name: c.name.clone(),
            path: (!c.path.is_empty()).then(|| c.path.clone()),
            ttl: c
                .ttl
                .as_ref()
                .map(|d| duration(d, "[0].cookie.ttl"))
                .transpose()?,
            attributes: c
                .attributes
                .iter()
                .map(|a| (a.name.clone(), a.value.clone()))
                .collect(),
        },
        Some(P::ConnectionProperties(p)) if p.source_ip => HashKey::SourceIp,
        Some(P::QueryParameter(q)) => HashKey::QueryParameter(q.name.clone()),
        _ => {
            return Err(FieldError::new(
                "[0]",
                "only header (without regex_rewrite), cookie, source_ip and query_parameter hash policies are supported",
            ));
        }
    };
    Ok(Some(key))
}

fn weighted_clusters(w: &pb::WeightedCluster) -> FieldResult<Vec<WeightedCluster>> {
    if w.clusters.is_empty() {
        return Err(FieldError::new(
            "clusters",
            "at least one cluster is required",
        ));
    }
    let mut out = Vec::with_capacity(w.clusters.len());
    let mut total: u64 = 0;
    for (i, c) in w.clusters.iter().enumerate() {
        let field = format!("clusters[{i}]");
        if c.name.is_empty() {
            return Err(FieldError::new(
                format!("{field}.name"),
                "is required (cluster_header is not supported)",
            ));
        }
        let weight = c.weight.as_ref().map_or(0, |w| w.value);
        total += u64::from(weight);
        out.push(WeightedCluster {
            cluster: ClusterName::new(c.name.as_str()),
            weight,
            request_headers: header_ops(&c.request_headers_to_add, &c.request_headers_to_remove)
                .map_err(|e| e.within(&field))?,
            response_headers: header_ops(&c.response_headers_to_add, &c.response_headers_to_remove)
                .map_err(|e| e.within(&field))?,
        });
    }
    if total == 0 {
        return Err(FieldError::new("clusters", "weights sum to 0"));
    }
    if total > u64::from(u32::MAX) {
        return Err(FieldError::new(
            "clusters",
            format!("weights sum to {total}, above 2^32-1"),
        ));
    }
    if let Some(t) = &w.total_weight
        && u64::from(t.value) != total
    {
        return Err(FieldError::new(
            "total_weight",
            format!("is {} but the weights sum to {total}", t.value),
        ));
    }
    Ok(out)
}

fn retry_policy(r: &pb::RetryPolicy) -> FieldResult<RetryPolicy> {
    let backoff_base = r
        .retry_back_off
        .as_ref()
        .and_then(|b| b.base_interval.as_ref())
        .map(|d| duration(d, "retry_back_off.base_interval"))
        .transpose()?
        .unwrap_or(Duration::from_millis(25));
    let backoff_max = r
        .retry_back_off
        .as_ref()
        .and_then(|b| b.max_interval.as_ref())
        .map(|d| duration(d, "retry_back_off.max_interval"))
        .transpose()?
        .unwrap_or(backoff_base * 10);
    if backoff_max < backoff_base {
        return Err(FieldError::new(
            "retry_back_off.max_interval",
            "is below base_interval",
        ));
    }
    Ok(RetryPolicy {
        attempts: r.num_retries.as_ref().map_or(1, |n| n.value),
        per_try_timeout: r
            .per_try_timeout
            .as_ref()
            .map(|d| duration(d, "per_try_timeout"))
            .transpose()?
            .filter(|d| !d.is_zero()),
        retry_on: {
            // Envoy lists the codes apart and reads them only under `retriable-status-codes`;
            // the model keeps them with the conditions, where a code implies the condition.
            let mut text = r.retry_on.clone();
            if r.retry_on
                .split(',')
                .any(|c| c.trim() == "retriable-status-codes")
            {
                for code in &r.retriable_status_codes {
                    text.push_str(&format!(",{code}"));
                }
            }
            RetryOn::parse(&text).map_err(|e| FieldError::new("retry_on", e))?
        },
        retry_remote_localities: false,
        backoff_base,
        backoff_max,
    })
}

fn redirect_action(r: &pb::RedirectAction) -> FieldResult<Redirect> {
    use pb::redirect_action::{PathRewriteSpecifier, SchemeRewriteSpecifier};
    let code = match r.response_code {
        0 => 301,
        1 => 302,
        2 => 303,
        3 => 307,
        4 => 308,
        other => {
            return Err(FieldError::new(
                "response_code",
                format!("unknown code {other}"),
            ));
        }
    };
    let scheme = match &r.scheme_rewrite_specifier {
        Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".to_owned()),
        Some(SchemeRewriteSpecifier::SchemeRedirect(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let uri = match &r.path_rewrite_specifier {
        Some(PathRewriteSpecifier::PathRedirect(p)) => Some(p.clone()),
        Some(_) => {
            return Err(FieldError::new(
                "path_rewrite_specifier",
                "only path_redirect is supported",
            ));
        }
        None => None,
    };
    let port = match r.port_redirect {
        0 => None,
        p => Some(RedirectPort::Port(u16::try_from(p).map_err(|_| {
            FieldError::new("port_redirect", format!("{p} is not a port"))
        })?)),
    };
    if r.strip_query {
        return Err(FieldError::new("strip_query", "is not supported"));
    }
    Ok(Redirect {
        uri,
        authority: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
        scheme,
        port,
        code,
    })
}

pub(crate) fn header_ops(add: &[HeaderValueOption], remove: &[String]) -> FieldResult<HeaderOps> {
    let mut ops = HeaderOps {
        remove: remove.iter().map(|h| h.to_ascii_lowercase()).collect(),
        ..HeaderOps::default()
    };
    for (i, o) in add.iter().enumerate() {
        let h = o
            .header
            .as_ref()
            .ok_or_else(|| FieldError::new(format!("[{i}].header"), "is required"))?;
        let value = if h.raw_value.is_empty() {
            h.value.clone()
        } else {
            String::from_utf8(h.raw_value.clone())
                .map_err(|_| FieldError::new(format!("[{i}].header.raw_value"), "is not UTF-8"))?
        };
        if value.contains('%') {
            return Err(FieldError::new(
                format!("[{i}].header.value"),
                "header value formatters (%...%) are not supported",
            ));
        }
        let entry = (h.key.to_ascii_lowercase(), value);
        // The deprecated `append` wins when set; else append_action (default: append).
        let append = match &o.append {
            Some(b) => b.value,
            None => match o.append_action {
                0 => true,
                2 => false,
                other => {
                    return Err(FieldError::new(
                        format!("[{i}].append_action"),
                        format!("action {other} is not supported"),
                    ));
                }
            },
        };
        if append {
            ops.add.push(entry);
        } else {
            ops.set.push(entry);
        }
    }
    Ok(ops)
}

fn per_filter_fault(
    configs: &std::collections::HashMap<String, Any>,
) -> FieldResult<Option<Fault>> {
    let mut fault = None;
    // Sorted, so that the first error reported is the same every time.
    let mut names: Vec<&String> = configs.keys().collect();
    names.sort();
    for name in names {
        let any = &configs[name];
        let mut any = any.clone();
        if any.type_url == "type.googleapis.com/envoy.config.route.v3.FilterConfig" {
            let fc: pb::FilterConfig = unpack(&any, name)?;
            match fc.config {
                Some(inner) => any = inner,
                None => continue,
            }
        }
        if name != FAULT {
            return Err(FieldError::new(
                name.as_str(),
                "per-route config for this filter is not supported",
            ));
        }
        let f: HttpFault = unpack(&any, name)?;
        fault = Some(http_fault(&f).map_err(|e| e.within(name))?);
    }
    Ok(fault)
}

fn http_fault(f: &HttpFault) -> FieldResult<Fault> {
    if !f.headers.is_empty() || !f.upstream_cluster.is_empty() || !f.downstream_nodes.is_empty() {
        return Err(FieldError::new(
            "headers",
            "conditional faults are not supported",
        ));
    }
    let delay = match &f.delay {
        None => None,
        Some(d) => match &d.fault_delay_secifier {
            Some(fault_delay::FaultDelaySecifier::FixedDelay(t)) => Some(FaultDelay {
                delay: duration(t, "delay.fixed_delay")?,
                percentage: d.percentage.as_ref().map_or(Percentage::ALL, percentage),
            }),
            _ => return Err(FieldError::new("delay", "only fixed_delay is supported")),
        },
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => {
            let error = match &a.error_type {
                Some(fault_abort::ErrorType::HttpStatus(s)) => AbortError::Http(
                    u16::try_from(*s)
                        .ok()
                        .filter(|s| (200..600).contains(s))
                        .ok_or_else(|| {
                            FieldError::new(
                                "abort.http_status",
                                format!("{s} is not an HTTP status"),
                            )
                        })?,
                ),
                Some(fault_abort::ErrorType::GrpcStatus(s)) => AbortError::Grpc(*s),
                _ => {
                    return Err(FieldError::new(
                        "abort",
                        "header-controlled aborts are not supported",
                    ));
                }
            };
            Some(FaultAbort {
                error,
                percentage: a.percentage.as_ref().map_or(Percentage::ALL, percentage),
            })
        }
    };
    Ok(Fault { delay, abort })
}
