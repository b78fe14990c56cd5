//! The mesh's config model: the resolved, validated view of the mesh that every layer reads.
//!
//! It is shaped like the configuration a control plane hands an Envoy sidecar (clusters with
//! their endpoints and traffic policy, virtual hosts with routes), because both sources produce
//! it: the Istio YAML loader resolves VirtualServices, DestinationRules and ServiceEntries into
//! it the way istiod does, and the xDS client translates Envoy resources into it. The layers
//! never know which source a snapshot came from.
//!
//! Everything here is plain data: `Clone, Debug, PartialEq, Eq`, no channels, RNGs or metrics
//! handles. Weights are integers and percentages are [`Percentage`] (parts per million) so that
//! snapshots compare exactly.

mod cluster;
mod common;
mod jwt;
mod route;
mod security;
mod service;
mod tcp_route;

pub use cluster::*;
pub use common::*;
pub use jwt::*;
pub use route::*;
pub use security::*;
pub use service::*;
pub use tcp_route::*;

use std::collections::BTreeMap;
use std::sync::Arc;

/// One immutable, validated snapshot of the mesh's configuration, as seen by one workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MeshConfig {
    /// The workload this snapshot was built for.
    pub workload: Workload,
    /// The service registry: every known service, by host name.
    pub services: BTreeMap<Hostname, Arc<Service>>,
    /// Upstream clusters (service x port x subset) with their endpoints and traffic policy.
    pub clusters: BTreeMap<ClusterName, Arc<Cluster>>,
    /// The outbound route table: from Istio YAML one merged table; from xDS, also one table
    /// per outbound listener port (see [`RouteTable`]).
    pub routes: RouteTable,
    /// The `tls` rules (SNI routing, on TLS and HTTPS ports; first) and `tcp` rules (Istio's
    /// TCP traffic shifting) of VirtualServices, in order, by the cluster of the service port
    /// they route (`outbound|PORT||HOST`: what a connection to the service's address
    /// resolves to). A service port without rules sends every connection to that cluster.
    /// The xDS translation fills none.
    pub tcp_routes: BTreeMap<ClusterName, Vec<TcpRoute>>,
    /// Where inbound traffic goes: the local application's listeners.
    pub inbound: Vec<InboundListener>,
    /// The authorization policies that apply to this workload, in config order.
    pub authorization: Vec<AuthorizationPolicy>,
    /// The effective peer authentication (mTLS mode) for this workload's inbound ports.
    pub peer_authentication: PeerAuthentication,
    /// End-user JWT authentication (Istio's RequestAuthentication) for inbound requests;
    /// empty when none applies.
    pub request_authentication: RequestAuthentication,
    /// The services this workload is an instance of, by host name (ServiceEntries whose
    /// `workloadSelector` selects it; from xDS, the services of istiod's inbound clusters):
    /// the server side names the first in its metrics' `destination_service`, as Istio names
    /// an inbound cluster's service.
    pub workload_services: Vec<Hostname>,
    /// The service each of this workload's ports serves, by workload port: as Istio names
    /// the service of the inbound cluster (a port) a request came in on. From the selecting
    /// ServiceEntries' ports (the `targetPort`, else the port number; the first host by name
    /// when several name one port); from xDS, istiod's `inbound|PORT||` clusters. A port not
    /// listed is named by the first of [`MeshConfig::workload_services`].
    pub workload_service_ports: BTreeMap<u16, Hostname>,
    /// How the inbound side normalizes request paths before authorization (Istio's
    /// `meshConfig.pathNormalization`; from xDS, the inbound listener's HTTP connection
    /// manager). `BASE` unless told.
    pub path_normalization: PathNormalization,
    /// Where intercepted outbound traffic to a destination no service owns goes (the
    /// applying Sidecar's `outboundTrafficPolicy.mode`): through, or nowhere.
    pub outbound_traffic_policy: OutboundTrafficPolicy,
}

/// Istio's `outboundTrafficPolicy.mode`: what happens to intercepted outbound traffic whose
/// destination is not in the registry (no service owns its address, no route its host).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum OutboundTrafficPolicy {
    /// Straight to the original destination (Istio's `PassthroughCluster`), the default.
    #[default]
    AllowAny,
    /// Refused (Istio's `BlackHoleCluster`): HTTP gets 502, a TCP connection is closed.
    RegistryOnly,
}

impl MeshConfig {
    /// The cluster named `name`, if any.
    pub fn cluster(&self, name: &ClusterName) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }

    /// The service with host name `host`, if any.
    pub fn service(&self, host: &str) -> Option<&Arc<Service>> {
        self.services.get(host)
    }

    /// The first `tls` or `tcp` rule of the service port whose cluster is `service_cluster`
    /// (its own, `outbound|PORT||HOST`) that a connection from this workload to
    /// `destination`, whose TLS ClientHello asked for server name `sni`, takes; `None`: the
    /// connection goes to `service_cluster` itself.
    pub fn tcp_route(
        &self,
        service_cluster: &ClusterName,
        destination: std::net::SocketAddr,
        sni: Option<&str>,
    ) -> Option<&TcpRoute> {
        self.tcp_routes
            .get(service_cluster)?
            .iter()
            .find(|r| r.matches(destination, sni, &self.workload))
    }
}

/// The local workload: who this proxy (or embedding service) is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Workload {
    /// The workload's namespace (`default` unless told).
    pub namespace: String,
    /// The workload's labels (`app`, `version`, ...), which selectors match against.
    pub labels: Labels,
    /// The workload's service account.
    pub service_account: String,
    /// The trust domain of SPIFFE identities (`cluster.local`).
    pub trust_domain: String,
    /// The DNS suffix of in-mesh service names (`cluster.local`).
    pub cluster_domain: String,
    /// Where this workload runs, for locality-aware load balancing.
    pub locality: Locality,
    /// The workload's name (Istio's `WORKLOAD_NAME`: the Deployment's, such as `reviews-v1`),
    /// for metric labels; empty when unknown, and [`Workload::name`] falls back to the `app`
    /// label.
    pub workload_name: String,
    /// The cluster the workload runs in, as Istio names it (`CLUSTER_ID`; `Kubernetes`, Istio's
    /// default, unless told).
    pub cluster_id: String,
}

impl Workload {
    /// The workload's name for metric labels: [`Workload::workload_name`], else the `app`
    /// label, else empty.
    ///
    /// ```
    /// use mesh_core::model::Workload;
    /// let mut w = Workload::default();
    /// w.labels.insert("app".into(), "reviews".into());
    /// assert_eq!(w.name(), "reviews");
    /// w.workload_name = "reviews-v1".into();
    /// assert_eq!(w.name(), "reviews-v1");
    /// ```
    pub fn name(&self) -> &str {
        if self.workload_name.is_empty() {
            self.labels.get("app").map_or("", String::as_str)
        } else {
            &self.workload_name
        }
    }

    /// The workload's canonical service, as Istio's injector labels a pod
    /// (`service.istio.io/canonical-name`): that label, else `app.kubernetes.io/name`, else
    /// `app`, else the workload's [`name`](Self::name).
    pub fn canonical_service(&self) -> &str {
        canonical_service(&self.labels).unwrap_or_else(|| self.name())
    }

    /// The workload's canonical revision (`service.istio.io/canonical-revision`): that label,
    /// else `app.kubernetes.io/version`, else `version`, else `latest`.
    pub fn canonical_revision(&self) -> &str {
        canonical_revision(&self.labels).unwrap_or("latest")
    }
}

/// Istio's canonical service of a workload with `labels`, when they name one
/// (`service.istio.io/canonical-name`, `app.kubernetes.io/name` or `app`, in that order).
pub fn canonical_service(labels: &Labels) -> Option<&str> {
    first_label(
        labels,
        &[
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ],
    )
}

/// Istio's canonical revision of a workload with `labels`, when they name one
/// (`service.istio.io/canonical-revision`, `app.kubernetes.io/version` or `version`).
pub fn canonical_revision(labels: &Labels) -> Option<&str> {
    first_label(
        labels,
        &[
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ],
    )
}

fn first_label<'a>(labels: &'a Labels, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()))
        .map(String::as_str)
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            namespace: "default".to_owned(),
            labels: Labels::default(),
            service_account: "default".to_owned(),
            trust_domain: "cluster.local".to_owned(),
            cluster_domain: "cluster.local".to_owned(),
            locality: Locality::default(),
            workload_name: String::new(),
            cluster_id: "Kubernetes".to_owned(),
        }
    }
}

/// An inbound listener: a port this workload serves and where the local app listens for it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct InboundListener {
    /// The port the traffic is addressed to (the service's target port).
    pub port: u16,
    /// The protocol spoken on the port.
    pub protocol: Protocol,
    /// Where the local application listens (`127.0.0.1:8080`).
    pub default_endpoint: std::net::SocketAddr,
    /// A local token bucket for the requests to this port (Envoy's `local_ratelimit` on the
    /// inbound listener's filter chain, from xDS; the Istio YAML loader sets none).
    pub rate_limit: Option<LocalRateLimit>,
}
