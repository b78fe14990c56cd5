//! A tonic gRPC client and server over mutual TLS with SPIFFE identities, both embedding the
//! mesh: the client's channel is `mesh.client()` (routing, retries on `unavailable`, mutual
//! TLS to the `ISTIO_MUTUAL` destination, checking the server's SPIFFE ID); the server is a
//! tonic service served by `axum::serve` on the mesh's listener (PeerAuthentication STRICT,
//! AuthorizationPolicy by namespace) and reads the caller's identity from each request. It
//! answers UNAVAILABLE to every other call, and the mesh retries. Certificates come from a CA
//! made at start.
//!
//! `cargo run -p mesh-examples --example tonic_client`

use mesh_core::istio;
use mesh_core::model::Workload;
use mesh_policy::credentials::CredentialStore;
use mesh_policy::testing::TestCa;
use mesh_tower::embed::axum::with_peer_info;
use mesh_tower::embed::{Mesh, MeshError};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The server's identity.
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/observability/sa/collector";
/// The client's identity.
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/frontend/sa/web";
/// The gRPC service, as the client names it.
pub const ORIGIN: &str = "http://collector.observability.svc.cluster.local:4317";

/// The server: answers UNAVAILABLE to every other call, and records who called.
#[derive(Clone, Debug, Default)]
pub struct Collector {
    /// Calls received (failed ones included).
    pub calls: Arc<AtomicUsize>,
    /// The verified SPIFFE ID of each call's client (`none` without mutual TLS).
    pub callers: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        // The mesh's listener put the verified identity into the request's extensions.
        let caller = request
            .extensions()
            .get::<mesh_policy::PeerIdentity>()
            .map_or_else(|| "none".to_owned(), |p| p.id.to_string());
        if let Ok(mut callers) = self.callers.lock() {
            callers.push(caller);
        }
        if self.calls.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
            return Err(tonic::Status::unavailable("warming up"));
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The server's mesh config: mutual TLS required, callers from namespace `frontend` only.
pub const SERVER_CONFIG: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: observability }
spec: { mtls: { mode: STRICT } }
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: frontend-only, namespace: observability }
spec:
  action: ALLOW
  rules: [{ from: [{ source: { namespaces: [frontend] } }] }]
";

/// The client's mesh config: the collector (gRPC on 4317) at `server`, reached over mutual
/// TLS, retried on `unavailable`.
pub fn client_config(server: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: collector, namespace: observability }}
spec:
  hosts: [collector.observability.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 4317, name: grpc, protocol: GRPC }}]
  endpoints: [{{ address: {ip}, ports: {{ grpc: {port} }}, serviceAccount: collector }}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: collector, namespace: observability }}
spec:
  host: collector.observability.svc.cluster.local
  trafficPolicy: {{ tls: {{ mode: ISTIO_MUTUAL }} }}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: collector, namespace: observability }}
spec:
  hosts: [collector.observability.svc.cluster.local]
  http:
  - retries: {{ attempts: 2, retryOn: unavailable }}
    route: [{{ destination: {{ host: collector.observability.svc.cluster.local }} }}]
",
        ip = server.ip(),
        port = server.port()
    )
}

async fn mesh(
    yaml: &str,
    namespace: &str,
    sa: &str,
    credentials: Arc<CredentialStore>,
) -> Result<Mesh, Error> {
    let workload = Workload {
        namespace: namespace.to_owned(),
        service_account: sa.to_owned(),
        ..Workload::default()
    };
    let loaded = istio::load(&[("mesh.yaml", yaml)], &workload);
    let config = loaded.config.ok_or(MeshError::Config(loaded.diagnostics))?;
    Ok(Mesh::builder()
        .config(config)
        .identity(credentials)
        .build()
        .await?)
}

/// The running example.
pub struct Running {
    /// The CA that issued both certificates.
    pub ca: TestCa,
    /// The gRPC server's state.
    pub collector: Collector,
    /// Where it listens (mutual TLS).
    pub server_addr: SocketAddr,
    /// The server's mesh.
    pub server: Mesh,
    /// The client's mesh.
    pub client: Mesh,
}

/// Starts the gRPC server on an ephemeral 127.0.0.1 port and builds the client's mesh.
pub async fn start() -> Result<Running, Error> {
    let ca = TestCa::new("example root");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server_addr = listener.local_addr()?;

    let server = mesh(
        SERVER_CONFIG,
        "observability",
        "collector",
        CredentialStore::new(ca.credentials(SERVER_ID)),
    )
    .await?;
    let collector = Collector::default();
    // The tonic service as an axum Router, behind the mesh's inbound layer.
    let app = tonic::service::Routes::new(TraceServiceServer::new(collector.clone()))
        .into_axum_router()
        .layer(server.inbound_layer());
    let listener = server.listener(listener)?;
    let shutdown = server.shutdown_signal();
    tokio::spawn(async move {
        axum::serve(listener, with_peer_info(app))
            .with_graceful_shutdown(shutdown)
            .await
    });

    let client = mesh(
        &client_config(server_addr),
        "frontend",
        "web",
        CredentialStore::new(ca.credentials(CLIENT_ID)),
    )
    .await?;
    Ok(Running {
        ca,
        collector,
        server_addr,
        server,
        client,
    })
}

/// Makes `n` calls with a tonic client whose channel is `client.client()`.
pub async fn call(client: &Mesh, n: usize) -> Result<(), Error> {
    // The mesh client is the channel; the origin names the destination service.
    let mut grpc = TraceServiceClient::with_origin(client.client(), ORIGIN.parse()?);
    for _ in 0..n {
        grpc.export(ExportTraceServiceRequest::default()).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let running = start().await?;
    call(&running.client, 3).await?;
    let callers = running
        .collector
        .callers
        .lock()
        .map(|c| c.clone())
        .unwrap_or_default();
    println!(
        "3 calls succeeded over mutual TLS; the server saw {} (every other one was answered UNAVAILABLE and retried by the mesh), all from {:?}",
        running.collector.calls.load(Ordering::SeqCst),
        callers.first()
    );
    running
        .server
        .shutdown(std::time::Duration::from_secs(5))
        .await;
    Ok(())
}
