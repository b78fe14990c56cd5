//! Request and response changes a route makes: header operations, path and authority
//! rewrites, redirect locations.

use crate::error::ProxyError;
use http::header::{HOST, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Uri};
use mesh_core::model::{HeaderOps, Redirect, RedirectPort, Rewrite, RouteMatch, StringMatch};

/// Applies `ops` to `headers`: remove, then set (replace), then add (append).
pub fn apply_header_ops(ops: &HeaderOps, headers: &mut HeaderMap) {
    if ops.is_empty() {
        return;
    }
    for name in &ops.remove {
        headers.remove(name.as_str());
    }
    for (name, value) in &ops.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            headers.insert(n, v);
        }
    }
    for (name, value) in &ops.add {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            headers.append(n, v);
        }
    }
}

/// Rewrites the request's path (prefix or regex) and authority.
pub(super) fn apply<B>(
    rewrite: &Rewrite,
    matched: Option<&RouteMatch>,
    req: &mut Request<B>,
) -> Result<(), ProxyError> {
    let path = req.uri().path();
    let new_path = if let Some(prefix) = &rewrite.uri_prefix {
        Some(match matched.and_then(|m| m.uri.as_ref()) {
            Some(StringMatch::Prefix(p)) => {
                // The match may have ignored case: cut by length, not by text.
                let rest = path.get(p.len()..).unwrap_or_default();
                format!("{prefix}{rest}")
            }
            // Envoy's prefix_rewrite replaces the whole path an exact or regex match matched.
            Some(StringMatch::Exact(_) | StringMatch::Regex(_)) => prefix.clone(),
            // Without a uri match Istio matches prefix "/": only the leading "/" is replaced.
            None => {
                let rest = path.strip_prefix('/').unwrap_or(path);
                format!("{prefix}{rest}")
            }
        })
    } else {
        rewrite.uri_regex.as_ref().map(|(pattern, substitution)| {
            pattern
                .regex()
                .replace_all(path, envoy_substitution(substitution).as_str())
                .into_owned()
        })
    };
    if let Some(new_path) = new_path {
        let path_and_query = match req.uri().query() {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(path_and_query.parse().map_err(|_| {
            ProxyError::BadRequest(format!("rewritten path {path_and_query:?} is invalid"))
        })?);
        *req.uri_mut() =
            Uri::from_parts(parts).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    }
    if let Some(authority) = &rewrite.authority {
        let value = HeaderValue::try_from(authority.as_str()).map_err(|_| {
            ProxyError::BadRequest(format!("rewritten authority {authority:?} is invalid"))
        })?;
        req.headers_mut().insert(HOST, value);
        if req.uri().authority().is_some() {
            let mut parts = req.uri().clone().into_parts();
            parts.authority = authority.parse().ok();
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    Ok(())
}

/// RE2/Envoy substitutions (`\1`) in the regex crate's syntax (`${1}`).
fn envoy_substitution(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push_str("${");
                while let Some(d) = chars.next_if(char::is_ascii_digit) {
                    out.push(d);
                }
                out.push('}');
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

/// The `Location` of a redirect for `req`, built as Envoy's redirect action builds it.
pub(super) fn redirect_location<B>(
    redirect: &Redirect,
    req: &Request<B>,
    authority: &str,
) -> String {
    let request_scheme = req.uri().scheme_str().unwrap_or("http");
    let scheme = redirect.scheme.as_deref().unwrap_or(request_scheme);
    let (request_host, request_port) = match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => (h, Some(p)),
        _ => (authority, None),
    };
    let host = redirect.authority.as_deref().unwrap_or(request_host);
    // Envoy drops the request's port when the scheme changes and it is the old scheme's
    // default (`http://foo:80` to `https://foo`), so the new scheme's default applies.
    let default_port_of_request = matches!(
        (request_scheme, request_port),
        ("http", Some("80")) | ("https", Some("443"))
    );
    let port = match redirect.port {
        Some(RedirectPort::Port(p)) => Some(p.to_string()),
        Some(RedirectPort::FromProtocolDefault) => None,
        Some(RedirectPort::FromRequestPort) => request_port.map(str::to_owned),
        None if redirect.authority.is_some() => None,
        None if scheme != request_scheme && default_port_of_request => None,
        None => request_port.map(str::to_owned),
    };
    let mut path = match &redirect.uri {
        // Envoy keeps the request's query unless the new path has its own (Istio never sets
        // strip_query).
        Some(uri) => match req.uri().query() {
            Some(query) if !uri.contains('?') => format!("{uri}?{query}"),
            _ => uri.clone(),
        },
        None => req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
    };
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    match port {
        Some(port) => format!("{scheme}://{host}:{port}{path}"),
        None => format!("{scheme}://{host}{path}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::model::Pattern;

    #[test]
    fn prefix_rewrite_keeps_the_rest_and_the_query() {
        let rewrite = Rewrite {
            uri_prefix: Some("/v2".into()),
            ..Rewrite::default()
        };
        let m = RouteMatch {
            uri: Some(StringMatch::Prefix("/api".into())),
            ..RouteMatch::default()
        };
        let mut req = Request::get("/api/items?x=1").body(()).unwrap();
        apply(&rewrite, Some(&m), &mut req).unwrap();
        assert_eq!(req.uri(), "/v2/items?x=1");
    }

    #[test]
    fn prefix_rewrite_without_a_uri_match_replaces_the_leading_slash() {
        let rewrite = Rewrite {
            uri_prefix: Some("/v2/".into()),
            ..Rewrite::default()
        };
        let headers_only = RouteMatch {
            headers: vec![("x-canary".into(), Some(StringMatch::Exact("1".into())))],
            ..RouteMatch::default()
        };
        for matched in [None, Some(&headers_only)] {
            let mut req = Request::get("/items/7?x=1").body(()).unwrap();
            apply(&rewrite, matched, &mut req).unwrap();
            assert_eq!(req.uri(), "/v2/items/7?x=1", "{matched:?}");
        }
        // As Envoy: without a trailing slash the segments run together.
        let bare = Rewrite {
            uri_prefix: Some("/v2".into()),
            ..Rewrite::default()
        };
        let mut req = Request::get("/items").body(()).unwrap();
        apply(&bare, None, &mut req).unwrap();
        assert_eq!(req.uri(), "/v2items");
    }

    #[test]
    fn prefix_rewrite_after_an_exact_match_replaces_the_whole_path() {
        let rewrite = Rewrite {
            uri_prefix: Some("/new".into()),
            ..Rewrite::default()
        };
        let m = RouteMatch {
            uri: Some(StringMatch::Exact("/old/page".into())),
            ..RouteMatch::default()
        };
        let mut req = Request::get("/old/page?q=2").body(()).unwrap();
        apply(&rewrite, Some(&m), &mut req).unwrap();
        assert_eq!(req.uri(), "/new?q=2");
    }

    #[test]
    fn regex_rewrite_uses_capture_groups() {
        let rewrite = Rewrite {
            uri_regex: Some((
                Pattern::unanchored("^/service/([^/]+)(/.*)$").unwrap(),
                "\\2/instance/\\1".into(),
            )),
            ..Rewrite::default()
        };
        let mut req = Request::get("/service/foo/v1/api").body(()).unwrap();
        apply(&rewrite, None, &mut req).unwrap();
        assert_eq!(req.uri(), "/v1/api/instance/foo");
    }

    #[test]
    fn redirect_keeps_the_request_port_unless_told() {
        let redirect = Redirect {
            uri: Some("/v1/bookRatings".into()),
            authority: Some("newratings.default.svc.cluster.local".into()),
            scheme: None,
            port: None,
            code: 301,
        };
        let req = Request::get("/v1/getProductRatings").body(()).unwrap();
        assert_eq!(
            redirect_location(&redirect, &req, "ratings:9080"),
            "http://newratings.default.svc.cluster.local/v1/bookRatings"
        );
        let keep = Redirect {
            authority: None,
            ..redirect
        };
        assert_eq!(
            redirect_location(&keep, &req, "ratings:9080"),
            "http://ratings:9080/v1/bookRatings"
        );
    }

    #[test]
    fn a_path_redirect_keeps_the_query_unless_it_has_its_own() {
        let redirect = Redirect {
            uri: Some("/new".into()),
            authority: None,
            scheme: None,
            port: None,
            code: 301,
        };
        let req = Request::get("/old?bar=1").body(()).unwrap();
        assert_eq!(
            redirect_location(&redirect, &req, "host"),
            "http://host/new?bar=1"
        );
        let own_query = Redirect {
            uri: Some("/new?baz=2".into()),
            ..redirect.clone()
        };
        assert_eq!(
            redirect_location(&own_query, &req, "host"),
            "http://host/new?baz=2"
        );
        let bare = Request::get("/old").body(()).unwrap();
        assert_eq!(
            redirect_location(&redirect, &bare, "host"),
            "http://host/new"
        );
    }

    #[test]
    fn a_scheme_change_drops_the_old_schemes_default_port_only() {
        let to_https = Redirect {
            uri: None,
            authority: None,
            scheme: Some("https".into()),
            port: None,
            code: 301,
        };
        let req = Request::get("/a?b=1").body(()).unwrap();
        assert_eq!(
            redirect_location(&to_https, &req, "foo:80"),
            "https://foo/a?b=1"
        );
        assert_eq!(
            redirect_location(&to_https, &req, "foo:8080"),
            "https://foo:8080/a?b=1",
            "not a default port: kept"
        );
        let same_scheme = Redirect {
            scheme: Some("http".into()),
            ..to_https
        };
        assert_eq!(
            redirect_location(&same_scheme, &req, "foo:80"),
            "http://foo:80/a?b=1",
            "the scheme did not change: kept"
        );
    }
}
