//! Whether a request matches a route's conditions (Istio's `HTTPMatchRequest`).

use http::Request;
use mesh_core::model::{RouteMatch, StringMatch, Workload, selects};

/// The parts of a request that route matching reads, extracted once.
#[derive(Debug)]
pub(crate) struct RequestView<'a> {
    pub(crate) authority: &'a str,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) method: &'a str,
    pub(crate) scheme: &'a str,
    pub(crate) headers: &'a http::HeaderMap,
}

impl<'a> RequestView<'a> {
    /// The view of `req`, whose destination is `authority`.
    pub(crate) fn new<B>(req: &'a Request<B>, authority: &'a str) -> Self {
        Self {
            authority,
            path: req.uri().path(),
            query: req.uri().query(),
            method: req.method().as_str(),
            scheme: req.uri().scheme_str().unwrap_or("http"),
            headers: req.headers(),
        }
    }
}

/// The index of the first of `matches` that matches, if any.
pub(crate) fn first_match(
    matches: &[RouteMatch],
    req: &RequestView<'_>,
    workload: &Workload,
) -> Option<usize> {
    matches.iter().position(|m| matches_one(m, req, workload))
}

fn matches_one(m: &RouteMatch, req: &RequestView<'_>, workload: &Workload) -> bool {
    let string = |sm: &Option<StringMatch>, value: &str| {
        sm.as_ref().is_none_or(|sm| sm.matches(value, false))
    };
    m.uri
        .as_ref()
        .is_none_or(|uri| uri.matches(req.path, m.ignore_uri_case))
        && string(&m.method, req.method)
        && string(&m.scheme, req.scheme)
        && string(&m.authority, req.authority)
        && m.headers
            .iter()
            .all(|(name, sm)| header_matches(req.headers, name, sm.as_ref()))
        && !m
            .without_headers
            .iter()
            .any(|(name, sm)| header_matches(req.headers, name, sm.as_ref()))
        && m.query_params
            .iter()
            .all(|(name, sm)| query_matches(req.query, name, sm.as_ref()))
        && selects(&m.source_labels, &workload.labels)
        && m.source_namespace
            .as_ref()
            .is_none_or(|ns| *ns == workload.namespace)
}

/// A header matches when present and (if a match is given) its value matches: a header sent
/// more than once is matched as its values joined with `,`, as Envoy does, so `x: a` and
/// `x: b` is `a,b`.
fn header_matches(headers: &http::HeaderMap, name: &str, sm: Option<&StringMatch>) -> bool {
    mesh_policy::header::joined_value(headers, name)
        .is_some_and(|value| sm.is_none_or(|sm| sm.matches(&value, false)))
}

/// A query parameter matches when present and (if a match is given) the value of its first
/// occurrence matches, as Envoy's `QueryParameterMatcher` reads it.
fn query_matches(query: Option<&str>, name: &str, sm: Option<&StringMatch>) -> bool {
    let Some(query) = query else {
        return false;
    };
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| *key == name)
        .is_some_and(|(_, value)| sm.is_none_or(|sm| sm.matches(value, false)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::model::Pattern;

    fn view<'a>(req: &'a Request<()>) -> RequestView<'a> {
        RequestView::new(req, "reviews")
    }

    #[test]
    fn uri_method_header_and_query_conditions_all_apply() {
        let m = RouteMatch {
            uri: Some(StringMatch::Prefix("/api".into())),
            method: Some(StringMatch::Exact("GET".into())),
            headers: vec![(
                "end-user".into(),
                Some(StringMatch::Regex(Pattern::new("ja.*").unwrap())),
            )],
            query_params: vec![("debug".into(), None)],
            ..RouteMatch::default()
        };
        let w = Workload::default();
        let ok = Request::get("/api/x?debug=1")
            .header("end-user", "jason")
            .body(())
            .unwrap();
        assert!(first_match(std::slice::from_ref(&m), &view(&ok), &w).is_some());
        for bad in [
            Request::post("/api/x?debug=1")
                .header("end-user", "jason")
                .body(())
                .unwrap(),
            Request::get("/web?debug=1")
                .header("end-user", "jason")
                .body(())
                .unwrap(),
            Request::get("/api/x?debug=1")
                .header("end-user", "bob")
                .body(())
                .unwrap(),
            Request::get("/api/x")
                .header("end-user", "jason")
                .body(())
                .unwrap(),
        ] {
            assert!(
                first_match(std::slice::from_ref(&m), &view(&bad), &w).is_none(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn query_strings_do_not_take_part_in_uri_matching() {
        let m = RouteMatch {
            uri: Some(StringMatch::Exact("/productpage".into())),
            ..RouteMatch::default()
        };
        let req = Request::get("/productpage?u=normal").body(()).unwrap();
        assert_eq!(
            first_match(&[m], &view(&req), &Workload::default()),
            Some(0)
        );
    }

    #[test]
    fn without_headers_excludes() {
        let m = RouteMatch {
            without_headers: vec![("x-canary".into(), None)],
            ..RouteMatch::default()
        };
        let w = Workload::default();
        let with = Request::get("/").header("x-canary", "1").body(()).unwrap();
        let without = Request::get("/").body(()).unwrap();
        assert!(first_match(std::slice::from_ref(&m), &view(&with), &w).is_none());
        assert!(first_match(std::slice::from_ref(&m), &view(&without), &w).is_some());
    }

    #[test]
    fn a_repeated_header_matches_as_its_values_joined_with_commas() {
        let exact = |value: &str| RouteMatch {
            headers: vec![("x-role".into(), Some(StringMatch::Exact(value.into())))],
            ..RouteMatch::default()
        };
        let w = Workload::default();
        let twice = Request::get("/")
            .header("x-role", "guest")
            .header("x-role", "admin")
            .body(())
            .unwrap();
        assert!(first_match(&[exact("admin")], &view(&twice), &w).is_none());
        assert!(first_match(&[exact("guest")], &view(&twice), &w).is_none());
        assert_eq!(
            first_match(&[exact("guest,admin")], &view(&twice), &w),
            Some(0)
        );
        let once = Request::get("/")
            .header("x-role", "admin")
            .body(())
            .unwrap();
        assert_eq!(first_match(&[exact("admin")], &view(&once), &w), Some(0));
        // `withoutHeaders` reads the same joined value.
        let without = RouteMatch {
            without_headers: vec![("x-role".into(), Some(StringMatch::Exact("admin".into())))],
            ..RouteMatch::default()
        };
        assert_eq!(first_match(&[without], &view(&twice), &w), Some(0));
    }

    #[test]
    fn a_repeated_query_parameter_matches_by_its_first_value() {
        let m = RouteMatch {
            query_params: vec![("v".into(), Some(StringMatch::Exact("2".into())))],
            ..RouteMatch::default()
        };
        let w = Workload::default();
        let first = Request::get("/?v=2&v=1").body(()).unwrap();
        let second = Request::get("/?v=1&v=2").body(()).unwrap();
        assert_eq!(
            first_match(std::slice::from_ref(&m), &view(&first), &w),
            Some(0)
        );
        assert!(first_match(std::slice::from_ref(&m), &view(&second), &w).is_none());
    }
}
