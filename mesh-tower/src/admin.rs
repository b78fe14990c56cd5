//! The admin endpoint (`/config_dump`, `/clusters`, `/ready`) and the health endpoint
//! (`/healthz/ready`), as Envoy and Istio's agent serve them.

use crate::body::{self, BoxBody};
use futures_util::future::{Ready, ready};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use mesh_core::store::ConfigStore;
use std::convert::Infallible;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use tower_service::Service;

/// Whether the proxy is ready: config loaded and listeners bound. Clones share the flag.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the proxy ready (or not, while draining).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether the proxy is ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The admin service.
#[derive(Clone, Debug)]
pub struct Admin {
    store: Arc<ConfigStore>,
    readiness: Readiness,
}

impl Admin {
    /// Admin over `store`, reporting `readiness`.
    pub fn new(store: Arc<ConfigStore>, readiness: Readiness) -> Self {
        Self { store, readiness }
    }

    fn respond(&self, method: &Method, path: &str) -> Response<BoxBody> {
        if method != Method::GET && method != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".to_owned());
        }
        match path {
            "/config_dump" => self.config_dump(),
            "/clusters" => self.clusters(),
            "/ready" | "/healthz/ready" => self.ready(),
            "/" => text(
                StatusCode::OK,
                "admin commands:\n  /config_dump  the live config snapshot and the last rejected change\n  /clusters     every cluster's endpoints\n  /ready        200 once config is loaded and listeners are bound\n".to_owned(),
            ),
            _ => text(StatusCode::NOT_FOUND, format!("no admin command {path}\n")),
        }
    }

    fn config_dump(&self) -> Response<BoxBody> {
        let snapshot = self.store.load();
        let dump = serde_json::json!({
            "version": snapshot.version,
            "config": &snapshot.config,
            "last_rejection": self.store.last_rejection().as_deref(),
        });
        match serde_json::to_vec_pretty(&dump) {
            Ok(json) => {
                let mut response = Response::new(body::full(json));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot serialize config: {e}\n"),
            ),
        }
    }

    /// Envoy's text form: `cluster::address:port::field::value`.
    fn clusters(&self) -> Response<BoxBody> {
        let snapshot = self.store.load();
        let mut out = String::new();
        for (name, cluster) in &snapshot.clusters {
            for e in &cluster.endpoints {
                let health = match e.health {
                    mesh_core::model::HealthStatus::Healthy => "healthy",
                    mesh_core::model::HealthStatus::Unhealthy => "/failed_eds_health",
                    mesh_core::model::HealthStatus::Draining => "/pending_dynamic_removal",
                };
                let _ = writeln!(out, "{name}::{}::health_flags::{health}", e.authority());
                let _ = writeln!(out, "{name}::{}::weight::{}", e.authority(), e.weight);
                let _ = writeln!(out, "{name}::{}::locality::{}", e.authority(), e.locality);
            }
        }
        text(StatusCode::OK, out)
    }

    fn ready(&self) -> Response<BoxBody> {
        if self.readiness.get() {
            text(StatusCode::OK, "LIVE\n".to_owned())
        } else {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "PRE_INITIALIZING\n".to_owned(),
            )
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<BoxBody> {
    let mut response = Response::new(body::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl<B> Service<Request<B>> for Admin {
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = Ready<Result<Response<BoxBody>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.respond(req.method(), req.uri().path())))
    }
}
