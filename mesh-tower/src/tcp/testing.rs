//! Test fixtures shared by the TCP tests: service `db` and a forwarder to it.

use super::*;
use mesh_core::model::MeshConfig;

/// The test service's host name.
pub(super) const HOST: &str = "db.default.svc.cluster.local";

/// The test service's cluster (TCP port 5432).
pub(super) fn cluster_name() -> ClusterName {
    ClusterName::outbound(5432, None, HOST)
}

/// Service `db` (virtual address 10.96.0.10, TCP port 5432) with one endpoint on 127.0.0.1
/// per `(port, weight, locality)` (no locality when empty), in that order, and `policy` as
/// its DestinationRule's `trafficPolicy` (flow-style YAML), seen by `workload`.
pub(super) fn db_config(
    endpoints: &[(u16, u32, &str)],
    policy: &str,
    workload: Workload,
) -> MeshConfig {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|(port, weight, locality)| {
            let locality = if locality.is_empty() {
                String::new()
            } else {
                format!(", locality: {locality}")
            };
            format!(
                "{{ address: 127.0.0.1, ports: {{ tcp: {port} }}, weight: {weight}{locality} }}"
            )
        })
        .collect();
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: db }}
spec:
  hosts: [{HOST}]
  addresses: [10.96.0.10]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 5432, name: tcp, protocol: TCP }}]
  endpoints: [{}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: db }}
spec:
  host: {HOST}
  trafficPolicy: {policy}
"#,
        endpoints.join(", ")
    );
    let loaded = mesh_core::istio::load(&[("db.yaml", yaml.as_str())], &workload);
    let mut config = loaded.config.expect("valid");
    config.workload = workload;
    config
}

/// A `--tcp-forward` listener for `db:5432` by `store`, picking with `balancer`.
pub(super) async fn forwarder(store: &Arc<ConfigStore>, balancer: &BalanceLayer) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    let forward = TcpForward::new(store.clone(), HOST, 5432).balancer(balancer.clone());
    tokio::spawn(serve_tcp(listener, forward, std::future::pending()));
    local
}
