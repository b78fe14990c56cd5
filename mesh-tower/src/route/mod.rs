//! The route layer: finds the virtual host for the request's authority (in the table of its
//! [`destination_port`] when the config has routes per port, as xDS configs do) and the first
//! route whose conditions match, then answers it (redirect, direct response) or hands it on
//! with a [`Routed`] naming the route in its [`crate::context::RequestContext`], for the
//! layers below. It applies the route's CORS policy itself ([`crate::cors`]): it answers an
//! allowed preflight, and adds the CORS headers to the response of an allowed request. A
//! failure below (503, 504, ...) comes up wrapped in a [`WithHeaders`] with the route's
//! response header changes and the CORS headers, which the answer made at the stack's edge
//! carries, as Envoy's router and CORS filter treat its local replies.
//!
//! The snapshot is loaded once per request and travels with it in [`Routed`], so a config
//! swap never changes the rules under an in-flight request.

pub(crate) mod matching;
mod pin;
mod rewrite;

pub use rewrite::apply_header_ops;

use crate::body::{self, BoxBody, BoxError};
use crate::cors;
use crate::error::{ProxyError, WithHeaders};
use crate::future::{self, ResponseFuture};
use crate::server::ConnectionInfo;
use http::{HeaderValue, Request, Response, StatusCode};
use matching::RequestView;
use mesh_core::model::{Forward, Route, RouteAction, VirtualHost};
use mesh_core::store::{ConfigStore, Snapshot};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// The route a request matched, with the snapshot it was matched in.
#[derive(Clone, Debug)]
pub struct Routed {
    /// This thread's reference to the snapshot (see [`pin`]).
    snapshot: Arc<pin::Pinned>,
    vhost: usize,
    route: usize,
}

impl Routed {
    /// A `Routed` carrying only a snapshot, for tests of layers that read nothing else.
    #[cfg(test)]
    pub(crate) fn for_tests(snapshot: Arc<Snapshot>) -> Self {
        Self {
            snapshot: Arc::new(pin::Pinned(snapshot)),
            vhost: 0,
            route: 0,
        }
    }

    /// The snapshot the request is served with.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot.0
    }

    /// The matched virtual host.
    pub fn virtual_host(&self) -> &VirtualHost {
        &self.snapshot().routes.virtual_hosts()[self.vhost]
    }

    /// The matched route.
    pub fn route(&self) -> &Route {
        &self.virtual_host().routes[self.route]
    }

    /// The route's forwarding action, when it forwards.
    pub fn forward(&self) -> Option<&Forward> {
        match &self.route().action {
            RouteAction::Forward(forward) => Some(forward),
            _ => None,
        }
    }
}

/// The request's destination authority: the absolute-form URI's or `:authority`, else `Host`.
pub fn destination<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(http::header::HOST)?.to_str().ok())
}

/// The port `req` is addressed to, which picks the outbound routes when the config has a
/// table per port ([`mesh_core::model::RouteTable`], from xDS: Envoy routes by the outbound
/// listener a connection lands on, then by authority).
///
/// - An intercepted connection ([`ConnectionInfo::redirected`]): its original destination's
///   port, whatever the `Host` header says (as Envoy's `virtualOutbound` hands the connection
///   to the listener of that port).
/// - Otherwise (the plain outbound listener, a service embedding the stack): the port of
///   `authority` (the request's [`destination`]), else the scheme's default, 443 for `https`
///   and 80 for anything else: the port a client calling that URL connects to.
///
/// ```
/// use mesh_tower::route::destination_port;
/// let req = http::Request::get("http://reviews:9080/").body(()).unwrap();
/// assert_eq!(destination_port(&req, "reviews:9080"), 9080);
/// let req = http::Request::get("/").header("host", "reviews").body(()).unwrap();
/// assert_eq!(destination_port(&req, "reviews"), 80);
/// let req = http::Request::get("https://[::1]/").body(()).unwrap();
/// assert_eq!(destination_port(&req, "[::1]"), 443);
/// ```
pub fn destination_port<B>(req: &Request<B>, authority: &str) -> u16 {
    if let Some(conn) = req.extensions().get::<ConnectionInfo>()
        && conn.redirected
    {
        return conn.local.port();
    }
    authority_port(authority).unwrap_or_else(|| {
        if req.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
            443
        } else {
            80
        }
    })
}

/// The port of `host:port` (`[v6]:port`), if it has one.
fn authority_port(authority: &str) -> Option<u16> {
    let (host, port) = authority.rsplit_once(':')?;
    // A bare IPv6 address has colons but no port.
    if host.contains(':') && !host.ends_with(']') {
        return None;
    }
    port.parse().ok()
}

/// Routes requests by the live config in a [`ConfigStore`].
///
/// ```
/// use mesh_core::{model::MeshConfig, store::ConfigStore};
/// use mesh_tower::route::RouteLayer;
/// use std::sync::Arc;
///
/// let store = Arc::new(ConfigStore::new(MeshConfig::default()));
/// let layer = RouteLayer::new(store);
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct RouteLayer {
    store: Arc<ConfigStore>,
}

impl RouteLayer {
    /// A layer that routes by `store`'s current snapshot.
    pub fn new(store: Arc<ConfigStore>) -> Self {
        Self { store }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Router<S>;

    fn layer(&self, inner: S) -> Router<S> {
        Router {
            store: self.store.clone(),
            inner,
        }
    }
}

/// The service [`RouteLayer`] makes.
#[derive(Clone, Debug)]
pub struct Router<S> {
    store: Arc<ConfigStore>,
    inner: S,
}

impl<S, B> Service<Request<B>> for Router<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let snapshot = pin::live(&self.store);
        let mut cors_origin = None;
        let routed = match select(&snapshot.0, &req) {
            Ok(Selection::Forward {
                vhost,
                route,
                matched,
            }) => {
                let routed = Routed {
                    snapshot,
                    vhost,
                    route,
                };
                let r = routed.route();
                // CORS sees the request as the client sent it, before the route's rewrites,
                // and answers a preflight before the layers below (see `crate::cors`). A
                // route without a policy costs this one branch.
                if let Some(policy) = r.cors.as_deref() {
                    match cors::decide(policy, &req) {
                        cors::Decision::Pass => {}
                        cors::Decision::Forward(origin) => cors_origin = Some(origin),
                        cors::Decision::Answer(response) => {
                            return future::acted(async move { Ok(response) });
                        }
                    }
                }
                if let Some(rewrite) = routed.forward().and_then(|f| f.rewrite.as_ref()) {
                    let matched = matched.and_then(|i| r.matches.get(i));
                    if let Err(e) = rewrite::apply(rewrite, matched, &mut req) {
                        let e = failure_with_route_headers(r, cors_origin, e.into());
                        return future::acted(async move { Err(e) });
                    }
                }
                apply_header_ops(&r.request_headers, req.headers_mut());
                routed
            }
            Ok(Selection::Respond(response)) => return future::acted(async move { Ok(response) }),
            Err(e) => return future::acted(async move { Err(e.into()) }),
        };
        // Kept for the response only when the route changes response headers or CORS adds
        // its own.
        let for_response = (cors_origin.is_some() || !routed.route().response_headers.is_empty())
            .then(|| routed.clone());
        crate::context::RequestContext::of_mut(&mut req).routed = Some(routed);
        // The inner service was made ready by `poll_ready`: call it now rather than moving a
        // clone of the whole stack below into the future.
        let future = self.inner.call(req);
        let Some(routed_for_response) = for_response else {
            return future::passed(future);
        };
        future::acted(async move {
            let mut response = match future.await {
                Ok(response) => response,
                // The mesh's own answer (503, 504, ...), made at the stack's edge, gets the
                // route's response headers and the CORS headers too.
                Err(e) => {
                    let route = routed_for_response.route();
                    return Err(failure_with_route_headers(route, cors_origin, e));
                }
            };
            let route = routed_for_response.route();
            apply_header_ops(&route.response_headers, response.headers_mut());
            // After the route's header changes, as Envoy's CORS filter encodes after the
            // router's.
            if let (Some(origin), Some(policy)) = (cors_origin, route.cors.as_deref()) {
                cors::annotate(policy, origin, response.headers_mut());
            }
            Ok(response)
        })
    }
}

/// `error`, wrapped with the headers the mesh's own answer to it is to carry (see
/// [`WithHeaders`]): the route's response header changes, as Envoy's router applies them to
/// its local replies (`finalizeResponseHeaders`), then the CORS headers of an allowed
/// `cors_origin`, as on a response. Unwrapped when there are none.
fn failure_with_route_headers(
    route: &Route,
    cors_origin: Option<HeaderValue>,
    error: BoxError,
) -> BoxError {
    let mut headers = http::HeaderMap::new();
    apply_header_ops(&route.response_headers, &mut headers);
    if let (Some(origin), Some(policy)) = (cors_origin, route.cors.as_deref()) {
        cors::annotate(policy, origin, &mut headers);
    }
    if headers.is_empty() {
        return error;
    }
    Box::new(WithHeaders::new(error, headers))
}

enum Selection {
    Forward {
        vhost: usize,
        route: usize,
        matched: Option<usize>,
    },
    Respond(Response<BoxBody>),
}

fn select<B>(snapshot: &Snapshot, req: &Request<B>) -> Result<Selection, ProxyError> {
    let authority = destination(req).ok_or(ProxyError::MissingHost)?;
    let no_route = || ProxyError::NoRoute {
        authority: authority.to_owned(),
    };
    // The destination port only matters, and is only worked out, when some port has routes
    // of its own (xDS); the Istio-YAML table has none.
    let port = snapshot
        .routes
        .is_per_port()
        .then(|| destination_port(req, authority));
    let vhost_index = snapshot
        .routes
        .find_index_on_port(port, authority)
        .ok_or_else(no_route)?;
    let vhost = &snapshot.routes.virtual_hosts()[vhost_index];
    let view = RequestView::new(req, authority);
    let (route_index, matched) = vhost
        .routes
        .iter()
        .enumerate()
        .find_map(|(i, r)| {
            if r.matches.is_empty() {
                Some((i, None))
            } else {
                matching::first_match(&r.matches, &view, &snapshot.workload).map(|m| (i, Some(m)))
            }
        })
        .ok_or_else(no_route)?;
    let route = &vhost.routes[route_index];
    match &route.action {
        RouteAction::Forward(_) => Ok(Selection::Forward {
            vhost: vhost_index,
            route: route_index,
            matched,
        }),
        RouteAction::DirectResponse(direct) => {
            let mut response = Response::new(match &direct.body {
                Some(bytes) => body::full(bytes.clone()),
                None => body::empty(),
            });
            *response.status_mut() = StatusCode::from_u16(direct.status).unwrap_or(StatusCode::OK);
            apply_header_ops(&route.response_headers, response.headers_mut());
            Ok(Selection::Respond(response))
        }
        RouteAction::Redirect(redirect) => {
            let location = rewrite::redirect_location(redirect, req, authority);
            let mut response = Response::new(body::empty());
            *response.status_mut() =
                StatusCode::from_u16(redirect.code).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            if let Ok(value) = HeaderValue::try_from(location) {
                response.headers_mut().insert(http::header::LOCATION, value);
            }
            apply_header_ops(&route.response_headers, response.headers_mut());
            Ok(Selection::Respond(response))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use mesh_core::model::{DirectResponse, HeaderOps, MeshConfig, RouteTable};
    use std::collections::BTreeMap;
    use tower::ServiceExt;

    /// A virtual host whose one route answers with `name`.
    fn vh(name: &str, domains: &[&str]) -> VirtualHost {
        VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            routes: vec![Route {
                name: name.into(),
                matches: vec![],
                action: RouteAction::DirectResponse(DirectResponse {
                    status: 200,
                    body: Some(name.as_bytes().to_vec()),
                }),
                request_headers: HeaderOps::default(),
                response_headers: HeaderOps::default(),
                fault: None,
                mirrors: vec![],
                retry: None,
                timeout: None,
                hedge: None,
                rate_limit: None,
                cors: None,
            }],
        }
    }

    /// Istio's RDS "8080" and "9080": both claim `reviews`, each has its catch-all.
    fn store() -> Arc<ConfigStore> {
        let routes = RouteTable::with_ports(
            vec![
                vh("reviews-8080", &["reviews", "reviews:8080"]),
                vh("any-8080", &["*"]),
                vh("reviews-9080", &["reviews", "reviews:9080"]),
                vh("any-9080", &["*"]),
            ],
            BTreeMap::from([(8080, vec![0, 1]), (9080, vec![2, 3])]),
        );
        Arc::new(ConfigStore::new(MeshConfig {
            routes,
            ..MeshConfig::default()
        }))
    }

    async fn answer(req: Request<()>) -> String {
        let inner = tower::service_fn(|_: Request<()>| async {
            Err::<Response<BoxBody>, BoxError>("forwarded".into())
        });
        let response = RouteLayer::new(store()).layer(inner).oneshot(req).await;
        let body = response.unwrap().into_body().collect().await.unwrap();
        String::from_utf8(body.to_bytes().to_vec()).unwrap()
    }

    fn with_host(uri: &str, host: &str, connection: Option<(u16, bool)>) -> Request<()> {
        let mut req = Request::get(uri).header("host", host).body(()).unwrap();
        if let Some((port, redirected)) = connection {
            req.extensions_mut().insert(ConnectionInfo {
                peer: ([127, 0, 0, 1], 40000).into(),
                local: ([10, 0, 0, 1], port).into(),
                redirected,
            });
        }
        req
    }

    #[tokio::test]
    async fn an_intercepted_request_meets_the_routes_of_its_original_port() {
        let intercepted = |host, port| with_host("/", host, Some((port, true)));
        assert_eq!(answer(intercepted("reviews", 9080)).await, "reviews-9080");
        assert_eq!(answer(intercepted("reviews", 8080)).await, "reviews-8080");
        assert_eq!(answer(intercepted("ratings", 9080)).await, "any-9080");
        // The connection's port decides, not the one in `Host`.
        assert_eq!(answer(intercepted("reviews:9080", 8080)).await, "any-8080");
        // A port without routes of its own: every port's, merged.
        assert_eq!(answer(intercepted("reviews", 7000)).await, "reviews-8080");
    }

    #[tokio::test]
    async fn a_request_to_the_plain_listener_meets_the_routes_of_its_authority_s_port() {
        // The listener's own address is not a destination.
        let direct = Some((15001, false));
        assert_eq!(
            answer(with_host("/", "reviews:9080", direct)).await,
            "reviews-9080"
        );
        assert_eq!(
            answer(with_host("/", "ratings:9080", direct)).await,
            "any-9080"
        );
        assert_eq!(
            answer(with_host("/", "ratings:8080", None)).await,
            "any-8080"
        );
        let absolute = |uri| with_host(uri, "ignored", None);
        assert_eq!(answer(absolute("http://ratings:9080/")).await, "any-9080");
        // No port: the scheme's, 80 or 443, which no listener serves here.
        assert_eq!(
            answer(with_host("/", "reviews", direct)).await,
            "reviews-8080"
        );
        assert_eq!(answer(absolute("https://ratings/")).await, "any-8080");
    }

    #[test]
    fn the_port_of_an_authority() {
        assert_eq!(authority_port("reviews:9080"), Some(9080));
        assert_eq!(authority_port("[::1]:8443"), Some(8443));
        assert_eq!(authority_port("reviews"), None);
        assert_eq!(authority_port("[::1]"), None);
        assert_eq!(authority_port("::1"), None);
        assert_eq!(authority_port("reviews:"), None);
        assert_eq!(authority_port("reviews:99999"), None);
    }
}
