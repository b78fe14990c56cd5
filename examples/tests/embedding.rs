//! The mesh embedded in an axum service: the canary example end to end, and the inbound
//! layer's telemetry and rate limit.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_axum_canary_example_splits_90_10_through_the_embedded_mesh() {
    let canary = mesh_examples::canary::start(Some(7)).await.unwrap();
    let c = client(canary.frontend, false);
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..2_000 {
        let (status, body, headers) = get(&c, "frontend", "/", &[]).await;
        assert_eq!(status, 200, "{body}");
        assert!(headers.contains_key("x-request-id") || !body.is_empty());
        *counts.entry(body).or_insert(0usize) += 1;
    }
    let v1 = 100.0 * counts["hello v1"] as f64 / 2_000.0;
    assert!((87.0..=93.0).contains(&v1), "{counts:?}");
    assert_eq!(canary.mesh.version(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_published_at_run_time_takes_effect_for_the_next_request() {
    let canary = mesh_examples::canary::start(Some(7)).await.unwrap();
    let (v1, v2) = (canary.backends[0], canary.backends[1]);
    // All to v2 now: rewrite the VirtualService in Rust and publish it.
    let yaml = mesh_examples::canary::config_yaml(v1, v2)
        .replace("weight: 90", "weight: 0")
        .replace("weight: 10", "weight: 100");
    let loaded = mesh_core::istio::load(&[("new.yaml", &yaml)], &Default::default());
    canary.mesh.store().publish(loaded.config.unwrap());
    let c = client(canary.frontend, false);
    for _ in 0..50 {
        assert_eq!(get(&c, "frontend", "/", &[]).await.1, "hello v2");
    }
    assert_eq!(canary.mesh.version(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbound_layer_enforces_authorization_policies() {
    let policy = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: public-only }
spec:
  action: ALLOW
  rules: [{ to: [{ operation: { methods: [GET], paths: [\"/public/*\"] } }] }]
";
    let config = mesh_core::istio::load(&[("policy.yaml", policy)], &Default::default())
        .config
        .unwrap();
    let mesh = mesh_tower::embed::Mesh::builder()
        .config(config)
        .build()
        .await
        .unwrap();
    let app = axum::Router::new()
        .route("/public/page", axum::routing::get(|| async { "public" }))
        .route("/private", axum::routing::get(|| async { "private" }))
        .layer(mesh.inbound_layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let c = client(addr, false);
    let (status, body, _) = get(&c, "app", "/public/page", &[]).await;
    assert_eq!((status, body.as_str()), (200, "public"));
    let (status, body, _) = get(&c, "app", "/private", &[]).await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_client_on_the_mesh_channel_is_retried_on_unavailable() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    let (addr, calls) = mesh_examples::grpc::start_flaky_server().await.unwrap();
    let yaml = mesh_examples::grpc::config_yaml(addr);
    let config = mesh_core::istio::load(&[("grpc.yaml", &yaml)], &Default::default())
        .config
        .unwrap();
    let mesh = mesh_tower::embed::Mesh::builder()
        .config(config)
        .build()
        .await
        .unwrap();
    let mut client =
        TraceServiceClient::with_origin(mesh.client(), "http://collector:4317".parse().unwrap());
    for _ in 0..3 {
        client
            .export(ExportTraceServiceRequest::default())
            .await
            .expect("retried past UNAVAILABLE");
    }
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        6,
        "each call: one UNAVAILABLE, one retry"
    );
}
