//! The authorization engine: Istio's AuthorizationPolicy semantics over
//! [`mesh_core::model::AuthorizationPolicy`].
//!
//! The loader has already narrowed the policies to the ones that apply to this workload
//! (root-namespace mesh-wide policies, the workload's namespace, selectors); the engine decides
//! one request the way Envoy's RBAC filters that istiod generates do:
//!
//! 1. CUSTOM is rejected when the engine is built (external authorization is not supported).
//! 2. If any DENY policy matches, the request is denied.
//! 3. If no ALLOW policy applies, the request is allowed.
//! 4. If any ALLOW policy matches, the request is allowed; otherwise it is denied.
//!
//! AUDIT policies do not change the decision; a match is reported in [`Verdict::audit`].
//! Policies with the `istio.io/dry-run` annotation are evaluated in a shadow pass (enforced
//! policies plus dry-run ones) whose outcome is reported in [`Verdict::shadow`] without
//! deciding anything.
//!
//! A policy without rules matches nothing (an ALLOW policy without rules is Istio's
//! "allow-nothing"); a rule without `from`, `to` and `when` matches everything ("allow-all" /
//! "deny-all").
//!
//! The first matching policy decides, in the order the policies were given, and the verdict
//! names it and its first matching rule. Large lists are indexed (see `index.rs`): a request
//! evaluates only the policies whose paths, methods, source principals or namespaces it can
//! match, in their original order, so the verdict is the one a scan of every policy gives.
//!
//! ```
//! # use mesh_core::model::*;
//! # use mesh_policy::authz::{Attributes, Decision, Engine};
//! # use mesh_policy::{PeerIdentity, SpiffeId};
//! let only_frontend = AuthorizationPolicy {
//!     name: "default/frontend-only".into(),
//!     action: AuthzAction::Allow,
//!     rules: vec![AuthzRule {
//!         from: vec![SourceMatch {
//!             namespaces: ValueMatch { values: vec!["frontend".into()], ..Default::default() },
//!             ..Default::default()
//!         }],
//!         ..Default::default()
//!     }],
//!     dry_run: false,
//! };
//! let engine = Engine::new(&[only_frontend]).unwrap();
//! let peer = PeerIdentity::from(SpiffeId::parse("spiffe://cluster.local/ns/frontend/sa/web").unwrap());
//! let verdict = engine.evaluate(&Attributes { peer: Some(&peer), ..Attributes::new("GET", "/") });
//! assert_eq!(verdict.decision, Decision::Allow);
//! assert_eq!(verdict.to_string(), "allowed by default/frontend-only rules[0]");
//! ```

mod index;
mod matcher;
mod normalize;

pub use mesh_core::model::PathNormalization;
pub use normalize::{InvalidPath, normalize_path, normalize_path_with};

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;
use http::header::HeaderName;
use ipnet::IpNet;
use mesh_core::model::{self, AuthzAction};

use crate::identity::PeerIdentity;
use crate::jwt::Claims;
use matcher::{Pair, PathMatch, StrMatch};

/// Why a policy cannot be enforced: the policy, the field and the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("AuthorizationPolicy {policy}: {field}: {reason}")]
pub struct InvalidPolicy {
    /// The policy, `namespace/name`.
    pub policy: String,
    /// The field path inside the policy.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// The attributes of one request that policies can test.
#[derive(Clone, Debug)]
pub struct Attributes<'a> {
    /// The verified peer identity from mTLS; `None` for plaintext.
    pub peer: Option<&'a PeerIdentity>,
    /// The direct peer address (`source.ip`, `ipBlocks`).
    pub source_ip: Option<IpAddr>,
    /// The original client address (`remote.ip`, `remoteIpBlocks`); `source_ip` when `None`.
    pub remote_ip: Option<IpAddr>,
    /// The local address the connection came to (`destination.ip`).
    pub destination_ip: Option<IpAddr>,
    /// The local port the connection came to (`ports`, `destination.port`).
    pub destination_port: Option<u16>,
    /// The TLS server name the client asked for (`connection.sni`).
    pub sni: Option<&'a str>,
    /// The `Host` / `:authority` (`hosts`), port included: `hosts` match it whole.
    pub host: Option<&'a str>,
    /// The HTTP method (`methods`).
    pub method: &'a str,
    /// The request path; a query string is ignored (`paths`). Compared as given: the caller
    /// normalizes it first, as Istio does, with [`normalize_path_with`] (or
    /// [`normalize_path`], Istio's default).
    pub path: &'a str,
    /// The request headers (`request.headers[...]`; a repeated header's values are matched
    /// joined with `,`, as Envoy does).
    pub headers: Option<&'a HeaderMap>,
    /// The claims of the request's verified JWT (`requestPrincipals`, `request.auth.*`);
    /// `None` when the request carried no token (it then has no request principal).
    pub request_auth: Option<&'a Claims>,
}

impl<'a> Attributes<'a> {
    /// A request with only a method and a path; set the other fields with struct update syntax.
    pub fn new(method: &'a str, path: &'a str) -> Self {
        Self {
            peer: None,
            source_ip: None,
            remote_ip: None,
            destination_ip: None,
            destination_port: None,
            sni: None,
            host: None,
            method,
            path,
            headers: None,
            request_auth: None,
        }
    }

    fn principal(&self) -> Option<&'a str> {
        self.peer.map(|p| p.id.principal())
    }

    fn request_principal(&self) -> Option<&'a str> {
        self.request_auth.map(Claims::principal)
    }

    fn namespace(&self) -> Option<&'a str> {
        self.peer.and_then(|p| p.namespace.as_deref())
    }

    fn remote(&self) -> Option<IpAddr> {
        self.remote_ip.or(self.source_ip)
    }

    fn path_only(&self) -> &'a str {
        self.path.split_once('?').map_or(self.path, |(p, _)| p)
    }
}

/// The decision for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Let the request through.
    Allow,
    /// Refuse it: 403 `RBAC: access denied`.
    Deny,
}

/// A rule of a policy: `policy` (`namespace/name`) and the index in its `rules`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleRef {
    /// The policy, `namespace/name`.
    pub policy: Arc<str>,
    /// The index of the rule in the policy's `rules`.
    pub rule: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rules[{}]", self.policy, self.rule)
    }
}

/// What decided a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No ALLOW policy applies to the workload and no DENY policy matched.
    NoAllowPolicy,
    /// This DENY rule matched.
    DeniedBy(RuleRef),
    /// This ALLOW rule matched.
    AllowedBy(RuleRef),
    /// ALLOW policies apply to the workload and none matched.
    NoAllowMatched,
}

/// The outcome a dry-run evaluation would have had.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shadow {
    /// The decision with the dry-run policies enforced.
    pub decision: Decision,
    /// What would have decided.
    pub reason: Reason,
}

/// The engine's answer for one request, with what decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Allow or deny.
    pub decision: Decision,
    /// Which policy and rule decided, or why none did.
    pub reason: Reason,
    /// The first AUDIT rule that matched, if any (the request should be audit-logged).
    pub audit: Option<RuleRef>,
    /// When dry-run policies exist: what the decision would be with them enforced.
    pub shadow: Option<Shadow>,
}

impl Verdict {
    /// Whether the request is allowed.
    pub fn is_allowed(&self) -> bool {
        self.decision == Decision::Allow
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoAllowPolicy => f.write_str("allowed: no ALLOW policy applies"),
            Self::DeniedBy(r) => write!(f, "denied by {r}"),
            Self::AllowedBy(r) => write!(f, "allowed by {r}"),
            Self::NoAllowMatched => f.write_str("denied: no ALLOW policy matched"),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.reason)?;
        if let Some(a) = &self.audit {
            write!(f, "; audited by {a}")?;
        }
        if let Some(s) = &self.shadow {
            write!(f, "; dry-run: {}", s.reason)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default)]
struct Source {
    principals: Option<Pair<StrMatch>>,
    request_principals: Option<Pair<StrMatch>>,
    namespaces: Option<Pair<StrMatch>>,
    service_accounts: Option<Pair<StrMatch>>,
    ip_blocks: Option<Pair<IpNet>>,
    remote_ip_blocks: Option<Pair<IpNet>>,
}

#[derive(Clone, Debug, Default)]
struct Operation {
    hosts: Option<Pair<StrMatch>>,
    ports: Option<Pair<u16>>,
    methods: Option<Pair<StrMatch>>,
    paths: Option<Pair<PathMatch>>,
}

#[derive(Clone, Debug)]
enum Condition {
    Header(HeaderName, Pair<StrMatch>),
    SourceIp(Pair<IpNet>),
    RemoteIp(Pair<IpNet>),
    DestinationIp(Pair<IpNet>),
    SourceNamespace(Pair<StrMatch>),
    SourcePrincipal(Pair<StrMatch>),
    DestinationPort(Pair<u16>),
    Sni(Pair<StrMatch>),
    /// `request.auth.principal`.
    RequestPrincipal(Pair<StrMatch>),
    /// A claim of the verified JWT: `request.auth.claims[a][b]`, `request.auth.audiences`
    /// (`aud`), `request.auth.presenter` (`azp`).
    Claim(Vec<String>, Pair<StrMatch>),
}

impl Condition {
    /// Whether the condition reads the HTTP request (a header or the request's JWT).
    fn is_http(&self) -> bool {
        matches!(
            self,
            Self::Header(..) | Self::RequestPrincipal(_) | Self::Claim(..)
        )
    }
}

#[derive(Clone, Debug)]
struct Rule {
    from: Vec<Source>,
    to: Vec<Operation>,
    when: Vec<Condition>,
}

#[derive(Clone, Debug)]
struct Policy {
    name: Arc<str>,
    rules: Vec<Rule>,
}

/// Lists of at least this many policies are indexed; shorter ones are scanned, which is as
/// fast as looking up their candidates.
const MIN_INDEXED: usize = 16;

/// One list of policies in the order they were given, with its index when it has one.
#[derive(Clone, Debug, Default)]
struct Policies {
    list: Vec<Policy>,
    index: Option<index::Index>,
}

impl Policies {
    /// Indexes `list` when it has at least `min_indexed` policies.
    fn new(list: Vec<Policy>, min_indexed: usize) -> Self {
        let index = if list.len() >= min_indexed {
            index::Index::new(&list)
        } else {
            None
        };
        Self { list, index }
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The first policy in list order with a matching rule, and its first matching rule.
    fn first_match(&self, req: &Attributes<'_>, mode: Mode, deny: bool) -> Option<RuleRef> {
        let matching = |p: &Policy| p.first_match(req, mode, deny);
        match &self.index {
            None => self.list.iter().find_map(matching),
            Some(index) => index
                .candidates(req, mode, deny)
                .find_map(|i| self.list.get(i).and_then(matching)),
        }
    }

    /// [`Policies::first_match`] by a scan of every policy: the reference for the index.
    #[cfg(test)]
    fn first_match_linear(&self, req: &Attributes<'_>, mode: Mode, deny: bool) -> Option<RuleRef> {
        self.list
            .iter()
            .find_map(|p| p.first_match(req, mode, deny))
    }
}

/// Policies of one action, enforced and dry-run.
#[derive(Clone, Debug, Default)]
struct Set {
    enforced: Policies,
    dry_run: Policies,
}

impl Set {
    fn new((enforced, dry_run): (Vec<Policy>, Vec<Policy>), min_indexed: usize) -> Self {
        Self {
            enforced: Policies::new(enforced, min_indexed),
            dry_run: Policies::new(dry_run, min_indexed),
        }
    }
}

/// The compiled policies of one config snapshot; cheap to evaluate, immutable.
#[derive(Clone, Debug, Default)]
pub struct Engine {
    deny: Set,
    allow: Set,
    audit: Set,
    policies: usize,
}

fn ip_in(net: &IpNet, ip: IpAddr) -> bool {
    net.contains(&ip)
}

fn str_is(m: &StrMatch, s: &str) -> bool {
    m.matches(s)
}

impl Engine {
    /// Compiles `policies`; fails on the first one that cannot be enforced (CUSTOM, a bad
    /// CIDR, port, path template or claim key).
    pub fn new(policies: &[model::AuthorizationPolicy]) -> Result<Self, InvalidPolicy> {
        Self::with_min_indexed(policies, MIN_INDEXED)
    }

    /// [`Engine::new`], indexing lists of at least `min_indexed` policies.
    fn with_min_indexed(
        policies: &[model::AuthorizationPolicy],
        min_indexed: usize,
    ) -> Result<Self, InvalidPolicy> {
        let (mut deny, mut allow, mut audit) = Default::default();
        for p in policies {
            let set: &mut (Vec<Policy>, Vec<Policy>) = match &p.action {
                AuthzAction::Allow => &mut allow,
                AuthzAction::Deny => &mut deny,
                AuthzAction::Audit => &mut audit,
                AuthzAction::Custom(provider) => {
                    return Err(InvalidPolicy {
                        policy: p.name.clone(),
                        field: "spec.action".into(),
                        reason: format!(
                            "action CUSTOM (provider {provider:?}) is not supported: external \
                             authorization is not implemented"
                        ),
                    });
                }
            };
            let compiled = compile(p)?;
            if p.dry_run {
                set.1.push(compiled);
            } else {
                set.0.push(compiled);
            }
        }
        Ok(Self {
            deny: Set::new(deny, min_indexed),
            allow: Set::new(allow, min_indexed),
            audit: Set::new(audit, min_indexed),
            policies: policies.len(),
        })
    }

    /// The number of policies compiled in.
    pub fn len(&self) -> usize {
        self.policies
    }

    /// Whether there are no policies (every request is allowed).
    pub fn is_empty(&self) -> bool {
        self.policies == 0
    }

    /// Decides one request and says why.
    pub fn evaluate(&self, req: &Attributes<'_>) -> Verdict {
        self.evaluate_as(|set, deny| set.first_match(req, Mode::Http, deny))
    }

    /// Decides one plain TCP connection (no HTTP attributes) the way Istio's network RBAC
    /// filter does: in ALLOW and AUDIT policies a rule that names an HTTP-only field
    /// (`hosts`, `methods`, `paths`, a `request.headers` condition) matches nothing; in DENY
    /// policies those fields are ignored, so the rule denies more, never less.
    ///
    /// ```
    /// # use mesh_core::model::*;
    /// # use mesh_policy::authz::{Attributes, Decision, Engine};
    /// let get_only = AuthorizationPolicy {
    ///     name: "default/get-only".into(),
    ///     action: AuthzAction::Allow,
    ///     rules: vec![AuthzRule {
    ///         to: vec![OperationMatch {
    ///             methods: ValueMatch { values: vec!["GET".into()], ..Default::default() },
    ///             ..Default::default()
    ///         }],
    ///         ..Default::default()
    ///     }],
    ///     dry_run: false,
    /// };
    /// let engine = Engine::new(&[get_only]).unwrap();
    /// let conn = Attributes { destination_port: Some(9000), ..Attributes::new("", "") };
    /// assert_eq!(engine.evaluate_tcp(&conn).decision, Decision::Deny);
    /// ```
    pub fn evaluate_tcp(&self, conn: &Attributes<'_>) -> Verdict {
        self.evaluate_as(|set, deny| set.first_match(conn, Mode::Tcp, deny))
    }

    /// [`Engine::evaluate`] (HTTP) or [`Engine::evaluate_tcp`] by a scan of every policy: the
    /// reference the index is tested against.
    #[cfg(test)]
    fn evaluate_linear(&self, req: &Attributes<'_>, mode: Mode) -> Verdict {
        self.evaluate_as(|set, deny| set.first_match_linear(req, mode, deny))
    }

    /// The verdict, given how to find the first match in a list (`true` for DENY policies).
    fn evaluate_as(&self, first_match: impl Fn(&Policies, bool) -> Option<RuleRef>) -> Verdict {
        let deny = |set: &Policies| first_match(set, true);
        let allow = |set: &Policies| first_match(set, false);
        let (decision, reason) = decide(
            deny(&self.deny.enforced),
            !self.allow.enforced.is_empty(),
            || allow(&self.allow.enforced),
        );
        let audit = allow(&self.audit.enforced);
        let shadow = (!self.deny.dry_run.is_empty() || !self.allow.dry_run.is_empty()).then(|| {
            let denied = deny(&self.deny.enforced).or_else(|| deny(&self.deny.dry_run));
            let any_allow = !self.allow.enforced.is_empty() || !self.allow.dry_run.is_empty();
            let (decision, reason) = decide(denied, any_allow, || {
                allow(&self.allow.enforced).or_else(|| allow(&self.allow.dry_run))
            });
            Shadow { decision, reason }
        });
        Verdict {
            decision,
            reason,
            audit,
            shadow,
        }
    }
}

/// What is being decided: an HTTP request or a TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Http,
    Tcp,
}

fn decide(
    deny: Option<RuleRef>,
    any_allow: bool,
    allow: impl FnOnce() -> Option<RuleRef>,
) -> (Decision, Reason) {
    if let Some(r) = deny {
        return (Decision::Deny, Reason::DeniedBy(r));
    }
    if !any_allow {
        return (Decision::Allow, Reason::NoAllowPolicy);
    }
    match allow() {
        Some(r) => (Decision::Allow, Reason::AllowedBy(r)),
        None => (Decision::Deny, Reason::NoAllowMatched),
    }
}

impl Policy {
    /// The policy's first matching rule, if any (`deny`: whether it is a DENY policy).
    fn first_match(&self, req: &Attributes<'_>, mode: Mode, deny: bool) -> Option<RuleRef> {
        self.rules
            .iter()
            .position(|r| match mode {
                Mode::Http => r.matches(req),
                Mode::Tcp => r.matches_tcp(req, deny),
            })
            .map(|rule| RuleRef {
                policy: self.name.clone(),
                rule,
            })
    }
}

impl Rule {
    fn matches(&self, req: &Attributes<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(req)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(req)))
            && self.when.iter().all(|c| c.matches(req))
    }

    /// Whether the rule names a field only an HTTP request has.
    fn has_http_fields(&self) -> bool {
        self.to
            .iter()
            .any(|o| o.hosts.is_some() || o.methods.is_some() || o.paths.is_some())
            || self.from.iter().any(|s| s.request_principals.is_some())
            || self.when.iter().any(Condition::is_http)
    }

    /// [`Rule::matches`] for a TCP connection: see [`Engine::evaluate_tcp`].
    fn matches_tcp(&self, conn: &Attributes<'_>, deny: bool) -> bool {
        if !deny && self.has_http_fields() {
            return false;
        }
        // Reached by ALLOW rules without HTTP fields, or by DENY rules, whose HTTP fields
        // (request principals among them) are ignored.
        (self.from.is_empty() || self.from.iter().any(|s| s.matches_peer(conn)))
            && (self.to.is_empty()
                || self
                    .to
                    .iter()
                    .any(|o| check(&o.ports, conn.destination_port, |m, p| *m == p)))
            && self
                .when
                .iter()
                .filter(|c| !c.is_http())
                .all(|c| c.matches(conn))
    }
}

fn check<M, A: Copy>(p: &Option<Pair<M>>, attr: Option<A>, hit: impl Fn(&M, A) -> bool) -> bool {
    p.as_ref().is_none_or(|p| p.test(attr, hit))
}

impl Source {
    fn matches(&self, req: &Attributes<'_>) -> bool {
        check(&self.request_principals, req.request_principal(), str_is) && self.matches_peer(req)
    }

    /// [`Source::matches`] without the request principals (the connection's fields only).
    fn matches_peer(&self, req: &Attributes<'_>) -> bool {
        let sa = req
            .peer
            .and_then(|p| Some((p.namespace.as_deref()?, p.service_account.as_deref()?)));
        check(&self.principals, req.principal(), str_is)
            && check(&self.namespaces, req.namespace(), str_is)
            && check(&self.service_accounts, sa, |m, (ns, sa)| {
                // `ns/sa`, or a bare `sa` in any namespace.
                m.matches(sa) || m.matches(&format!("{ns}/{sa}"))
            })
            && check(&self.ip_blocks, req.source_ip, ip_in)
            && check(&self.remote_ip_blocks, req.remote(), ip_in)
    }
}

impl Operation {
    fn matches(&self, req: &Attributes<'_>) -> bool {
        // The whole `Host`, port included, case-insensitive, as Istio matches `:authority`: a
        // policy names `foo.com:*` to match `foo.com` on any port.
        check(&self.hosts, req.host, StrMatch::matches_ignore_case)
            && check(&self.ports, req.destination_port, |m, p| *m == p)
            && check(&self.methods, Some(req.method), str_is)
            && check(&self.paths, Some(req.path_only()), PathMatch::matches)
    }
}

impl Condition {
    fn matches(&self, req: &Attributes<'_>) -> bool {
        match self {
            Self::Header(name, pair) => {
                let value = req
                    .headers
                    .and_then(|h| crate::header::joined_value(h, name));
                pair.test(value.as_deref(), str_is)
            }
            Self::SourceIp(p) => p.test(req.source_ip, ip_in),
            Self::RemoteIp(p) => p.test(req.remote(), ip_in),
            Self::DestinationIp(p) => p.test(req.destination_ip, ip_in),
            Self::SourceNamespace(p) => p.test(req.namespace(), str_is),
            Self::SourcePrincipal(p) => p.test(req.principal(), str_is),
            Self::DestinationPort(p) => p.test(req.destination_port, |m, p| *m == p),
            Self::Sni(p) => p.test(req.sni, str_is),
            Self::RequestPrincipal(p) => p.test(req.request_principal(), str_is),
            Self::Claim(path, p) => claim_matches(p, req.request_auth.and_then(|c| c.claim(path))),
        }
    }
}

/// Istio's claim matching: a string claim matches as one value, a list of strings when any
/// of its elements does (istiod's `MetadataListMatcher`); other types, or no claim, match no
/// value (and so pass `notValues`).
fn claim_matches(p: &Pair<StrMatch>, claim: Option<&serde_json::Value>) -> bool {
    use serde_json::Value;
    let hit = |list: &[StrMatch]| match claim {
        Some(Value::String(s)) => list.iter().any(|m| m.matches(s)),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .any(|s| list.iter().any(|m| m.matches(s))),
        _ => false,
    };
    (p.values.is_empty() || hit(&p.values)) && !hit(&p.not_values)
}

fn compile(p: &model::AuthorizationPolicy) -> Result<Policy, InvalidPolicy> {
    let err = |field: String, reason: String| InvalidPolicy {
        policy: p.name.clone(),
        field,
        reason,
    };
    let exact = |v: &str| Ok::<_, String>(StrMatch::new(v, false));
    let lower = |v: &str| Ok::<_, String>(StrMatch::new(v, true));
    let mut rules = Vec::with_capacity(p.rules.len());
    for (i, rule) in p.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        let mut from = Vec::new();
        for (j, s) in rule.from.iter().enumerate() {
            let at = format!("{at}.from[{j}].source");
            let wrap = |name: &str| {
                let at = at.clone();
                let name = name.to_owned();
                move |reason: String| err(format!("{at}.{name}"), reason)
            };
            from.push(Source {
                principals: Pair::try_new(&s.principals, exact).map_err(wrap("principals"))?,
                request_principals: Pair::try_new(&s.request_principals, exact)
                    .map_err(wrap("requestPrincipals"))?,
                namespaces: Pair::try_new(&s.namespaces, exact).map_err(wrap("namespaces"))?,
                service_accounts: Pair::try_new(&s.service_accounts, exact)
                    .map_err(wrap("serviceAccounts"))?,
                ip_blocks: Pair::try_new(&s.ip_blocks, matcher::cidr).map_err(wrap("ipBlocks"))?,
                remote_ip_blocks: Pair::try_new(&s.remote_ip_blocks, matcher::cidr)
                    .map_err(wrap("remoteIpBlocks"))?,
            });
        }
        let mut to = Vec::new();
        for (j, o) in rule.to.iter().enumerate() {
            let at = format!("{at}.to[{j}].operation");
            let wrap = |name: &str| {
                let at = at.clone();
                let name = name.to_owned();
                move |reason: String| err(format!("{at}.{name}"), reason)
            };
            to.push(Operation {
                hosts: Pair::try_new(&o.hosts, lower).map_err(wrap("hosts"))?,
                ports: Pair::try_new(&o.ports, matcher::port).map_err(wrap("ports"))?,
                methods: Pair::try_new(&o.methods, exact).map_err(wrap("methods"))?,
                paths: Pair::try_new(&o.paths, matcher::path_match).map_err(wrap("paths"))?,
            });
        }
        let mut when = Vec::new();
        for (j, c) in rule.when.iter().enumerate() {
            let at = format!("{at}.when[{j}]");
            let bad = |reason: String| err(at.clone(), reason);
            let strs = || Pair::try_new(&c.values, exact).map(|p| p.unwrap_or_else(Pair::empty));
            let ips = || {
                Pair::try_new(&c.values, matcher::cidr)
                    .map(|p| p.unwrap_or_else(Pair::empty))
                    .map_err(bad)
            };
            let cond = match c.key.as_str() {
                "source.ip" => Condition::SourceIp(ips()?),
                "remote.ip" => Condition::RemoteIp(ips()?),
                "destination.ip" => Condition::DestinationIp(ips()?),
                "source.namespace" => Condition::SourceNamespace(strs().map_err(bad)?),
                "source.principal" => Condition::SourcePrincipal(strs().map_err(bad)?),
                "connection.sni" => Condition::Sni(strs().map_err(bad)?),
                "request.auth.principal" => Condition::RequestPrincipal(strs().map_err(bad)?),
                "request.auth.audiences" => {
                    Condition::Claim(vec!["aud".into()], strs().map_err(bad)?)
                }
                "request.auth.presenter" => {
                    Condition::Claim(vec!["azp".into()], strs().map_err(bad)?)
                }
                key if key.starts_with("request.auth.claims") => {
                    let path = model::claim_path(key).ok_or_else(|| {
                        err(
                            format!("{at}.key"),
                            format!("{key:?} is not request.auth.claims[name] or [outer][inner]"),
                        )
                    })?;
                    Condition::Claim(
                        path.into_iter().map(str::to_owned).collect(),
                        strs().map_err(bad)?,
                    )
                }
                "destination.port" => Condition::DestinationPort(
                    Pair::try_new(&c.values, matcher::port)
                        .map(|p| p.unwrap_or_else(Pair::empty))
                        .map_err(bad)?,
                ),
                key => {
                    let header = key
                        .strip_prefix("request.headers[")
                        .and_then(|k| k.strip_suffix(']'))
                        .filter(|k| !k.is_empty());
                    match header {
                        Some(name) => {
                            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                                err(
                                    format!("{at}.key"),
                                    format!("{name:?} is not a valid header name"),
                                )
                            })?;
                            Condition::Header(name, strs().map_err(bad)?)
                        }
                        None => {
                            return Err(err(
                                format!("{at}.key"),
                                format!(
                                    "condition key {key:?} is not supported (supported: \
                                     request.headers[...], source.ip, remote.ip, \
                                     source.namespace, source.principal, destination.ip, \
                                     destination.port, connection.sni, request.auth.principal, \
                                     request.auth.audiences, request.auth.presenter, \
                                     request.auth.claims[...])"
                                ),
                            ));
                        }
                    }
                }
            };
            when.push(cond);
        }
        rules.push(Rule { from, to, when });
    }
    Ok(Policy {
        name: p.name.as_str().into(),
        rules,
    })
}

#[cfg(test)]
mod index_tests;
#[cfg(test)]
mod tests;
