//! A bare hyper 1.x HTTP server answering every request with a fixed 64-byte body: the upstream
//! of the load test, and the "bare service" baseline.
//!
//! `bare-upstream PORT [BODY_BYTES]`; HTTP/1.1 and h2c (prior knowledge) on the same port.

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(18080);
    let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    let body = Bytes::from(vec![b'x'; size]);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("bare-upstream listening on {}", listener.local_addr()?);
    let mut terminate = signal(SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            // SIGTERM returns from `main`, so that exit handlers run (a build made with
            // `-Cprofile-generate` writes its profile then: benches/profile/pgo.sh).
            _ = terminate.recv() => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |_req| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(body))) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
