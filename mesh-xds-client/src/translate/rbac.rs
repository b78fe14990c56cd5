//! The inbound listener's `envoy.filters.http.rbac` and `envoy.filters.http.local_ratelimit`
//! filters -> the mesh's [`AuthorizationPolicy`] list and [`LocalRateLimit`].
//!
//! istiod compiles each AuthorizationPolicy rule into one RBAC policy named
//! `ns[NS]-policy[NAME]-rule[I]` whose `permissions` are the rule's `to` operations and whose
//! `principals` are its `from` sources (each an `and_*` of `or_*` lists of one attribute), with
//! `when` conditions folded into both. This module reverses that: an RBAC policy matches when
//! any permission and any principal match, so it becomes one mesh policy (same name, the
//! filter's action) whose rules are the pairs (principal alternative, permission alternative),
//! each a `from`/`to`/`when` rule. Boolean trees that this shape cannot express (a value list
//! intersected with another on the same attribute, negations of compound matchers), CEL
//! conditions, metadata and filter-state matchers, and matchers the engine has no attribute
//! for are refused with the field and the reason, never approximated.
//!
//! `shadow_rules` become dry-run policies (the engine's shadow pass); `LOG` becomes AUDIT.

use super::{FieldError, FieldResult, duration};
use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::{
    self as pb, Permission, Policy, Principal, permission, principal,
};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as PbLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as RbacFilter;
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use mesh_core::model::{
    AuthorizationPolicy, AuthzAction, AuthzRule, ConditionMatch, LocalRateLimit, OperationMatch,
    SourceMatch, ValueMatch,
};

/// The most rules one RBAC policy may expand to (principal x permission alternatives).
const MAX_RULES: usize = 1024;

/// The policies an RBAC filter config enforces (and, from `shadow_rules`, the dry-run ones).
pub(crate) fn rbac_filter(f: &RbacFilter) -> FieldResult<Vec<AuthorizationPolicy>> {
    if f.matcher.is_some() {
        return Err(FieldError::new(
            "matcher",
            "the matcher-tree form of RBAC is not supported; use rules",
        ));
    }
    if f.shadow_matcher.is_some() {
        return Err(FieldError::new(
            "shadow_matcher",
            "the matcher-tree form of RBAC is not supported; use shadow_rules",
        ));
    }
    let mut out = Vec::new();
    if let Some(rules) = &f.rules {
        out.extend(rbac(rules, false).map_err(|e| e.within("rules"))?);
    }
    if let Some(rules) = &f.shadow_rules {
        out.extend(rbac(rules, true).map_err(|e| e.within("shadow_rules"))?);
    }
    Ok(out)
}

fn rbac(r: &pb::Rbac, dry_run: bool) -> FieldResult<Vec<AuthorizationPolicy>> {
    let action = match pb::rbac::Action::try_from(r.action) {
        Ok(pb::rbac::Action::Allow) => AuthzAction::Allow,
        Ok(pb::rbac::Action::Deny) => AuthzAction::Deny,
        Ok(pb::rbac::Action::Log) => AuthzAction::Audit,
        Err(_) => {
            return Err(FieldError::new(
                "action",
                format!("unknown action {}", r.action),
            ));
        }
    };
    if r.audit_logging_options.is_some() {
        return Err(FieldError::new(
            "audit_logging_options",
            "RBAC audit loggers are not supported",
        ));
    }
    if r.policies.is_empty() {
        // ALLOW with no policy denies everything (Istio's allow-nothing); DENY and LOG with
        // none do nothing.
        return Ok(if action == AuthzAction::Allow {
            vec![AuthorizationPolicy {
                name: "rbac/allow-nothing".to_owned(),
                action,
                rules: Vec::new(),
                dry_run,
            }]
        } else {
            Vec::new()
        });
    }
    // A map on the wire: sorted by name, so the result does not depend on decoding order.
    let mut names: Vec<&String> = r.policies.keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let rules =
                policy(&r.policies[name]).map_err(|e| e.within(format!("policies[{name}]")))?;
            Ok(AuthorizationPolicy {
                name: name.clone(),
                action: action.clone(),
                rules,
                dry_run,
            })
        })
        .collect()
}

fn policy(p: &Policy) -> FieldResult<Vec<AuthzRule>> {
    if p.condition.is_some() || p.checked_condition.is_some() || p.cel_config.is_some() {
        return Err(FieldError::new(
            "condition",
            "CEL conditions are not supported",
        ));
    }
    if p.permissions.is_empty() || p.principals.is_empty() {
        // Envoy requires both; an empty list would match nothing.
        return Err(FieldError::new(
            if p.permissions.is_empty() {
                "permissions"
            } else {
                "principals"
            },
            "must not be empty",
        ));
    }
    let mut sources = Vec::new();
    for (i, pr) in p.principals.iter().enumerate() {
        sources.extend(principal(pr).map_err(|e| e.within(format!("principals[{i}]")))?);
    }
    let mut ops = Vec::new();
    for (i, pe) in p.permissions.iter().enumerate() {
        ops.extend(permission(pe).map_err(|e| e.within(format!("permissions[{i}]")))?);
    }
    if sources.len().saturating_mul(ops.len()) > MAX_RULES {
        return Err(FieldError::new(
            "",
            format!(
                "expands to {} x {} rules, more than {MAX_RULES}",
                sources.len(),
                ops.len()
            ),
        ));
    }
    let mut rules = Vec::with_capacity(sources.len() * ops.len());
    for s in &sources {
        for o in &ops {
            let mut when = s.when.clone();
            when.extend(o.when.iter().cloned());
            rules.push(AuthzRule {
                from: if s.src == SourceMatch::default() {
                    Vec::new()
                } else {
                    vec![s.src.clone()]
                },
                to: if o.op == OperationMatch::default() {
                    Vec::new()
                } else {
                    vec![o.op.clone()]
                },
                when,
            });
        }
    }
    Ok(rules)
}

/// One alternative of a principal: a source every non-empty field of which must match, and
/// conditions.
#[derive(Clone, Debug, Default, PartialEq)]
struct Src {
    src: SourceMatch,
    when: Vec<ConditionMatch>,
}

/// One alternative of a permission.
#[derive(Clone, Debug, Default, PartialEq)]
struct Op {
    op: OperationMatch,
    when: Vec<ConditionMatch>,
}

/// Which attribute a leaf matcher tests, with its values.
#[derive(Clone, Debug, PartialEq)]
enum Leaf {
    Principals(ValueMatch),
    Namespaces(ValueMatch),
    IpBlocks(ValueMatch),
    RemoteIpBlocks(ValueMatch),
    Methods(ValueMatch),
    Hosts(ValueMatch),
    Paths(ValueMatch),
    Ports(ValueMatch),
    When(ConditionMatch),
}

/// Puts `values` into `slot`, refusing what a single value list cannot express.
fn merge_into(slot: &mut ValueMatch, values: &ValueMatch) -> FieldResult<()> {
    if !slot.values.is_empty() && !values.values.is_empty() {
        return Err(FieldError::new(
            "",
            "two value lists on one attribute joined by AND cannot be expressed",
        ));
    }
    slot.values.extend(values.values.iter().cloned());
    slot.not_values.extend(values.not_values.iter().cloned());
    Ok(())
}

fn src_leaf(s: &mut Src, leaf: &Leaf) -> FieldResult<()> {
    match leaf {
        Leaf::Principals(v) => merge_into(&mut s.src.principals, v),
        Leaf::Namespaces(v) => merge_into(&mut s.src.namespaces, v),
        Leaf::IpBlocks(v) => merge_into(&mut s.src.ip_blocks, v),
        Leaf::RemoteIpBlocks(v) => merge_into(&mut s.src.remote_ip_blocks, v),
        Leaf::When(c) => {
            s.when.push(c.clone());
            Ok(())
        }
        other => Err(FieldError::new(
            "",
            format!("{other:?} is not an attribute of a principal"),
        )),
    }
}

fn op_leaf(o: &mut Op, leaf: &Leaf) -> FieldResult<()> {
    match leaf {
        Leaf::Methods(v) => merge_into(&mut o.op.methods, v),
        Leaf::Hosts(v) => merge_into(&mut o.op.hosts, v),
        Leaf::Paths(v) => merge_into(&mut o.op.paths, v),
        Leaf::Ports(v) => merge_into(&mut o.op.ports, v),
        Leaf::When(c) => {
            o.when.push(c.clone());
            Ok(())
        }
        other => Err(FieldError::new(
            "",
            format!("{other:?} is not an attribute of a permission"),
        )),
    }
}

/// OR of leaves on one attribute as one leaf (`or_ids` of `principal_name`s -> one list).
fn or_leaves(leaves: Vec<Leaf>) -> Option<Leaf> {
    let mut it = leaves.into_iter();
    let mut acc = it.next()?;
    for leaf in it {
        acc = match (acc, leaf) {
            (Leaf::Principals(mut a), Leaf::Principals(b)) if or_able(&a, &b) => {
                a.values.extend(b.values);
                Leaf::Principals(a)
            }
            (Leaf::Namespaces(mut a), Leaf::Namespaces(b)) if or_able(&a, &b) => {
                a.values.extend(b.values);
                Leaf::Namespaces(a)
            }
            (Leaf::IpBlocks(mut a), Leaf::IpBlocks(b)) if or_able(&a, &b) => {
                a.values.extend(b.values);
                Leaf::IpBlocks(a)
            }
            (Leaf::RemoteIpBlocks(mut a), Leaf::RemoteIpBlocks(b)) if or_able(&a, &b) => {
                a.values.extend(b.values);
                Leaf::RemoteIpBlocks(a)
            }
            (Leaf::Methods(mut a), Leaf::Methods(b)) if or_able(&a, &b) => {
                a.values.extend(b.values);
                Leaf::Methods(a)
            }
            (Leaf::Hosts(mut a), Leaf::Hosts(b)) if or_able(&a, &b) => {
                a.values.extend(b.values);
                Leaf::Hosts(a)
            }
            (Leaf::Paths(mut a), Leaf::Paths(b)) if or_able(&a, &b) => {
                a.values.extend(b.values);
                Leaf::Paths(a)
            }
            (Leaf::Ports(mut a), Leaf::Ports(b)) if or_able(&a, &b) => {
                a.values.extend(b.values);
                Leaf::Ports(a)
            }
            (Leaf::When(mut a), Leaf::When(b))
                if a.key == b.key && or_able(&a.values, &b.values) =>
            {
                a.values.values.extend(b.values.values);
                Leaf::When(a)
            }
            _ => return None,
        };
    }
    Some(acc)
}

/// Two positive lists can be OR-ed into one.
fn or_able(a: &ValueMatch, b: &ValueMatch) -> bool {
    a.not_values.is_empty() && b.not_values.is_empty()
}

/// A negated leaf: its values become the attribute's `not_values`.
fn negate(leaf: Leaf) -> Option<Leaf> {
    let flip = |v: ValueMatch| {
        (v.not_values.is_empty() && !v.values.is_empty()).then_some(ValueMatch {
            values: Vec::new(),
            not_values: v.values,
        })
    };
    Some(match leaf {
        Leaf::Principals(v) => Leaf::Principals(flip(v)?),
        Leaf::Namespaces(v) => Leaf::Namespaces(flip(v)?),
        Leaf::IpBlocks(v) => Leaf::IpBlocks(flip(v)?),
        Leaf::RemoteIpBlocks(v) => Leaf::RemoteIpBlocks(flip(v)?),
        Leaf::Methods(v) => Leaf::Methods(flip(v)?),
        Leaf::Hosts(v) => Leaf::Hosts(flip(v)?),
        Leaf::Paths(v) => Leaf::Paths(flip(v)?),
        Leaf::Ports(v) => Leaf::Ports(flip(v)?),
        Leaf::When(c) => Leaf::When(ConditionMatch {
            key: c.key,
            values: flip(c.values)?,
        }),
    })
}

fn values(v: impl Into<String>) -> ValueMatch {
    ValueMatch {
        values: vec![v.into()],
        not_values: Vec::new(),
    }
}

/// The principal as alternatives (OR) of sources.
fn principal(p: &Principal) -> FieldResult<Vec<Src>> {
    use principal::Identifier as I;
    let leaf = match &p.identifier {
        Some(I::Any(true)) => return Ok(vec![Src::default()]),
        Some(I::Any(false)) | None => {
            return Err(FieldError::new("identifier", "is required"));
        }
        Some(I::OrIds(set)) => {
            let mut alts = Vec::new();
            let mut leaves = Vec::new();
            for (i, id) in set.ids.iter().enumerate() {
                match principal_leaf(id).map_err(|e| e.within(format!("or_ids.ids[{i}]")))? {
                    Some(l) => leaves.push(l),
                    None => alts
                        .extend(principal(id).map_err(|e| e.within(format!("or_ids.ids[{i}]")))?),
                }
            }
            // Leaves on one attribute make one list; mixed leaves are separate alternatives.
            match or_leaves(leaves.clone()) {
                Some(l) => {
                    let mut s = Src::default();
                    src_leaf(&mut s, &l).map_err(|e| e.within("or_ids"))?;
                    alts.push(s);
                }
                None => {
                    for l in &leaves {
                        let mut s = Src::default();
                        src_leaf(&mut s, l).map_err(|e| e.within("or_ids"))?;
                        alts.push(s);
                    }
                }
            }
            return Ok(alts);
        }
        Some(I::AndIds(set)) => {
            let mut acc = vec![Src::default()];
            for (i, id) in set.ids.iter().enumerate() {
                let at = format!("and_ids.ids[{i}]");
                let alts = principal(id).map_err(|e| e.within(&at))?;
                let mut next = Vec::with_capacity(acc.len() * alts.len());
                for a in &acc {
                    for b in &alts {
                        next.push(and_src(a, b).map_err(|e| e.within(&at))?);
                    }
                }
                if next.len() > MAX_RULES {
                    return Err(FieldError::new(at, "too many alternatives"));
                }
                acc = next;
            }
            return Ok(acc);
        }
        _ => principal_leaf(p)?,
    };
    let leaf = leaf.ok_or_else(|| FieldError::new("identifier", "is not supported"))?;
    let mut s = Src::default();
    src_leaf(&mut s, &leaf)?;
    Ok(vec![s])
}

fn and_src(a: &Src, b: &Src) -> FieldResult<Src> {
    let mut out = a.clone();
    for (slot, v) in [
        (&mut out.src.principals, &b.src.principals),
        (&mut out.src.namespaces, &b.src.namespaces),
        (&mut out.src.ip_blocks, &b.src.ip_blocks),
        (&mut out.src.remote_ip_blocks, &b.src.remote_ip_blocks),
        (&mut out.src.request_principals, &b.src.request_principals),
        (&mut out.src.service_accounts, &b.src.service_accounts),
    ] {
        merge_into(slot, v)?;
    }
    out.when.extend(b.when.iter().cloned());
    Ok(out)
}

/// A principal that is one attribute test (or its negation), or `None` for compound ones.
fn principal_leaf(p: &Principal) -> FieldResult<Option<Leaf>> {
    use principal::Identifier as I;
    Ok(Some(match &p.identifier {
        Some(I::Authenticated(a)) => {
            let m = a
                .principal_name
                .as_ref()
                .ok_or_else(|| FieldError::new("authenticated.principal_name", "is required"))?;
            principal_name(m).map_err(|e| e.within("authenticated.principal_name"))?
        }
        Some(I::SourceIp(c)) => Leaf::IpBlocks(values(cidr(c).map_err(|e| e.within("source_ip"))?)),
        Some(I::DirectRemoteIp(c)) => {
            Leaf::IpBlocks(values(cidr(c).map_err(|e| e.within("direct_remote_ip"))?))
        }
        Some(I::RemoteIp(c)) => {
            Leaf::RemoteIpBlocks(values(cidr(c).map_err(|e| e.within("remote_ip"))?))
        }
        Some(I::Header(h)) => header(h, false).map_err(|e| e.within("header"))?,
        Some(I::NotId(inner)) => {
            let leaf = match principal_leaf(inner).map_err(|e| e.within("not_id"))? {
                Some(l) => Some(l),
                None => match &inner.identifier {
                    Some(I::OrIds(set)) => or_leaves(
                        set.ids
                            .iter()
                            .map(principal_leaf)
                            .collect::<FieldResult<Option<Vec<Leaf>>>>()
                            .map_err(|e| e.within("not_id.or_ids"))?
                            .unwrap_or_default(),
                    ),
                    _ => None,
                },
            };
            return Ok(Some(leaf.and_then(negate).ok_or_else(|| {
                FieldError::new(
                    "not_id",
                    "only the negation of values of one attribute is supported",
                )
            })?));
        }
        Some(I::UrlPath(_)) => {
            return Err(FieldError::new(
                "url_path",
                "a path is a permission, not a principal",
            ));
        }
        Some(I::Metadata(_)) | Some(I::SourcedMetadata(_)) => {
            return Err(FieldError::new(
                "metadata",
                "metadata principals (request authentication claims) are not supported",
            ));
        }
        Some(I::FilterState(_)) => {
            return Err(FieldError::new("filter_state", "is not supported"));
        }
        Some(I::Custom(c)) => {
            return Err(FieldError::new(
                "custom",
                format!("custom principal {} is not supported", c.name),
            ));
        }
        Some(I::Any(_)) | Some(I::AndIds(_)) | Some(I::OrIds(_)) | None => return Ok(None),
    }))
}

/// The permission as alternatives (OR) of operations.
fn permission(p: &Permission) -> FieldResult<Vec<Op>> {
    use permission::Rule as R;
    match &p.rule {
        Some(R::Any(true)) => Ok(vec![Op::default()]),
        Some(R::Any(false)) | None => Err(FieldError::new("rule", "is required")),
        Some(R::OrRules(set)) => {
            let mut alts = Vec::new();
            let mut leaves = Vec::new();
            for (i, r) in set.rules.iter().enumerate() {
                match permission_leaf(r).map_err(|e| e.within(format!("or_rules.rules[{i}]")))? {
                    Some(l) => leaves.push(l),
                    None => alts.extend(
                        permission(r).map_err(|e| e.within(format!("or_rules.rules[{i}]")))?,
                    ),
                }
            }
            match or_leaves(leaves.clone()) {
                Some(l) => {
                    let mut o = Op::default();
                    op_leaf(&mut o, &l).map_err(|e| e.within("or_rules"))?;
                    alts.push(o);
                }
                None => {
                    for l in &leaves {
                        let mut o = Op::default();
                        op_leaf(&mut o, l).map_err(|e| e.within("or_rules"))?;
                        alts.push(o);
                    }
                }
            }
            Ok(alts)
        }
        Some(R::AndRules(set)) => {
            let mut acc = vec![Op::default()];
            for (i, r) in set.rules.iter().enumerate() {
                let at = format!("and_rules.rules[{i}]");
                let alts = permission(r).map_err(|e| e.within(&at))?;
                let mut next = Vec::with_capacity(acc.len() * alts.len());
                for a in &acc {
                    for b in &alts {
                        next.push(and_op(a, b).map_err(|e| e.within(&at))?);
                    }
                }
                if next.len() > MAX_RULES {
                    return Err(FieldError::new(at, "too many alternatives"));
                }
                acc = next;
            }
            Ok(acc)
        }
        _ => {
            let leaf =
                permission_leaf(p)?.ok_or_else(|| FieldError::new("rule", "is not supported"))?;
            let mut o = Op::default();
            op_leaf(&mut o, &leaf)?;
            Ok(vec![o])
        }
    }
}

fn and_op(a: &Op, b: &Op) -> FieldResult<Op> {
    let mut out = a.clone();
    for (slot, v) in [
        (&mut out.op.methods, &b.op.methods),
        (&mut out.op.hosts, &b.op.hosts),
        (&mut out.op.paths, &b.op.paths),
        (&mut out.op.ports, &b.op.ports),
    ] {
        merge_into(slot, v)?;
    }
    out.when.extend(b.when.iter().cloned());
    Ok(out)
}

fn permission_leaf(p: &Permission) -> FieldResult<Option<Leaf>> {
    use permission::Rule as R;
    Ok(Some(match &p.rule {
        Some(R::Header(h)) => header(h, true).map_err(|e| e.within("header"))?,
        Some(R::UrlPath(m)) => {
            let Some(envoy_types::pb::envoy::r#type::matcher::v3::path_matcher::Rule::Path(s)) =
                &m.rule
            else {
                return Err(FieldError::new("url_path.path", "is required"));
            };
            Leaf::Paths(values(
                string_value(s).map_err(|e| e.within("url_path.path"))?,
            ))
        }
        Some(R::DestinationPort(port)) => Leaf::Ports(values(port.to_string())),
        Some(R::DestinationIp(c)) => Leaf::When(ConditionMatch {
            key: "destination.ip".to_owned(),
            values: values(cidr(c).map_err(|e| e.within("destination_ip"))?),
        }),
        Some(R::RequestedServerName(s)) => Leaf::When(ConditionMatch {
            key: "connection.sni".to_owned(),
            values: values(string_value(s).map_err(|e| e.within("requested_server_name"))?),
        }),
        Some(R::NotRule(inner)) => {
            let leaf = match permission_leaf(inner).map_err(|e| e.within("not_rule"))? {
                Some(l) => Some(l),
                None => match &inner.rule {
                    Some(R::OrRules(set)) => or_leaves(
                        set.rules
                            .iter()
                            .map(permission_leaf)
                            .collect::<FieldResult<Option<Vec<Leaf>>>>()
                            .map_err(|e| e.within("not_rule.or_rules"))?
                            .unwrap_or_default(),
                    ),
                    _ => None,
                },
            };
            return Ok(Some(leaf.and_then(negate).ok_or_else(|| {
                FieldError::new(
                    "not_rule",
                    "only the negation of values of one attribute is supported",
                )
            })?));
        }
        Some(R::DestinationPortRange(_)) => {
            return Err(FieldError::new(
                "destination_port_range",
                "port ranges are not supported; list the ports",
            ));
        }
        Some(R::Metadata(_)) | Some(R::SourcedMetadata(_)) => {
            return Err(FieldError::new(
                "metadata",
                "metadata permissions are not supported",
            ));
        }
        Some(R::Matcher(m)) | Some(R::UriTemplate(m)) => {
            return Err(FieldError::new(
                "matcher",
                format!("extension permission {} is not supported", m.name),
            ));
        }
        Some(R::Any(_)) | Some(R::AndRules(_)) | Some(R::OrRules(_)) | None => return Ok(None),
    }))
}

/// A header test: the pseudo-headers Istio uses become operation fields in permissions;
/// others become `request.headers[NAME]` conditions.
fn header(h: &HeaderMatcher, permission: bool) -> FieldResult<Leaf> {
    use header_matcher::HeaderMatchSpecifier as H;
    if h.treat_missing_header_as_empty {
        return Err(FieldError::new(
            "treat_missing_header_as_empty",
            "is not supported",
        ));
    }
    let value = match &h.header_match_specifier {
        Some(H::ExactMatch(s)) => exact(s)?,
        Some(H::PrefixMatch(s)) => format!("{}*", exact(s)?),
        Some(H::SuffixMatch(s)) => format!("*{}", exact(s)?),
        Some(H::PresentMatch(true)) => "*".to_owned(),
        Some(H::StringMatch(s)) => string_value(s).map_err(|e| e.within("string_match"))?,
        Some(H::SafeRegexMatch(r)) => regex_value(&r.regex)
            .ok_or_else(|| FieldError::new("safe_regex_match", "only .* and .+ are supported"))?,
        _ => {
            return Err(FieldError::new(
                "header_match_specifier",
                "only exact, prefix, suffix, present and string matches are supported",
            ));
        }
    };
    let name = h.name.to_ascii_lowercase();
    let v = values(value);
    let leaf = match (permission, name.as_str()) {
        (true, ":method") => Leaf::Methods(v),
        (true, ":authority" | "host") => Leaf::Hosts(v),
        (true, ":path") => Leaf::Paths(v),
        (_, n) if n.starts_with(':') => {
            return Err(FieldError::new(
                "name",
                format!("pseudo-header {n} is not supported here"),
            ));
        }
        (_, n) => Leaf::When(ConditionMatch {
            key: format!("request.headers[{n}]"),
            values: v,
        }),
    };
    Ok(if h.invert_match {
        negate(leaf).ok_or_else(|| FieldError::new("invert_match", "is not supported here"))?
    } else {
        leaf
    })
}

/// An Istio principal from an Envoy principal name matcher on the peer's URI SAN:
/// `spiffe://td/ns/a/sa/b` -> `td/ns/a/sa/b`, with Istio's `*` forms; `.*/ns/NS/.*` (how istiod
/// writes `namespaces`) -> a namespace.
fn principal_name(m: &StringMatcher) -> FieldResult<Leaf> {
    use string_matcher::MatchPattern as M;
    if let Some(M::SafeRegex(r)) = &m.match_pattern
        && let Some(ns) = r
            .regex
            .strip_prefix(".*/ns/")
            .and_then(|s| s.strip_suffix("/.*"))
        && !ns.is_empty()
        && ns.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Ok(Leaf::Namespaces(values(ns)));
    }
    let v = string_value(m)?;
    let strip = |s: &str| s.strip_prefix("spiffe://").map(str::to_owned);
    let principal = match &m.match_pattern {
        Some(M::Exact(s)) => strip(s),
        Some(M::Prefix(s)) => strip(s).map(|p| format!("{p}*")),
        // A suffix or presence test does not involve the scheme.
        _ => Some(v),
    }
    .ok_or_else(|| {
        FieldError::new(
            "match_pattern",
            "an exact or prefix principal must start with spiffe://",
        )
    })?;
    Ok(Leaf::Principals(values(principal)))
}

/// A string matcher as one Istio value (`exact`, `prefix*`, `*suffix`, `*`).
fn string_value(m: &StringMatcher) -> FieldResult<String> {
    use string_matcher::MatchPattern as M;
    if m.ignore_case {
        return Err(FieldError::new("ignore_case", "is not supported"));
    }
    match &m.match_pattern {
        Some(M::Exact(s)) => exact(s),
        Some(M::Prefix(s)) => Ok(format!("{}*", exact(s)?)),
        Some(M::Suffix(s)) => Ok(format!("*{}", exact(s)?)),
        Some(M::SafeRegex(r)) => regex_value(&r.regex).ok_or_else(|| {
            FieldError::new(
                "safe_regex",
                "only .* and .+ (presence) are supported; use exact, prefix or suffix",
            )
        }),
        Some(M::Contains(_)) => Err(FieldError::new("contains", "is not supported")),
        Some(M::Custom(_)) => Err(FieldError::new("custom", "is not supported")),
        None => Err(FieldError::new("match_pattern", "is required")),
    }
}

/// A literal value: `*` would change its meaning in Istio's forms.
fn exact(s: &str) -> FieldResult<String> {
    if s.contains('*') {
        return Err(FieldError::new(
            "",
            format!("{s:?}: a literal '*' cannot be expressed"),
        ));
    }
    Ok(s.to_owned())
}

fn regex_value(r: &str) -> Option<String> {
    matches!(r, ".*" | ".+" | "^.*$" | "^.+$").then(|| "*".to_owned())
}

pub(super) fn cidr(c: &CidrRange) -> FieldResult<String> {
    let ip: std::net::IpAddr = c.address_prefix.parse().map_err(|_| {
        FieldError::new(
            "address_prefix",
            format!("{:?} is not an IP address", c.address_prefix),
        )
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = c.prefix_len.as_ref().map_or(max, |l| l.value);
    if len > max {
        return Err(FieldError::new(
            "prefix_len",
            format!("{len} is longer than the address"),
        ));
    }
    Ok(format!("{ip}/{len}"))
}

/// The token bucket of a `local_ratelimit` filter, when it enforces one on every request.
///
/// Envoy enables and enforces the filter for `filter_enabled` / `filter_enforced` of the
/// requests, both 0% when unset: a filter that enforces nothing maps to no limit, one that
/// enforces on every request to the bucket; partial fractions, descriptors and other
/// behaviour the mesh's limiter does not have are refused.
pub(crate) fn local_rate_limit(l: &PbLocalRateLimit) -> FieldResult<Option<LocalRateLimit>> {
    let full = |f: &Option<envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent>,
                field: &str|
     -> FieldResult<bool> {
        let Some(f) = f else { return Ok(false) };
        let pct = f
            .default_value
            .as_ref()
            .map(super::route::percentage)
            .unwrap_or(mesh_core::model::Percentage::NONE);
        if pct == mesh_core::model::Percentage::ALL {
            Ok(true)
        } else if pct == mesh_core::model::Percentage::NONE {
            Ok(false)
        } else {
            Err(FieldError::new(
                field,
                "enabling or enforcing for a fraction of requests is not supported",
            ))
        }
    };
    let enabled = full(&l.filter_enabled, "filter_enabled")?;
    let enforced = full(&l.filter_enforced, "filter_enforced")?;
    if !l.descriptors.is_empty() || !l.rate_limits.is_empty() {
        return Err(FieldError::new(
            "descriptors",
            "descriptor-based rate limits are not supported",
        ));
    }
    if l.local_rate_limit_per_downstream_connection {
        return Err(FieldError::new(
            "local_rate_limit_per_downstream_connection",
            "is not supported",
        ));
    }
    if l.local_cluster_rate_limit.is_some() {
        return Err(FieldError::new(
            "local_cluster_rate_limit",
            "is not supported",
        ));
    }
    if let Some(s) = &l.status
        && s.code != 0
        && s.code != 429
    {
        return Err(FieldError::new(
            "status",
            format!("status {} is not supported (the mesh answers 429)", s.code),
        ));
    }
    if !(enabled && enforced) {
        // Shadow mode (enabled, not enforced) only counts in Envoy: no limit here.
        return Ok(None);
    }
    if !l.response_headers_to_add.is_empty()
        || !l.request_headers_to_add_when_not_enforced.is_empty()
    {
        return Err(FieldError::new(
            "response_headers_to_add",
            "headers on rate-limited responses are not supported",
        ));
    }
    let bucket = l
        .token_bucket
        .as_ref()
        .ok_or_else(|| FieldError::new("token_bucket", "is required when enforced"))?;
    let fill_interval = bucket
        .fill_interval
        .as_ref()
        .map(|d| duration(d, "token_bucket.fill_interval"))
        .transpose()?
        .filter(|d| !d.is_zero())
        .ok_or_else(|| FieldError::new("token_bucket.fill_interval", "must be positive"))?;
    if bucket.max_tokens == 0 {
        return Err(FieldError::new(
            "token_bucket.max_tokens",
            "must be positive",
        ));
    }
    Ok(Some(LocalRateLimit {
        max_tokens: bucket.max_tokens,
        tokens_per_fill: bucket.tokens_per_fill.as_ref().map_or(1, |v| v.value),
        fill_interval,
    }))
}
