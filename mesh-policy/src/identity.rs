//! Workload identity: SPIFFE IDs, parsed strictly.
//!
//! A SPIFFE ID is `spiffe://<trust-domain>/<path>` (SPIFFE-ID spec, section 2). Istio's workload
//! identities use the path `ns/<namespace>/sa/<service-account>`; [`PeerIdentity`] is that
//! form, and is what the inbound side hands to authorization and to the application.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Why a string is not a valid SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSpiffeId {
    /// The scheme is not `spiffe://` (the scheme is lowercase only, spec 2.1).
    #[error("scheme: expected \"spiffe://\"")]
    Scheme,
    /// The trust domain is empty.
    #[error("trust domain: empty")]
    EmptyTrustDomain,
    /// The trust domain has a character outside `[a-z0-9.-_]` (spec 2.1: no port, no userinfo,
    /// lowercase only).
    #[error("trust domain: character {0:?} not allowed (only a-z, 0-9, '.', '-', '_')")]
    TrustDomainChar(char),
    /// A path segment is empty (`//` or a trailing `/`, spec 2.2).
    #[error("path: empty segment")]
    EmptySegment,
    /// A path segment is `.` or `..` (spec 2.2).
    #[error("path: relative segment {0:?}")]
    RelativeSegment(String),
    /// The path has a character outside `[A-Za-z0-9.-_]` (spec 2.2: no percent-encoding, query
    /// or fragment).
    #[error("path: character {0:?} not allowed (only A-Z, a-z, 0-9, '.', '-', '_')")]
    PathChar(char),
    /// The ID is longer than 2048 bytes (spec 2.3).
    #[error("length: {0} bytes, at most 2048 allowed")]
    TooLong(usize),
}

/// A SPIFFE ID, validated: `spiffe://trust-domain/path`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    /// The whole ID, as given (it is already canonical once valid); shared, as every request
    /// of a connection carries its peer's ID.
    uri: Arc<str>,
    /// Where the path starts in `uri` (at its `/`, or `uri.len()` without a path).
    path_at: usize,
}

const SCHEME: &str = "spiffe://";

impl SpiffeId {
    /// Parses `s` strictly per the SPIFFE-ID specification.
    pub fn parse(s: &str) -> Result<Self, InvalidSpiffeId> {
        if s.len() > 2048 {
            return Err(InvalidSpiffeId::TooLong(s.len()));
        }
        let rest = s.strip_prefix(SCHEME).ok_or(InvalidSpiffeId::Scheme)?;
        let (td, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        check_trust_domain(td)?;
        if !path.is_empty() {
            for seg in path[1..].split('/') {
                check_segment(seg)?;
            }
        }
        Ok(Self {
            uri: s.into(),
            path_at: SCHEME.len() + td.len(),
        })
    }

    /// The ID of an Istio workload: `spiffe://<td>/ns/<namespace>/sa/<service_account>`.
    pub fn from_parts(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, InvalidSpiffeId> {
        Self::parse(&format!(
            "{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    /// The trust domain (`cluster.local`).
    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.path_at]
    }

    /// The path, with its leading `/`, or `""`.
    pub fn path(&self) -> &str {
        &self.uri[self.path_at..]
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The Istio principal form: the ID without its scheme (`cluster.local/ns/a/sa/b`), as
    /// AuthorizationPolicy `principals` are written.
    pub fn principal(&self) -> &str {
        &self.uri[SCHEME.len()..]
    }

    /// The namespace and service account when the path is Istio's `/ns/<ns>/sa/<sa>`.
    pub fn istio_parts(&self) -> Option<(&str, &str)> {
        let mut it = self.path().strip_prefix('/')?.split('/');
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

fn check_trust_domain(td: &str) -> Result<(), InvalidSpiffeId> {
    if td.is_empty() {
        return Err(InvalidSpiffeId::EmptyTrustDomain);
    }
    match td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(c) => Err(InvalidSpiffeId::TrustDomainChar(c)),
        None => Ok(()),
    }
}

fn check_segment(seg: &str) -> Result<(), InvalidSpiffeId> {
    if seg.is_empty() {
        return Err(InvalidSpiffeId::EmptySegment);
    }
    if seg == "." || seg == ".." {
        return Err(InvalidSpiffeId::RelativeSegment(seg.to_owned()));
    }
    match seg
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(c) => Err(InvalidSpiffeId::PathChar(c)),
        None => Ok(()),
    }
}

impl FromStr for SpiffeId {
    type Err = InvalidSpiffeId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

/// The verified identity of the peer of an inbound connection, as put into request extensions.
///
/// `namespace` and `service_account` are set when the SPIFFE ID has Istio's form. Every part
/// is shared: each request of a connection carries a clone, which copies no string.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// The SPIFFE ID from the peer certificate's URI SAN.
    pub id: SpiffeId,
    /// The namespace from the ID's `/ns/<ns>/` part.
    pub namespace: Option<Arc<str>>,
    /// The service account from the ID's `/sa/<sa>` part.
    pub service_account: Option<Arc<str>>,
}

impl From<SpiffeId> for PeerIdentity {
    fn from(id: SpiffeId) -> Self {
        let (namespace, service_account) = match id.istio_parts() {
            Some((ns, sa)) => (Some(ns.into()), Some(sa.into())),
            None => (None, None),
        };
        Self {
            id,
            namespace,
            service_account,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/frontend/sa/web").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/frontend/sa/web");
        assert_eq!(id.principal(), "cluster.local/ns/frontend/sa/web");
        assert_eq!(id.istio_parts(), Some(("frontend", "web")));
        let peer = PeerIdentity::from(id);
        assert_eq!(peer.namespace.as_deref(), Some("frontend"));
        assert_eq!(peer.service_account.as_deref(), Some("web"));

        let bare = SpiffeId::parse("spiffe://example.org").unwrap();
        assert_eq!(bare.path(), "");
        assert_eq!(bare.istio_parts(), None);
        assert!(SpiffeId::parse("spiffe://td_1-x.y/a/B.c/d-e_f").is_ok());
        assert_eq!(
            SpiffeId::from_parts("cluster.local", "ns1", "sa1")
                .unwrap()
                .as_str(),
            "spiffe://cluster.local/ns/ns1/sa/sa1"
        );
    }

    #[test]
    fn invalid_ids() {
        use InvalidSpiffeId::*;
        let cases: &[(&str, InvalidSpiffeId)] = &[
            ("http://cluster.local/ns/a", Scheme),
            ("SPIFFE://cluster.local/ns/a", Scheme),
            ("spiffe:/cluster.local", Scheme),
            ("spiffe://", EmptyTrustDomain),
            ("spiffe:///ns/a", EmptyTrustDomain),
            ("spiffe://Cluster.local/ns/a", TrustDomainChar('C')),
            ("spiffe://cluster.local:8080/ns/a", TrustDomainChar(':')),
            ("spiffe://user@cluster.local/ns/a", TrustDomainChar('@')),
            ("spiffe://cluster.local/", EmptySegment),
            ("spiffe://cluster.local/ns//sa", EmptySegment),
            ("spiffe://cluster.local/ns/a/", EmptySegment),
            (
                "spiffe://cluster.local/ns/../sa",
                RelativeSegment("..".into()),
            ),
            ("spiffe://cluster.local/./a", RelativeSegment(".".into())),
            ("spiffe://cluster.local/ns/a?x=1", PathChar('?')),
            ("spiffe://cluster.local/ns/a#frag", PathChar('#')),
            ("spiffe://cluster.local/ns/a%20b", PathChar('%')),
            ("spiffe://cluster.local?x", TrustDomainChar('?')),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input).as_ref(), Err(want), "{input}");
        }
        let long = format!("spiffe://td/{}", "a".repeat(2048));
        assert!(matches!(SpiffeId::parse(&long), Err(TooLong(_))));
    }
}
