//! VirtualServices -> the outbound route table: one virtual host per (service, HTTP port),
//! named by every alias a client may use, with the VirtualService's rules or a default route;
//! and their `tls` and `tcp` rules by service TCP port ([`super::tcp_routes`]).

use super::policy::DestinationRules;
use super::registry::Registry;
use super::tcp_routes::{self, TcpTemplate};
use super::{At, Findings, exported_to, qualify, values};
use crate::istio::{Resource, Spec, api};
use crate::model::{
    AbortError, ClusterName, CorsPolicy, DirectResponse, Fault, FaultAbort, FaultDelay, Forward,
    HeaderOps, HedgePolicy, LocalRateLimit, Mirror, Percentage, Redirect, RedirectPort, RetryOn,
    RetryPolicy, Rewrite, Route, RouteAction, RouteMatch, RouteTable, StringMatch, TcpRoute,
    VirtualHost, WeightedCluster, Workload,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// A destination before its port is known (the port may come from the virtual host's).
#[derive(Clone, Debug)]
pub(super) struct DestRef {
    pub(super) host: String,
    pub(super) subset: Option<String>,
    port: Option<u16>,
}

#[derive(Clone, Debug)]
pub(super) struct WeightedRef {
    pub(super) dest: DestRef,
    pub(super) weight: u32,
    request_headers: HeaderOps,
    response_headers: HeaderOps,
}

/// A route with its destinations not yet bound to a port.
#[derive(Clone, Debug)]
struct Template {
    route: Route,
    forward: Option<(Vec<WeightedRef>, Option<Rewrite>)>,
    mirrors: Vec<(DestRef, Percentage)>,
}

pub(super) fn build(
    resources: &[&Resource],
    registry: &Registry,
    rules: &DestinationRules,
    workload: &Workload,
    findings: &mut Findings,
) -> (RouteTable, BTreeMap<ClusterName, Vec<TcpRoute>>) {
    let domain = &workload.cluster_domain;
    let mut by_host: BTreeMap<String, (String, Vec<Template>)> = BTreeMap::new();
    // A host's `tls` and `tcp` rules.
    let mut tcp_by_host: BTreeMap<String, (Vec<TcpTemplate>, Vec<TcpTemplate>)> = BTreeMap::new();
    for res in resources {
        let Spec::VirtualService(vs) = &res.spec else {
            continue;
        };
        let mut at = findings.at(res);
        if vs.hosts.is_empty() {
            // A VirtualService without hosts is a delegate, only reached through another's
            // `delegate` rule, which this proxy ignores (see `template`).
            at.warn(
                "spec.hosts",
                "no hosts: a delegate VirtualService; delegation is not supported by this proxy, so it is ignored",
            );
            continue;
        }
        if !vs.gateways.is_empty() && !vs.gateways.iter().any(|g| g == "mesh") {
            continue; // Applies to gateways only, not to sidecars.
        }
        if !exported_to(&vs.export_to, &res.namespace, &workload.namespace, &mut at) {
            continue; // Not visible from the workload's namespace.
        }
        let hosts: Vec<String> = vs
            .hosts
            .iter()
            .map(|h| qualify(h, &res.namespace, domain))
            .collect();
        let context = Context {
            registry,
            rules,
            namespace: &res.namespace,
            domain,
            vs_hosts: &hosts,
        };
        let hedge = hedge_policy(&res.annotations, &mut at);
        let rate_limit = rate_limit(&res.annotations, &mut at);
        let mut templates: Vec<Template> = vs
            .http
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                context.template(r, &format!("spec.http[{i}]"), &res.name, i, &mut at)
            })
            .collect();
        for t in templates.iter_mut() {
            if t.forward.is_some() {
                t.route.hedge.clone_from(&hedge);
            }
            t.route.rate_limit.clone_from(&rate_limit);
        }
        let tcp = context.tcp_templates(&vs.tcp, &res.name, &mut at);
        let tls = context.tls_templates(&vs.tls, &res.name, &vs.hosts, &mut at);
        let tls_port = |host: &String| {
            registry
                .get(host)
                .is_some_and(|e| e.service.ports.iter().any(|p| p.protocol.is_tls()))
        };
        if !vs.tls.is_empty() && !hosts.iter().any(tls_port) {
            at.warn(
                "spec.tls",
                "no host of this VirtualService is a service with a TLS or HTTPS port (of a \
                 ServiceEntry): the tls rules apply to no connection",
            );
        }
        let tcp_port = |host: &String| {
            registry
                .get(host)
                .is_some_and(|e| e.service.ports.iter().any(|p| !p.protocol.is_http()))
        };
        if !vs.tcp.is_empty() && !hosts.iter().any(tcp_port) {
            at.warn(
                "spec.tcp",
                "no host of this VirtualService is a service with a TCP port (a non-HTTP port \
                 of a ServiceEntry): the tcp rules apply to no connection",
            );
        }
        for (i, host) in hosts.iter().enumerate() {
            if let Some((owner, _)) = by_host.get(host) {
                at.warn(
                    &format!("spec.hosts[{i}]"),
                    format!("{owner} already routes host {host:?}; this VirtualService is ignored for it"),
                );
                continue;
            }
            by_host.insert(host.clone(), (res.key(), templates.clone()));
            if !tcp.is_empty() || !tls.is_empty() {
                tcp_by_host.insert(host.clone(), (tls.clone(), tcp.clone()));
            }
        }
    }

    // A service's TCP ports (every port that is not HTTP: opaque TCP, TLS and HTTPS) with the
    // rules of the VirtualService that claimed its host: on TLS and HTTPS ports its `tls`
    // rules first, as istiod puts their filter chains before the `tcp` rules' ones.
    let mut tcp_routes = BTreeMap::new();
    for (host, (tls, tcp)) in &tcp_by_host {
        let Some(entry) = registry.get(host) else {
            continue;
        };
        for port in entry.service.ports.iter().filter(|p| !p.protocol.is_http()) {
            let mut routes = Vec::new();
            if port.protocol.is_tls() {
                routes = tcp_routes::bind(tls, port.number, registry);
            }
            routes.extend(tcp_routes::bind(tcp, port.number, registry));
            if !routes.is_empty() {
                tcp_routes.insert(ClusterName::outbound(port.number, None, host), routes);
            }
        }
    }

    let mut virtual_hosts = Vec::new();
    for (host, entry) in &registry.entries {
        let http_ports: Vec<u16> = entry
            .service
            .ports
            .iter()
            .filter(|p| p.protocol.is_http())
            .map(|p| p.number)
            .collect();
        let bare_port = http_ports
            .iter()
            .copied()
            .find(|p| *p == 80)
            .or(http_ports.first().copied());
        for port in &http_ports {
            let routes = match by_host.get(host) {
                Some((_, templates)) => bind(templates, Some(*port), registry),
                None => vec![default_route(host, *port)],
            };
            virtual_hosts.push(VirtualHost {
                name: format!("{host}:{port}"),
                domains: domains(host, Some(*port), bare_port == Some(*port), workload),
                routes,
            });
        }
    }
    for (host, (_, templates)) in &by_host {
        if registry.get(host).is_none() {
            virtual_hosts.push(VirtualHost {
                name: host.clone(),
                domains: domains(host, None, true, workload),
                routes: bind(templates, None, registry),
            });
        }
    }
    (RouteTable::new(virtual_hosts), tcp_routes)
}

/// The annotation that turns hedging on for every forwarding rule of a VirtualService: the
/// delay after which a second attempt goes out when the first has not answered.
pub(crate) const HEDGE_DELAY_ANNOTATION: &str = "hedging.mesh.io/delay";
/// The annotation bounding the attempts of a hedged request (default 2).
pub(crate) const HEDGE_MAX_ATTEMPTS_ANNOTATION: &str = "hedging.mesh.io/max-attempts";

fn hedge_policy(annotations: &BTreeMap<String, String>, at: &mut At<'_>) -> Option<HedgePolicy> {
    let delay_field = format!("metadata.annotations.{HEDGE_DELAY_ANNOTATION}");
    let max_field = format!("metadata.annotations.{HEDGE_MAX_ATTEMPTS_ANNOTATION}");
    let delay = annotations.get(HEDGE_DELAY_ANNOTATION);
    let max = annotations.get(HEDGE_MAX_ATTEMPTS_ANNOTATION);
    if delay.is_none() {
        if max.is_some() {
            at.error(&max_field, format!("needs {HEDGE_DELAY_ANNOTATION}"));
        }
        return None;
    }
    let delay = at.check(&delay_field, values::duration(delay?, false))?;
    let max_attempts = match max {
        None => 2,
        Some(m) => at.check(
            &max_field,
            m.parse::<u32>()
                .ok()
                .filter(|n| (2..=10).contains(n))
                .ok_or_else(|| format!("{m:?} is not a number of attempts in 2..=10")),
        )?,
    };
    Some(HedgePolicy {
        delay,
        max_attempts,
    })
}

/// The annotation setting a local rate limit on every rule of a VirtualService, as requests
/// per second (a token bucket refilled every second).
pub(crate) const RATE_LIMIT_ANNOTATION: &str = "ratelimit.mesh.io/requests-per-second";
/// The annotation setting the bucket size (the largest burst); default: the rate.
pub(crate) const RATE_LIMIT_BURST_ANNOTATION: &str = "ratelimit.mesh.io/burst";

fn rate_limit(annotations: &BTreeMap<String, String>, at: &mut At<'_>) -> Option<LocalRateLimit> {
    let number = |key: &str, at: &mut At<'_>| -> Option<Option<u32>> {
        match annotations.get(key) {
            None => Some(None),
            Some(v) => at.check(
                &format!("metadata.annotations.{key}"),
                v.parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(Some)
                    .ok_or_else(|| format!("{v:?} is not a positive whole number")),
            ),
        }
    };
    let rate = number(RATE_LIMIT_ANNOTATION, at)?;
    let burst = number(RATE_LIMIT_BURST_ANNOTATION, at)?;
    match (rate, burst) {
        (None, None) => None,
        (None, Some(_)) => {
            at.error(
                &format!("metadata.annotations.{RATE_LIMIT_BURST_ANNOTATION}"),
                format!("needs {RATE_LIMIT_ANNOTATION}"),
            );
            None
        }
        (Some(rate), burst) => Some(LocalRateLimit {
            max_tokens: burst.unwrap_or(rate),
            tokens_per_fill: rate,
            fill_interval: Duration::from_secs(1),
        }),
    }
}

/// The names a client may use for `host`: the FQDN, `name.ns.svc`, `name.ns`, and `name` from
/// the same namespace; each with `:port`, and bare on the service's default HTTP port.
fn domains(host: &str, port: Option<u16>, bare: bool, workload: &Workload) -> Vec<String> {
    let mut names = vec![host.to_owned()];
    if let Some(short) = host.strip_suffix(&format!(".svc.{}", workload.cluster_domain)) {
        names.push(format!("{short}.svc"));
        names.push(short.to_owned());
        if let Some((name, ns)) = short.split_once('.')
            && ns == workload.namespace
        {
            names.push(name.to_owned());
        }
    }
    let mut domains = Vec::new();
    for name in names {
        match port {
            Some(port) => domains.push(format!("{name}:{port}")),
            None if !name.contains('*') => domains.push(format!("{name}:80")),
            None => {}
        }
        if bare {
            domains.push(name);
        }
    }
    domains
}

fn default_route(host: &str, port: u16) -> Route {
    Route {
        name: "default".to_owned(),
        matches: Vec::new(),
        action: RouteAction::Forward(Forward {
            destinations: vec![WeightedCluster {
                cluster: ClusterName::outbound(port, None, host),
                weight: 100,
                request_headers: HeaderOps::default(),
                response_headers: HeaderOps::default(),
            }],
            rewrite: None,
        }),
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
        fault: None,
        mirrors: Vec::new(),
        retry: Some(RetryPolicy::istio_default()),
        timeout: None,
        hedge: None,
        rate_limit: None,
        cors: None,
    }
}

/// The port of destination `d` routed from `vhost_port`: its own, else its service's only
/// port, else the routed port when its service has it, else its service's first.
pub(super) fn dest_port(d: &DestRef, vhost_port: Option<u16>, registry: &Registry) -> u16 {
    let ports = registry.get(&d.host).map(|e| &e.service.ports);
    d.port
        .or_else(|| ports.filter(|p| p.len() == 1).map(|p| p[0].number))
        .or_else(|| vhost_port.filter(|v| ports.is_some_and(|p| p.iter().any(|q| q.number == *v))))
        .or_else(|| ports.and_then(|p| p.first()).map(|p| p.number))
        .unwrap_or(80)
}

/// Binds templates to the virtual host's port: drops matches for other ports and names each
/// destination's cluster.
fn bind(templates: &[Template], vhost_port: Option<u16>, registry: &Registry) -> Vec<Route> {
    let port_of = |d: &DestRef| dest_port(d, vhost_port, registry);
    let mut routes = Vec::new();
    for t in templates {
        let mut route = t.route.clone();
        if !route.matches.is_empty() {
            route
                .matches
                .retain(|m| m.port.is_none() || vhost_port.is_none() || m.port == vhost_port);
            if route.matches.is_empty() {
                continue;
            }
        }
        if let Some((dests, rewrite)) = &t.forward {
            route.action = RouteAction::Forward(Forward {
                destinations: dests
                    .iter()
                    .map(|w| WeightedCluster {
                        cluster: ClusterName::outbound(
                            port_of(&w.dest),
                            w.dest.subset.as_deref(),
                            &w.dest.host,
                        ),
                        weight: w.weight,
                        request_headers: w.request_headers.clone(),
                        response_headers: w.response_headers.clone(),
                    })
                    .collect(),
                rewrite: rewrite.clone(),
            });
        }
        route.mirrors = t
            .mirrors
            .iter()
            .map(|(d, percentage)| Mirror {
                cluster: ClusterName::outbound(port_of(d), d.subset.as_deref(), &d.host),
                host: d.host.clone(),
                percentage: *percentage,
            })
            .collect();
        routes.push(route);
    }
    routes
}

pub(super) struct Context<'a> {
    registry: &'a Registry,
    rules: &'a DestinationRules,
    namespace: &'a str,
    domain: &'a str,
    vs_hosts: &'a [String],
}

impl Context<'_> {
    /// Converts one `http` rule; `None` when it cannot be used (its errors are recorded).
    fn template(
        &self,
        r: &api::HttpRoute,
        field: &str,
        vs_name: &str,
        index: usize,
        at: &mut At<'_>,
    ) -> Option<Template> {
        let mut ok = true;
        let mut matches = Vec::new();
        for (i, m) in r.matches.iter().enumerate() {
            match route_match(m, &format!("{field}.match[{i}]"), at) {
                Some(Some(m)) => matches.push(m),
                Some(None) => {} // For gateways only.
                None => ok = false,
            }
        }
        if !r.matches.is_empty() && matches.is_empty() && ok {
            return None; // Every match names gateways: not a sidecar rule.
        }
        let actions = [
            !r.route.is_empty(),
            r.redirect.is_some(),
            r.direct_response.is_some(),
            r.delegate.is_some(),
        ]
        .iter()
        .filter(|a| **a)
        .count();
        if actions != 1 {
            at.error(
                field,
                "set exactly one of route, redirect, directResponse, delegate",
            );
            return None;
        }
        if r.delegate.is_some() {
            at.warn(
                &format!("{field}.delegate"),
                "delegate VirtualServices are not supported by this proxy; the rule is ignored",
            );
            return None;
        }
        let mut forward = None;
        let mut action = RouteAction::Forward(Forward {
            destinations: Vec::new(),
            rewrite: None,
        });
        if !r.route.is_empty() {
            let rewrite = r.rewrite.as_ref().and_then(|rw| {
                let rewrite = rewrite(rw, &format!("{field}.rewrite"), at);
                ok &= rewrite.is_some();
                rewrite
            });
            match self.destinations(&r.route, &format!("{field}.route"), at) {
                Some(dests) => forward = Some((dests, rewrite)),
                None => ok = false,
            }
        } else if r.rewrite.is_some() {
            at.error(&format!("{field}.rewrite"), "rewrite needs a route");
            ok = false;
        }
        if let Some(redirect) = &r.redirect {
            match self::redirect(redirect, &format!("{field}.redirect"), at) {
                Some(redirect) => action = RouteAction::Redirect(redirect),
                None => ok = false,
            }
        }
        if let Some(direct) = &r.direct_response {
            match direct_response(direct, &format!("{field}.directResponse"), at) {
                Some(direct) => action = RouteAction::DirectResponse(direct),
                None => ok = false,
            }
        }
        let (request_headers, response_headers) =
            header_ops(r.headers.as_ref(), &format!("{field}.headers"), at)?;
        let timeout = match &r.timeout {
            Some(t) => at.check(&format!("{field}.timeout"), values::duration(t, true))?,
            None => Duration::ZERO,
        };
        let retry = match &r.retries {
            Some(retries) => retry(retries, &format!("{field}.retries"), at)?,
            None => Some(RetryPolicy::istio_default()),
        };
        let fault = match &r.fault {
            Some(f) => Some(fault(f, &format!("{field}.fault"), at)?),
            None => None,
        };
        let cors = match &r.cors_policy {
            None => None,
            Some(c) => {
                let cfield = format!("{field}.corsPolicy");
                if r.route.is_empty() {
                    // Envoy's CORS filter reads the policy of forwarding routes only.
                    at.warn(
                        &cfield,
                        "corsPolicy has no effect on a redirect or directResponse rule",
                    );
                }
                let policy = cors_policy(c, &cfield, at);
                ok &= policy.is_some();
                policy.map(Box::new)
            }
        };
        let mut mirrors = Vec::new();
        if let Some(mirror) = &r.mirror {
            let percentage = match (&r.mirror_percentage, r.mirror_percent) {
                (Some(p), _) => at.check(
                    &format!("{field}.mirrorPercentage.value"),
                    values::percent(p),
                ),
                (None, Some(p)) => at.check(
                    &format!("{field}.mirrorPercent"),
                    values::int_percent(i64::from(p)),
                ),
                (None, None) => Some(Percentage::ALL),
            };
            let dest = self.destination(mirror, &format!("{field}.mirror"), at);
            match (dest, percentage) {
                (Some(d), Some(p)) => mirrors.push((d, p)),
                _ => ok = false,
            }
        }
        for (i, m) in r.mirrors.iter().enumerate() {
            let mfield = format!("{field}.mirrors[{i}]");
            let percentage = match &m.percentage {
                Some(p) => at.check(&format!("{mfield}.percentage.value"), values::percent(p)),
                None => Some(Percentage::ALL),
            };
            let dest = self.destination(&m.destination, &format!("{mfield}.destination"), at);
            match (dest, percentage) {
                (Some(d), Some(p)) => mirrors.push((d, p)),
                _ => ok = false,
            }
        }
        if !ok {
            return None;
        }
        Some(Template {
            route: Route {
                name: r
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("{vs_name}.{index}")),
                matches,
                action,
                request_headers,
                response_headers,
                fault,
                mirrors: Vec::new(),
                retry,
                timeout: (!timeout.is_zero()).then_some(timeout),
                hedge: None,
                rate_limit: None,
                cors,
            },
            forward,
            mirrors,
        })
    }

    pub(super) fn destinations(
        &self,
        route: &[api::HttpRouteDestination],
        field: &str,
        at: &mut At<'_>,
    ) -> Option<Vec<WeightedRef>> {
        let mut ok = true;
        let mut out = Vec::new();
        let mut sum: u64 = 0;
        for (i, d) in route.iter().enumerate() {
            let dfield = format!("{field}[{i}]");
            // Weights are relative (weight / total), as Istio has them: only a negative one
            // is wrong.
            let weight = match d.weight {
                None => 0,
                Some(w) => match u32::try_from(w) {
                    Ok(w) => w,
                    Err(_) => {
                        let reason = if w < 0 {
                            format!("weight {w} is negative")
                        } else {
                            format!("weight {w} is above {}", u32::MAX)
                        };
                        at.error(&format!("{dfield}.weight"), reason);
                        ok = false;
                        0
                    }
                },
            };
            sum += u64::from(weight);
            let dest = self.destination(&d.destination, &format!("{dfield}.destination"), at);
            let headers = header_ops(d.headers.as_ref(), &format!("{dfield}.headers"), at);
            match (dest, headers) {
                (Some(dest), Some((request_headers, response_headers))) => out.push(WeightedRef {
                    dest,
                    weight,
                    request_headers,
                    response_headers,
                }),
                _ => ok = false,
            }
        }
        if !ok {
            return None;
        }
        if out.len() == 1 {
            // The only destination takes all traffic whatever its weight.
            out[0].weight = 100;
        } else if sum == 0 {
            at.error(
                field,
                "weights sum to 0: with several destinations at least one weight must be positive",
            );
            return None;
        } else if sum > u64::from(u32::MAX) {
            at.error(field, format!("weights sum to {sum}, above {}", u32::MAX));
            return None;
        }
        Some(out)
    }

    fn destination(&self, d: &api::Destination, field: &str, at: &mut At<'_>) -> Option<DestRef> {
        let host = qualify(&d.host, self.namespace, self.domain);
        if d.host.is_empty() {
            at.error(&format!("{field}.host"), "host is required");
            return None;
        }
        let Some(entry) = self.registry.get(&host) else {
            at.error(
                &format!("{field}.host"),
                format!(
                    "host {host:?} is not in the service registry (no ServiceEntry defines it)"
                ),
            );
            return None;
        };
        let port = match &d.port {
            Some(p) => {
                let port = at.check(&format!("{field}.port.number"), values::port(p.number))?;
                if entry.service.port(port).is_none() {
                    at.error(
                        &format!("{field}.port.number"),
                        format!("host {host:?} has no port {port}"),
                    );
                    return None;
                }
                Some(port)
            }
            None => {
                if entry.service.ports.len() > 1 && !self.vs_hosts.contains(&host) {
                    let ports: Vec<u16> = entry.service.ports.iter().map(|p| p.number).collect();
                    at.error(
                        &format!("{field}.port"),
                        format!("host {host:?} has several ports {ports:?}; choose one"),
                    );
                    return None;
                }
                None
            }
        };
        if let Some(subset) = &d.subset {
            let defined = self
                .rules
                .by_host
                .get(&host)
                .is_some_and(|r| r.subsets.contains_key(subset));
            if !defined {
                at.error(
                    &format!("{field}.subset"),
                    format!(
                        "subset {subset:?} is not defined by any DestinationRule for host {host:?}"
                    ),
                );
                return None;
            }
        }
        Some(DestRef {
            host,
            subset: d.subset.clone(),
            port,
        })
    }
}

/// `Some(None)` when the match only applies to gateways.
fn route_match(
    m: &api::HttpMatchRequest,
    field: &str,
    at: &mut At<'_>,
) -> Option<Option<RouteMatch>> {
    let mut ok = true;
    let mut single =
        |name: &str, sm: &Option<api::StringMatch>, at: &mut At<'_>| -> Option<StringMatch> {
            let sm = sm.as_ref()?;
            match values::string_match(sm) {
                Ok(Some(m)) => Some(m),
                Ok(None) => {
                    at.error(
                        &format!("{field}.{name}"),
                        "set one of exact, prefix, regex",
                    );
                    ok = false;
                    None
                }
                Err((sub, message)) => {
                    at.error(&format!("{field}.{name}{sub}"), message);
                    ok = false;
                    None
                }
            }
        };
    let uri = single("uri", &m.uri, at);
    let scheme = single("scheme", &m.scheme, at);
    let method = single("method", &m.method, at);
    let authority = single("authority", &m.authority, at);
    let mut keyed = |name: &str, map: &BTreeMap<String, api::StringMatch>, at: &mut At<'_>| {
        let mut out = Vec::new();
        for (key, sm) in map {
            let kfield = format!("{field}.{name}.{key}");
            let key = if name == "queryParams" {
                Ok(key.clone())
            } else {
                values::header_name(key)
            };
            match (key, values::string_match(sm)) {
                (Ok(key), Ok(m)) => out.push((key, m)),
                (Err(message), _) => {
                    at.error(&kfield, message);
                    ok = false;
                }
                (_, Err((sub, message))) => {
                    at.error(&format!("{kfield}{sub}"), message);
                    ok = false;
                }
            }
        }
        out
    };
    let headers = keyed("headers", &m.headers, at);
    let without_headers = keyed("withoutHeaders", &m.without_headers, at);
    let query_params = keyed("queryParams", &m.query_params, at);
    let port = m
        .port
        .and_then(|p| at.check(&format!("{field}.port"), values::port(p)));
    if m.port.is_some() && port.is_none() {
        ok = false;
    }
    if !ok {
        return None;
    }
    if !m.gateways.is_empty() && !m.gateways.iter().any(|g| g == "mesh") {
        return Some(None);
    }
    Some(Some(RouteMatch {
        name: m.name.clone(),
        uri,
        scheme,
        method,
        authority,
        headers,
        without_headers,
        query_params,
        port,
        ignore_uri_case: m.ignore_uri_case,
        source_labels: m.source_labels.clone(),
        source_namespace: m.source_namespace.clone(),
    }))
}

/// A VirtualService rule's `corsPolicy`, as istiod translates it (`TranslateCORSPolicy`) and
/// validates it (`validateCORSPolicy` in istio's `pkg/config/validation`): methods are HTTP
/// methods or `*`, header names tokens or `*`, `maxAge` whole seconds; every error is reported
/// before `None` is returned.
fn cors_policy(c: &api::CorsPolicy, field: &str, at: &mut At<'_>) -> Option<CorsPolicy> {
    let mut ok = true;
    if !c.allow_origins.is_empty() && !c.allow_origin.is_empty() {
        at.error(
            field,
            "set only one of allowOrigins and the deprecated allowOrigin",
        );
        ok = false;
    }
    let mut allow_origins = Vec::new();
    for (i, m) in c.allow_origins.iter().enumerate() {
        let ofield = format!("{field}.allowOrigins[{i}]");
        match values::string_match(m) {
            Ok(Some(m)) => allow_origins.push(m),
            Ok(None) => {
                at.error(&ofield, "set one of exact, prefix, regex");
                ok = false;
            }
            Err((sub, message)) => {
                at.error(&format!("{ofield}{sub}"), message);
                ok = false;
            }
        }
    }
    // The deprecated form lists exact origins (istiod's `StringToExactMatch`).
    allow_origins.extend(c.allow_origin.iter().cloned().map(StringMatch::Exact));
    let mut joined = |list: &[String], name: &str, check: fn(&str) -> Result<(), String>| {
        for (i, item) in list.iter().enumerate() {
            if let Err(message) = check(item) {
                at.error(&format!("{field}.{name}[{i}]"), message);
                ok = false;
            }
        }
        list.join(",")
    };
    let allow_methods = joined(&c.allow_methods, "allowMethods", cors_method);
    let allow_headers = joined(&c.allow_headers, "allowHeaders", cors_header_name);
    let expose_headers = joined(&c.expose_headers, "exposeHeaders", cors_header_name);
    let max_age = match &c.max_age {
        None => None,
        Some(text) => {
            let seconds = values::duration(text, false).and_then(|d| {
                if d.subsec_nanos() == 0 {
                    Ok(d.as_secs())
                } else {
                    Err(format!(
                        "maxAge {text:?} must be whole seconds (access-control-max-age counts seconds)"
                    ))
                }
            });
            let seconds = at.check(&format!("{field}.maxAge"), seconds);
            ok &= seconds.is_some();
            seconds
        }
    };
    let forward_unmatched_preflights = match c.unmatched_preflights.as_deref() {
        None | Some("UNSPECIFIED" | "FORWARD") => true,
        Some("IGNORE") => false,
        Some(other) => {
            at.error(
                &format!("{field}.unmatchedPreflights"),
                format!("unknown value {other:?}: expected FORWARD or IGNORE"),
            );
            ok = false;
            true
        }
    };
    ok.then(|| CorsPolicy {
        allow_origins,
        allow_methods,
        allow_headers,
        expose_headers,
        max_age,
        allow_credentials: c.allow_credentials.unwrap_or(false),
        forward_unmatched_preflights,
    })
}

/// A method in `allowMethods`: one istio's validation knows, or `*`.
fn cors_method(method: &str) -> Result<(), String> {
    const METHODS: [&str; 10] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "*",
    ];
    if METHODS.contains(&method) {
        Ok(())
    } else {
        Err(format!("{method:?} is not a supported HTTP method"))
    }
}

/// A header name in `allowHeaders` or `exposeHeaders`: a token of any case, or `*`.
fn cors_header_name(name: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !name.is_empty() && name.bytes().all(token) {
        Ok(())
    } else {
        Err(format!("invalid header name {name:?}"))
    }
}

fn header_ops(
    headers: Option<&api::Headers>,
    field: &str,
    at: &mut At<'_>,
) -> Option<(HeaderOps, HeaderOps)> {
    let Some(headers) = headers else {
        return Some(Default::default());
    };
    let mut ok = true;
    let mut ops = |o: &Option<api::HeaderOperations>, name: &str, at: &mut At<'_>| {
        let mut out = HeaderOps::default();
        let Some(o) = o else { return out };
        let ofield = format!("{field}.{name}");
        let mut pairs = |map: &BTreeMap<String, String>, kind: &str, at: &mut At<'_>| {
            let mut v = Vec::new();
            for (k, val) in map {
                let kfield = format!("{ofield}.{kind}.{k}");
                match (values::header_name(k), values::header_value(val)) {
                    (Ok(k), Ok(val)) => v.push((k, val)),
                    (Err(m), _) | (_, Err(m)) => {
                        at.error(&kfield, m);
                        ok = false;
                    }
                }
            }
            v
        };
        out.set = pairs(&o.set, "set", at);
        out.add = pairs(&o.add, "add", at);
        for (i, k) in o.remove.iter().enumerate() {
            match values::header_name(k) {
                Ok(k) => out.remove.push(k),
                Err(m) => {
                    at.error(&format!("{ofield}.remove[{i}]"), m);
                    ok = false;
                }
            }
        }
        out
    };
    let request = ops(&headers.request, "request", at);
    let response = ops(&headers.response, "response", at);
    ok.then_some((request, response))
}

fn rewrite(rw: &api::HttpRewrite, field: &str, at: &mut At<'_>) -> Option<Rewrite> {
    if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
        at.error(field, "set only one of uri, uriRegexRewrite");
        return None;
    }
    let uri_regex = match &rw.uri_regex_rewrite {
        Some(r) => Some((
            at.check(
                &format!("{field}.uriRegexRewrite.match"),
                values::rewrite_pattern(&r.pattern),
            )?,
            r.rewrite.clone(),
        )),
        None => None,
    };
    if let Some(authority) = &rw.authority {
        at.check(
            &format!("{field}.authority"),
            values::header_value(authority),
        )?;
    }
    Some(Rewrite {
        uri_prefix: rw.uri.clone(),
        uri_regex,
        authority: rw.authority.clone(),
    })
}

fn redirect(r: &api::HttpRedirect, field: &str, at: &mut At<'_>) -> Option<Redirect> {
    let code = match r.redirect_code {
        None | Some(0) => 301,
        Some(c @ (301 | 302 | 303 | 307 | 308)) => c as u16,
        Some(c) => {
            at.error(
                &format!("{field}.redirectCode"),
                format!("{c} is not a redirect code (301, 302, 303, 307, 308)"),
            );
            return None;
        }
    };
    let port = match (r.port, r.derive_port.as_deref()) {
        (Some(_), Some(_)) => {
            at.error(field, "set only one of port, derivePort");
            return None;
        }
        (Some(p), None) => Some(RedirectPort::Port(
            at.check(&format!("{field}.port"), values::port(p))?,
        )),
        (None, Some("FROM_PROTOCOL_DEFAULT")) => Some(RedirectPort::FromProtocolDefault),
        (None, Some("FROM_REQUEST_PORT")) => Some(RedirectPort::FromRequestPort),
        (None, Some(other)) => {
            at.error(
                &format!("{field}.derivePort"),
                format!(
                    "unknown value {other:?}: expected FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT"
                ),
            );
            return None;
        }
        (None, None) => None,
    };
    if let Some(scheme) = &r.scheme
        && !matches!(scheme.as_str(), "http" | "https")
    {
        at.error(
            &format!("{field}.scheme"),
            format!("scheme {scheme:?} must be http or https"),
        );
        return None;
    }
    Some(Redirect {
        uri: r.uri.clone(),
        authority: r.authority.clone(),
        scheme: r.scheme.clone(),
        port,
        code,
    })
}

fn direct_response(
    d: &api::HttpDirectResponse,
    field: &str,
    at: &mut At<'_>,
) -> Option<DirectResponse> {
    let status = at.check(
        &format!("{field}.status"),
        values::status(i64::from(d.status)),
    )?;
    let body = match &d.body {
        None => None,
        Some(api::HttpBody {
            string: Some(_),
            bytes: Some(_),
        }) => {
            at.error(&format!("{field}.body"), "set only one of string, bytes");
            return None;
        }
        Some(api::HttpBody {
            string: Some(s), ..
        }) => Some(s.as_bytes().to_vec()),
        Some(api::HttpBody { bytes: Some(b), .. }) => {
            Some(at.check(&format!("{field}.body.bytes"), values::base64(b))?)
        }
        Some(_) => None,
    };
    Some(DirectResponse { status, body })
}

/// `Some(None)` disables retries: `attempts` 0 or unset (proto3 reads both as 0), as Istio's
/// `ConvertPolicy` has it.
fn retry(r: &api::HttpRetry, field: &str, at: &mut At<'_>) -> Option<Option<RetryPolicy>> {
    let mut policy = RetryPolicy::istio_default();
    let attempts = r.attempts.unwrap_or(0);
    if attempts == 0 {
        // Istio's validation rejects these beside disabled retries: they would do nothing.
        let set: Vec<&str> = [
            (r.per_try_timeout.is_some(), "perTryTimeout"),
            (
                r.retry_on.as_ref().is_some_and(|o| !o.is_empty()),
                "retryOn",
            ),
            (r.retry_remote_localities.is_some(), "retryRemoteLocalities"),
        ]
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, name)| *name)
        .collect();
        if !set.is_empty() {
            at.error(
                &format!("{field}.attempts"),
                format!(
                    "attempts is 0 or unset, which disables retries, yet {} {} set; set attempts",
                    set.join(", "),
                    if set.len() == 1 { "is" } else { "are" }
                ),
            );
            return None;
        }
        return Some(None);
    }
    policy.attempts = match u32::try_from(attempts) {
        Ok(a) => a,
        Err(_) => {
            at.error(
                &format!("{field}.attempts"),
                format!("attempts {attempts} must be between 0 and {}", u32::MAX),
            );
            return None;
        }
    };
    if let Some(t) = &r.per_try_timeout {
        policy.per_try_timeout = Some(at.check(
            &format!("{field}.perTryTimeout"),
            values::duration(t, false),
        )?);
    }
    if let Some(on) = &r.retry_on {
        policy.retry_on = at.check(&format!("{field}.retryOn"), RetryOn::parse(on))?;
    }
    if let Some(b) = &r.backoff {
        let base = at.check(&format!("{field}.backoff"), values::duration(b, false))?;
        policy.backoff_base = base;
        policy.backoff_max = base * 10;
    }
    policy.retry_remote_localities = r.retry_remote_localities.unwrap_or(false);
    policy.ignore_previous_hosts = r.retry_ignore_previous_hosts.unwrap_or(true);
    Some(Some(policy))
}

fn fault(f: &api::HttpFaultInjection, field: &str, at: &mut At<'_>) -> Option<Fault> {
    let mut out = Fault::default();
    if f.delay.is_none() && f.abort.is_none() {
        at.error(field, "set delay, abort or both");
        return None;
    }
    let percentage = |p: &Option<api::Percent>,
                      legacy: Option<i64>,
                      pfield: &str,
                      at: &mut At<'_>| match (p, legacy) {
        (Some(p), _) => at.check(&format!("{pfield}.percentage.value"), values::percent(p)),
        (None, Some(p)) => at.check(&format!("{pfield}.percent"), values::int_percent(p)),
        (None, None) => Some(Percentage::ALL),
    };
    if let Some(d) = &f.delay {
        let dfield = format!("{field}.delay");
        if d.exponential_delay.is_some() {
            at.error(
                &format!("{dfield}.exponentialDelay"),
                "exponentialDelay is not supported; use fixedDelay",
            );
            return None;
        }
        let Some(fixed) = &d.fixed_delay else {
            at.error(&format!("{dfield}.fixedDelay"), "fixedDelay is required");
            return None;
        };
        let delay = at.check(
            &format!("{dfield}.fixedDelay"),
            values::duration(fixed, false),
        )?;
        let percentage = percentage(&d.percentage, d.percent, &dfield, at)?;
        out.delay = Some(FaultDelay { delay, percentage });
    }
    if let Some(a) = &f.abort {
        let afield = format!("{field}.abort");
        let set = [
            a.http_status.is_some(),
            a.grpc_status.is_some(),
            a.http2_error.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if set != 1 {
            at.error(
                &afield,
                "set exactly one of httpStatus, grpcStatus, http2Error",
            );
            return None;
        }
        let error = if let Some(s) = a.http_status {
            AbortError::Http(at.check(&format!("{afield}.httpStatus"), values::status(s))?)
        } else if let Some(g) = &a.grpc_status {
            AbortError::Grpc(at.check(&format!("{afield}.grpcStatus"), grpc_code(g))?)
        } else {
            AbortError::Http2Error
        };
        let percentage = percentage(&a.percentage, a.percent, &afield, at)?;
        out.abort = Some(FaultAbort { error, percentage });
    }
    Some(out)
}

fn grpc_code(name: &str) -> Result<u32, String> {
    const CODES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    CODES
        .iter()
        .position(|c| *c == name)
        .map(|p| p as u32)
        .ok_or_else(|| format!("unknown gRPC status {name:?}"))
}
