//! An axum service calling another through the embedded mesh with a 90/10 canary: the
//! library form of `examples/examples/axum_canary.rs`, so that tests can start it too.

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use http_body_util::BodyExt;
use mesh_core::istio;
use mesh_core::model::Workload;
use mesh_tower::embed::{Mesh, MeshError};
use mesh_tower::outbound::Outbound;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// The running example: the frontend's address and the two backend versions'.
#[derive(Debug)]
pub struct Canary {
    /// The frontend, which calls `hello` through the mesh.
    pub frontend: SocketAddr,
    /// `hello` v1 and v2.
    pub backends: [SocketAddr; 2],
    /// The embedded mesh.
    pub mesh: Mesh,
}

async fn serve(router: Router) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

/// The mesh config: service `hello` with one endpoint per version, and a 90/10 split.
pub fn config_yaml(v1: SocketAddr, v2: SocketAddr) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: hello }}
spec:
  hosts: [hello.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  endpoints:
  - {{ address: 127.0.0.1, ports: {{ http: {} }}, labels: {{ app: hello, version: v1 }} }}
  - {{ address: 127.0.0.1, ports: {{ http: {} }}, labels: {{ app: hello, version: v2 }} }}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: hello }}
spec:
  host: hello
  subsets: [{{ name: v1, labels: {{ version: v1 }} }}, {{ name: v2, labels: {{ version: v2 }} }}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: hello }}
spec:
  hosts: [hello]
  http:
  - route:
    - {{ destination: {{ host: hello, subset: v1 }}, weight: 90 }}
    - {{ destination: {{ host: hello, subset: v2 }}, weight: 10 }}
"#,
        v1.port(),
        v2.port()
    )
}

/// The frontend's handler: calls `http://hello/` through the mesh and relays the answer.
async fn call_hello(State(client): State<Outbound>) -> impl IntoResponse {
    let request = http::Request::get("http://hello/").body(axum::body::Body::empty());
    let Ok(request) = request else {
        return (
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "bad request".to_owned(),
        );
    };
    let Ok(response) = client.oneshot(request).await;
    let status = response.status();
    match response.into_body().collect().await {
        Ok(body) => (
            status,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        ),
        Err(e) => (http::StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

/// Starts the two backends and the frontend with the mesh embedded.
pub async fn start(seed: Option<u64>) -> Result<Canary, Box<dyn std::error::Error + Send + Sync>> {
    let v1 = serve(Router::new().route("/", get(|| async { "hello v1" }))).await?;
    let v2 = serve(Router::new().route("/", get(|| async { "hello v2" }))).await?;
    let loaded = istio::load(
        &[("canary.yaml", &config_yaml(v1, v2))],
        &Workload::default(),
    );
    let config = loaded.config.ok_or(MeshError::Config(loaded.diagnostics))?;
    let mut builder = Mesh::builder().config(config);
    if let Some(seed) = seed {
        builder = builder.seed(seed);
    }
    let mesh = builder.build().await?;
    let frontend = Router::new()
        .route("/", get(call_hello))
        .with_state(mesh.client())
        .layer(mesh.inbound_layer());
    let frontend = serve(frontend).await?;
    Ok(Canary {
        frontend,
        backends: [v1, v2],
        mesh,
    })
}
