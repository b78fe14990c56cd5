//! A plain hyper program whose HTTP client is the embedded mesh: where it had hyper-util's
//! `Client::builder(TokioExecutor::new()).build_http()` and `client.request(req)`, it has
//! `mesh.client()` and `ServiceExt::ready(&mut client).await?.call(req)`, with the same request and response
//! types, and gets the mesh's routing by authority, load balancing over the service's
//! endpoints and retries (here: a backend's first answer, 503, is retried on the other one).
//!
//! `cargo run -p mesh-examples --example hyper_client`

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mesh_core::istio;
use mesh_core::model::Workload;
use mesh_tower::embed::{Mesh, MeshError};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tower::{Service, ServiceExt};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A hyper HTTP/1.1 server answering `name`; its first `fail_first` answers are 503. Returns
/// its address and the number of requests it received.
pub async fn backend(
    name: &'static str,
    fail_first: usize,
) -> Result<(SocketAddr, Arc<AtomicUsize>), Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    let mut response = Response::new(Full::new(Bytes::from(name)));
                    if n < fail_first {
                        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    Ok((addr, hits))
}

/// The mesh config: service `hello` with both backends as endpoints, retried on 5xx.
pub fn config_yaml(a: SocketAddr, b: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: hello }}
spec:
  hosts: [hello.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  endpoints:
  - {{ address: {}, ports: {{ http: {} }} }}
  - {{ address: {}, ports: {{ http: {} }} }}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: hello }}
spec:
  hosts: [hello]
  http:
  - retries: {{ attempts: 2, retryOn: 5xx }}
    route: [{{ destination: {{ host: hello }} }}]
",
        a.ip(),
        a.port(),
        b.ip(),
        b.port()
    )
}

/// Sends `n` GETs to `http://hello/` with the mesh as the client; returns each status and
/// body.
pub async fn run(mesh: &Mesh, n: usize) -> Result<Vec<(StatusCode, String)>, Error> {
    // Before: `let client = Client::builder(TokioExecutor::new()).build_http();`
    let mut client = mesh.client();
    let mut answers = Vec::with_capacity(n);
    for _ in 0..n {
        let request = Request::get("http://hello/").body(Full::new(Bytes::new()))?;
        // Before: `let response = client.request(request).await?;`
        let response = ServiceExt::<Request<Full<Bytes>>>::ready(&mut client)
            .await?
            .call(request)
            .await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        answers.push((status, String::from_utf8_lossy(&body).into_owned()));
    }
    Ok(answers)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (a, hits_a) = backend("backend a", 1).await?;
    let (b, hits_b) = backend("backend b", 1).await?;
    let loaded = istio::load(&[("hello.yaml", &config_yaml(a, b))], &Workload::default());
    let config = loaded.config.ok_or(MeshError::Config(loaded.diagnostics))?;
    let mesh = Mesh::builder().config(config).build().await?;
    for (status, body) in run(&mesh, 6).await? {
        println!("{status} {body}");
    }
    println!(
        "the backends saw {} and {} requests: each one's first answer was 503 and the mesh retried it",
        hits_a.load(Ordering::SeqCst),
        hits_b.load(Ordering::SeqCst)
    );
    Ok(())
}
