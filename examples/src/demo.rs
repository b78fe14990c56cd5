//! Demo upstreams: one small HTTP server (HTTP/1.1 and h2c) for each loopback endpoint of a
//! config, answering `SERVICE VERSION ADDRESS` so that a `curl` shows where a request went.

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use mesh_core::model::{Address, MeshConfig};
use mesh_tower::body::{self, BoxBody};
use mesh_tower::server::{Drain, serve};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Running demo upstreams; dropping this does not stop them, [`shutdown`](Self::shutdown) does.
#[derive(Debug)]
pub struct DemoUpstreams {
    /// Each server's address and what it answers with.
    pub servers: Vec<(SocketAddr, String)>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Drain>>,
}

impl DemoUpstreams {
    /// Stops every server.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Starts a server on every loopback endpoint of `config`'s service clusters.
///
/// Each answers `200` with `SERVICE VERSION ADDRESS\n` (the endpoint's `version` label, `-`
/// without one) and echoes the path it received in `x-demo-path`.
pub async fn start(config: &MeshConfig) -> std::io::Result<DemoUpstreams> {
    let mut endpoints: BTreeMap<SocketAddr, String> = BTreeMap::new();
    for cluster in config.clusters.values().filter(|c| c.subset.is_none()) {
        for e in &cluster.endpoints {
            if let Address::Ip(ip) = e.address
                && ip.is_loopback()
            {
                let version = e.labels.get("version").map_or("-", String::as_str);
                let service = cluster.service.split('.').next().unwrap_or_default();
                endpoints
                    .entry(SocketAddr::new(ip, e.port))
                    .or_insert_with(|| format!("{service} {version}"));
            }
        }
    }
    let (stop, stopped) = watch::channel(false);
    let mut servers = Vec::new();
    let mut tasks = Vec::new();
    for (addr, name) in endpoints {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("demo upstream {name} on {addr}: {e}"))
        })?;
        let reply = format!("{name} {addr}\n");
        servers.push((addr, reply.clone()));
        let service = tower::service_fn(move |req: Request<Incoming>| {
            let mut response = Response::new(body::full(reply.clone()));
            if let Ok(path) = HeaderValue::try_from(req.uri().path()) {
                response.headers_mut().insert("x-demo-path", path);
            }
            std::future::ready(Ok::<Response<BoxBody>, Infallible>(response))
        });
        let mut stopped = stopped.clone();
        tasks.push(tokio::spawn(serve(
            listener,
            service,
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
            Duration::from_secs(1),
        )));
    }
    Ok(DemoUpstreams {
        servers,
        stop,
        tasks,
    })
}
