//! The admin endpoint (`/config_dump`, `/clusters`, `/stats/prometheus`, `/logging`,
//! `/explain`, `/dashboard`, `/ready`) and the health endpoint (`/healthz/ready`), as Envoy
//! and Istio's agent serve them.

use crate::balance::BalanceLayer;
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

/// Renders the metrics in Prometheus text format.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;
/// Changes the log filter (`/logging?level=debug`); returns the new filter or why not.
pub type LogLevelSetter = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// The admin service.
#[derive(Clone)]
pub struct Admin {
    store: Arc<ConfigStore>,
    readiness: Readiness,
    metrics: Option<MetricsRenderer>,
    log_level: Option<LogLevelSetter>,
    balancer: Option<BalanceLayer>,
    dump_sections: Vec<(&'static str, DumpSection)>,
}

/// Adds a section to `/config_dump` (e.g. the xDS client's per-resource status).
pub type DumpSection = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Admin over `store`, reporting `readiness`.
    pub fn new(store: Arc<ConfigStore>, readiness: Readiness) -> Self {
        Self {
            store,
            readiness,
            metrics: None,
            log_level: None,
            balancer: None,
            dump_sections: Vec::new(),
        }
    }

    /// Adds `section` to `/config_dump` under `name`.
    pub fn dump_section(mut self, name: &'static str, section: DumpSection) -> Self {
        self.dump_sections.push((name, section));
        self
    }

    /// Serves `/stats/prometheus` from `render`.
    pub fn metrics(mut self, render: MetricsRenderer) -> Self {
        self.metrics = Some(render);
        self
    }

    /// Serves `/logging?level=` with `set`.
    pub fn log_level(mut self, set: LogLevelSetter) -> Self {
        self.log_level = Some(set);
        self
    }

    /// Shows the balancer's live endpoint state in `/clusters`: ejection, requests in flight
    /// (`rq_active`) and the TCP forwarders' open connections (`cx_active`, and in
    /// `rq_active` too, as Envoy counts a TCP proxy's connection).
    pub fn balancer(mut self, balancer: BalanceLayer) -> Self {
        self.balancer = Some(balancer);
        self
    }

    fn route(&self, method: &Method, uri: &http::Uri) -> Response<BoxBody> {
        let path = uri.path();
        let query = uri.query().unwrap_or_default();
        match path {
            "/stats/prometheus" => match &self.metrics {
                Some(render) => {
                    let mut response = text(StatusCode::OK, render());
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                    response
                }
                None => text(
                    StatusCode::NOT_FOUND,
                    "no metrics recorder installed\n".to_owned(),
                ),
            },
            "/logging" => {
                let level = query_param(query, "level");
                match (&self.log_level, level) {
                    (Some(set), Some(level)) => match set(&level) {
                        Ok(filter) => text(StatusCode::OK, format!("log filter: {filter}\n")),
                        Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                    },
                    (Some(_), None) => text(
                        StatusCode::BAD_REQUEST,
                        "use /logging?level=info (or a RUST_LOG filter)\n".to_owned(),
                    ),
                    (None, _) => text(
                        StatusCode::NOT_FOUND,
                        "log level changes are not enabled\n".to_owned(),
                    ),
                }
            }
            "/explain" => {
                let param = |k: &str| query_param(query, k);
                let Some(host) = param("host") else {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "use /explain?host=reviews&path=/&method=GET&header=end-user:jason\n"
                            .to_owned(),
                    );
                };
                let headers: Vec<(String, String)> = query
                    .split('&')
                    .filter_map(|p| p.split_once('='))
                    .filter(|(k, _)| *k == "header")
                    .filter_map(|(_, v)| {
                        percent_decode(v)
                            .split_once(':')
                            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    })
                    .collect();
                let port = match param("port").map(|p| p.parse::<u16>()).transpose() {
                    Ok(port) => port,
                    Err(_) => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            "port: not a port number\n".to_owned(),
                        );
                    }
                };
                let snapshot = self.store.load();
                let answer = crate::explain::explain(
                    &snapshot,
                    &param("method").unwrap_or_else(|| "GET".to_owned()),
                    &host,
                    port,
                    &param("path").unwrap_or_else(|| "/".to_owned()),
                    &headers,
                    param("peer").as_deref(),
                );
                json(&answer)
            }
            "/dashboard" => {
                let mut response = text(StatusCode::OK, include_str!("dashboard.html").to_owned());
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                response
            }
            _ => self.respond(method, path),
        }
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
                "admin commands:\n  /config_dump       the live config snapshot and the last rejected change\n  /clusters          every cluster's endpoints, health, ejection, open connections and requests in flight\n  /stats/prometheus  metrics in Prometheus text format\n  /logging?level=    change the log filter\n  /explain?host=&port=&path=&method=&header=k:v  what a request like that would meet\n  /dashboard         live traffic split, error rate and latency\n  /ready             200 once config is loaded and listeners are bound\n".to_owned(),
            ),
            _ => text(StatusCode::NOT_FOUND, format!("no admin command {path}\n")),
        }
    }

    fn config_dump(&self) -> Response<BoxBody> {
        let snapshot = self.store.load();
        let mut dump = serde_json::json!({
            "version": snapshot.version,
            "config": &snapshot.config,
            "last_rejection": self.store.last_rejection().as_deref(),
        });
        for (name, section) in &self.dump_sections {
            dump[*name] = section();
        }
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
                    mesh_core::model::HealthStatus::Degraded => "/degraded_eds_health",
                };
                let live = self
                    .balancer
                    .as_ref()
                    .and_then(|b| b.endpoint_state(name, &e.authority()));
                let ejected = live
                    .as_ref()
                    .is_some_and(|s| s.outlier.is_ejected(tokio::time::Instant::now()));
                let health = if ejected && health == "healthy" {
                    "/failed_outlier_check"
                } else {
                    health
                };
                let _ = writeln!(out, "{name}::{}::health_flags::{health}", e.authority());
                if let Some(live) = &live {
                    // As Envoy: a TCP proxy's connection is an active connection and an
                    // active request of its host (the HTTP client's pooled connections are
                    // not counted in `cx_active`).
                    let _ = writeln!(
                        out,
                        "{name}::{}::cx_active::{}",
                        e.authority(),
                        live.connections.load(std::sync::atomic::Ordering::Relaxed)
                    );
                    let _ = writeln!(
                        out,
                        "{name}::{}::rq_active::{}",
                        e.authority(),
                        live.active.load(std::sync::atomic::Ordering::Relaxed)
                    );
                    let _ = writeln!(
                        out,
                        "{name}::{}::times_ejected::{}",
                        e.authority(),
                        live.outlier.times_ejected()
                    );
                }
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

fn json(value: &serde_json::Value) -> Response<BoxBody> {
    let mut response = Response::new(body::full(
        serde_json::to_vec_pretty(value).unwrap_or_default(),
    ));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A query parameter, percent-decoded (`+` as space).
fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 3 <= bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
        ready(Ok(self.route(req.method(), req.uri())))
    }
}
