//! The authz fuzz target's input format and runner, shared with the corpus replay test
//! (`mesh-policy/tests/fuzz_corpus.rs` includes this file by path).
//!
//! An input is text: Istio YAML (AuthorizationPolicy resources, any others are ignored; the workload is `app: reviews` in
//! `default`), then
//! a line `%%`, then one request per line: `METHOD PATH` followed by any of `peer=SPIFFE-ID`,
//! `ip=ADDR`, `remote=ADDR`, `dst=ADDR`, `port=N`, `host=NAME`, `sni=NAME` and `h:NAME=VALUE`
//! (a header). The policies the loader accepts for the default workload are compiled into the
//! authorization engine (which may reject them with an error) and every request is evaluated.
//! Nothing may panic; a verdict must agree with the reason it gives.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use mesh_core::model::{AuthorizationPolicy, Workload};
use mesh_policy::authz::{Attributes, Decision, Engine, InvalidPolicy, Reason, Verdict};
use mesh_policy::{PeerIdentity, SpiffeId};
use std::net::IpAddr;

/// One request's attributes, owned.
#[derive(Debug, Default)]
pub struct Request {
    /// The method.
    pub method: String,
    /// The path (with its query, if any).
    pub path: String,
    /// The verified peer.
    pub peer: Option<PeerIdentity>,
    /// `source.ip`.
    pub source_ip: Option<IpAddr>,
    /// `remote.ip`.
    pub remote_ip: Option<IpAddr>,
    /// `destination.ip`.
    pub destination_ip: Option<IpAddr>,
    /// `destination.port`.
    pub port: Option<u16>,
    /// Host.
    pub host: Option<String>,
    /// SNI.
    pub sni: Option<String>,
    /// Headers.
    pub headers: HeaderMap,
}

impl Request {
    /// The engine's view of this request.
    pub fn attributes(&self) -> Attributes<'_> {
        Attributes {
            peer: self.peer.as_ref(),
            source_ip: self.source_ip,
            remote_ip: self.remote_ip,
            destination_ip: self.destination_ip,
            destination_port: self.port,
            sni: self.sni.as_deref(),
            host: self.host.as_deref(),
            headers: Some(&self.headers),
            ..Attributes::new(&self.method, &self.path)
        }
    }
}

/// Splits an input into its YAML and its requests (words that do not parse are skipped).
pub fn decode(text: &str) -> (&str, Vec<Request>) {
    let (yaml, reqs) = match text.split_once("\n%%\n") {
        Some((y, r)) => (y, r),
        None => (text, ""),
    };
    let mut requests = Vec::new();
    for line in reqs.lines() {
        let mut words = line.split_whitespace();
        let (Some(method), Some(path)) = (words.next(), words.next()) else {
            continue;
        };
        let mut req = Request {
            method: method.to_owned(),
            path: path.to_owned(),
            ..Request::default()
        };
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "peer" => req.peer = SpiffeId::parse(value).ok().map(PeerIdentity::from),
                "ip" => req.source_ip = value.parse().ok(),
                "remote" => req.remote_ip = value.parse().ok(),
                "dst" => req.destination_ip = value.parse().ok(),
                "port" => req.port = value.parse().ok(),
                "host" => req.host = Some(value.to_owned()),
                "sni" => req.sni = Some(value.to_owned()),
                _ => {
                    if let Some(name) = key.strip_prefix("h:")
                        && let (Ok(n), Ok(v)) =
                            (HeaderName::try_from(name), HeaderValue::try_from(value))
                    {
                        req.headers.append(n, v);
                    }
                }
            }
        }
        requests.push(req);
    }
    (yaml, requests)
}

/// The policies the Istio loader accepts from `yaml` for the workload `app: reviews` in
/// namespace `default` (bookinfo's reviews, which the examples' policies select).
pub fn policies(yaml: &str) -> Vec<AuthorizationPolicy> {
    let parsed = mesh_core::istio::parse("fuzz.yaml", yaml);
    let mut workload = Workload::default();
    workload
        .labels
        .insert("app".to_owned(), "reviews".to_owned());
    let built = mesh_core::istio::build(&parsed.resources, &workload);
    built.config.map(|c| c.authorization).unwrap_or_default()
}

/// Loads the policies, builds the engine and evaluates every request.
pub fn run(data: &[u8]) -> Result<Vec<Verdict>, InvalidPolicy> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(Vec::new());
    };
    let (yaml, requests) = decode(text);
    let engine = Engine::new(&policies(yaml))?;
    let mut verdicts = Vec::with_capacity(requests.len());
    for req in &requests {
        let verdict = engine.evaluate(&req.attributes());
        let consistent = matches!(
            (&verdict.decision, &verdict.reason),
            (
                Decision::Allow,
                Reason::NoAllowPolicy | Reason::AllowedBy(_)
            ) | (Decision::Deny, Reason::DeniedBy(_) | Reason::NoAllowMatched)
        );
        assert!(consistent, "verdict {verdict:?} contradicts its reason");
        let _ = verdict.to_string();
        verdicts.push(verdict);
    }
    Ok(verdicts)
}
