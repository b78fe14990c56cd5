//! The route layer: finds the virtual host for the request's authority and the first route
//! whose conditions match, then answers it (redirect, direct response) or hands it on with a
//! [`Routed`] naming the route in its [`crate::context::RequestContext`], for the layers
//! below. It applies the route's CORS policy itself ([`crate::cors`]): it answers an allowed
//! preflight, and adds the CORS headers to the response of an allowed request.
//!
//! The snapshot is loaded once per request and travels with it in [`Routed`], so a config
//! swap never changes the rules under an in-flight request.

pub(crate) mod matching;
mod pin;
mod rewrite;

pub use rewrite::apply_header_ops;

use crate::body::{self, BoxBody, BoxError};
use crate::cors;
use crate::error::ProxyError;
use crate::future::{self, ResponseFuture};
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
                        return future::acted(async move { Err(e.into()) });
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
            let mut response = future.await?;
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
    let vhost_index = snapshot.routes.find_index(authority).ok_or_else(no_route)?;
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
