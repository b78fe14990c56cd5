//! The table of authorization cases. Each case is Istio YAML loaded through the real loader
//! (so selector and namespace scoping are exercised too), one request, and the expected
//! decision, with the Istio rule it checks. "AP" cites the AuthorizationPolicy reference
//! (istio.io/latest/docs/reference/config/security/authorization-policy/), "AC" the
//! authorization concepts page (istio.io/latest/docs/concepts/security/#authorization),
//! "Normalization" the normalization reference
//! (istio.io/latest/docs/reference/config/security/normalization/).

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use mesh_core::istio;
use mesh_core::model::{Labels, Workload};

use super::*;
use crate::identity::SpiffeId;

/// A policy in namespace `default` with `spec` given as a YAML flow mapping body.
fn ap(name: &str, spec: &str) -> String {
    ap_in("default", name, spec)
}

fn ap_in(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{ name: {name}, namespace: {ns} }}\nspec: {{ {spec} }}\n---\n"
    )
}

fn dry(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{ name: {name}, namespace: default, annotations: {{ istio.io/dry-run: \"true\" }} }}\nspec: {{ {spec} }}\n---\n"
    )
}

/// An ALLOW policy with one rule.
fn allow(rule: &str) -> String {
    ap("allow", &format!("action: ALLOW, rules: [{{ {rule} }}]"))
}

/// A DENY policy with one rule.
fn deny(rule: &str) -> String {
    ap("deny", &format!("action: DENY, rules: [{{ {rule} }}]"))
}

/// The request of a case, owned.
#[derive(Clone)]
struct Req {
    peer: Option<PeerIdentity>,
    source_ip: Option<IpAddr>,
    remote_ip: Option<IpAddr>,
    destination_ip: Option<IpAddr>,
    port: Option<u16>,
    sni: Option<&'static str>,
    host: Option<&'static str>,
    method: &'static str,
    path: &'static str,
    headers: HeaderMap,
    jwt: Option<Claims>,
}

fn get(path: &'static str) -> Req {
    Req {
        peer: None,
        source_ip: Some("10.0.0.5".parse().unwrap()),
        remote_ip: None,
        destination_ip: Some("10.0.1.1".parse().unwrap()),
        port: Some(8080),
        sni: None,
        host: Some("web.default.svc.cluster.local"),
        method: "GET",
        path,
        headers: HeaderMap::new(),
        jwt: None,
    }
}

impl Req {
    fn from(mut self, ns: &str, sa: &str) -> Self {
        self.peer = Some(PeerIdentity::from(
            SpiffeId::from_parts("cluster.local", ns, sa).unwrap(),
        ));
        self
    }
    fn method(mut self, m: &'static str) -> Self {
        self.method = m;
        self
    }
    fn ip(mut self, ip: &str) -> Self {
        self.source_ip = Some(ip.parse().unwrap());
        self
    }
    fn remote(mut self, ip: &str) -> Self {
        self.remote_ip = Some(ip.parse().unwrap());
        self
    }
    fn dest_ip(mut self, ip: &str) -> Self {
        self.destination_ip = Some(ip.parse().unwrap());
        self
    }
    fn port(mut self, p: u16) -> Self {
        self.port = Some(p);
        self
    }
    fn sni(mut self, s: &'static str) -> Self {
        self.sni = Some(s);
        self
    }
    fn host(mut self, h: &'static str) -> Self {
        self.host = Some(h);
        self
    }
    /// A verified token with `claims` (`iss` and `sub` among them).
    fn jwt(mut self, claims: serde_json::Value) -> Self {
        self.jwt = Some(Claims::new(claims.as_object().unwrap().clone(), ""));
        self
    }
    fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers
            .append(HeaderName::from_static(k), HeaderValue::from_static(v));
        self
    }
    fn attrs(&self) -> Attributes<'_> {
        Attributes {
            peer: self.peer.as_ref(),
            source_ip: self.source_ip,
            remote_ip: self.remote_ip,
            destination_ip: self.destination_ip,
            destination_port: self.port,
            sni: self.sni,
            host: self.host,
            method: self.method,
            path: self.path,
            headers: Some(&self.headers),
            request_auth: self.jwt.as_ref(),
        }
    }
}

use Decision::{Allow as A, Deny as D};

struct Case {
    /// The Istio rule the case checks.
    rule: &'static str,
    yaml: String,
    req: Req,
    want: Decision,
}

fn case(rule: &'static str, yaml: impl Into<String>, req: Req, want: Decision) -> Case {
    Case {
        rule,
        yaml: yaml.into(),
        req,
        want,
    }
}

fn workload() -> Workload {
    Workload {
        labels: Labels::from([("app".to_owned(), "web".to_owned())]),
        ..Workload::default()
    }
}

fn engine(yaml: &str) -> Engine {
    let outcome = istio::load(&[("case.yaml", yaml)], &workload());
    let errors: Vec<String> = outcome.errors().map(ToString::to_string).collect();
    assert!(errors.is_empty(), "{errors:#?}\n{yaml}");
    Engine::new(&outcome.config.unwrap().authorization).unwrap()
}

#[allow(clippy::too_many_lines)]
fn cases() -> Vec<Case> {
    let ns = |n: &str| format!("from: [{{ source: {{ namespaces: [{n}] }} }}]");
    vec![
        // --- request principals and request.auth.* (AP "Source", "Condition"; Istio's
        // "require JWT" recipe in the authorization-for-JWT task) ---
        case(
            "AP: requestPrincipals [\"*\"] needs a verified token: none -> deny",
            allow("from: [{ source: { requestPrincipals: [\"*\"] } }]"),
            get("/"),
            D,
        ),
        case(
            "AP: requestPrincipals [\"*\"] with a verified token -> allow",
            allow("from: [{ source: { requestPrincipals: [\"*\"] } }]"),
            get("/").jwt(serde_json::json!({"iss": "https://idp", "sub": "alice"})),
            A,
        ),
        case(
            "AP: requestPrincipals match iss/sub exactly",
            allow("from: [{ source: { requestPrincipals: [\"https://idp/alice\"] } }]"),
            get("/").jwt(serde_json::json!({"iss": "https://idp", "sub": "bob"})),
            D,
        ),
        case(
            "AP: requestPrincipals take prefix matches",
            allow("from: [{ source: { requestPrincipals: [\"https://idp/*\"] } }]"),
            get("/").jwt(serde_json::json!({"iss": "https://idp", "sub": "bob"})),
            A,
        ),
        case(
            "AP: notRequestPrincipals [\"*\"] in a DENY policy denies requests without a token",
            deny("from: [{ source: { notRequestPrincipals: [\"*\"] } }]"),
            get("/"),
            D,
        ),
        case(
            "AP: notRequestPrincipals [\"*\"] lets a verified token through",
            deny("from: [{ source: { notRequestPrincipals: [\"*\"] } }]"),
            get("/").jwt(serde_json::json!({"iss": "https://idp", "sub": "alice"})),
            A,
        ),
        case(
            "AP: request.auth.claims[groups] matches an element of a list claim",
            allow("when: [{ key: \"request.auth.claims[groups]\", values: [admins] }]"),
            get("/").jwt(serde_json::json!({"iss": "i", "sub": "s", "groups": ["dev", "admins"]})),
            A,
        ),
        case(
            "AP: request.auth.claims[groups] without the value -> deny",
            allow("when: [{ key: \"request.auth.claims[groups]\", values: [admins] }]"),
            get("/").jwt(serde_json::json!({"iss": "i", "sub": "s", "groups": ["dev"]})),
            D,
        ),
        case(
            "AP: a claim condition without a token -> deny",
            allow("when: [{ key: \"request.auth.claims[groups]\", values: [admins] }]"),
            get("/"),
            D,
        ),
        case(
            "AP: nested claims request.auth.claims[a][b]",
            allow("when: [{ key: \"request.auth.claims[realm][role]\", values: [ops] }]"),
            get("/").jwt(serde_json::json!({"iss": "i", "sub": "s", "realm": {"role": "ops"}})),
            A,
        ),
        case(
            "AP: notValues of a claim",
            allow("when: [{ key: \"request.auth.claims[groups]\", notValues: [banned] }]"),
            get("/").jwt(serde_json::json!({"iss": "i", "sub": "s", "groups": ["dev", "banned"]})),
            D,
        ),
        case(
            "AP: request.auth.audiences reads aud",
            allow("when: [{ key: request.auth.audiences, values: [api] }]"),
            get("/").jwt(serde_json::json!({"iss": "i", "sub": "s", "aud": ["web", "api"]})),
            A,
        ),
        case(
            "AP: request.auth.presenter reads azp",
            allow("when: [{ key: request.auth.presenter, values: [cli] }]"),
            get("/").jwt(serde_json::json!({"iss": "i", "sub": "s", "azp": "web"})),
            D,
        ),
        case(
            "AP: request.auth.principal is iss/sub",
            allow("when: [{ key: request.auth.principal, values: [\"i/s\"] }]"),
            get("/").jwt(serde_json::json!({"iss": "i", "sub": "s"})),
            A,
        ),
        // --- evaluation order and defaults (AC "Authorization policy precedence") ---
        case(
            "AC: no policy applies to the workload -> allow",
            "",
            get("/"),
            A,
        ),
        case(
            "AC: ALLOW policies exist and none matches -> deny",
            allow(&ns("frontend")),
            get("/").from("other", "sa"),
            D,
        ),
        case(
            "AC: an ALLOW rule matches -> allow",
            allow(&ns("frontend")),
            get("/").from("frontend", "web"),
            A,
        ),
        case(
            "AC: DENY is evaluated before ALLOW",
            allow("") + &deny(&ns("frontend")),
            get("/").from("frontend", "web"),
            D,
        ),
        case(
            "AC: a DENY policy that does not match leaves the request to ALLOW",
            allow("") + &deny(&ns("evil")),
            get("/").from("frontend", "web"),
            A,
        ),
        case(
            "AC: only DENY policies and none matches -> allow",
            deny(&ns("evil")),
            get("/").from("frontend", "web"),
            A,
        ),
        case(
            "AP: action defaults to ALLOW",
            ap("x", &format!("rules: [{{ {} }}]", ns("frontend"))),
            get("/").from("other", "web"),
            D,
        ),
        case(
            "AP allow-nothing: ALLOW with no rules denies everything",
            ap("nothing", "action: ALLOW"),
            get("/").from("frontend", "web"),
            D,
        ),
        case(
            "AP allow-nothing: empty spec {} denies everything",
            ap("nothing", ""),
            get("/"),
            D,
        ),
        case(
            "AP deny-all: DENY with an empty rule denies everything",
            ap("all", "action: DENY, rules: [{}]"),
            get("/").from("frontend", "web"),
            D,
        ),
        case(
            "AP: DENY with no rules matches nothing",
            ap("none", "action: DENY"),
            get("/"),
            A,
        ),
        case(
            "AP allow-all: ALLOW with an empty rule allows everything",
            ap("all", "action: ALLOW, rules: [{}]"),
            get("/x"),
            A,
        ),
        case(
            "AP allow-all beats allow-nothing: any matching ALLOW allows",
            ap("all", "rules: [{}]") + &ap("nothing", ""),
            get("/"),
            A,
        ),
        case(
            "AC: deny-all DENY overrides allow-all ALLOW",
            ap("all", "rules: [{}]") + &ap("d", "action: DENY, rules: [{}]"),
            get("/"),
            D,
        ),
        case(
            "AC: AUDIT does not change an allow",
            ap("audit", "action: AUDIT, rules: [{}]"),
            get("/"),
            A,
        ),
        case(
            "AC: AUDIT does not count as ALLOW policy (no default deny)",
            ap(
                "audit",
                &format!("action: AUDIT, rules: [{{ {} }}]", ns("frontend")),
            ),
            get("/").from("other", "x"),
            A,
        ),
        case(
            "AC: AUDIT does not change a deny",
            ap("audit", "action: AUDIT, rules: [{}]") + &ap("nothing", ""),
            get("/"),
            D,
        ),
        case(
            "AP rules: a rule matches when any from, any to and all when match",
            allow(
                "from: [{ source: { namespaces: [a] } }, { source: { namespaces: [frontend] } }]",
            ),
            get("/").from("frontend", "w"),
            A,
        ),
        case(
            "AP rules: any rule of the list may match",
            ap(
                "p",
                "rules: [{ to: [{ operation: { paths: [/a] } }] }, { to: [{ operation: { paths: [/b] } }] }]",
            ),
            get("/b"),
            A,
        ),
        case(
            "AP rules: from and to must both match",
            allow(
                "from: [{ source: { namespaces: [frontend] } }], to: [{ operation: { methods: [GET] } }]",
            ),
            get("/").from("frontend", "w").method("POST"),
            D,
        ),
        case(
            "AP rules: to matches when any operation matches",
            allow("to: [{ operation: { methods: [POST] } }, { operation: { paths: [/ok] } }]"),
            get("/ok"),
            A,
        ),
        case(
            "AP source: all fields of one source must match",
            allow(
                "from: [{ source: { namespaces: [frontend], principals: [cluster.local/ns/frontend/sa/web] } }]",
            ),
            get("/").from("frontend", "other"),
            D,
        ),
        case(
            "AP operation: all fields of one operation must match",
            allow("to: [{ operation: { methods: [GET], paths: [/a] } }]"),
            get("/b"),
            D,
        ),
        // --- scope: root namespace, namespace, selector (AP "selector", AC "policy target") ---
        case(
            "AC: a root-namespace (istio-system) policy applies mesh-wide",
            ap_in("istio-system", "mesh", "action: DENY, rules: [{}]"),
            get("/"),
            D,
        ),
        case(
            "AC: a policy in another namespace does not apply",
            ap_in("other", "p", "action: DENY, rules: [{}]"),
            get("/"),
            A,
        ),
        case(
            "AP selector: matching labels select the workload",
            ap(
                "p",
                "selector: { matchLabels: { app: web } }, action: DENY, rules: [{}]",
            ),
            get("/"),
            D,
        ),
        case(
            "AP selector: other labels do not select the workload",
            ap(
                "p",
                "selector: { matchLabels: { app: db } }, action: DENY, rules: [{}]",
            ),
            get("/"),
            A,
        ),
        case(
            "AP selector: an ALLOW for other workloads does not default-deny this one",
            ap("p", "selector: { matchLabels: { app: db } }, rules: [{}]")
                + &ap("q", "selector: { matchLabels: { app: db } }"),
            get("/"),
            A,
        ),
        // --- principals ---
        case(
            "AP source.principals: exact match",
            allow("from: [{ source: { principals: [cluster.local/ns/frontend/sa/web] } }]"),
            get("/").from("frontend", "web"),
            A,
        ),
        case(
            "AP source.principals: no match",
            allow("from: [{ source: { principals: [cluster.local/ns/frontend/sa/web] } }]"),
            get("/").from("frontend", "api"),
            D,
        ),
        case(
            "AP source.principals: prefix match",
            allow("from: [{ source: { principals: [cluster.local/ns/frontend/*] } }]"),
            get("/").from("frontend", "api"),
            A,
        ),
        case(
            "AP source.principals: suffix match",
            allow("from: [{ source: { principals: [\"*/sa/web\"] } }]"),
            get("/").from("any", "web"),
            A,
        ),
        case(
            "AP source.principals: \"*\" requires an authenticated peer (presence)",
            allow("from: [{ source: { principals: [\"*\"] } }]"),
            get("/"),
            D,
        ),
        case(
            "AP source.principals: \"*\" matches any mTLS peer",
            allow("from: [{ source: { principals: [\"*\"] } }]"),
            get("/").from("x", "y"),
            A,
        ),
        case(
            "AP source.principals: plaintext has no principal",
            allow("from: [{ source: { principals: [cluster.local/ns/frontend/sa/web] } }]"),
            get("/"),
            D,
        ),
        case(
            "AP source.notPrincipals: listed principal excluded",
            allow("from: [{ source: { notPrincipals: [cluster.local/ns/frontend/sa/web] } }]"),
            get("/").from("frontend", "web"),
            D,
        ),
        case(
            "AP source.notPrincipals: other principal passes",
            allow("from: [{ source: { notPrincipals: [cluster.local/ns/frontend/sa/web] } }]"),
            get("/").from("frontend", "api"),
            A,
        ),
        case(
            "AP source.notPrincipals [\"*\"] in DENY: denies plaintext (require mTLS)",
            deny("from: [{ source: { notPrincipals: [\"*\"] } }]"),
            get("/"),
            D,
        ),
        case(
            "AP source.notPrincipals [\"*\"] in DENY: mTLS peer passes",
            deny("from: [{ source: { notPrincipals: [\"*\"] } }]"),
            get("/").from("a", "b"),
            A,
        ),
        // --- namespaces ---
        case(
            "AP source.namespaces: exact match (the seed's frontend-only)",
            allow(&ns("frontend")),
            get("/").from("frontend", "web"),
            A,
        ),
        case(
            "AP source.namespaces: other namespace denied",
            allow(&ns("frontend")),
            get("/").from("backend", "web"),
            D,
        ),
        case(
            "AP source.namespaces: prefix match",
            allow(&ns("front*")),
            get("/").from("frontend-2", "web"),
            A,
        ),
        case(
            "AP source.namespaces: suffix match",
            allow(&ns("\"*end\"")),
            get("/").from("backend", "web"),
            A,
        ),
        case(
            "AP source.namespaces: needs mTLS; plaintext denied",
            allow(&ns("frontend")),
            get("/"),
            D,
        ),
        case(
            "AP source.notNamespaces: listed namespace excluded",
            allow("from: [{ source: { notNamespaces: [prod] } }]"),
            get("/").from("prod", "x"),
            D,
        ),
        case(
            "AP source.notNamespaces: other namespace passes",
            allow("from: [{ source: { notNamespaces: [prod] } }]"),
            get("/").from("dev", "x"),
            A,
        ),
        case(
            "AP source.notNamespaces in DENY: deny everything not from istio-system",
            deny("from: [{ source: { notNamespaces: [istio-system] } }]"),
            get("/").from("default", "x"),
            D,
        ),
        // --- serviceAccounts ---
        case(
            "AP source.serviceAccounts: ns/sa match",
            allow("from: [{ source: { serviceAccounts: [frontend/web] } }]"),
            get("/").from("frontend", "web"),
            A,
        ),
        case(
            "AP source.serviceAccounts: other sa denied",
            allow("from: [{ source: { serviceAccounts: [frontend/web] } }]"),
            get("/").from("frontend", "api"),
            D,
        ),
        case(
            "AP source.notServiceAccounts: listed sa excluded",
            allow("from: [{ source: { notServiceAccounts: [frontend/web] } }]"),
            get("/").from("frontend", "web"),
            D,
        ),
        // --- ipBlocks / remoteIpBlocks ---
        case(
            "AP source.ipBlocks: address inside CIDR",
            allow("from: [{ source: { ipBlocks: [10.0.0.0/24] } }]"),
            get("/").ip("10.0.0.9"),
            A,
        ),
        case(
            "AP source.ipBlocks: address outside CIDR",
            allow("from: [{ source: { ipBlocks: [10.0.0.0/24] } }]"),
            get("/").ip("10.0.1.9"),
            D,
        ),
        case(
            "AP source.ipBlocks: single address",
            allow("from: [{ source: { ipBlocks: [192.168.1.7] } }]"),
            get("/").ip("192.168.1.7"),
            A,
        ),
        case(
            "AP source.ipBlocks: IPv6 CIDR",
            allow("from: [{ source: { ipBlocks: [\"fd00::/8\"] } }]"),
            get("/").ip("fd00::1"),
            A,
        ),
        case(
            "AP source.notIpBlocks: address inside excluded",
            allow("from: [{ source: { notIpBlocks: [10.0.0.0/8] } }]"),
            get("/").ip("10.2.3.4"),
            D,
        ),
        case(
            "AP source.notIpBlocks: address outside passes",
            allow("from: [{ source: { notIpBlocks: [10.0.0.0/8] } }]"),
            get("/").ip("172.16.0.1"),
            A,
        ),
        case(
            "AP source.ipBlocks: the direct peer, not X-Forwarded-For",
            allow("from: [{ source: { ipBlocks: [1.2.3.0/24] } }]"),
            get("/").ip("10.0.0.1").remote("1.2.3.4"),
            D,
        ),
        case(
            "AP source.remoteIpBlocks: the original client address",
            allow("from: [{ source: { remoteIpBlocks: [1.2.3.0/24] } }]"),
            get("/").ip("10.0.0.1").remote("1.2.3.4"),
            A,
        ),
        case(
            "AP source.remoteIpBlocks: without XFF the peer address is used",
            allow("from: [{ source: { remoteIpBlocks: [10.0.0.0/24] } }]"),
            get("/").ip("10.0.0.1"),
            A,
        ),
        case(
            "AP source.notRemoteIpBlocks: excluded client",
            deny(
                "from: [{ source: { remoteIpBlocks: [0.0.0.0/0], notRemoteIpBlocks: [1.2.3.4] } }]",
            ),
            get("/").remote("1.2.3.4"),
            A,
        ),
        case(
            "AP source.notRemoteIpBlocks: other client denied by DENY",
            deny(
                "from: [{ source: { remoteIpBlocks: [0.0.0.0/0], notRemoteIpBlocks: [1.2.3.4] } }]",
            ),
            get("/").remote("5.6.7.8"),
            D,
        ),
        // --- hosts ---
        case(
            "AP operation.hosts: exact match",
            allow("to: [{ operation: { hosts: [web.default.svc.cluster.local] } }]"),
            get("/"),
            A,
        ),
        case(
            "AP operation.hosts: case-insensitive",
            allow("to: [{ operation: { hosts: [WEB.default.svc.cluster.local] } }]"),
            get("/").host("web.DEFAULT.svc.cluster.local"),
            A,
        ),
        case(
            "AP operation.hosts: suffix match",
            allow("to: [{ operation: { hosts: [\"*.example.com\"] } }]"),
            get("/").host("api.example.com"),
            A,
        ),
        case(
            "AP operation.hosts: prefix match",
            allow("to: [{ operation: { hosts: [\"web.*\"] } }]"),
            get("/").host("web.other"),
            A,
        ),
        case(
            "AP operation.hosts: the port is part of the Host (exact match only)",
            allow("to: [{ operation: { hosts: [example.com] } }]"),
            get("/").host("example.com:8080"),
            D,
        ),
        case(
            "AP operation.hosts: `name:*` matches the name with a port",
            allow("to: [{ operation: { hosts: [\"example.com:*\"] } }]"),
            get("/").host("Example.com:8080"),
            A,
        ),
        case(
            "AP operation.hosts: `name:*` does not match the bare name",
            allow("to: [{ operation: { hosts: [\"example.com:*\"] } }]"),
            get("/").host("example.com"),
            D,
        ),
        case(
            "AP operation.notHosts in DENY: a Host with a port is not the listed host",
            deny("to: [{ operation: { notHosts: [internal.svc] } }]"),
            get("/").host("internal.svc:8080"),
            D,
        ),
        case(
            "AP operation.notHosts in DENY: the listed host passes",
            deny("to: [{ operation: { notHosts: [internal.svc] } }]"),
            get("/").host("INTERNAL.svc"),
            A,
        ),
        case(
            "AP operation.hosts: suffix match ignores case",
            allow("to: [{ operation: { hosts: [\"*.Example.com\"] } }]"),
            get("/").host("API.EXAMPLE.COM"),
            A,
        ),
        case(
            "AP operation.hosts: other host denied",
            allow("to: [{ operation: { hosts: [example.com] } }]"),
            get("/").host("evil.com"),
            D,
        ),
        case(
            "AP operation.notHosts: listed host excluded",
            allow("to: [{ operation: { notHosts: [admin.example.com] } }]"),
            get("/").host("admin.example.com"),
            D,
        ),
        case(
            "AP operation.notHosts: other host passes",
            allow("to: [{ operation: { notHosts: [admin.example.com] } }]"),
            get("/").host("www.example.com"),
            A,
        ),
        // --- ports ---
        case(
            "AP operation.ports: destination port match",
            allow("to: [{ operation: { ports: [\"8080\"] } }]"),
            get("/").port(8080),
            A,
        ),
        case(
            "AP operation.ports: other port denied",
            allow("to: [{ operation: { ports: [\"8080\"] } }]"),
            get("/").port(9090),
            D,
        ),
        case(
            "AP operation.notPorts: listed port excluded",
            allow("to: [{ operation: { notPorts: [\"9090\"] } }]"),
            get("/").port(9090),
            D,
        ),
        case(
            "AP operation.notPorts: other port passes",
            allow("to: [{ operation: { notPorts: [\"9090\"] } }]"),
            get("/").port(8080),
            A,
        ),
        // --- methods ---
        case(
            "AP operation.methods: GET allowed",
            allow("to: [{ operation: { methods: [GET, HEAD] } }]"),
            get("/"),
            A,
        ),
        case(
            "AP operation.methods: POST denied",
            allow("to: [{ operation: { methods: [GET, HEAD] } }]"),
            get("/").method("POST"),
            D,
        ),
        case(
            "AP operation.methods: case-sensitive (get != GET)",
            allow("to: [{ operation: { methods: [get] } }]"),
            get("/"),
            D,
        ),
        case(
            "AP operation.notMethods: listed method excluded",
            deny("to: [{ operation: { notMethods: [GET] } }]"),
            get("/").method("DELETE"),
            D,
        ),
        case(
            "AP operation.notMethods: other method passes",
            deny("to: [{ operation: { notMethods: [GET] } }]"),
            get("/"),
            A,
        ),
        // --- paths ---
        case(
            "AP operation.paths: exact match",
            allow("to: [{ operation: { paths: [/info] } }]"),
            get("/info"),
            A,
        ),
        case(
            "AP operation.paths: exact match ignores the query string",
            allow("to: [{ operation: { paths: [/info] } }]"),
            get("/info?x=1"),
            A,
        ),
        case(
            "AP operation.paths: exact is not prefix",
            allow("to: [{ operation: { paths: [/info] } }]"),
            get("/info/x"),
            D,
        ),
        case(
            "AP operation.paths: prefix match",
            allow("to: [{ operation: { paths: [/api/*] } }]"),
            get("/api/v1/users"),
            A,
        ),
        case(
            "AP operation.paths: prefix mismatch",
            allow("to: [{ operation: { paths: [/api/*] } }]"),
            get("/apx"),
            D,
        ),
        case(
            "AP operation.paths: suffix match",
            allow("to: [{ operation: { paths: [\"*.png\"] } }]"),
            get("/img/a.png"),
            A,
        ),
        case(
            "AP operation.paths: \"*\" is presence: any path",
            allow("to: [{ operation: { paths: [\"*\"] } }]"),
            get("/anything"),
            A,
        ),
        case(
            "AP operation.paths: {*} matches one segment",
            allow("to: [{ operation: { paths: [\"/foo/{*}/bar\"] } }]"),
            get("/foo/x/bar"),
            A,
        ),
        case(
            "AP operation.paths: {*} does not match two segments",
            allow("to: [{ operation: { paths: [\"/foo/{*}/bar\"] } }]"),
            get("/foo/x/y/bar"),
            D,
        ),
        case(
            "AP operation.paths: {*} does not match an empty segment",
            allow("to: [{ operation: { paths: [\"/foo/{*}/bar\"] } }]"),
            get("/foo//bar"),
            D,
        ),
        case(
            "AP operation.paths: {**} matches several segments",
            allow("to: [{ operation: { paths: [\"/foo/{**}\"] } }]"),
            get("/foo/a/b/c"),
            A,
        ),
        case(
            "AP operation.paths: {**} needs its prefix",
            allow("to: [{ operation: { paths: [\"/foo/{**}\"] } }]"),
            get("/bar/a"),
            D,
        ),
        case(
            "AP operation.paths: {*} then {**}",
            allow("to: [{ operation: { paths: [\"/v/{*}/files/{**}\"] } }]"),
            get("/v/1/files/a/b.txt"),
            A,
        ),
        case(
            "AP operation.notPaths: listed path excluded",
            allow("to: [{ operation: { notPaths: [/admin*] } }]"),
            get("/admin/x"),
            D,
        ),
        case(
            "AP operation.notPaths: other path passes",
            allow("to: [{ operation: { notPaths: [/admin*] } }]"),
            get("/public"),
            A,
        ),
        case(
            "AP operation.notPaths with a template",
            deny("to: [{ operation: { notPaths: [\"/public/{**}\"] } }]"),
            get("/private/a"),
            D,
        ),
        // --- when conditions ---
        case(
            "AP when request.headers[]: exact value",
            allow("when: [{ key: \"request.headers[x-token]\", values: [abc] }]"),
            get("/").header("x-token", "abc"),
            A,
        ),
        case(
            "AP when request.headers[]: wrong value",
            allow("when: [{ key: \"request.headers[x-token]\", values: [abc] }]"),
            get("/").header("x-token", "zzz"),
            D,
        ),
        case(
            "AP when request.headers[]: absent header fails values",
            allow("when: [{ key: \"request.headers[x-token]\", values: [abc] }]"),
            get("/"),
            D,
        ),
        case(
            "AP when request.headers[]: \"*\" presence",
            allow("when: [{ key: \"request.headers[x-token]\", values: [\"*\"] }]"),
            get("/").header("x-token", "q"),
            A,
        ),
        case(
            "AP when request.headers[]: prefix value",
            allow("when: [{ key: \"request.headers[user-agent]\", values: [\"curl/*\"] }]"),
            get("/").header("user-agent", "curl/8.5"),
            A,
        ),
        case(
            "AP when request.headers[]: notValues",
            allow("when: [{ key: \"request.headers[x-env]\", notValues: [prod] }]"),
            get("/").header("x-env", "prod"),
            D,
        ),
        case(
            "AP when request.headers[]: notValues with absent header passes",
            allow("when: [{ key: \"request.headers[x-env]\", notValues: [prod] }]"),
            get("/"),
            A,
        ),
        case(
            "Normalization: repeated headers are joined with ',' before matching",
            allow("when: [{ key: \"request.headers[x-role]\", values: [admin] }]"),
            get("/").header("x-role", "guest").header("x-role", "admin"),
            D,
        ),
        case(
            "Normalization: repeated headers match as the joined value",
            allow("when: [{ key: \"request.headers[x-role]\", values: [\"guest,admin\"] }]"),
            get("/").header("x-role", "guest").header("x-role", "admin"),
            A,
        ),
        case(
            "Normalization: a prefix matches the first of repeated headers",
            allow("when: [{ key: \"request.headers[x-role]\", values: [\"admin*\"] }]"),
            get("/").header("x-role", "admin").header("x-role", "guest"),
            A,
        ),
        case(
            "Normalization: notValues see the joined value of repeated headers",
            deny("when: [{ key: \"request.headers[x-env]\", notValues: [prod] }]"),
            get("/").header("x-env", "prod").header("x-env", "prod"),
            D,
        ),
        case(
            "AP when source.ip",
            allow("when: [{ key: source.ip, values: [10.0.0.0/16] }]"),
            get("/").ip("10.0.9.9"),
            A,
        ),
        case(
            "AP when source.ip notValues",
            allow("when: [{ key: source.ip, notValues: [10.0.0.0/16] }]"),
            get("/").ip("10.0.9.9"),
            D,
        ),
        case(
            "AP when remote.ip",
            allow("when: [{ key: remote.ip, values: [1.2.3.4] }]"),
            get("/").remote("1.2.3.4"),
            A,
        ),
        case(
            "AP when source.namespace",
            allow("when: [{ key: source.namespace, values: [frontend] }]"),
            get("/").from("frontend", "x"),
            A,
        ),
        case(
            "AP when source.namespace notValues",
            allow("when: [{ key: source.namespace, notValues: [frontend] }]"),
            get("/").from("frontend", "x"),
            D,
        ),
        case(
            "AP when source.principal",
            allow("when: [{ key: source.principal, values: [cluster.local/ns/a/sa/b] }]"),
            get("/").from("a", "b"),
            A,
        ),
        case(
            "AP when source.principal notValues",
            allow("when: [{ key: source.principal, notValues: [\"cluster.local/ns/a/*\"] }]"),
            get("/").from("a", "c"),
            D,
        ),
        case(
            "AP when destination.ip",
            allow("when: [{ key: destination.ip, values: [10.0.1.0/24] }]"),
            get("/").dest_ip("10.0.1.7"),
            A,
        ),
        case(
            "AP when destination.ip notValues",
            allow("when: [{ key: destination.ip, notValues: [10.0.1.0/24] }]"),
            get("/").dest_ip("10.0.1.7"),
            D,
        ),
        case(
            "AP when destination.port",
            allow("when: [{ key: destination.port, values: [\"8080\"] }]"),
            get("/").port(8080),
            A,
        ),
        case(
            "AP when destination.port notValues",
            allow("when: [{ key: destination.port, notValues: [\"8080\"] }]"),
            get("/").port(8080),
            D,
        ),
        case(
            "AP when connection.sni",
            allow("when: [{ key: connection.sni, values: [\"*.svc.cluster.local\"] }]"),
            get("/").sni("web.default.svc.cluster.local"),
            A,
        ),
        case(
            "AP when connection.sni: plaintext has no SNI",
            allow("when: [{ key: connection.sni, values: [\"*\"] }]"),
            get("/"),
            D,
        ),
        case(
            "AP when: every condition must match",
            allow(
                "when: [{ key: source.namespace, values: [a] }, { key: \"request.headers[x]\", values: [\"1\"] }]",
            ),
            get("/").from("a", "s"),
            D,
        ),
        // --- dry-run (AP "istio.io/dry-run" annotation) ---
        case(
            "AP dry-run: a dry-run DENY does not deny",
            dry("d", "action: DENY, rules: [{}]"),
            get("/"),
            A,
        ),
        case(
            "AP dry-run: a dry-run ALLOW does not trigger default deny",
            dry(
                "d",
                "action: ALLOW, rules: [{ to: [{ operation: { paths: [/x] } }] }]",
            ),
            get("/y"),
            A,
        ),
        case(
            "AP dry-run: enforced policies still decide",
            dry("d", "rules: [{}]") + &ap("nothing", ""),
            get("/"),
            D,
        ),
    ]
}

#[test]
fn authorization_table() {
    let cases = cases();
    assert!(cases.len() >= 80, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let verdict = engine(&c.yaml).evaluate(&c.req.attrs());
        if verdict.decision != c.want {
            failures.push(format!(
                "case {i} [{}]: want {:?}, got {verdict}",
                c.rule, c.want
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn explain_names_the_deciding_policy_and_rule() {
    let yaml = ap(
        "allow-a",
        "rules: [{ to: [{ operation: { paths: [/a] } }] }, { to: [{ operation: { paths: [/b] } }] }]",
    ) + &deny("to: [{ operation: { paths: [/b/secret] } }]")
        + &ap(
            "audit",
            "action: AUDIT, rules: [{ to: [{ operation: { methods: [POST] } }] }]",
        );
    let e = engine(&yaml);
    assert_eq!(e.len(), 3);
    let v = e.evaluate(&get("/b").attrs());
    assert_eq!(
        v.reason,
        Reason::AllowedBy(RuleRef {
            policy: "default/allow-a".into(),
            rule: 1
        })
    );
    assert_eq!(v.to_string(), "allowed by default/allow-a rules[1]");
    let v = e.evaluate(&get("/b/secret").method("POST").attrs());
    assert_eq!(v.decision, Decision::Deny);
    assert_eq!(
        v.to_string(),
        "denied by default/deny rules[0]; audited by default/audit rules[0]"
    );
    let v = e.evaluate(&get("/c").attrs());
    assert_eq!(v.reason, Reason::NoAllowMatched);
    assert_eq!(v.to_string(), "denied: no ALLOW policy matched");
    assert!(v.audit.is_none() && v.shadow.is_none());
}

#[test]
fn dry_run_reports_the_shadow_decision() {
    let e = engine(
        &(dry(
            "would-deny",
            "action: DENY, rules: [{ to: [{ operation: { paths: [/x] } }] }]",
        )),
    );
    let v = e.evaluate(&get("/x").attrs());
    assert_eq!(v.decision, Decision::Allow);
    let shadow = v.shadow.clone().unwrap();
    assert_eq!(shadow.decision, Decision::Deny);
    assert_eq!(
        v.to_string(),
        "allowed: no ALLOW policy applies; dry-run: denied by default/would-deny rules[0]"
    );
    let v = e.evaluate(&get("/y").attrs());
    assert_eq!(v.shadow.unwrap().decision, Decision::Allow);
}

#[test]
fn unsupported_and_invalid_policies_are_clear_errors() {
    use mesh_core::model::{
        AuthorizationPolicy, AuthzRule, ConditionMatch, OperationMatch, ValueMatch,
    };
    let vm = |v: &str| ValueMatch {
        values: vec![v.into()],
        not_values: vec![],
    };
    let policy = |action, rule| AuthorizationPolicy {
        name: "ns/p".into(),
        action,
        rules: vec![rule],
        dry_run: false,
    };
    let custom = Engine::new(&[policy(
        AuthzAction::Custom("opa".into()),
        AuthzRule::default(),
    )])
    .unwrap_err();
    assert_eq!(custom.field, "spec.action");
    assert!(custom.to_string().contains("CUSTOM"), "{custom}");
    let template = Engine::new(&[policy(
        AuthzAction::Allow,
        AuthzRule {
            to: vec![OperationMatch {
                paths: vm("/a/{**}/b"),
                ..Default::default()
            }],
            ..Default::default()
        },
    )])
    .unwrap_err();
    assert_eq!(template.field, "spec.rules[0].to[0].operation.paths");
    assert!(template.reason.contains("last operator"), "{template}");
    let key = Engine::new(&[policy(
        AuthzAction::Allow,
        AuthzRule {
            when: vec![ConditionMatch {
                key: "request.auth.claims[]".into(),
                values: vm("x"),
            }],
            ..Default::default()
        },
    )])
    .unwrap_err();
    assert_eq!(key.field, "spec.rules[0].when[0].key");
    // The loader refuses the same things, naming the field.
    let outcome = istio::load(
        &[(
            "p.yaml",
            &ap("c", "action: CUSTOM, provider: { name: opa }, rules: [{}]"),
        )],
        &workload(),
    );
    let errors: Vec<String> = outcome.errors().map(ToString::to_string).collect();
    assert!(
        errors.len() == 1 && errors[0].contains("not supported"),
        "{errors:?}"
    );
    let outcome = istio::load(
        &[(
            "p.yaml",
            &allow("from: [{ source: { requestPrincipals: [\"*\"] } }]"),
        )],
        &workload(),
    );
    assert!(!outcome.has_errors(), "{:?}", outcome.diagnostics);
}

/// A TCP connection on `port` from `principal` (mutual TLS), or from no one (plaintext).
fn tcp_verdict(engine: &Engine, principal: Option<&str>, port: u16) -> Decision {
    let peer = principal.map(|p| PeerIdentity::from(SpiffeId::parse(p).unwrap()));
    engine
        .evaluate_tcp(&Attributes {
            peer: peer.as_ref(),
            destination_port: Some(port),
            ..Attributes::new("", "")
        })
        .decision
}

#[test]
fn tcp_connections_ignore_http_only_rules_as_istio_does() {
    let frontend = Some("spiffe://cluster.local/ns/frontend/sa/web");
    let other = Some("spiffe://cluster.local/ns/other/sa/web");
    // ALLOW on source namespace and port: applies to TCP as to HTTP.
    let e = engine(&allow(
        "from: [{ source: { namespaces: [frontend] } }], to: [{ operation: { ports: [\"9000\"] } }]",
    ));
    assert_eq!(tcp_verdict(&e, frontend, 9000), Decision::Allow);
    assert_eq!(tcp_verdict(&e, frontend, 9001), Decision::Deny);
    assert_eq!(tcp_verdict(&e, other, 9000), Decision::Deny);
    assert_eq!(tcp_verdict(&e, None, 9000), Decision::Deny);
    // An ALLOW rule with an HTTP-only field matches no TCP connection (AP: "ALLOW policy with
    // HTTP-only fields ... the rule is ignored for TCP traffic").
    let e = engine(&allow(
        "from: [{ source: { namespaces: [frontend] } }], to: [{ operation: { methods: [GET] } }]",
    ));
    assert_eq!(tcp_verdict(&e, frontend, 9000), Decision::Deny);
    let e = engine(&allow(
        "when: [{ key: \"request.headers[x-user]\", values: [alice] }]",
    ));
    assert_eq!(tcp_verdict(&e, frontend, 9000), Decision::Deny);
    // A DENY rule with HTTP-only fields drops them for TCP, denying more.
    let e = engine(&deny(
        "from: [{ source: { namespaces: [other] } }], to: [{ operation: { paths: [\"/admin\"] } }]",
    ));
    assert_eq!(tcp_verdict(&e, other, 9000), Decision::Deny);
    assert_eq!(tcp_verdict(&e, frontend, 9000), Decision::Allow);
    // The HTTP evaluation of the same policy still needs the path.
    let peer =
        PeerIdentity::from(SpiffeId::parse("spiffe://cluster.local/ns/other/sa/web").unwrap());
    let http = e.evaluate(&Attributes {
        peer: Some(&peer),
        ..Attributes::new("GET", "/public")
    });
    assert_eq!(http.decision, Decision::Allow);
}

#[test]
fn request_principals_are_http_only_fields_on_tcp() {
    // ALLOW: the rule names an HTTP-only field, so it matches no TCP connection.
    let e = engine(&allow("from: [{ source: { requestPrincipals: [\"*\"] } }]"));
    assert_eq!(tcp_verdict(&e, None, 9000), Decision::Deny);
    // DENY: the field is ignored, so the rule denies every connection.
    let e = engine(&deny("from: [{ source: { requestPrincipals: [\"*\"] } }]"));
    assert_eq!(tcp_verdict(&e, None, 9000), Decision::Deny);
    let e = engine(&deny(
        "when: [{ key: \"request.auth.claims[groups]\", values: [x] }]",
    ));
    assert_eq!(tcp_verdict(&e, None, 9000), Decision::Deny);
}
