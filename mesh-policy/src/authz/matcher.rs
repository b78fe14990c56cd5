//! Compiled value matchers: Istio's string forms, path templates, CIDR blocks and ports.

use std::net::IpAddr;

use ipnet::IpNet;

/// One compiled string value in Istio's forms: exact, `prefix*`, `*suffix`, `*` (present).
#[derive(Clone, Debug)]
pub(crate) enum StrMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Present,
}

impl StrMatch {
    pub(crate) fn new(v: &str, lowercase: bool) -> Self {
        let v = if lowercase {
            v.to_ascii_lowercase()
        } else {
            v.to_owned()
        };
        if v == "*" {
            Self::Present
        } else if let Some(p) = v.strip_suffix('*') {
            Self::Prefix(p.to_owned())
        } else if let Some(s) = v.strip_prefix('*') {
            Self::Suffix(s.to_owned())
        } else {
            Self::Exact(v)
        }
    }

    pub(crate) fn matches(&self, s: &str) -> bool {
        match self {
            Self::Exact(e) => s == e,
            Self::Prefix(p) => s.starts_with(p.as_str()),
            Self::Suffix(x) => s.ends_with(x.as_str()),
            // Istio's "presence" match: any non-empty value.
            Self::Present => !s.is_empty(),
        }
    }

    /// [`StrMatch::matches`] ignoring ASCII case, for a matcher compiled lowercase: no copy of
    /// `s` is made.
    pub(crate) fn matches_ignore_case(&self, s: &str) -> bool {
        let (s, eq) = (s.as_bytes(), <[u8]>::eq_ignore_ascii_case);
        match self {
            Self::Exact(e) => eq(s, e.as_bytes()),
            Self::Prefix(p) => s.get(..p.len()).is_some_and(|h| eq(h, p.as_bytes())),
            Self::Suffix(x) => s
                .len()
                .checked_sub(x.len())
                .is_some_and(|at| eq(&s[at..], x.as_bytes())),
            Self::Present => !s.is_empty(),
        }
    }
}

/// One path template segment.
#[derive(Clone, Debug)]
pub(crate) enum Seg {
    Lit(String),
    /// `{*}`: exactly one non-empty segment.
    One,
    /// `{**}`: zero or more segments (must be last).
    Rest,
}

/// A compiled path value: a plain Istio string form or a `{*}`/`{**}` template.
#[derive(Clone, Debug)]
pub(crate) enum PathMatch {
    Str(StrMatch),
    Template(Vec<Seg>),
}

/// Compiles a path value; an error says why a template is invalid.
pub(crate) fn path_match(v: &str) -> Result<PathMatch, String> {
    if !v.contains('{') {
        return Ok(PathMatch::Str(StrMatch::new(v, false)));
    }
    // Istio: templates must start with '/', use only `{*}` and `{**}` as whole segments,
    // `{**}` only as the last operator, and cannot be combined with `*` wildcards.
    if !v.starts_with('/') {
        return Err(format!("path template {v:?} must start with '/'"));
    }
    if v.contains('*') && v.replace("{**}", "").replace("{*}", "").contains('*') {
        return Err(format!(
            "path template {v:?} mixes '*' wildcards with {{*}}/{{**}} operators"
        ));
    }
    let parts: Vec<&str> = v[1..].split('/').collect();
    let mut segs = Vec::with_capacity(parts.len());
    for (i, p) in parts.iter().enumerate() {
        segs.push(match *p {
            "{*}" => Seg::One,
            "{**}" if i + 1 == parts.len() => Seg::Rest,
            "{**}" => {
                return Err(format!(
                    "path template {v:?}: {{**}} must be the last operator"
                ));
            }
            lit if lit.contains('{') || lit.contains('}') => {
                return Err(format!(
                    "path template {v:?}: segment {lit:?} is not a literal, {{*}} or {{**}}"
                ));
            }
            lit => Seg::Lit(lit.to_owned()),
        });
    }
    Ok(PathMatch::Template(segs))
}

impl PathMatch {
    pub(crate) fn matches(&self, path: &str) -> bool {
        match self {
            Self::Str(m) => m.matches(path),
            Self::Template(segs) => {
                let Some(rest) = path.strip_prefix('/') else {
                    return false;
                };
                let mut parts = rest.split('/');
                for seg in segs {
                    match seg {
                        Seg::Rest => return true,
                        Seg::One => match parts.next() {
                            Some(p) if !p.is_empty() => {}
                            _ => return false,
                        },
                        Seg::Lit(l) => {
                            if parts.next() != Some(l.as_str()) {
                                return false;
                            }
                        }
                    }
                }
                parts.next().is_none()
            }
        }
    }
}

/// Parses an IP or CIDR block (a bare address is a /32 or /128).
pub(crate) fn cidr(v: &str) -> Result<IpNet, String> {
    v.parse::<IpNet>()
        .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{v:?} is not an IP address or CIDR block"))
}

/// Parses a port value.
pub(crate) fn port(v: &str) -> Result<u16, String> {
    v.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{v:?} is not a port number"))
}

/// A compiled `values`/`notValues` pair over some matcher type.
#[derive(Clone, Debug)]
pub(crate) struct Pair<M> {
    pub(crate) values: Vec<M>,
    pub(crate) not_values: Vec<M>,
}

impl<M> Pair<M> {
    /// A pair that constrains nothing.
    pub(crate) fn empty() -> Self {
        Self {
            values: Vec::new(),
            not_values: Vec::new(),
        }
    }

    pub(crate) fn try_new<E>(
        m: &mesh_core::model::ValueMatch,
        f: impl Fn(&str) -> Result<M, E>,
    ) -> Result<Option<Self>, E> {
        if m.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            values: m.values.iter().map(|v| f(v)).collect::<Result<_, _>>()?,
            not_values: m
                .not_values
                .iter()
                .map(|v| f(v))
                .collect::<Result<_, _>>()?,
        }))
    }

    /// Istio's semantics: the attribute must match one of `values` (when any are given) and
    /// none of `not_values`. An absent attribute matches no value, so it fails `values` and
    /// passes `not_values` (as Envoy's RBAC `not_id` over a missing attribute does).
    pub(crate) fn test<A: Copy>(&self, attr: Option<A>, hit: impl Fn(&M, A) -> bool) -> bool {
        let any = |list: &[M]| attr.is_some_and(|a| list.iter().any(|m| hit(m, a)));
        (self.values.is_empty() || any(&self.values)) && !any(&self.not_values)
    }
}
