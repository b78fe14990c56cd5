//! An in-process ADS management server, for tests (this crate's and its users').
//!
//! It serves a [`ServerSnapshot`] (every resource by type and name, with a version) over both
//! `StreamAggregatedResources` and `DeltaAggregatedResources` on a real TCP port, pushes each
//! new snapshot to every open stream, and records every request it receives, so a test can
//! wait for an ACK or a NACK and check what the client said.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use mesh_xds_client::test_util::{ManagementServer, ServerSnapshot};
//! let server = ManagementServer::start("127.0.0.1:0".parse().unwrap(), ServerSnapshot::new("1")).await?;
//! println!("ADS on {}", server.addr());
//! server.set_snapshot(ServerSnapshot::new("2"));
//! server.shutdown().await;
//! # Ok(()) }
//! ```

use crate::resource::ResourceType;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use futures_util::{Stream, StreamExt};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

/// Every resource the server has, by type and name, and the snapshot's version.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerSnapshot {
    /// The version sent as SotW `version_info` (and delta `system_version_info`).
    pub version: String,
    resources: BTreeMap<ResourceType, BTreeMap<String, Any>>,
}

impl ServerSnapshot {
    /// An empty snapshot with `version`.
    pub fn new(version: impl Into<String>) -> Self {
        Self {
            version: version.into(),
            resources: BTreeMap::new(),
        }
    }

    /// This snapshot's resources under a new version.
    pub fn with_version(&self, version: impl Into<String>) -> Self {
        Self {
            version: version.into(),
            resources: self.resources.clone(),
        }
    }

    /// Adds (or replaces) a resource in its `Any` form (which may be deliberately invalid).
    pub fn insert_any(
        &mut self,
        kind: ResourceType,
        name: impl Into<String>,
        any: Any,
    ) -> &mut Self {
        self.resources
            .entry(kind)
            .or_default()
            .insert(name.into(), any);
        self
    }

    /// Removes a resource.
    pub fn remove(&mut self, kind: ResourceType, name: &str) -> &mut Self {
        if let Some(m) = self.resources.get_mut(&kind) {
            m.remove(name);
        }
        self
    }

    /// Adds a listener.
    pub fn listener(&mut self, l: Listener) -> &mut Self {
        let name = l.name.clone();
        self.insert_any(ResourceType::Listener, name, pack(&l))
    }

    /// Adds a route configuration.
    pub fn route(&mut self, r: RouteConfiguration) -> &mut Self {
        let name = r.name.clone();
        self.insert_any(ResourceType::RouteConfiguration, name, pack(&r))
    }

    /// Adds a cluster.
    pub fn cluster(&mut self, c: Cluster) -> &mut Self {
        let name = c.name.clone();
        self.insert_any(ResourceType::Cluster, name, pack(&c))
    }

    /// Adds a cluster's endpoints.
    pub fn endpoints(&mut self, e: ClusterLoadAssignment) -> &mut Self {
        let name = e.cluster_name.clone();
        self.insert_any(ResourceType::ClusterLoadAssignment, name, pack(&e))
    }

    /// Adds a secret.
    pub fn secret(&mut self, s: Secret) -> &mut Self {
        let name = s.name.clone();
        self.insert_any(ResourceType::Secret, name, pack(&s))
    }

    /// The resources of `kind`.
    pub fn resources(&self, kind: ResourceType) -> impl Iterator<Item = (&String, &Any)> {
        self.resources.get(&kind).into_iter().flatten()
    }
}

/// Packs a message into an `Any`.
pub fn pack<M: prost::Message + prost::Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// A request the server received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// Which stream it came on (a counter, one per stream since the server started).
    pub stream: u64,
    /// Whether it was a delta request.
    pub delta: bool,
    /// The type URL.
    pub type_url: String,
    /// SotW `version_info` (empty for delta).
    pub version_info: String,
    /// The nonce being answered.
    pub response_nonce: String,
    /// SotW `resource_names`, or delta `resource_names_subscribe`.
    pub names: Vec<String>,
    /// Delta `resource_names_unsubscribe`.
    pub unsubscribe: Vec<String>,
    /// Delta `initial_resource_versions`.
    pub initial_resource_versions: BTreeMap<String, String>,
    /// The NACK's `error_detail.message`, when it is a NACK.
    pub error: Option<String>,
    /// The node id, when the request carried the node.
    pub node_id: Option<String>,
}

impl RecordedRequest {
    /// The resource type, if known.
    pub fn kind(&self) -> Option<ResourceType> {
        ResourceType::from_type_url(&self.type_url)
    }
}

#[derive(Debug)]
struct Shared {
    snapshot: watch::Sender<Arc<ServerSnapshot>>,
    log: Mutex<Vec<RecordedRequest>>,
    log_len: watch::Sender<usize>,
    streams: Mutex<u64>,
    shutdown: watch::Sender<bool>,
}

impl Shared {
    fn record(&self, r: RecordedRequest) {
        let len = {
            let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            log.push(r);
            log.len()
        };
        self.log_len.send_replace(len);
    }

    fn next_stream(&self) -> u64 {
        let mut n = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        *n += 1;
        *n
    }
}

/// The in-process ADS server. Dropping it stops it (without waiting).
#[derive(Debug)]
pub struct ManagementServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ManagementServer {
    /// Starts serving `snapshot` on `addr` (`127.0.0.1:0` for any free port; a previous
    /// server's address to restart it there).
    pub async fn start(addr: SocketAddr, snapshot: ServerSnapshot) -> std::io::Result<Self> {
        Self::start_with(addr, snapshot, None).await
    }

    /// Like [`start`](Self::start), serving TLS (mTLS when `tls` names a client CA).
    pub async fn start_tls(
        addr: SocketAddr,
        snapshot: ServerSnapshot,
        tls: tonic::transport::ServerTlsConfig,
    ) -> std::io::Result<Self> {
        Self::start_with(addr, snapshot, Some(tls)).await
    }

    async fn start_with(
        addr: SocketAddr,
        snapshot: ServerSnapshot,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> std::io::Result<Self> {
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder
                .tls_config(tls)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        }
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            snapshot: watch::Sender::new(Arc::new(snapshot)),
            log: Mutex::new(Vec::new()),
            log_len: watch::Sender::new(0),
            streams: Mutex::new(0),
            shutdown,
        });
        let service = AggregatedDiscoveryServiceServer::new(Ads {
            shared: shared.clone(),
        })
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
        let mut stop = shared.shutdown.subscribe();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(async move {
            let signal = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = builder
                .serve_with_incoming_shutdown(service, incoming, signal)
                .await
            {
                tracing::warn!(error = %e, "test management server failed");
            }
        });
        Ok(Self {
            shared,
            addr,
            task: Some(task),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URI a client connects to (`http://127.0.0.1:PORT`).
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the snapshot; every open stream is sent what changed.
    pub fn set_snapshot(&self, snapshot: ServerSnapshot) {
        self.shared.snapshot.send_replace(Arc::new(snapshot));
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<ServerSnapshot> {
        self.shared.snapshot.borrow().clone()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until a request satisfying `pred` has been received; returns it.
    pub async fn wait_for_request(
        &self,
        mut pred: impl FnMut(&RecordedRequest) -> bool,
    ) -> RecordedRequest {
        let mut len = self.shared.log_len.subscribe();
        let mut checked = 0;
        loop {
            {
                let log = self.shared.log.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(r) = log[checked..].iter().find(|r| pred(r)) {
                    return r.clone();
                }
                checked = log.len();
            }
            if len.changed().await.is_err() {
                // The sender lives as long as `self`: unreachable while borrowed.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Stops the server: every stream ends with UNAVAILABLE and the port is released.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ManagementServer {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[derive(Debug)]
struct Ads {
    shared: Arc<Shared>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn receiver_stream<T: Send + 'static>(rx: mpsc::Receiver<Result<T, Status>>) -> BoxStream<T> {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn resource_version(any: &Any) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    any.value.hash(&mut h);
    format!("{:016x}", h.finish())
}

fn in_scope(kind: ResourceType, wildcard: bool, names: &BTreeSet<String>, name: &str) -> bool {
    (kind.is_wildcard() && wildcard) || names.contains(name)
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let shared = self.shared.clone();
        let stream_id = shared.next_stream();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            // Per type: the names subscribed, and (version, names) last sent.
            let mut subs: BTreeMap<ResourceType, BTreeSet<String>> = BTreeMap::new();
            let mut sent: BTreeMap<ResourceType, (String, BTreeSet<String>)> = BTreeMap::new();
            let mut nonce = 0u64;
            let mut snapshots = shared.snapshot.subscribe();
            let stop = stopped(shared.shutdown.subscribe());
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    req = inbound.next() => {
                        let Some(Ok(req)) = req else { return };
                        shared.record(RecordedRequest {
                            stream: stream_id,
                            delta: false,
                            type_url: req.type_url.clone(),
                            version_info: req.version_info.clone(),
                            response_nonce: req.response_nonce.clone(),
                            names: req.resource_names.clone(),
                            unsubscribe: Vec::new(),
                            initial_resource_versions: BTreeMap::new(),
                            error: req.error_detail.as_ref().map(|s| s.message.clone()),
                            node_id: req.node.as_ref().map(|n| n.id.clone()),
                        });
                        let Some(kind) = ResourceType::from_type_url(&req.type_url) else { continue };
                        subs.insert(kind, req.resource_names.iter().cloned().collect());
                    }
                    changed = snapshots.changed() => {
                        if changed.is_err() { return }
                    }
                    () = &mut stop => {
                        let _ = tx.send(Err(Status::unavailable("management server shutting down"))).await;
                        return;
                    }
                }
                let snapshot = snapshots.borrow_and_update().clone();
                for (kind, names) in &subs {
                    let key = (snapshot.version.clone(), names.clone());
                    if sent.get(kind) == Some(&key) {
                        continue;
                    }
                    let wildcard = names.is_empty() || names.contains("*");
                    let resources = snapshot
                        .resources(*kind)
                        .filter(|(n, _)| in_scope(*kind, wildcard, names, n))
                        .map(|(_, a)| a.clone())
                        .collect();
                    nonce += 1;
                    let resp = DiscoveryResponse {
                        version_info: snapshot.version.clone(),
                        resources,
                        type_url: kind.type_url().to_owned(),
                        nonce: nonce.to_string(),
                        ..Default::default()
                    };
                    if tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                    sent.insert(*kind, key);
                }
            }
        });
        Ok(Response::new(receiver_stream(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let shared = self.shared.clone();
        let stream_id = shared.next_stream();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            #[derive(Default)]
            struct Sub {
                wildcard: bool,
                names: BTreeSet<String>,
                /// What the client holds: name -> version.
                known: HashMap<String, String>,
                /// Named resources already reported as not existing.
                told_absent: BTreeSet<String>,
                /// Whether a response was sent for this type on this stream.
                answered: bool,
            }
            let mut subs: BTreeMap<ResourceType, Sub> = BTreeMap::new();
            let mut nonce = 0u64;
            let mut snapshots = shared.snapshot.subscribe();
            let stop = stopped(shared.shutdown.subscribe());
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    req = inbound.next() => {
                        let Some(Ok(req)) = req else { return };
                        shared.record(RecordedRequest {
                            stream: stream_id,
                            delta: true,
                            type_url: req.type_url.clone(),
                            version_info: String::new(),
                            response_nonce: req.response_nonce.clone(),
                            names: req.resource_names_subscribe.clone(),
                            unsubscribe: req.resource_names_unsubscribe.clone(),
                            initial_resource_versions: req.initial_resource_versions.clone().into_iter().collect(),
                            error: req.error_detail.as_ref().map(|s| s.message.clone()),
                            node_id: req.node.as_ref().map(|n| n.id.clone()),
                        });
                        let Some(kind) = ResourceType::from_type_url(&req.type_url) else { continue };
                        let sub = subs.entry(kind).or_default();
                        for n in &req.resource_names_subscribe {
                            if n == "*" { sub.wildcard = true } else { sub.names.insert(n.clone()); }
                        }
                        for n in &req.resource_names_unsubscribe {
                            if n == "*" { sub.wildcard = false } else {
                                sub.names.remove(n);
                                sub.known.remove(n);
                                sub.told_absent.remove(n);
                            }
                        }
                        sub.known.extend(req.initial_resource_versions.clone());
                    }
                    changed = snapshots.changed() => {
                        if changed.is_err() { return }
                    }
                    () = &mut stop => {
                        let _ = tx.send(Err(Status::unavailable("management server shutting down"))).await;
                        return;
                    }
                }
                let snapshot = snapshots.borrow_and_update().clone();
                for (kind, sub) in subs.iter_mut() {
                    let mut resources = Vec::new();
                    let mut removed = Vec::new();
                    for (name, any) in snapshot.resources(*kind) {
                        if !in_scope(*kind, sub.wildcard, &sub.names, name) {
                            continue;
                        }
                        let version = resource_version(any);
                        if sub.known.get(name) != Some(&version) {
                            sub.known.insert(name.clone(), version.clone());
                            sub.told_absent.remove(name);
                            resources.push(Resource {
                                name: name.clone(),
                                version,
                                resource: Some(any.clone()),
                                ..Default::default()
                            });
                        }
                    }
                    let exists = |n: &String| snapshot.resources(*kind).any(|(m, _)| m == n);
                    let gone: Vec<String> =
                        sub.known.keys().filter(|n| !exists(n)).cloned().collect();
                    for n in gone {
                        sub.known.remove(&n);
                        sub.told_absent.insert(n.clone());
                        removed.push(n);
                    }
                    for n in &sub.names {
                        if !exists(n) && sub.told_absent.insert(n.clone()) {
                            removed.push(n.clone());
                        }
                    }
                    // Nothing new: stay silent, except that an empty wildcard set is answered
                    // once, so that the client knows it is empty.
                    let first_wildcard = kind.is_wildcard() && sub.wildcard && !sub.answered;
                    if resources.is_empty() && removed.is_empty() && !first_wildcard {
                        continue;
                    }
                    nonce += 1;
                    removed.sort();
                    removed.dedup();
                    let resp = DeltaDiscoveryResponse {
                        system_version_info: snapshot.version.clone(),
                        resources,
                        type_url: kind.type_url().to_owned(),
                        removed_resources: removed,
                        nonce: nonce.to_string(),
                        ..Default::default()
                    };
                    if tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                    sub.answered = true;
                }
            }
        });
        Ok(Response::new(receiver_stream(rx)))
    }
}

/// Builders of typical Envoy resources, as istiod would send them to a sidecar.
pub mod fixtures {
    use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
    use envoy_types::pb::envoy::config::core::v3::{
        Address, AggregatedConfigSource, ConfigSource, SocketAddress, address,
        config_source::ConfigSourceSpecifier, socket_address,
    };
    use envoy_types::pb::envoy::config::endpoint::v3::{
        ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
    };
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
    use envoy_types::pb::envoy::config::route::v3::{
        Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster, route,
        route_action, route_match, weighted_cluster::ClusterWeight,
    };
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, HttpFilter, Rds, http_connection_manager::RouteSpecifier,
        http_filter,
    };
    use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
    use std::net::SocketAddr;

    fn ads() -> ConfigSource {
        ConfigSource {
            config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
            ..Default::default()
        }
    }

    fn socket(addr: SocketAddr) -> Address {
        Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: addr.ip().to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                    addr.port(),
                ))),
                ..Default::default()
            })),
        }
    }

    /// An outbound listener on `0.0.0.0:port` whose HTTP connection manager takes its routes
    /// from RDS under `route_name` (Istio names both after the port).
    pub fn listener(port: u16, route_name: &str) -> Listener {
        let hcm = HttpConnectionManager {
            stat_prefix: format!("outbound_0.0.0.0_{port}"),
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                config_source: Some(ads()),
                route_config_name: route_name.to_owned(),
            })),
            http_filters: vec![HttpFilter {
                name: "envoy.filters.http.router".to_owned(),
                config_type: Some(http_filter::ConfigType::TypedConfig(super::pack(
                    &Router::default(),
                ))),
                ..Default::default()
            }],
            ..Default::default()
        };
        Listener {
            name: format!("0.0.0.0_{port}"),
            address: Some(socket(SocketAddr::from(([0, 0, 0, 0], port)))),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".to_owned(),
                    config_type: Some(filter::ConfigType::TypedConfig(super::pack(&hcm))),
                }],
                ..Default::default()
            }],
            // core.v3.TrafficDirection.OUTBOUND
            traffic_direction: 2,
            ..Default::default()
        }
    }

    /// A route configuration with one virtual host for `domains`, whose single route (prefix
    /// `/`) splits traffic over `clusters` by weight.
    pub fn route_config(
        name: &str,
        domains: &[&str],
        clusters: &[(&str, u32)],
    ) -> RouteConfiguration {
        RouteConfiguration {
            name: name.to_owned(),
            virtual_hosts: vec![VirtualHost {
                name: domains.first().copied().unwrap_or("default").to_owned(),
                domains: domains.iter().map(|d| (*d).to_owned()).collect(),
                routes: vec![weighted_route(
                    "default",
                    route_match::PathSpecifier::Prefix("/".into()),
                    clusters,
                )],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// A route on `path` splitting traffic over `clusters` by weight, with no timeout.
    pub fn weighted_route(
        name: &str,
        path: route_match::PathSpecifier,
        clusters: &[(&str, u32)],
    ) -> Route {
        let specifier = if let [(single, _)] = clusters {
            route_action::ClusterSpecifier::Cluster((*single).to_owned())
        } else {
            route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: clusters
                    .iter()
                    .map(|(c, w)| ClusterWeight {
                        name: (*c).to_owned(),
                        weight: Some(UInt32Value { value: *w }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
        };
        Route {
            name: name.to_owned(),
            r#match: Some(RouteMatch {
                path_specifier: Some(path),
                ..Default::default()
            }),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(specifier),
                timeout: Some(Duration {
                    seconds: 0,
                    nanos: 0,
                }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    /// An EDS cluster named `name` (its endpoints come by EDS under the same name), round
    /// robin.
    pub fn eds_cluster(name: &str) -> Cluster {
        Cluster {
            name: name.to_owned(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cluster::EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: String::new(),
            }),
            connect_timeout: Some(Duration {
                seconds: 1,
                nanos: 0,
            }),
            lb_policy: cluster::LbPolicy::RoundRobin as i32,
            ..Default::default()
        }
    }

    /// The endpoints of `cluster`, all healthy, in one locality.
    pub fn endpoints(cluster: &str, addrs: &[SocketAddr]) -> ClusterLoadAssignment {
        ClusterLoadAssignment {
            cluster_name: cluster.to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: addrs
                    .iter()
                    .map(|a| LbEndpoint {
                        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                            address: Some(socket(*a)),
                            ..Default::default()
                        })),
                        // core.v3.HealthStatus.HEALTHY
                        health_status: 1,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }
}
