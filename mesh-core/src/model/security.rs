//! Peer authentication and authorization, as data (the enforcement lives in `mesh-policy`).

use std::collections::BTreeMap;

/// What an [`AuthorizationPolicy`] does when one of its rules matches.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum AuthzAction {
    /// Allow matching requests; when any ALLOW policy applies, requests matching none are denied.
    #[default]
    Allow,
    /// Deny matching requests (checked before ALLOW).
    Deny,
    /// Mark matching requests for audit logging; no effect on the decision.
    Audit,
    /// Delegate the decision to the named external provider.
    Custom(String),
}

/// A list of values a request attribute must match, and values it must not match.
///
/// Values use Istio's forms: exact, `prefix*`, `*suffix`, and `*` for "present".
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ValueMatch {
    /// The attribute matches when it matches any of these (an empty list matches anything).
    pub values: Vec<String>,
    /// The attribute must match none of these.
    pub not_values: Vec<String>,
}

impl ValueMatch {
    /// Whether neither list constrains anything.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.not_values.is_empty()
    }
}

/// Who sent the request (Istio's `Source`); every non-empty field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SourceMatch {
    /// Peer identities (`cluster.local/ns/default/sa/productpage`), from mTLS.
    pub principals: ValueMatch,
    /// Request identities (`iss/sub` of a validated JWT).
    pub request_principals: ValueMatch,
    /// Peer namespaces, from mTLS.
    pub namespaces: ValueMatch,
    /// Peer service accounts (`ns/sa` or `sa`), from mTLS.
    pub service_accounts: ValueMatch,
    /// Peer address blocks (CIDR or single IP).
    pub ip_blocks: ValueMatch,
    /// Original client address blocks (X-Forwarded-For aware).
    pub remote_ip_blocks: ValueMatch,
}

/// What the request does (Istio's `Operation`); every non-empty field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OperationMatch {
    /// Hosts (`Host` / `:authority`), case-insensitive.
    pub hosts: ValueMatch,
    /// Destination ports, as decimal strings.
    pub ports: ValueMatch,
    /// HTTP methods.
    pub methods: ValueMatch,
    /// Paths (without the query string).
    pub paths: ValueMatch,
}

/// An extra condition (`when`): `key` names an attribute such as `request.headers[x-token]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConditionMatch {
    /// The attribute.
    pub key: String,
    /// The values it must (not) match.
    pub values: ValueMatch,
}

/// One rule: it matches when any `from` matches (or there is none), any `to` matches (or there
/// is none), and every `when` matches.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AuthzRule {
    /// Sources; any may match.
    pub from: Vec<SourceMatch>,
    /// Operations; any may match.
    pub to: Vec<OperationMatch>,
    /// Conditions; all must match.
    pub when: Vec<ConditionMatch>,
}

/// An authorization policy that applies to this workload.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuthorizationPolicy {
    /// `namespace/name`, for logs and metrics.
    pub name: String,
    /// What a match does.
    pub action: AuthzAction,
    /// The rules; a policy without rules matches nothing (an ALLOW policy without rules
    /// therefore denies everything), a rule without fields matches everything.
    pub rules: Vec<AuthzRule>,
    /// Istio's `istio.io/dry-run: "true"` annotation: the policy is evaluated and its would-be
    /// decision logged and counted, but it does not decide the request.
    pub dry_run: bool,
}

/// The mutual TLS mode for inbound connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum MtlsMode {
    /// Inherit from the parent scope (namespace, then mesh); PERMISSIVE at the top.
    #[default]
    Unset,
    /// Plaintext only.
    Disable,
    /// Accept mTLS and plaintext on the same port.
    Permissive,
    /// Require mTLS with a client certificate.
    Strict,
}

/// The effective peer authentication for this workload, after mesh, namespace and workload
/// policies are combined (the most specific wins).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PeerAuthentication {
    /// The mode for every port without a port-level override.
    pub mode: MtlsMode,
    /// Port-level overrides, by the workload's port number (`Unset` inherits [`Self::mode`]).
    pub port_modes: BTreeMap<u16, MtlsMode>,
    /// The policies that contributed, as `namespace/name`, most specific last.
    pub sources: Vec<String>,
}

impl PeerAuthentication {
    /// The mode that applies on `port`: its port-level mode, else (no entry, or `Unset`, which
    /// inherits) the workload's mode; `Unset` there resolves to PERMISSIVE, Istio's default.
    pub fn mode_for(&self, port: u16) -> MtlsMode {
        let port_mode = self.port_modes.get(&port).copied();
        match port_mode
            .filter(|m| *m != MtlsMode::Unset)
            .unwrap_or(self.mode)
        {
            MtlsMode::Unset => MtlsMode::Permissive,
            mode => mode,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_port_mode_inherits_the_workload_mode() {
        let pa = PeerAuthentication {
            mode: MtlsMode::Strict,
            port_modes: [(8080, MtlsMode::Unset), (9090, MtlsMode::Disable)].into(),
            sources: vec![],
        };
        assert_eq!(pa.mode_for(8080), MtlsMode::Strict);
        assert_eq!(pa.mode_for(9090), MtlsMode::Disable);
        assert_eq!(pa.mode_for(80), MtlsMode::Strict);
        let unset = PeerAuthentication {
            port_modes: [(8080, MtlsMode::Unset)].into(),
            ..PeerAuthentication::default()
        };
        assert_eq!(unset.mode_for(8080), MtlsMode::Permissive);
    }
}

/// How the inbound side normalizes a request's path before authorization, routing and the
/// access log see it: Istio's `meshConfig.pathNormalization.normalization`, which istiod
/// turns into the inbound HTTP connection manager's `normalize_path`, `merge_slashes` and
/// `path_with_escaped_slashes_action`. The normalization itself is
/// `mesh_policy::authz::normalize_path_with`.
///
/// Parses from Istio's names (`NONE`, `BASE`, `MERGE_SLASHES`, `DECODE_AND_MERGE_SLASHES`,
/// `DEFAULT` = `BASE`) and from the sidecar flag's (`none`, `base`, `merge-slashes`,
/// `decode-and-merge-slashes`), case-insensitively; prints Istio's name.
///
/// ```
/// use mesh_core::model::PathNormalization;
/// assert_eq!("merge-slashes".parse(), Ok(PathNormalization::MergeSlashes));
/// assert_eq!("DECODE_AND_MERGE_SLASHES".parse(), Ok(PathNormalization::DecodeAndMergeSlashes));
/// assert_eq!(PathNormalization::default().to_string(), "BASE");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PathNormalization {
    /// Nothing: the path goes on as it came (Envoy's `normalize_path: false`).
    None,
    /// Istio's default: RFC 3986 normalization (dot segments, backslashes, percent-encoded
    /// unreserved characters); `normalize_path: true`.
    #[default]
    Base,
    /// `BASE`, then runs of slashes merged into one (`merge_slashes: true`).
    MergeSlashes,
    /// `%2F` and `%5C` (either case) decoded to `/` and `\` first, then `MERGE_SLASHES`
    /// (`path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD`).
    DecodeAndMergeSlashes,
}

impl PathNormalization {
    /// Istio's name of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Base => "BASE",
            Self::MergeSlashes => "MERGE_SLASHES",
            Self::DecodeAndMergeSlashes => "DECODE_AND_MERGE_SLASHES",
        }
    }
}

impl std::fmt::Display for PathNormalization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A path normalization mode that is not one of Istio's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown path normalization {value:?}: expected none, base, merge-slashes or \
     decode-and-merge-slashes"
)]
pub struct InvalidPathNormalization {
    /// The value given.
    pub value: String,
}

impl std::str::FromStr for PathNormalization {
    type Err = InvalidPathNormalization;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim().to_ascii_uppercase().replace('-', "_");
        Ok(match name.as_str() {
            "NONE" => Self::None,
            "BASE" | "DEFAULT" => Self::Base,
            "MERGE_SLASHES" => Self::MergeSlashes,
            "DECODE_AND_MERGE_SLASHES" => Self::DecodeAndMergeSlashes,
            _ => {
                return Err(InvalidPathNormalization {
                    value: s.to_owned(),
                });
            }
        })
    }
}
