//! An axum handler that takes the caller's verified SPIFFE identity as an argument: the server
//! embeds the mesh and is served by `axum::serve` on the mesh's listener (mutual TLS required
//! by PeerAuthentication STRICT, AuthorizationPolicy by namespace); the client embeds the mesh
//! too and reaches it over `ISTIO_MUTUAL`. Certificates come from a CA made at start.
//!
//! `cargo run -p mesh-examples --example peer_identity`

use axum::Router;
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use mesh_core::istio;
use mesh_core::model::Workload;
use mesh_policy::credentials::CredentialStore;
use mesh_policy::testing::TestCa;
use mesh_tower::embed::axum::{PeerIdentity, Verdict, with_peer_info};
use mesh_tower::embed::{Mesh, MeshError};
use std::net::SocketAddr;
use tower::ServiceExt;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The server's identity.
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/backend/sa/whoami";
/// The client's identity.
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/frontend/sa/web";
/// The service's name, as the client calls it.
pub const HOST: &str = "whoami.backend.svc.cluster.local";

/// The handler: who called, and which policy let them in.
async fn whoami(PeerIdentity(peer): PeerIdentity, verdict: Option<Verdict>) -> String {
    let verdict = verdict.map_or_else(|| "no policy applies".to_owned(), |v| v.to_string());
    format!("hello {} ({verdict})", peer.id)
}

/// The server's mesh config: mutual TLS required, callers from namespace `frontend` only.
pub fn server_config(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{ name: default, namespace: backend }}
spec: {{ mtls: {{ mode: {mode} }} }}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{ name: frontend-only, namespace: backend }}
spec:
  action: ALLOW
  rules: [{{ from: [{{ source: {{ namespaces: [frontend] }} }}] }}]
"
    )
}

/// The client's view of `whoami`: the server's address, its service account, mutual TLS.
pub fn client_config(server: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: whoami, namespace: backend }}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  endpoints: [{{ address: {ip}, ports: {{ http: {port} }}, serviceAccount: whoami }}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: whoami, namespace: backend }}
spec:
  host: {HOST}
  trafficPolicy: {{ tls: {{ mode: ISTIO_MUTUAL }} }}
",
        ip = server.ip(),
        port = server.port()
    )
}

/// A mesh for the workload in `namespace` with service account `sa`, over `yaml`, presenting
/// `credentials`.
pub async fn mesh(
    yaml: &str,
    namespace: &str,
    sa: &str,
    credentials: std::sync::Arc<CredentialStore>,
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
    /// Where the server listens (mutual TLS).
    pub server_addr: SocketAddr,
    /// The server's mesh.
    pub server: Mesh,
    /// The client's mesh.
    pub client: Mesh,
}

/// Starts the server on an ephemeral 127.0.0.1 port and builds the client's mesh.
pub async fn start() -> Result<Running, Error> {
    let ca = TestCa::new("example root");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server_addr = listener.local_addr()?;

    let server_creds = CredentialStore::new(ca.credentials(SERVER_ID));
    let server = mesh(&server_config("STRICT"), "backend", "whoami", server_creds).await?;
    let app = Router::new()
        .route("/", get(whoami))
        .layer(server.inbound_layer());
    let listener = server.listener(listener)?;
    let shutdown = server.shutdown_signal();
    tokio::spawn(async move {
        axum::serve(listener, with_peer_info(app))
            .with_graceful_shutdown(shutdown)
            .await
    });

    let client_creds = CredentialStore::new(ca.credentials(CLIENT_ID));
    let client = mesh(&client_config(server_addr), "frontend", "web", client_creds).await?;
    Ok(Running {
        ca,
        server_addr,
        server,
        client,
    })
}

/// Calls the server through the client's mesh; returns the status and body.
pub async fn call(client: &Mesh) -> Result<(http::StatusCode, String), Error> {
    let request =
        http::Request::get(format!("http://{HOST}/")).body(Empty::<bytes::Bytes>::new())?;
    let response = client.client().oneshot(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let running = start().await?;
    println!(
        "whoami on https://{} (STRICT mutual TLS, as {SERVER_ID})",
        running.server_addr
    );
    let (status, body) = call(&running.client).await?;
    println!("{status} {body}");
    running
        .server
        .shutdown(std::time::Duration::from_secs(5))
        .await;
    Ok(())
}
