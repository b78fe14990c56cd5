//! AuthorizationPolicy and PeerAuthentication: checked, and narrowed to the ones that apply to
//! this workload (the root namespace, `istio-system` unless
//! [`MeshOptions::root_namespace`](super::MeshOptions) says otherwise, for mesh-wide; then its
//! namespace, then its selector).

use super::{At, Findings};
use crate::istio::{Resource, Spec, api};
use crate::model::{
    AuthorizationPolicy, AuthzAction, AuthzRule, ClaimToHeader, ConditionMatch, Jwks, JwksSource,
    JwtHeader, JwtRule, MtlsMode, OperationMatch, PeerAuthentication, RequestAuthentication,
    SourceMatch, ValueMatch, Workload, claim_path, selects,
};

/// Whether a policy in `res`'s namespace with `selector` applies to `workload`: policies in the
/// root namespace `root` without a selector apply mesh-wide (a PeerAuthentication there with
/// a selector is ignored).
fn applies(
    res: &Resource,
    selector: Option<&api::SecuritySelector>,
    workload: &Workload,
    root: &str,
) -> bool {
    let in_scope = res.namespace == workload.namespace || res.namespace == root;
    in_scope && selector.is_none_or(|s| selects(&s.match_labels, &workload.labels))
}

pub(super) fn authorization(
    resources: &[&Resource],
    workload: &Workload,
    root: &str,
    findings: &mut Findings,
) -> Vec<AuthorizationPolicy> {
    let mut out = Vec::new();
    for res in resources {
        let Spec::AuthorizationPolicy(policy) = &res.spec else {
            continue;
        };
        let mut at = findings.at(res);
        let Some(converted) = convert(policy, res, &mut at) else {
            continue;
        };
        if policy.target_ref.is_some() || !policy.target_refs.is_empty() {
            at.warn(
                "spec.targetRef",
                "targetRef policies apply to gateways and waypoints, not to this proxy; ignored",
            );
            continue;
        }
        if applies(res, policy.selector.as_ref(), workload, root) {
            out.push(converted);
        }
    }
    out
}

fn convert(
    p: &api::AuthorizationPolicy,
    res: &Resource,
    at: &mut At<'_>,
) -> Option<AuthorizationPolicy> {
    let action = match p.action.as_deref() {
        None | Some("ALLOW") => AuthzAction::Allow,
        Some("DENY") => AuthzAction::Deny,
        Some("AUDIT") => AuthzAction::Audit,
        Some("CUSTOM") => {
            // External authorization (ext_authz) is not implemented by this proxy; accepting
            // the policy would silently skip a check the operator asked for.
            at.error(
                "spec.action",
                "action CUSTOM (external authorization) is not supported by this proxy",
            );
            return None;
        }
        Some(other) => {
            at.error(
                "spec.action",
                format!("unknown action {other:?}: expected ALLOW, DENY, AUDIT or CUSTOM"),
            );
            return None;
        }
    };
    if p.provider.is_some() && !matches!(action, AuthzAction::Custom(_)) {
        at.error(
            "spec.provider",
            "provider is only allowed with action CUSTOM",
        );
        return None;
    }
    let mut ok = true;
    let mut rules = Vec::new();
    for (i, rule) in p.rules.iter().flatten().enumerate() {
        let field = format!("spec.rules[{i}]");
        let mut from = Vec::new();
        for (j, f) in rule.from.iter().enumerate() {
            let s = &f.source;
            let sfield = format!("{field}.from[{j}].source");
            for (name, values) in [
                ("ipBlocks", &s.ip_blocks),
                ("notIpBlocks", &s.not_ip_blocks),
                ("remoteIpBlocks", &s.remote_ip_blocks),
                ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
            ] {
                for (k, v) in values.iter().enumerate() {
                    if v.parse::<ipnet::IpNet>().is_err() && v.parse::<std::net::IpAddr>().is_err()
                    {
                        at.error(
                            &format!("{sfield}.{name}[{k}]"),
                            format!("{v:?} is not an IP address or CIDR block"),
                        );
                        ok = false;
                    }
                }
            }
            let source = SourceMatch {
                principals: values(&s.principals, &s.not_principals),
                request_principals: values(&s.request_principals, &s.not_request_principals),
                namespaces: values(&s.namespaces, &s.not_namespaces),
                service_accounts: values(&s.service_accounts, &s.not_service_accounts),
                ip_blocks: values(&s.ip_blocks, &s.not_ip_blocks),
                remote_ip_blocks: values(&s.remote_ip_blocks, &s.not_remote_ip_blocks),
            };
            if source == SourceMatch::default() {
                at.error(&sfield, "a source needs at least one field");
                ok = false;
            }
            from.push(source);
        }
        let mut to = Vec::new();
        for (j, t) in rule.to.iter().enumerate() {
            let o = &t.operation;
            let ofield = format!("{field}.to[{j}].operation");
            for (name, ports) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
                for (k, port) in ports.iter().enumerate() {
                    if !port.parse::<u16>().is_ok_and(|p| p != 0) {
                        at.error(
                            &format!("{ofield}.{name}[{k}]"),
                            format!("{port:?} is not a port number"),
                        );
                        ok = false;
                    }
                }
            }
            let operation = OperationMatch {
                hosts: values(&o.hosts, &o.not_hosts),
                ports: values(&o.ports, &o.not_ports),
                methods: values(&o.methods, &o.not_methods),
                paths: values(&o.paths, &o.not_paths),
            };
            if operation == OperationMatch::default() {
                at.error(&ofield, "an operation needs at least one field");
                ok = false;
            }
            to.push(operation);
        }
        let mut when = Vec::new();
        for (j, c) in rule.when.iter().enumerate() {
            if c.key.starts_with("experimental.") {
                at.error(
                    &format!("{field}.when[{j}].key"),
                    format!(
                        "condition key {:?} is not supported by this proxy (it needs a \
                         protocol filter)",
                        c.key
                    ),
                );
                ok = false;
            } else if let Err(message) = condition_key(&c.key) {
                at.error(&format!("{field}.when[{j}].key"), message);
                ok = false;
            }
            if c.values.is_empty() && c.not_values.is_empty() {
                at.error(&format!("{field}.when[{j}]"), "set values or notValues");
                ok = false;
            }
            when.push(ConditionMatch {
                key: c.key.clone(),
                values: values(&c.values, &c.not_values),
            });
        }
        rules.push(AuthzRule { from, to, when });
    }
    let dry_run = match res.annotations.get("istio.io/dry-run").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            at.error(
                "metadata.annotations.istio.io/dry-run",
                format!("{other:?} is not \"true\" or \"false\""),
            );
            return None;
        }
    };
    ok.then(|| AuthorizationPolicy {
        name: format!("{}/{}", res.namespace, res.name),
        action,
        rules,
        dry_run,
    })
}

fn values(values: &[String], not_values: &[String]) -> ValueMatch {
    ValueMatch {
        values: values.to_vec(),
        not_values: not_values.to_vec(),
    }
}

/// The `when` keys Istio defines for HTTP traffic.
fn condition_key(key: &str) -> Result<(), String> {
    const KEYS: &[&str] = &[
        "source.ip",
        "remote.ip",
        "source.namespace",
        "source.principal",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "destination.ip",
        "destination.port",
        "connection.sni",
        "experimental.envoy.filters.network.mysql_proxy[db.table]",
    ];
    let bracketed = |prefix: &str| {
        key.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('['))
            .is_some_and(|rest| rest.len() > 1 && rest.ends_with(']'))
    };
    if key.starts_with("request.auth.claims") {
        return match claim_path(key) {
            Some(_) => Ok(()),
            None => Err(format!(
                "{key:?} is not a claim: expected request.auth.claims[name] or, for a nested \
                 claim, request.auth.claims[outer][inner]"
            )),
        };
    }
    if KEYS.contains(&key) || bracketed("request.headers") {
        Ok(())
    } else {
        Err(format!("unknown condition key {key:?}"))
    }
}

/// One applicable PeerAuthentication: its resource, mode and port-level modes.
type Level<'r> = (&'r Resource, MtlsMode, Vec<(u16, MtlsMode)>);

pub(super) fn peer_authentication(
    resources: &[&Resource],
    workload: &Workload,
    root: &str,
    findings: &mut Findings,
) -> PeerAuthentication {
    // Mesh, namespace, workload: the most specific applicable policy wins.
    let mut levels: [Option<Level<'_>>; 3] = [None, None, None];
    for res in resources {
        let Spec::PeerAuthentication(pa) = &res.spec else {
            continue;
        };
        let mut at = findings.at(res);
        let Some(mode) = mode(pa.mtls.as_ref(), "spec.mtls.mode", &mut at) else {
            continue;
        };
        // Istio: a selector without labels selects the whole namespace, like no selector.
        let selector = pa.selector.as_ref().filter(|s| !s.match_labels.is_empty());
        let mut ports = Vec::new();
        for (port, mtls) in &pa.port_level_mtls {
            let field = format!("spec.portLevelMtls.{port}");
            if selector.is_none() {
                at.error(&field, "portLevelMtls needs a selector");
                continue;
            }
            match port.parse::<u16>() {
                Ok(p) if p != 0 => {
                    match self::mode(Some(mtls), &format!("{field}.mode"), &mut at) {
                        // UNSET inherits the workload's mode: the same as no port-level entry.
                        Some(MtlsMode::Unset) | None => {}
                        Some(m) => ports.push((p, m)),
                    }
                }
                _ => at.error(&field, format!("{port:?} is not a port number")),
            }
        }
        if selector.is_some() && res.namespace == root {
            // Istio ignores them: only mesh-wide (selector-less) policies apply from there.
            at.warn(
                "spec.selector",
                format!(
                    "a PeerAuthentication with a selector in the root namespace {root} \
                     is ignored"
                ),
            );
            continue;
        }
        if !applies(res, selector, workload, root) {
            continue;
        }
        let level = match (selector, res.namespace == root) {
            (Some(_), _) => 2,
            (None, false) => 1,
            (None, true) => 0,
        };
        if let Some((first, _, _)) = &levels[level] {
            at.warn(
                "metadata.name",
                format!(
                    "{} already applies at this level; this PeerAuthentication is ignored",
                    first.key()
                ),
            );
            continue;
        }
        levels[level] = Some((res, mode, ports));
    }
    let mut out = PeerAuthentication::default();
    for (res, mode, ports) in levels.into_iter().flatten() {
        if mode != MtlsMode::Unset {
            out.mode = mode;
        }
        out.port_modes.extend(ports);
        out.sources.push(format!("{}/{}", res.namespace, res.name));
    }
    out
}

fn mode(mtls: Option<&api::MutualTls>, field: &str, at: &mut At<'_>) -> Option<MtlsMode> {
    Some(match mtls.and_then(|m| m.mode.as_deref()) {
        None | Some("UNSET") => MtlsMode::Unset,
        Some("DISABLE") => MtlsMode::Disable,
        Some("PERMISSIVE") => MtlsMode::Permissive,
        Some("STRICT") => MtlsMode::Strict,
        Some(other) => {
            at.error(
                field,
                format!("unknown mode {other:?}: expected UNSET, DISABLE, PERMISSIVE or STRICT"),
            );
            return None;
        }
    })
}

/// The JWT rules of the RequestAuthentications that apply to `workload`, scoped as
/// AuthorizationPolicies are (istiod's `GetJwtPoliciesForWorkload` and the authorization
/// policies share `getConfigsForWorkload`: root namespace mesh-wide, then the workload's
/// namespace, each narrowed by its selector), sorted by issuer as istiod's
/// `NewPolicyApplier` sorts them.
pub(super) fn request_authentication(
    resources: &[&Resource],
    workload: &Workload,
    root: &str,
    findings: &mut Findings,
) -> RequestAuthentication {
    let mut out = RequestAuthentication::default();
    for res in resources {
        let Spec::RequestAuthentication(ra) = &res.spec else {
            continue;
        };
        let mut at = findings.at(res);
        let mut rules = Vec::with_capacity(ra.jwt_rules.len());
        let mut ok = true;
        for (i, rule) in ra.jwt_rules.iter().enumerate() {
            match jwt_rule(rule, &format!("spec.jwtRules[{i}]"), &mut at) {
                Some(r) => rules.push(r),
                None => ok = false,
            }
        }
        if !ok {
            continue;
        }
        if ra.target_ref.is_some() || !ra.target_refs.is_empty() {
            at.warn(
                "spec.targetRef",
                "targetRef policies apply to gateways and waypoints, not to this proxy; ignored",
            );
            continue;
        }
        if applies(res, ra.selector.as_ref(), workload, root) {
            out.rules.extend(rules);
            out.sources.push(format!("{}/{}", res.namespace, res.name));
        }
    }
    // Stable: rules of one issuer keep their config order.
    out.rules.sort_by(|a, b| a.issuer.cmp(&b.issuer));
    out
}

/// One `jwtRules[]` entry, checked; `None` after recording what is wrong.
fn jwt_rule(rule: &api::JwtRule, field: &str, at: &mut At<'_>) -> Option<JwtRule> {
    let mut ok = true;
    let mut fail = |at: &mut At<'_>, name: &str, message: String| {
        at.error(&format!("{field}.{name}"), message);
        ok = false;
    };
    if rule.issuer.is_empty() {
        fail(at, "issuer", "issuer is required".into());
    }
    for (i, aud) in rule.audiences.iter().enumerate() {
        if aud.is_empty() {
            fail(at, &format!("audiences[{i}]"), "empty audience".into());
        }
    }
    let keys = match (&rule.jwks, &rule.jwks_uri) {
        (Some(jwks), uri) => {
            if uri.is_some() {
                // istiod's JwtKeyResolver.BuildLocalJwks uses `jwks` when it is set.
                at.warn(
                    &format!("{field}.jwksUri"),
                    "both jwks and jwksUri are set: jwks is used, as istiod does",
                );
            }
            match Jwks::parse(jwks) {
                Ok(keys) => Some(JwksSource::Inline(keys)),
                Err(e) => {
                    let name = if e.field.is_empty() {
                        "jwks".to_owned()
                    } else {
                        format!("jwks.{}", e.field)
                    };
                    fail(at, &name, format!("invalid JWKS: {}", e.reason));
                    None
                }
            }
        }
        (None, Some(uri)) => match check_jwks_uri(uri) {
            Ok(()) => Some(JwksSource::Uri(uri.clone())),
            Err(message) => {
                fail(at, "jwksUri", message);
                None
            }
        },
        (None, None) => {
            // istiod would discover the keys from `<issuer>/.well-known/openid-configuration`.
            fail(
                at,
                "jwks",
                "set jwks (or jwksUri): this proxy does not discover keys through the \
                 issuer's OpenID configuration"
                    .into(),
            );
            None
        }
    };
    let mut from_headers = Vec::with_capacity(rule.from_headers.len());
    for (i, h) in rule.from_headers.iter().enumerate() {
        match header_name(&h.name) {
            Ok(name) => from_headers.push(JwtHeader {
                name,
                prefix: h.prefix.clone(),
            }),
            Err(m) => fail(at, &format!("fromHeaders[{i}].name"), m),
        }
    }
    for (name, list) in [
        ("fromParams", &rule.from_params),
        ("fromCookies", &rule.from_cookies),
    ] {
        for (i, v) in list.iter().enumerate() {
            if v.is_empty() {
                fail(at, &format!("{name}[{i}]"), "empty name".into());
            }
        }
    }
    let output_payload_to_header = match rule.output_payload_to_header.as_deref() {
        None | Some("") => None,
        Some(h) => match header_name(h) {
            Ok(name) => Some(name),
            Err(m) => {
                fail(at, "outputPayloadToHeader", m);
                None
            }
        },
    };
    let mut output_claim_to_headers = Vec::with_capacity(rule.output_claim_to_headers.len());
    for (i, c) in rule.output_claim_to_headers.iter().enumerate() {
        let header = match header_name(&c.header) {
            Ok(h) => h,
            Err(m) => {
                fail(at, &format!("outputClaimToHeaders[{i}].header"), m);
                continue;
            }
        };
        if c.claim.is_empty() {
            fail(
                at,
                &format!("outputClaimToHeaders[{i}].claim"),
                "empty claim".into(),
            );
            continue;
        }
        output_claim_to_headers.push(ClaimToHeader {
            header,
            claim: c.claim.clone(),
        });
    }
    let timeout = match rule.timeout.as_deref() {
        None => None,
        Some(t) => match crate::istio::parse_duration(t) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                fail(at, "timeout", "must be greater than zero".into());
                None
            }
            Err(m) => {
                fail(at, "timeout", m);
                None
            }
        },
    };
    let keys = keys?;
    ok.then(|| JwtRule {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        keys,
        from_headers,
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        output_payload_to_header,
        forward_original_token: rule.forward_original_token,
        output_claim_to_headers,
        timeout,
    })
}

/// An HTTP header name (RFC 9110 token characters), lowercased.
fn header_name(name: &str) -> Result<String, String> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() {
        Err("empty header name".into())
    } else if !name.chars().all(token) {
        Err(format!("{name:?} is not a valid header name"))
    } else {
        Ok(name.to_ascii_lowercase())
    }
}

/// A `jwksUri` the proxy can fetch: `http://` or `https://` with a host.
fn check_jwks_uri(uri: &str) -> Result<(), String> {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))
        .ok_or_else(|| format!("{uri:?} is not an http:// or https:// URI"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{uri:?} has no valid host"));
    }
    Ok(())
}
