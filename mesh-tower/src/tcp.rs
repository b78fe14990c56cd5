//! Plain TCP through the mesh: a local port forwards every connection to an endpoint of a
//! service's `TCP` port (round-robin over the cluster's healthy endpoints, from the live
//! snapshot), with Istio's TCP metrics (`istio_tcp_connections_opened_total`,
//! `istio_tcp_connections_closed_total`, `istio_tcp_sent_bytes_total`,
//! `istio_tcp_received_bytes_total`).
//!
//! Without transparent interception a TCP connection carries no destination name, so each
//! forwarded service gets its own local port (the sidecar's `--tcp-forward PORT=HOST:PORT`).

use crate::flags::{ResponseFlag, ResponseFlags};
use mesh_core::model::{ClusterName, HealthStatus, Workload};
use mesh_core::store::ConfigStore;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// One forwarded service port.
#[derive(Clone, Debug)]
pub struct TcpForward {
    store: Arc<ConfigStore>,
    cluster: ClusterName,
    service: String,
    workload: Arc<Workload>,
    turn: Arc<AtomicUsize>,
    connect_timeout: Duration,
}

impl TcpForward {
    /// Forwards to service `host` (fully qualified) on `port`, by `store`'s live config.
    pub fn new(store: Arc<ConfigStore>, host: &str, port: u16) -> Self {
        let workload = Arc::new(store.load().workload.clone());
        Self {
            store,
            cluster: ClusterName::outbound(port, None, host),
            service: host.to_owned(),
            workload,
            turn: Arc::default(),
            connect_timeout: Duration::from_secs(10),
        }
    }

    fn labels(&self, flags: ResponseFlags) -> Vec<metrics::Label> {
        let w = &self.workload;
        let app = w
            .labels
            .get("app")
            .cloned()
            .unwrap_or_else(|| "unknown".to_owned());
        let version = w
            .labels
            .get("version")
            .cloned()
            .unwrap_or_else(|| "unknown".to_owned());
        let name = self
            .service
            .split('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        let namespace = self
            .service
            .split('.')
            .nth(1)
            .unwrap_or("unknown")
            .to_owned();
        [
            ("reporter", "source".to_owned()),
            ("source_workload", app.clone()),
            ("source_workload_namespace", w.namespace.clone()),
            (
                "source_principal",
                format!(
                    "spiffe://{}/ns/{}/sa/{}",
                    w.trust_domain, w.namespace, w.service_account
                ),
            ),
            ("source_app", app),
            ("source_version", version),
            ("destination_service", self.service.clone()),
            ("destination_service_name", name),
            ("destination_service_namespace", namespace),
            ("request_protocol", "tcp".to_owned()),
            ("response_flags", flags.to_string()),
            ("connection_security_policy", "unknown".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| metrics::Label::new(k, v))
        .collect()
    }

    /// The next healthy endpoint of the cluster, round-robin.
    fn pick(&self) -> Option<String> {
        let snapshot = self.store.load();
        let cluster = snapshot.cluster(&self.cluster)?;
        let healthy: Vec<_> = cluster
            .endpoints
            .iter()
            .filter(|e| e.health == HealthStatus::Healthy)
            .collect();
        if healthy.is_empty() {
            return None;
        }
        let i = self.turn.fetch_add(1, Ordering::Relaxed) % healthy.len();
        Some(healthy[i].authority())
    }

    /// Carries one client connection to an endpoint and back, recording Istio's TCP metrics.
    pub async fn forward(&self, mut client: TcpStream) {
        let Some(endpoint) = self.pick() else {
            metrics::counter!(
                "istio_tcp_connections_opened_total",
                self.labels(ResponseFlags::of(ResponseFlag::NoHealthyUpstream))
            )
            .increment(1);
            metrics::counter!(
                "istio_tcp_connections_closed_total",
                self.labels(ResponseFlags::of(ResponseFlag::NoHealthyUpstream))
            )
            .increment(1);
            return;
        };
        let upstream =
            tokio::time::timeout(self.connect_timeout, TcpStream::connect(&endpoint)).await;
        let Ok(Ok(mut upstream)) = upstream else {
            let flags = ResponseFlags::of(ResponseFlag::UpstreamConnectionFailure);
            metrics::counter!("istio_tcp_connections_opened_total", self.labels(flags))
                .increment(1);
            metrics::counter!("istio_tcp_connections_closed_total", self.labels(flags))
                .increment(1);
            tracing::debug!(%endpoint, "tcp upstream connect failed");
            return;
        };
        let _ = upstream.set_nodelay(true);
        let labels = self.labels(ResponseFlags::default());
        metrics::counter!("istio_tcp_connections_opened_total", labels.clone()).increment(1);
        let copied = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        let (sent, received) = copied.unwrap_or((0, 0));
        // `sent`: client -> upstream; `received`: upstream -> client (Istio's direction names).
        metrics::counter!("istio_tcp_sent_bytes_total", labels.clone()).increment(sent);
        metrics::counter!("istio_tcp_received_bytes_total", labels.clone()).increment(received);
        metrics::counter!("istio_tcp_connections_closed_total", labels).increment(1);
    }
}

/// Accepts connections on `listener` and forwards each with `forward` until `shutdown`.
pub async fn serve_tcp(
    listener: TcpListener,
    forward: TcpForward,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let forward = forward.clone();
                    tokio::spawn(async move { forward.forward(stream).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => return,
        }
    }
}
