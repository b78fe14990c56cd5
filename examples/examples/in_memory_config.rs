//! A mesh config built in Rust, without YAML: one service, one cluster, one route with a
//! retry policy, served to an in-process client.
//!
//! `cargo run -p mesh-examples --example in_memory_config`

use http_body_util::{BodyExt, Empty};
use mesh_core::model::{
    Address, Cluster, ClusterName, Endpoint, Forward, HealthStatus, MeshConfig, Protocol, RetryOn,
    RetryPolicy, Route, RouteAction, RouteTable, TrafficPolicy, VirtualHost, WeightedCluster,
};
use mesh_tower::embed::Mesh;
use std::sync::Arc;
use tower::ServiceExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // An upstream to call.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async { "hello from the upstream" }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    // The config: a cluster with that endpoint, and a route sending `api.internal` to it.
    let name = ClusterName::new("api");
    let cluster = Cluster {
        name: name.clone(),
        service: "api.internal".into(),
        port: 80,
        subset: None,
        subset_labels: Default::default(),
        protocol: Protocol::Http,
        endpoints: vec![Endpoint {
            address: Address::Ip(upstream.ip()),
            port: upstream.port(),
            labels: Default::default(),
            weight: 1,
            locality: Default::default(),
            health: HealthStatus::Healthy,
            service_account: None,
            namespace: None,
            priority: 0,
            workload: None,
            cluster_id: None,
        }],
        policy: TrafficPolicy::default(),
    };
    let route = Route {
        name: "all".into(),
        matches: vec![],
        action: RouteAction::Forward(Forward {
            destinations: vec![WeightedCluster {
                cluster: name.clone(),
                weight: 100,
                request_headers: Default::default(),
                response_headers: Default::default(),
            }],
            rewrite: None,
        }),
        request_headers: Default::default(),
        response_headers: Default::default(),
        fault: None,
        mirrors: vec![],
        retry: Some(RetryPolicy {
            retry_on: RetryOn::parse("5xx,connect-failure")?,
            ..RetryPolicy::istio_default()
        }),
        timeout: Some(std::time::Duration::from_secs(2)),
        hedge: None,
        cors: None,
        rate_limit: None,
    };
    let config = MeshConfig {
        clusters: [(name, Arc::new(cluster))].into(),
        routes: RouteTable::new(vec![VirtualHost {
            name: "api".into(),
            domains: vec!["api.internal".into()],
            routes: vec![route],
        }]),
        ..MeshConfig::default()
    };

    let mesh = Mesh::builder().config(config).build().await?;
    let request = http::Request::get("http://api.internal/").body(Empty::<bytes::Bytes>::new())?;
    let response = mesh.client().oneshot(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!("{status} {}", String::from_utf8_lossy(&body));
    Ok(())
}
