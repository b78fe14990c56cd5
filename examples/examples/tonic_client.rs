//! A tonic gRPC client whose channel is the embedded mesh: calls are routed by the mesh to the
//! `collector` service (an in-process gRPC server) and retried on `unavailable`.
//!
//! `cargo run -p mesh-examples --example tonic_client`

use mesh_core::istio;
use mesh_core::model::Workload;
use mesh_tower::embed::Mesh;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use std::sync::atomic::Ordering;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (addr, calls) = mesh_examples::grpc::start_flaky_server().await?;
    let loaded = istio::load(
        &[("grpc.yaml", &mesh_examples::grpc::config_yaml(addr))],
        &Workload::default(),
    );
    let mesh = Mesh::builder()
        .config(loaded.config.ok_or("invalid config")?)
        .build()
        .await?;
    // The mesh client is the channel; the origin names the destination service.
    let mut client =
        TraceServiceClient::with_origin(mesh.client(), "http://collector:4317".parse()?);
    for _ in 0..3 {
        client.export(ExportTraceServiceRequest::default()).await?;
    }
    println!(
        "3 calls succeeded; the server saw {} (every other one was answered UNAVAILABLE and retried by the mesh)",
        calls.load(Ordering::SeqCst)
    );
    Ok(())
}
