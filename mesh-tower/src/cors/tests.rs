//! The route's CORS policy in the outbound stack, against a real hyper upstream on 127.0.0.1.

use crate::body::{self, BoxBody};
use crate::outbound::Outbound;
use crate::testing::{self, Upstream};
use http::{HeaderMap, Request, Response};
use mesh_core::model::Workload;
use mesh_core::store::ConfigStore;
use std::sync::Arc;
use tower::ServiceExt;

/// An HTTP/1.1 upstream answering 200 `upstream` with `x-upstream: yes`.
async fn upstream() -> Upstream {
    testing::upstream(|_req| async {
        let mut response = Response::new(body::full("upstream"));
        response
            .headers_mut()
            .insert("x-upstream", http::HeaderValue::from_static("yes"));
        response
    })
    .await
}

/// Service `web` on `port`, its VirtualService's rules `http` (YAML, indented as under
/// `http:`).
async fn stack(port: u16, http: &str) -> Outbound {
    stack_with(
        &format!("[{{ address: 127.0.0.1, ports: {{ http: {port} }} }}]"),
        http,
    )
    .await
}

/// Service `web` with `endpoints` (a YAML list), its VirtualService's rules `http`.
async fn stack_with(endpoints: &str, http: &str) -> Outbound {
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: web }}
spec:
  hosts: [web]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  endpoints: {endpoints}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: web }}
spec:
  hosts: [web]
  http:
{http}"
    );
    let loaded = mesh_core::istio::load(&[("web.yaml", &yaml)], &Workload::default());
    assert!(loaded.diagnostics.is_empty(), "{:#?}", loaded.diagnostics);
    let store = Arc::new(ConfigStore::new(loaded.config.expect("a valid config")));
    Outbound::builder(store).build()
}

const POLICY: &str = "  - corsPolicy:
      allowOrigins:
      - exact: https://app.example
      - prefix: https://dev.
      - regex: \"https://[a-z]+\\\\.corp\\\\.example\"
      allowMethods: [GET, POST]
      allowHeaders: [content-type, x-token]
      exposeHeaders: [x-upstream, x-trace]
      maxAge: 10m
    route:
    - destination: { host: web }
";

async fn send(
    outbound: &Outbound,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Response<BoxBody> {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://web{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    outbound
        .clone()
        .oneshot(builder.body(body::empty()).unwrap())
        .await
        .unwrap()
}

/// The response's headers, sorted, without `content-length` and `date`.
fn headers(map: &HeaderMap) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = map
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), "content-length" | "date"))
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    out.sort();
    out
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn an_allowed_preflight_is_answered_by_the_proxy() {
    let web = upstream().await;
    let outbound = stack(web.port(), POLICY).await;
    let response = send(
        &outbound,
        "OPTIONS",
        "/api",
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "x-token"),
        ],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        headers(response.headers()),
        pairs(&[
            ("access-control-allow-headers", "content-type,x-token"),
            ("access-control-allow-methods", "GET,POST"),
            ("access-control-allow-origin", "https://app.example"),
            ("access-control-max-age", "600"),
        ])
    );
    assert_eq!(web.requests(), 0, "the upstream never saw it");
}

#[tokio::test]
async fn a_preflight_from_another_origin_is_forwarded_untouched() {
    let web = upstream().await;
    let outbound = stack(web.port(), POLICY).await;
    let response = send(
        &outbound,
        "OPTIONS",
        "/api",
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
        ],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(web.requests(), 1);
    assert_eq!(headers(response.headers()), pairs(&[("x-upstream", "yes")]));
}

#[tokio::test]
async fn with_ignore_a_preflight_from_another_origin_is_answered_without_allow_origin() {
    let web = upstream().await;
    let policy = POLICY.replace(
        "maxAge: 10m",
        "maxAge: 10m\n      unmatchedPreflights: IGNORE",
    );
    let outbound = stack(web.port(), &policy).await;
    let response = send(
        &outbound,
        "OPTIONS",
        "/api",
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
        ],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(web.requests(), 0);
    // Envoy's answer: what the policy allows, but no origin, so the browser refuses.
    assert_eq!(
        headers(response.headers()),
        pairs(&[
            ("access-control-allow-headers", "content-type,x-token"),
            ("access-control-allow-methods", "GET,POST"),
            ("access-control-max-age", "600"),
        ])
    );
}

#[tokio::test]
async fn an_allowed_request_gets_the_origin_and_exposed_headers_on_its_response() {
    let web = upstream().await;
    let outbound = stack(web.port(), POLICY).await;
    for origin in [
        "https://app.example",
        "https://dev.anything",
        "https://team.corp.example",
    ] {
        let response = send(&outbound, "GET", "/", &[("origin", origin)]).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            headers(response.headers()),
            pairs(&[
                ("access-control-allow-origin", origin),
                ("access-control-expose-headers", "x-upstream,x-trace"),
                ("x-upstream", "yes"),
            ]),
            "{origin}"
        );
    }
    assert_eq!(web.requests(), 3);
    // Not allowed (the regex must match the whole origin), and no origin at all: untouched.
    for origin in [
        Some("https://team.corp.example.evil"),
        Some("http://app.example"),
        None,
    ] {
        let origin: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
        let response = send(&outbound, "GET", "/", &origin).await;
        assert_eq!(
            headers(response.headers()),
            pairs(&[("x-upstream", "yes")]),
            "{origin:?}"
        );
    }
    assert_eq!(web.requests(), 6);
}

#[tokio::test]
async fn allow_credentials_is_sent_on_preflights_and_responses() {
    let web = upstream().await;
    let policy = POLICY.replace("maxAge: 10m", "allowCredentials: true");
    let outbound = stack(web.port(), &policy).await;
    let response = send(
        &outbound,
        "OPTIONS",
        "/",
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "GET"),
        ],
    )
    .await;
    assert_eq!(
        headers(response.headers()),
        pairs(&[
            ("access-control-allow-credentials", "true"),
            ("access-control-allow-headers", "content-type,x-token"),
            ("access-control-allow-methods", "GET,POST"),
            ("access-control-allow-origin", "https://app.example"),
        ])
    );
    let response = send(&outbound, "POST", "/", &[("origin", "https://app.example")]).await;
    assert_eq!(
        headers(response.headers()),
        pairs(&[
            ("access-control-allow-credentials", "true"),
            ("access-control-allow-origin", "https://app.example"),
            ("access-control-expose-headers", "x-upstream,x-trace"),
            ("x-upstream", "yes"),
        ])
    );
    assert_eq!(web.requests(), 1, "only the POST went upstream");
}

#[tokio::test]
async fn the_answers_of_the_layers_below_get_the_headers_too() {
    // istiod orders the filters `Cors, Fault, Router`: an injected abort passes back through
    // the CORS filter.
    let web = upstream().await;
    let policy = POLICY.replace(
        "    route:\n",
        "    fault: { abort: { httpStatus: 418, percentage: { value: 100 } } }\n    route:\n",
    );
    let outbound = stack(web.port(), &policy).await;
    let response = send(&outbound, "GET", "/", &[("origin", "https://app.example")]).await;
    assert_eq!(response.status(), 418);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    // A preflight is answered before the fault is drawn.
    let response = send(
        &outbound,
        "OPTIONS",
        "/",
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "GET"),
        ],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(web.requests(), 0);
}

/// The response's `access-control-*` headers, sorted.
fn cors_headers(map: &HeaderMap) -> Vec<(String, String)> {
    headers(map)
        .into_iter()
        .filter(|(n, _)| n.starts_with("access-control-"))
        .collect()
}

/// `POLICY` with `extra` (YAML lines indented as the rule's fields) added to its rule.
fn policy_with(extra: &str) -> String {
    POLICY.replace("    route:\n", &format!("{extra}    route:\n"))
}

#[tokio::test]
async fn the_meshs_own_failures_get_the_headers_for_an_allowed_origin() {
    let allowed = pairs(&[
        ("access-control-allow-credentials", "true"),
        ("access-control-allow-origin", "https://app.example"),
        ("access-control-expose-headers", "x-upstream,x-trace"),
    ]);
    let credentials = "      allowCredentials: true\n";
    let with_credentials = |extra: &str| {
        policy_with(extra).replace(
            "      maxAge: 10m\n",
            &format!("      maxAge: 10m\n{credentials}"),
        )
    };
    // No endpoint: 503 no healthy upstream. A refused connection, not retried: 503. A route
    // timeout with an upstream that never answers: 504.
    let refused = testing::closed_port().await.port();
    let silent = testing::silent_upstream().await.port();
    let cases = [
        ("[]".to_owned(), with_credentials(""), 503),
        (
            format!("[{{ address: 127.0.0.1, ports: {{ http: {refused} }} }}]"),
            with_credentials("    retries: { attempts: 0 }\n"),
            503,
        ),
        (
            format!("[{{ address: 127.0.0.1, ports: {{ http: {silent} }} }}]"),
            with_credentials("    timeout: 100ms\n"),
            504,
        ),
    ];
    for (endpoints, http, status) in cases {
        let outbound = stack_with(&endpoints, &http).await;
        let response = send(&outbound, "GET", "/", &[("origin", "https://app.example")]).await;
        assert_eq!(response.status(), status, "{endpoints}");
        assert_eq!(cors_headers(response.headers()), allowed, "{endpoints}");
        // An origin not allowed, and no origin: no CORS headers.
        for origin in [Some("https://evil.example"), None] {
            let origin: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
            let response = send(&outbound, "GET", "/", &origin).await;
            assert_eq!(response.status(), status, "{endpoints} {origin:?}");
            assert_eq!(
                cors_headers(response.headers()),
                [],
                "{endpoints} {origin:?}"
            );
        }
    }
}

#[tokio::test]
async fn the_meshs_own_failures_on_a_route_without_cors_get_no_headers() {
    let silent = testing::silent_upstream().await.port();
    let outbound = stack_with(
        &format!("[{{ address: 127.0.0.1, ports: {{ http: {silent} }} }}]"),
        "  - timeout: 100ms\n    route:\n    - destination: { host: web }\n",
    )
    .await;
    let response = send(&outbound, "GET", "/", &[("origin", "https://app.example")]).await;
    assert_eq!(response.status(), 504);
    assert_eq!(cors_headers(response.headers()), []);
    let outbound = stack_with("[]", "  - route:\n    - destination: { host: web }\n").await;
    let response = send(&outbound, "GET", "/", &[("origin", "https://app.example")]).await;
    assert_eq!(response.status(), 503);
    assert_eq!(cors_headers(response.headers()), []);
}

#[tokio::test]
async fn the_fixed_layer_gives_a_failure_the_headers_too() {
    use crate::body::BoxError;
    use crate::cors::CorsLayer;
    use crate::error::{self, ProxyError};
    use mesh_core::model::{CorsPolicy, StringMatch};
    use tower::Layer;
    let policy = CorsPolicy {
        allow_origins: vec![StringMatch::Exact("https://app.example".into())],
        expose_headers: "x-trace".into(),
        ..CorsPolicy::default()
    };
    let service = CorsLayer::new(policy).layer(tower::service_fn(|_req: Request<BoxBody>| {
        std::future::ready(Err::<Response<BoxBody>, BoxError>(
            ProxyError::NoHealthyUpstream("web".into()).into(),
        ))
    }));
    for (origin, expected) in [
        (
            "https://app.example",
            pairs(&[
                ("access-control-allow-origin", "https://app.example"),
                ("access-control-expose-headers", "x-trace"),
            ]),
        ),
        ("https://evil.example", vec![]),
    ] {
        let req = Request::get("/")
            .header("origin", origin)
            .body(body::empty())
            .unwrap();
        let e = service.clone().oneshot(req).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "no healthy upstream in web",
            "the error's own text"
        );
        let response = error::to_response(&e);
        assert_eq!(response.status(), 503);
        assert_eq!(cors_headers(response.headers()), expected, "{origin}");
    }
}

#[tokio::test]
async fn the_meshs_own_failures_get_the_route_s_response_headers() {
    // Envoy's router applies a route's response header changes to its local replies too.
    let route = "  - headers:
      response:
        set: { x-route: web }
        add: { x-added: \"yes\" }
    route:
    - destination: { host: web }
";
    let silent = testing::silent_upstream().await.port();
    let endpoints = format!("[{{ address: 127.0.0.1, ports: {{ http: {silent} }} }}]");
    let timed_out = format!("  - timeout: 100ms\n    {}", &route[4..]);
    for (endpoints, http, status) in [
        (endpoints.as_str(), timed_out.as_str(), 504),
        ("[]", route, 503),
    ] {
        let outbound = stack_with(endpoints, http).await;
        let response = send(&outbound, "GET", "/", &[]).await;
        assert_eq!(response.status(), status);
        assert_eq!(response.headers()["x-route"], "web", "{status}");
        assert_eq!(response.headers()["x-added"], "yes", "{status}");
    }
    // With a CORS policy too: both, for an allowed origin; the route's alone for another.
    let with_cors = POLICY.replacen(
        "    route:",
        "    headers:\n      response:\n        set: { x-route: web }\n    route:",
        1,
    );
    let outbound = stack_with("[]", &with_cors).await;
    for (origin, allowed) in [
        ("https://app.example", true),
        ("https://evil.example", false),
    ] {
        let response = send(&outbound, "GET", "/", &[("origin", origin)]).await;
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["x-route"], "web", "{origin}");
        assert_eq!(
            response
                .headers()
                .get("access-control-allow-origin")
                .is_some(),
            allowed,
            "{origin}"
        );
    }
}
