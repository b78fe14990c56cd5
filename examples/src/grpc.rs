//! A small gRPC service for the tonic example and its test: the OTLP trace collector API
//! (generated types from `opentelemetry-proto`), answering UNAVAILABLE to every other call.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpListener;

/// Fails every other call with UNAVAILABLE; counts the calls.
#[derive(Clone, Debug, Default)]
pub struct Flaky(pub Arc<AtomicUsize>);

#[tonic::async_trait]
impl TraceService for Flaky {
    async fn export(
        &self,
        _: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if self.0.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
            return Err(tonic::Status::unavailable("warming up"));
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Starts the flaky server on an ephemeral 127.0.0.1 port; returns its address and call count.
pub async fn start_flaky_server() -> std::io::Result<(SocketAddr, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service = Flaky::default();
    let calls = service.0.clone();
    let incoming = futures_util::stream::unfold(listener, |l| async move {
        let accepted = l.accept().await.map(|(s, _)| s);
        Some((accepted, l))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(service))
            .serve_with_incoming(incoming),
    );
    Ok((addr, calls))
}

/// The mesh config: service `collector` (gRPC on 4317) at `addr`, retried on `unavailable`.
pub fn config_yaml(addr: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: collector }}
spec:
  hosts: [collector.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 4317, name: grpc, protocol: GRPC }}]
  endpoints: [{{ address: {}, ports: {{ grpc: {} }} }}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: collector }}
spec:
  hosts: [collector]
  http:
  - retries: {{ attempts: 2, retryOn: unavailable }}
    route: [{{ destination: {{ host: collector }} }}]
",
        addr.ip(),
        addr.port()
    )
}
