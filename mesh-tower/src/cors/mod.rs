//! Cross-origin resource sharing: Envoy's `envoy.filters.http.cors`, with the policy of the
//! matched route (Istio's VirtualService `corsPolicy`) or a fixed one.
//!
//! What it does, as Envoy's `cors_filter.cc` does it (`decodeHeaders`, `encodeHeaders`):
//!
//! - A request without `Origin` (or with an empty one) passes untouched.
//! - A preflight (`OPTIONS` with `Origin` and a non-empty `access-control-request-method`)
//!   whose origin the policy allows is answered here, `200` with an empty body and
//!   `access-control-allow-origin` (the request's origin), `-allow-credentials: true` when
//!   set, `-allow-methods`, `-allow-headers` and `-max-age` when set; it never reaches the
//!   upstream. `*` in the methods or headers answers with what the request asked for.
//! - A preflight whose origin is not allowed goes on to the upstream untouched when the
//!   policy forwards unmatched preflights (Istio's `unmatchedPreflights: FORWARD`, the
//!   default); with `IGNORE` it is answered here as above but without
//!   `access-control-allow-origin`, so the browser refuses the cross-origin request.
//! - Any other request from an allowed origin goes on, and its response gets
//!   `access-control-allow-origin`, `-allow-credentials` and `-expose-headers` (replacing
//!   the upstream's). One from an origin not allowed passes untouched.
//! - The mesh's own answers to an allowed request get the same headers, as Envoy's local
//!   replies pass through its CORS filter's `encodeHeaders` (so a page sees its 503 or 504
//!   instead of the browser hiding it). A failure that travels up as an error (503 no healthy
//!   upstream or overflow, 504 timeout, a refused connection) becomes its response only at
//!   the stack's edge, above the router: the router (or [`Cors`]) wraps it in a
//!   [`WithHeaders`] carrying the headers, and [`crate::error::to_response`] adds them.
//!
//! In the outbound stack the router applies the route's policy itself, right after choosing
//! the route and before the route's rewrites, as istiod's filter chain puts the CORS filter
//! first (`Cors, Fault, Router`): a preflight is answered before rate limits and faults, and
//! the answers of the layers below (an injected abort, a rate limit's 429) get the headers.
//! A route without a policy costs one branch, and a request without an allowed origin
//! nothing more; the headers of a failure are made only when it fails.
//!
//! [`CorsLayer`] applies one fixed policy around any service, for an embedding service:
//!
//! ```
//! use mesh_core::model::{CorsPolicy, StringMatch};
//! use mesh_tower::body::{self, BoxBody, BoxError};
//! use mesh_tower::cors::CorsLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let policy = CorsPolicy {
//!     allow_origins: vec![StringMatch::Exact("https://app.example".into())],
//!     allow_methods: "GET,POST".into(),
//!     max_age: Some(600),
//!     ..CorsPolicy::default()
//! };
//! let service = ServiceBuilder::new()
//!     .layer(CorsLayer::new(policy))
//!     .service_fn(|_req: http::Request<BoxBody>| async {
//!         Ok::<_, BoxError>(http::Response::new(body::empty()))
//!     });
//! let preflight = http::Request::options("/")
//!     .header("origin", "https://app.example")
//!     .header("access-control-request-method", "POST")
//!     .body(body::empty())
//!     .unwrap();
//! let response = service.oneshot(preflight).await.unwrap();
//! assert_eq!(response.status(), 200);
//! assert_eq!(response.headers()["access-control-allow-origin"], "https://app.example");
//! assert_eq!(response.headers()["access-control-allow-methods"], "GET,POST");
//! assert_eq!(response.headers()["access-control-max-age"], "600");
//! # });
//! ```

use crate::body::{self, BoxBody, BoxError};
use crate::error::WithHeaders;
use crate::future::{self, ResponseFuture};
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use mesh_core::model::CorsPolicy;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// What a policy makes of one request.
#[derive(Debug)]
pub enum Decision {
    /// Not for this layer: no `Origin`, an origin not allowed (outside an ignored
    /// preflight).
    Pass,
    /// Forward it, then give the response the CORS headers for this (allowed) origin.
    Forward(HeaderValue),
    /// Answer the preflight with this response.
    Answer(Response<BoxBody>),
}

/// Decides what `policy` does with `req` (see the module docs).
pub fn decide<B>(policy: &CorsPolicy, req: &Request<B>) -> Decision {
    let headers = req.headers();
    let Some(origin) = headers.get(ORIGIN).filter(|o| !o.is_empty()) else {
        return Decision::Pass;
    };
    // An origin that is not visible ASCII matches nothing.
    let allowed = origin.to_str().is_ok_and(|o| policy.allows_origin(o));
    let preflight = req.method() == Method::OPTIONS
        && headers
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .is_some_and(|m| !m.is_empty());
    match (preflight, allowed) {
        (false, true) => Decision::Forward(origin.clone()),
        (false, false) => Decision::Pass,
        (true, false) if policy.forward_unmatched_preflights => Decision::Pass,
        (true, allowed) => {
            Decision::Answer(preflight_answer(policy, allowed.then_some(origin), headers))
        }
    }
}

/// The answer to a preflight: the allowed origin (`None` when it is not allowed and
/// unmatched preflights are ignored), credentials, methods, headers and max age.
fn preflight_answer(
    policy: &CorsPolicy,
    origin: Option<&HeaderValue>,
    request: &HeaderMap,
) -> Response<BoxBody> {
    let mut response = Response::new(body::empty());
    let headers = response.headers_mut();
    if let Some(origin) = origin {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    }
    if policy.allow_credentials {
        headers.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    // `*` echoes what the request asks for (Envoy answers an absent request header with an
    // empty value).
    let mut allow = |name: HeaderName, value: &str, requested: HeaderName| {
        let value = match value {
            "" => return,
            "*" => request
                .get(&requested)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("")),
            listed => match HeaderValue::from_str(listed) {
                Ok(value) => value,
                Err(_) => return,
            },
        };
        headers.insert(name, value);
    };
    allow(
        ACCESS_CONTROL_ALLOW_METHODS,
        &policy.allow_methods,
        ACCESS_CONTROL_REQUEST_METHOD,
    );
    allow(
        ACCESS_CONTROL_ALLOW_HEADERS,
        &policy.allow_headers,
        ACCESS_CONTROL_REQUEST_HEADERS,
    );
    if let Some(max_age) = policy.max_age {
        headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(max_age));
    }
    response
}

/// Gives the response to an allowed request its CORS headers: the origin, credentials when
/// allowed, and the exposed headers; each replaces any the upstream sent.
pub fn annotate(policy: &CorsPolicy, origin: HeaderValue, headers: &mut HeaderMap) {
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if policy.allow_credentials {
        headers.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !policy.expose_headers.is_empty()
        && let Ok(value) = HeaderValue::from_str(&policy.expose_headers)
    {
        headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, value);
    }
}

/// Gives the failure of an allowed request the headers [`annotate`] gives its response,
/// wrapped in a [`WithHeaders`] for [`crate::error::to_response`]: the mesh's own answers
/// (503 no healthy upstream, 504 timeout, ...) carry them, as Envoy's local replies pass
/// through its CORS filter.
pub fn annotate_error(policy: &CorsPolicy, origin: HeaderValue, error: BoxError) -> BoxError {
    let mut headers = HeaderMap::new();
    annotate(policy, origin, &mut headers);
    Box::new(WithHeaders::new(error, headers))
}

/// Applies one CORS policy to every request.
#[derive(Clone, Debug)]
pub struct CorsLayer {
    policy: Arc<CorsPolicy>,
}

impl CorsLayer {
    /// A layer applying `policy`.
    pub fn new(policy: CorsPolicy) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }
}

impl<S> Layer<S> for CorsLayer {
    type Service = Cors<S>;

    fn layer(&self, inner: S) -> Cors<S> {
        Cors {
            policy: self.policy.clone(),
            inner,
        }
    }
}

/// The service [`CorsLayer`] makes.
#[derive(Clone, Debug)]
pub struct Cors<S> {
    policy: Arc<CorsPolicy>,
    inner: S,
}

impl<S, B> Service<Request<B>> for Cors<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match decide(&self.policy, &req) {
            Decision::Pass => future::passed(self.inner.call(req)),
            Decision::Answer(response) => future::acted(async move { Ok(response) }),
            Decision::Forward(origin) => {
                let future = self.inner.call(req);
                let policy = self.policy.clone();
                future::acted(async move {
                    match future.await {
                        Ok(mut response) => {
                            annotate(&policy, origin, response.headers_mut());
                            Ok(response)
                        }
                        Err(e) => Err(annotate_error(&policy, origin, e)),
                    }
                })
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod unit {
    use super::*;
    use mesh_core::model::{Pattern, StringMatch};

    fn request(method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri("/");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn policy() -> CorsPolicy {
        CorsPolicy {
            allow_origins: vec![
                StringMatch::Exact("https://a.example".into()),
                StringMatch::Regex(Pattern::new(r"https://[a-z]+\.b\.example").unwrap()),
            ],
            allow_methods: "*".into(),
            allow_headers: "*".into(),
            ..CorsPolicy::default()
        }
    }

    fn answer_headers(decision: Decision) -> Vec<(String, String)> {
        let Decision::Answer(response) = decision else {
            panic!("expected an answer, got {decision:?}");
        };
        assert_eq!(response.status(), 200);
        let mut headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        headers
    }

    #[test]
    fn star_methods_and_headers_echo_the_preflights_request() {
        let req = request(
            Method::OPTIONS,
            &[
                ("origin", "https://x.b.example"),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "x-a, x-b"),
            ],
        );
        assert_eq!(
            answer_headers(decide(&policy(), &req)),
            [
                ("access-control-allow-headers".into(), "x-a, x-b".into()),
                ("access-control-allow-methods".into(), "PUT".into()),
                (
                    "access-control-allow-origin".into(),
                    "https://x.b.example".into()
                ),
            ]
        );
    }

    #[test]
    fn an_options_request_without_a_requested_method_is_not_a_preflight() {
        let req = request(
            Method::OPTIONS,
            &[
                ("origin", "https://a.example"),
                ("access-control-request-method", ""),
            ],
        );
        assert!(
            matches!(decide(&policy(), &req), Decision::Forward(o) if o == "https://a.example")
        );
    }

    #[test]
    fn an_empty_or_unlisted_origin_passes_and_ignore_answers_without_the_origin() {
        for origin in ["", "https://a.example.evil", "https://x.b.example.evil"] {
            let req = request(Method::GET, &[("origin", origin)]);
            assert!(
                matches!(decide(&policy(), &req), Decision::Pass),
                "{origin}"
            );
        }
        let preflight = request(
            Method::OPTIONS,
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "GET"),
            ],
        );
        assert!(matches!(decide(&policy(), &preflight), Decision::Pass));
        let ignore = CorsPolicy {
            forward_unmatched_preflights: false,
            allow_credentials: true,
            max_age: Some(60),
            ..policy()
        };
        assert_eq!(
            answer_headers(decide(&ignore, &preflight)),
            [
                ("access-control-allow-credentials".into(), "true".into()),
                // `*` with no access-control-request-headers: empty, as Envoy has it.
                ("access-control-allow-headers".into(), "".into()),
                ("access-control-allow-methods".into(), "GET".into()),
                ("access-control-max-age".into(), "60".into()),
            ]
        );
    }

    #[test]
    fn a_star_origin_allows_every_origin() {
        let any = CorsPolicy {
            allow_origins: vec![StringMatch::Exact("*".into())],
            ..CorsPolicy::default()
        };
        let req = request(Method::GET, &[("origin", "https://anything.example")]);
        assert!(matches!(decide(&any, &req), Decision::Forward(_)));
    }
}
