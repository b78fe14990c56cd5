//! The index against the linear scan: generated policy lists and requests must get the same
//! verdict (decision, deciding rule, audit and dry-run shadow) either way, over HTTP and TCP;
//! plus the first-match order when several indexed policies match.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use mesh_core::model::{
    AuthorizationPolicy, AuthzRule, ConditionMatch, OperationMatch, SourceMatch, ValueMatch,
};

use super::*;
use crate::identity::SpiffeId;

/// SplitMix64: a small deterministic generator, so failures reproduce from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Request paths: shared prefixes, a query, an empty segment, non-ASCII (a key length can end
/// inside a character), case.
const PATHS: &[&str] = &[
    "/",
    "",
    "/a",
    "/a/b",
    "/a/b/c",
    "/A/b",
    "/b",
    "/b/x.json",
    "/api/v1/users",
    "/api/v1/users?page=2",
    "/api/v2/users",
    "/api/v10",
    "/items/7/detail",
    "/items//detail",
    "/items/7/detail/x",
    "/é/b",
    "/é",
    "/x.json",
];

/// Policy path values: exact, prefix, suffix, presence, templates.
const PATH_VALUES: &[&str] = &[
    "/a",
    "/a/b",
    "/b",
    "/A/b",
    "/api/v1/users",
    "/x.json",
    "/",
    "/é",
    "/a*",
    "/a/*",
    "/api/*",
    "/api/v1*",
    "/é*",
    "*.json",
    "*/users",
    "*b",
    "*",
    "/items/{*}/detail",
    "/items/{**}",
    "/api/{*}/users",
    "/{*}/b",
    "/{**}",
    "/a/{**}",
    "/api/v1/{*}",
];

const METHODS: &[&str] = &["GET", "POST", "get", "DELETE", ""];
const METHOD_VALUES: &[&str] = &["GET", "POST", "get", "DELETE", "*", "G*", "*T"];

/// Peers: Istio identities in a few namespaces, and one without `/ns/../sa/..`.
const PEERS: &[&str] = &[
    "spiffe://cluster.local/ns/ns0/sa/web",
    "spiffe://cluster.local/ns/ns1/sa/web",
    "spiffe://cluster.local/ns/ns1/sa/db",
    "spiffe://cluster.local/ns/ns2/sa/web",
    "spiffe://cluster.local/workload/x",
];
const PRINCIPAL_VALUES: &[&str] = &[
    "cluster.local/ns/ns0/sa/web",
    "cluster.local/ns/ns1/sa/web",
    "cluster.local/ns/ns1/sa/db",
    "cluster.local/workload/x",
    "cluster.local/ns/ns1/*",
    "*/sa/web",
    "*",
];
const NAMESPACE_VALUES: &[&str] = &["ns0", "ns1", "ns2", "NS1", "ns*", "*1", "*"];
const SA_VALUES: &[&str] = &["web", "ns1/db", "db"];
const HOSTS: &[&str] = &["web", "WEB.example", "web:8080", "db"];
const HOST_VALUES: &[&str] = &["web", "web.example", "*.example", "d*"];
const PORT_VALUES: &[&str] = &["8080", "9000"];
const IP_VALUES: &[&str] = &["10.0.0.0/8", "10.0.0.5", "192.168.0.0/16"];
const TENANTS: &[&str] = &["t0", "t1", "T1"];

/// 1 to 3 values, sometimes with `notValues`, sometimes only `notValues`.
fn value_match(rng: &mut Rng, pool: &[&str]) -> ValueMatch {
    let mut m = ValueMatch::default();
    if !rng.chance(10) {
        for _ in 0..=rng.below(3) {
            m.values.push(rng.pick(pool).to_owned());
        }
    }
    if m.values.is_empty() || rng.chance(20) {
        m.not_values.push(rng.pick(pool).to_owned());
    }
    m
}

/// A field constrained with probability `percent`.
fn field(rng: &mut Rng, percent: u64, pool: &[&str]) -> ValueMatch {
    if rng.chance(percent) {
        value_match(rng, pool)
    } else {
        ValueMatch::default()
    }
}

fn source(rng: &mut Rng) -> SourceMatch {
    SourceMatch {
        principals: field(rng, 40, PRINCIPAL_VALUES),
        namespaces: field(rng, 40, NAMESPACE_VALUES),
        service_accounts: field(rng, 10, SA_VALUES),
        ip_blocks: field(rng, 10, IP_VALUES),
        remote_ip_blocks: field(rng, 5, IP_VALUES),
        ..SourceMatch::default()
    }
}

fn operation(rng: &mut Rng) -> OperationMatch {
    OperationMatch {
        hosts: field(rng, 15, HOST_VALUES),
        ports: field(rng, 15, PORT_VALUES),
        methods: field(rng, 40, METHOD_VALUES),
        paths: field(rng, 60, PATH_VALUES),
    }
}

fn condition(rng: &mut Rng) -> ConditionMatch {
    let (key, pool) = match rng.below(6) {
        0 => ("request.headers[x-tenant]", TENANTS),
        1 => ("source.namespace", NAMESPACE_VALUES),
        2 => ("source.principal", PRINCIPAL_VALUES),
        3 => ("destination.port", PORT_VALUES),
        4 => ("source.ip", IP_VALUES),
        _ => ("connection.sni", HOST_VALUES),
    };
    ConditionMatch {
        key: key.to_owned(),
        values: value_match(rng, pool),
    }
}

fn rule(rng: &mut Rng) -> AuthzRule {
    let mut r = AuthzRule::default();
    for _ in 0..rng.below(3) {
        r.from.push(source(rng));
    }
    for _ in 0..rng.below(3) {
        r.to.push(operation(rng));
    }
    for _ in 0..rng.below(3) {
        if rng.chance(50) {
            r.when.push(condition(rng));
        }
    }
    r
}

fn policy(rng: &mut Rng, i: usize) -> AuthorizationPolicy {
    let action = match rng.below(10) {
        0..=3 => AuthzAction::Allow,
        4..=7 => AuthzAction::Deny,
        _ => AuthzAction::Audit,
    };
    // Mostly one rule; sometimes none (matches nothing) or several (any may match).
    let rules = match rng.below(10) {
        0 => 0,
        1..=6 => 1,
        _ => 2 + rng.below(2),
    };
    AuthorizationPolicy {
        name: format!("ns/p{i}"),
        action,
        rules: (0..rules).map(|_| rule(rng)).collect(),
        dry_run: rng.chance(20),
    }
}

/// A generated request, owned.
struct Req {
    peer: Option<PeerIdentity>,
    source_ip: Option<IpAddr>,
    port: Option<u16>,
    host: Option<&'static str>,
    sni: Option<&'static str>,
    method: &'static str,
    path: &'static str,
    headers: HeaderMap,
}

impl Req {
    fn generate(rng: &mut Rng) -> Self {
        let mut headers = HeaderMap::new();
        if rng.chance(60) {
            headers.append(
                HeaderName::from_static("x-tenant"),
                HeaderValue::from_static(rng.pick(TENANTS)),
            );
        }
        let ips = ["10.0.0.5", "10.1.2.3", "192.168.1.1", "172.16.0.1"];
        Self {
            peer: (!rng.chance(15))
                .then(|| PeerIdentity::from(SpiffeId::parse(rng.pick(PEERS)).unwrap())),
            source_ip: rng.chance(90).then(|| rng.pick(&ips).parse().unwrap()),
            port: rng.chance(90).then(|| [8080, 9000, 80][rng.below(3)]),
            host: rng.chance(90).then(|| rng.pick(HOSTS)),
            sni: rng.chance(30).then(|| rng.pick(HOSTS)),
            method: rng.pick(METHODS),
            path: rng.pick(PATHS),
            headers,
        }
    }

    fn attrs(&self) -> Attributes<'_> {
        Attributes {
            peer: self.peer.as_ref(),
            source_ip: self.source_ip,
            destination_port: self.port,
            host: self.host,
            sni: self.sni,
            headers: Some(&self.headers),
            ..Attributes::new(self.method, self.path)
        }
    }
}

/// Every list of the engine, for counting what got indexed.
fn lists(e: &Engine) -> [&Policies; 6] {
    [
        &e.deny.enforced,
        &e.deny.dry_run,
        &e.allow.enforced,
        &e.allow.dry_run,
        &e.audit.enforced,
        &e.audit.dry_run,
    ]
}

#[test]
fn the_index_decides_as_the_linear_scan_does() {
    let mut rng = Rng(0x5eed_0a07_1d3c);
    let (mut indexed, mut decided, mut evaluated, mut candidates) = (0, 0, 0, 0);
    let mut reasons = [0usize; 4];
    for set in 0..400 {
        let n = 1 + rng.below(if set % 4 == 0 { 120 } else { 30 });
        let policies: Vec<_> = (0..n).map(|i| policy(&mut rng, i)).collect();
        // Index every list, however short, so that small lists test the index too.
        let engine = Engine::with_min_indexed(&policies, 0).unwrap();
        indexed += lists(&engine).iter().filter(|l| l.index.is_some()).count();
        for _ in 0..60 {
            let req = Req::generate(&mut rng);
            let attrs = req.attrs();
            for (mode, got) in [
                (Mode::Http, engine.evaluate(&attrs)),
                (Mode::Tcp, engine.evaluate_tcp(&attrs)),
            ] {
                let want = engine.evaluate_linear(&attrs, mode);
                assert_eq!(
                    got, want,
                    "set {set} ({n} policies), {mode:?} {} {}\npolicies: {policies:#?}",
                    req.method, req.path
                );
                reasons[match &got.reason {
                    Reason::NoAllowPolicy => 0,
                    Reason::DeniedBy(_) => 1,
                    Reason::AllowedBy(_) => 2,
                    Reason::NoAllowMatched => 3,
                }] += 1;
                decided += usize::from(got.audit.is_some());
                decided += usize::from(got.shadow.is_some());
            }
            for list in lists(&engine) {
                if let Some(index) = &list.index {
                    evaluated += list.list.len();
                    candidates += index.candidates(&attrs, Mode::Http, false).count();
                }
            }
        }
    }
    // The generator reaches every outcome, and the index narrows the lists it covers (its
    // small pools share values between many policies: see the next tests for real narrowing).
    assert!(reasons.iter().all(|&r| r > 500), "{reasons:?}");
    assert!(decided > 1_000, "{decided} audited or shadowed verdicts");
    assert!(indexed > 500, "only {indexed} lists indexed");
    assert!(
        candidates * 10 < evaluated * 8,
        "{candidates} candidates of {evaluated} policies"
    );
}

/// `n` ALLOW policies `ns/p{i}` for exact paths `/svc/{i}`, with `extra` inserted at the
/// given positions.
fn with_paths(n: usize, extra: &[(usize, AuthorizationPolicy)]) -> Vec<AuthorizationPolicy> {
    let mut policies: Vec<_> = (0..n)
        .map(|i| AuthorizationPolicy {
            name: format!("ns/p{i}"),
            action: AuthzAction::Allow,
            rules: vec![AuthzRule {
                to: vec![OperationMatch {
                    paths: ValueMatch {
                        values: vec![format!("/svc/{i}")],
                        not_values: Vec::new(),
                    },
                    ..OperationMatch::default()
                }],
                ..AuthzRule::default()
            }],
            dry_run: false,
        })
        .collect();
    for (at, p) in extra {
        policies.insert(*at, p.clone());
    }
    policies
}

fn values(v: &[&str]) -> ValueMatch {
    ValueMatch {
        values: v.iter().map(|s| (*s).to_owned()).collect(),
        not_values: Vec::new(),
    }
}

#[test]
fn the_first_matching_policy_in_list_order_decides() {
    // Two policies match `/svc/7` from ns1: one keyed on the namespace, one on the path.
    let by_namespace = AuthorizationPolicy {
        name: "ns/by-namespace".into(),
        action: AuthzAction::Allow,
        rules: vec![
            AuthzRule {
                from: vec![SourceMatch {
                    namespaces: values(&["ns9"]),
                    ..SourceMatch::default()
                }],
                ..AuthzRule::default()
            },
            AuthzRule {
                from: vec![SourceMatch {
                    namespaces: values(&["ns1"]),
                    ..SourceMatch::default()
                }],
                ..AuthzRule::default()
            },
        ],
        dry_run: false,
    };
    let peer = PeerIdentity::from(SpiffeId::parse("spiffe://cluster.local/ns/ns1/sa/a").unwrap());
    let req = Attributes {
        peer: Some(&peer),
        ..Attributes::new("GET", "/svc/7")
    };
    let allowed_by = |policies: &[AuthorizationPolicy]| {
        let engine = Engine::new(policies).unwrap();
        assert!(engine.allow.enforced.index.is_some());
        let verdict = engine.evaluate(&req);
        assert_eq!(verdict, engine.evaluate_linear(&req, Mode::Http));
        match verdict.reason {
            Reason::AllowedBy(r) => r.to_string(),
            other => panic!("{other:?}"),
        }
    };
    // The namespace policy after the path's: the path's decides.
    assert_eq!(
        allowed_by(&with_paths(100, &[(50, by_namespace.clone())])),
        "ns/p7 rules[0]"
    );
    // Before it: the namespace policy decides, by its second rule.
    assert_eq!(
        allowed_by(&with_paths(100, &[(3, by_namespace)])),
        "ns/by-namespace rules[1]"
    );
    // Two path-keyed policies, one exact and one a prefix, in either order.
    let mut prefix = with_paths(1, &[]).remove(0);
    prefix.name = "ns/prefix".into();
    prefix.rules[0].to[0].paths = values(&["/svc/*"]);
    assert_eq!(
        allowed_by(&with_paths(100, &[(0, prefix.clone())])),
        "ns/prefix rules[0]"
    );
    assert_eq!(
        allowed_by(&with_paths(100, &[(99, prefix)])),
        "ns/p7 rules[0]"
    );
}

#[test]
fn distinct_exact_paths_evaluate_one_candidate() {
    let engine = Engine::new(&with_paths(1_000, &[])).unwrap();
    let index = engine.allow.enforced.index.as_ref().unwrap();
    let req = Attributes::new("GET", "/svc/999?x=1");
    assert_eq!(
        index
            .candidates(&req, Mode::Http, false)
            .collect::<Vec<_>>(),
        [999]
    );
    assert_eq!(
        engine.evaluate(&req).to_string(),
        "allowed by ns/p999 rules[0]"
    );
    // A TCP connection has no path: ALLOW rules with paths match none, none is a candidate.
    assert_eq!(index.candidates(&req, Mode::Tcp, false).count(), 0);
    assert_eq!(engine.evaluate_tcp(&req).reason, Reason::NoAllowMatched);
    // As DENY policies they all apply to TCP, the paths ignored.
    assert_eq!(index.candidates(&req, Mode::Tcp, true).count(), 1_000);
}

#[test]
fn short_lists_are_scanned() {
    let engine = Engine::new(&with_paths(MIN_INDEXED - 1, &[])).unwrap();
    assert!(engine.allow.enforced.index.is_none());
    let engine = Engine::new(&with_paths(MIN_INDEXED, &[])).unwrap();
    assert!(engine.allow.enforced.index.is_some());
}
