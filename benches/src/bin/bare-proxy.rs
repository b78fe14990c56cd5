//! A bare reverse proxy on hyper 1.x and hyper-util's pooled legacy client, with no routing,
//! policy or telemetry: the ceiling a hyper-based sidecar is measured against.
//!
//! `bare-proxy LISTEN_PORT UPSTREAM_ADDR` (e.g. `bare-proxy 18090 127.0.0.1:18080`).

use http::uri::{Authority, Scheme};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

/// The sidecar's allocator, so that the two differ only by the mesh's stack.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(18090);
    let upstream: Authority = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:18080".to_owned())
        .parse()?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("bare-proxy listening on {}", listener.local_addr()?);
    let mut terminate = signal(SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            // SIGTERM returns from `main`, so that exit handlers run (a build made with
            // `-Cprofile-generate` writes its profile then: benches/profile/pgo.sh).
            _ = terminate.recv() => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |mut req: hyper::Request<Incoming>| {
                let mut parts = req.uri().clone().into_parts();
                parts.scheme = Some(Scheme::HTTP);
                parts.authority = Some(upstream.clone());
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
                // The pooled client speaks HTTP/1.1 upstream whatever the downstream spoke
                // (h2c downstream included), as a sidecar's default pool does.
                *req.version_mut() = http::Version::HTTP_11;
                client.request(req)
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
