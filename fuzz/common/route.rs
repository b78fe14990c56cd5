//! The route_match fuzz target's input format and runner, shared with the corpus replay test
//! (`mesh-tower/tests/fuzz_corpus.rs` includes this file by path).
//!
//! An input is lines: the method, the URI, the Host header, then `name: value` headers. Any
//! bytes go: lines that do not make a valid request part are skipped or end the input.

use http::{Request, Response};
use mesh_core::store::ConfigStore;
use mesh_tower::body::{self, BoxBody, BoxError};
use mesh_tower::route::RouteLayer;
use std::future::{Ready, ready};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use tower_layer::Layer;
use tower_service::Service;

/// The fixed config, as YAML.
pub const CONFIG: &str = include_str!("route.yaml");

/// The store serving [`CONFIG`], built once.
///
/// # Panics
/// If [`CONFIG`] does not load: the fuzz target would then test nothing.
pub fn store() -> &'static Arc<ConfigStore> {
    static STORE: OnceLock<Arc<ConfigStore>> = OnceLock::new();
    STORE.get_or_init(|| {
        let out = mesh_core::istio::load(
            &[("route.yaml", CONFIG)],
            &mesh_core::model::Workload::default(),
        );
        let config = out
            .config
            .unwrap_or_else(|| panic!("route.yaml does not load: {:?}", out.diagnostics));
        Arc::new(ConfigStore::new(config))
    })
}

/// Decodes a request from `data`, or `None` when the first lines make no valid request.
pub fn request(data: &[u8]) -> Option<Request<()>> {
    let mut lines = data.split(|b| *b == b'\n');
    let method = http::Method::from_bytes(lines.next()?).ok()?;
    let uri = http::Uri::try_from(lines.next()?).ok()?;
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(host) = lines.next().filter(|h| !h.is_empty()) {
        let host = http::HeaderValue::from_bytes(host).ok()?;
        builder = builder.header(http::header::HOST, host);
    }
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        builder = builder.header(name, value);
    }
    builder.body(()).ok()
}

/// Answers every request 200 at once.
#[derive(Clone, Copy, Debug)]
pub struct Ok200;

impl<B> Service<Request<B>> for Ok200 {
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = Ready<Result<Response<BoxBody>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        ready(Ok(Response::new(body::empty())))
    }
}

/// Routes the request decoded from `data` through [`RouteLayer`] over [`Ok200`]. Routing must
/// not panic and, with an inner service that answers at once, must finish on the first poll.
/// Returns the status, or `None` when `data` is no request or routing failed with an error (a
/// failure is fine: it becomes a 404 or 400 at the edge).
pub fn run(data: &[u8]) -> Option<http::StatusCode> {
    let req = request(data)?;
    let mut svc = RouteLayer::new(store().clone()).layer(Ok200);
    let mut future = std::pin::pin!(svc.call(req.map(|()| body::empty())));
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(response)) => Some(response.status()),
        Poll::Ready(Err(_)) => None,
        Poll::Pending => panic!("routing over a ready service did not finish at once"),
    }
}
