//! The ADS protocol as a sans-io state machine: it is told what arrived and what time it is,
//! and answers with the requests to send. The transport ([`crate::client`]) only moves them.
//!
//! What it does, for both variants (state of the world and delta):
//! - **Subscriptions**: LDS and CDS are wildcard subscriptions; the RDS names that listeners
//!   use, the EDS names of EDS clusters and the SDS names of cluster TLS contexts are
//!   subscribed to by name as those resources arrive, and unsubscribed when no longer used.
//! - **ACK/NACK**: every response is answered. A response whose resources all decode and
//!   translate is ACKed (SotW: `version_info` and `response_nonce`; delta: `response_nonce`).
//!   One bad resource NACKs the whole response (as Envoy does), with `error_detail` naming each
//!   bad resource, field and reason; the previous versions keep serving.
//! - **Removal**: in SotW, a LDS/CDS response is the whole set, so a missing resource is
//!   removed; in delta, `removed_resources` says so.
//! - **Reconnect**: [`AdsState::connected`] produces the requests for a new stream, with the last
//!   accepted SotW `version_info` per type, or delta's `initial_resource_versions`.
//! - **Does-not-exist timers**: a named resource that has not arrived within
//!   [`ProtocolConfig::does_not_exist_timeout`] (15 s, as gRPC's A88) of its request is taken to
//!   not exist, so that a snapshot can be completed without it. Timers only run while connected.
//!
//! Time comes in as arguments (`now`), so tests drive every timer exactly.

pub mod backoff;
#[cfg(test)]
mod tests;

use crate::resource::ResourceType;
use crate::translate::{self, Decoded, InvalidResource, Resources};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as DeltaResource,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;
use mesh_core::model::{MeshConfig, Workload};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;

const RESOURCE_WRAPPER: &str = "type.googleapis.com/envoy.service.discovery.v3.Resource";
/// gRPC's INVALID_ARGUMENT, the code of a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

/// Which ADS variant to speak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum Mode {
    /// State of the world: `StreamAggregatedResources`.
    #[default]
    Sotw,
    /// Incremental: `DeltaAggregatedResources`.
    Delta,
}

/// The protocol's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ProtocolConfig {
    /// The ADS variant.
    pub mode: Mode,
    /// Who we are, sent on the first request of each stream.
    pub node: Node,
    /// How long a requested resource may take to arrive before it is taken not to exist.
    pub does_not_exist_timeout: Duration,
}

impl ProtocolConfig {
    /// Settings for `mode` and `node`, with a 15 s does-not-exist timeout.
    pub fn new(mode: Mode, node: Node) -> Self {
        Self {
            mode,
            node,
            does_not_exist_timeout: Duration::from_secs(15),
        }
    }
}

/// A request to send on the stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// A state-of-the-world request.
    Sotw(DiscoveryRequest),
    /// A delta request.
    Delta(DeltaDiscoveryRequest),
}

impl Request {
    /// The request's type URL.
    pub fn type_url(&self) -> &str {
        match self {
            Self::Sotw(r) => &r.type_url,
            Self::Delta(r) => &r.type_url,
        }
    }

    /// Whether the request is a NACK (carries `error_detail`).
    pub fn is_nack(&self) -> bool {
        match self {
            Self::Sotw(r) => r.error_detail.is_some(),
            Self::Delta(r) => r.error_detail.is_some(),
        }
    }
}

/// Where a resource stands, for the admin config dump (like CSDS's `ClientResourceStatus`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum ResourceState {
    /// Requested, not received yet.
    Requested,
    /// Received and accepted.
    Acked,
    /// The last update was rejected; `version` is the one still serving, if any.
    Nacked {
        /// Why it was rejected.
        error: String,
    },
    /// The server says (or the timer concluded) that it does not exist.
    DoesNotExist,
}

/// One resource's status.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ResourceStatus {
    /// Its type.
    pub kind: ResourceType,
    /// Its name.
    pub name: String,
    /// The version that is serving (SotW: the response's `version_info`; delta: the
    /// resource's own version), if any.
    pub version: Option<String>,
    /// Where it stands.
    pub state: ResourceState,
    /// When it was last accepted, on the clock the state machine was given.
    #[serde(skip)]
    pub last_updated: Option<Instant>,
    /// When it was last accepted, in milliseconds since the Unix epoch (filled in by the
    /// client, which knows the wall clock; `None` from the state machine).
    pub last_updated_unix_ms: Option<u64>,
}

/// What handling a response did.
#[derive(Debug, Default)]
pub struct Handled {
    /// Requests to send, in order (the ACK or NACK first).
    pub requests: Vec<Request>,
    /// The resources that were rejected, when it was a NACK.
    pub rejected: Vec<InvalidResource>,
    /// Whether the accepted resources changed.
    pub changed: bool,
}

#[derive(Clone, Debug)]
struct Entry {
    version: String,
    decoded: Decoded,
    /// The resource as received, for persistence.
    raw: Any,
    updated: Instant,
}

#[derive(Debug)]
struct TypeState {
    kind: ResourceType,
    /// Names wanted (named types only).
    names: BTreeSet<String>,
    resources: BTreeMap<String, Entry>,
    absent: BTreeSet<String>,
    nacked: BTreeMap<String, String>,
    deadlines: BTreeMap<String, Instant>,
    /// For wildcard types: whether the set is known (a response came, or its timer fired).
    known: bool,
    wildcard_deadline: Option<Instant>,
    /// SotW: the last accepted version_info.
    version_info: String,
    /// The last response's nonce on this stream.
    nonce: String,
    /// What the server was last told we want on this stream (`None`: nothing sent yet).
    sent: Option<BTreeSet<String>>,
}

impl TypeState {
    fn new(kind: ResourceType) -> Self {
        Self {
            kind,
            names: BTreeSet::new(),
            resources: BTreeMap::new(),
            absent: BTreeSet::new(),
            nacked: BTreeMap::new(),
            deadlines: BTreeMap::new(),
            known: false,
            wildcard_deadline: None,
            version_info: String::new(),
            nonce: String::new(),
            sent: None,
        }
    }

    fn has_interest(&self) -> bool {
        self.kind.is_wildcard() || !self.names.is_empty() || self.sent.is_some()
    }
}

/// The ADS client state: subscriptions, accepted resources, nonces and versions, timers.
#[derive(Debug)]
pub struct AdsState {
    config: ProtocolConfig,
    types: BTreeMap<ResourceType, TypeState>,
    connected: bool,
    /// Whether the node has been sent on the current stream.
    node_sent: bool,
    generation: u64,
}

impl AdsState {
    /// A state with nothing received yet.
    pub fn new(config: ProtocolConfig) -> Self {
        Self {
            config,
            types: ResourceType::ALL
                .into_iter()
                .map(|t| (t, TypeState::new(t)))
                .collect(),
            connected: false,
            node_sent: false,
            generation: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &ProtocolConfig {
        &self.config
    }

    /// A counter that grows each time the accepted resources change.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn ts(&mut self, kind: ResourceType) -> &mut TypeState {
        self.types
            .entry(kind)
            .or_insert_with(|| TypeState::new(kind))
    }

    /// A new stream is up: the requests that (re)subscribe to everything, with the versions
    /// already held so the server need not resend what has not changed.
    pub fn connected(&mut self, now: Instant) -> Vec<Request> {
        self.connected = true;
        self.node_sent = false;
        let timeout = self.config.does_not_exist_timeout;
        let mut out = Vec::new();
        let kinds: Vec<ResourceType> = self.types.keys().copied().collect();
        for kind in kinds {
            let ts = self.ts(kind);
            ts.nonce.clear();
            ts.sent = None;
            if !ts.has_interest() {
                continue;
            }
            if kind.is_wildcard() && !ts.known {
                ts.wildcard_deadline = Some(now + timeout);
            }
            let waiting: Vec<String> = ts
                .names
                .iter()
                .filter(|n| !ts.resources.contains_key(*n) && !ts.absent.contains(*n))
                .cloned()
                .collect();
            for n in waiting {
                ts.deadlines.insert(n, now + timeout);
            }
            out.push(self.subscription_request(kind));
        }
        out
    }

    /// The stream is gone: timers stop until the next [`connected`](Self::connected).
    /// Accepted resources stay.
    pub fn disconnected(&mut self) {
        self.connected = false;
        for ts in self.types.values_mut() {
            ts.deadlines.clear();
            ts.wildcard_deadline = None;
            ts.nonce.clear();
            ts.sent = None;
        }
    }

    fn node_once(&mut self) -> Option<Node> {
        if self.node_sent {
            None
        } else {
            self.node_sent = true;
            Some(self.config.node.clone())
        }
    }

    /// The request that tells the server the current subscription of `kind` (SotW: the whole
    /// list; delta: the difference from what it was last told).
    fn subscription_request(&mut self, kind: ResourceType) -> Request {
        let node = self.node_once();
        let mode = self.config.mode;
        let ts = self.ts(kind);
        let wanted = ts.names.clone();
        let req = match mode {
            Mode::Sotw => Request::Sotw(DiscoveryRequest {
                version_info: ts.version_info.clone(),
                node,
                resource_names: if kind.is_wildcard() {
                    Vec::new()
                } else {
                    wanted.iter().cloned().collect()
                },
                type_url: kind.type_url().to_owned(),
                response_nonce: ts.nonce.clone(),
                ..Default::default()
            }),
            Mode::Delta => {
                let (subscribe, unsubscribe, initial) = match &ts.sent {
                    None => {
                        let subscribe = if kind.is_wildcard() {
                            vec!["*".to_owned()]
                        } else {
                            wanted.iter().cloned().collect()
                        };
                        let initial = ts
                            .resources
                            .iter()
                            .map(|(n, e)| (n.clone(), e.version.clone()))
                            .collect();
                        (subscribe, Vec::new(), initial)
                    }
                    Some(sent) => (
                        wanted.difference(sent).cloned().collect(),
                        sent.difference(&wanted).cloned().collect(),
                        Default::default(),
                    ),
                };
                Request::Delta(DeltaDiscoveryRequest {
                    node,
                    type_url: kind.type_url().to_owned(),
                    resource_names_subscribe: subscribe,
                    resource_names_unsubscribe: unsubscribe,
                    initial_resource_versions: initial,
                    ..Default::default()
                })
            }
        };
        ts.sent = Some(wanted);
        req
    }

    /// Handles a state-of-the-world response.
    pub fn handle_sotw(&mut self, resp: DiscoveryResponse, now: Instant) -> Handled {
        let Some(kind) = ResourceType::from_type_url(&resp.type_url) else {
            return self.unknown_type(&resp.type_url, &resp.nonce);
        };
        let mut decoded = Vec::with_capacity(resp.resources.len());
        let mut rejected = Vec::new();
        let mut names = BTreeSet::new();
        for any in resp.resources {
            match decode_any(kind, &any, None) {
                Ok(d) => {
                    if !names.insert(d.name().to_owned()) {
                        rejected.push(duplicate(kind, d.name()));
                    }
                    decoded.push((d, any));
                }
                Err(e) => rejected.push(e),
            }
        }
        if !rejected.is_empty() {
            return self.nack(kind, &resp.nonce, rejected);
        }
        let ts = self.ts(kind);
        ts.version_info = resp.version_info.clone();
        ts.nonce = resp.nonce.clone();
        let mut changed = false;
        if kind.is_wildcard() {
            // The whole set: what is missing is removed.
            let before = ts.resources.len();
            ts.resources.retain(|n, _| names.contains(n));
            changed |= ts.resources.len() != before;
            changed |= !ts.known;
            ts.known = true;
            ts.wildcard_deadline = None;
        }
        for (d, raw) in decoded {
            let name = d.name().to_owned();
            if !kind.is_wildcard() && !ts.names.contains(&name) {
                // Not subscribed (any more): ignore, as gRPC does.
                continue;
            }
            changed |= accept(ts, name, resp.version_info.clone(), d, raw, now);
        }
        self.after_accept(kind, changed, now)
    }

    /// Handles a delta response.
    pub fn handle_delta(&mut self, resp: DeltaDiscoveryResponse, now: Instant) -> Handled {
        let Some(kind) = ResourceType::from_type_url(&resp.type_url) else {
            return self.unknown_type(&resp.type_url, &resp.nonce);
        };
        let mut decoded = Vec::with_capacity(resp.resources.len());
        let mut rejected = Vec::new();
        for r in resp.resources {
            let Some(any) = r.resource else {
                rejected.push(InvalidResource {
                    kind,
                    name: r.name.clone(),
                    field: "resource".to_owned(),
                    reason: "missing".to_owned(),
                });
                continue;
            };
            match decode_any(kind, &any, Some(&r.name)) {
                Ok(d) => decoded.push((r.version, d, any)),
                Err(e) => rejected.push(e),
            }
        }
        if !rejected.is_empty() {
            return self.nack(kind, &resp.nonce, rejected);
        }
        let ts = self.ts(kind);
        ts.nonce = resp.nonce.clone();
        let mut changed = false;
        if kind.is_wildcard() {
            changed |= !ts.known;
            ts.known = true;
            ts.wildcard_deadline = None;
        }
        for (version, d, raw) in decoded {
            let name = d.name().to_owned();
            if !kind.is_wildcard() && !ts.names.contains(&name) {
                continue;
            }
            changed |= accept(ts, name, version, d, raw, now);
        }
        for name in &resp.removed_resources {
            changed |= ts.resources.remove(name).is_some();
            ts.nacked.remove(name);
            if !kind.is_wildcard() && ts.names.contains(name) {
                ts.deadlines.remove(name);
                changed |= ts.absent.insert(name.clone());
            }
        }
        self.after_accept(kind, changed, now)
    }

    fn unknown_type(&mut self, type_url: &str, nonce: &str) -> Handled {
        let node = self.node_once();
        let error_detail = Some(Status {
            code: INVALID_ARGUMENT,
            message: format!("unknown resource type {type_url}"),
            details: Vec::new(),
        });
        let request = match self.config.mode {
            Mode::Sotw => Request::Sotw(DiscoveryRequest {
                node,
                type_url: type_url.to_owned(),
                response_nonce: nonce.to_owned(),
                error_detail,
                ..Default::default()
            }),
            Mode::Delta => Request::Delta(DeltaDiscoveryRequest {
                node,
                type_url: type_url.to_owned(),
                response_nonce: nonce.to_owned(),
                error_detail,
                ..Default::default()
            }),
        };
        Handled {
            requests: vec![request],
            rejected: Vec::new(),
            changed: false,
        }
    }

    fn nack(&mut self, kind: ResourceType, nonce: &str, rejected: Vec<InvalidResource>) -> Handled {
        let message = rejected
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let node = self.node_once();
        let mode = self.config.mode;
        let ts = self.ts(kind);
        ts.nonce = nonce.to_owned();
        for r in &rejected {
            ts.nacked.insert(r.name.clone(), r.to_string());
        }
        let error_detail = Some(Status {
            code: INVALID_ARGUMENT,
            message,
            details: Vec::new(),
        });
        let request = match mode {
            Mode::Sotw => Request::Sotw(DiscoveryRequest {
                version_info: ts.version_info.clone(),
                node,
                resource_names: if kind.is_wildcard() {
                    Vec::new()
                } else {
                    ts.names.iter().cloned().collect()
                },
                type_url: kind.type_url().to_owned(),
                response_nonce: nonce.to_owned(),
                error_detail,
                ..Default::default()
            }),
            Mode::Delta => Request::Delta(DeltaDiscoveryRequest {
                node,
                type_url: kind.type_url().to_owned(),
                response_nonce: nonce.to_owned(),
                error_detail,
                ..Default::default()
            }),
        };
        Handled {
            requests: vec![request],
            rejected,
            changed: false,
        }
    }

    /// After an accepted response of `kind`: the ACK, then subscription changes of the types
    /// that depend on it.
    fn after_accept(&mut self, kind: ResourceType, changed: bool, now: Instant) -> Handled {
        if changed {
            self.generation += 1;
        }
        let node = self.node_once();
        let mode = self.config.mode;
        let ts = self.ts(kind);
        let ack = match mode {
            Mode::Sotw => Request::Sotw(DiscoveryRequest {
                version_info: ts.version_info.clone(),
                node,
                resource_names: if kind.is_wildcard() {
                    Vec::new()
                } else {
                    ts.names.iter().cloned().collect()
                },
                type_url: kind.type_url().to_owned(),
                response_nonce: ts.nonce.clone(),
                ..Default::default()
            }),
            Mode::Delta => Request::Delta(DeltaDiscoveryRequest {
                node,
                type_url: kind.type_url().to_owned(),
                response_nonce: ts.nonce.clone(),
                ..Default::default()
            }),
        };
        let mut requests = vec![ack];
        let mut more_changed = false;
        if changed {
            let (reqs, c) = self.update_watches(now);
            requests.extend(reqs);
            more_changed = c;
        }
        if more_changed {
            self.generation += 1;
        }
        Handled {
            requests,
            rejected: Vec::new(),
            changed: changed || more_changed,
        }
    }

    /// Recomputes the names of dependent types from the wildcard resources; returns the
    /// requests for the subscriptions that changed, and whether accepted state changed
    /// (resources dropped because nothing refers to them any more).
    fn update_watches(&mut self, now: Instant) -> (Vec<Request>, bool) {
        let mut wanted: BTreeMap<ResourceType, BTreeSet<String>> = BTreeMap::new();
        for parent in [ResourceType::Listener, ResourceType::Cluster] {
            for entry in self.types[&parent].resources.values() {
                for (kind, name) in entry.decoded.references() {
                    wanted.entry(kind).or_default().insert(name);
                }
            }
        }
        let timeout = self.config.does_not_exist_timeout;
        let connected = self.connected;
        let mut requests = Vec::new();
        let mut changed = false;
        for kind in [
            ResourceType::ClusterLoadAssignment,
            ResourceType::RouteConfiguration,
            ResourceType::Secret,
        ] {
            let names = wanted.remove(&kind).unwrap_or_default();
            let ts = self.ts(kind);
            if ts.names == names {
                continue;
            }
            for gone in ts.names.difference(&names) {
                changed |= ts.resources.remove(gone).is_some();
                ts.absent.remove(gone);
                ts.nacked.remove(gone);
                ts.deadlines.remove(gone);
            }
            for new in names.difference(&ts.names) {
                if connected && !ts.resources.contains_key(new) {
                    ts.deadlines.insert(new.clone(), now + timeout);
                }
            }
            ts.names = names;
            if connected {
                requests.push(self.subscription_request(kind));
            }
        }
        (requests, changed)
    }

    /// The earliest does-not-exist deadline, if a timer runs.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.types
            .values()
            .flat_map(|ts| ts.deadlines.values().copied().chain(ts.wildcard_deadline))
            .min()
    }

    /// Fires the does-not-exist timers due at `now`; returns whether that changed anything
    /// (a snapshot may now be complete).
    pub fn on_timer(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for ts in self.types.values_mut() {
            let due: Vec<String> = ts
                .deadlines
                .iter()
                .filter(|(_, d)| **d <= now)
                .map(|(n, _)| n.clone())
                .collect();
            for name in due {
                ts.deadlines.remove(&name);
                changed |= ts.absent.insert(name);
            }
            if ts.wildcard_deadline.is_some_and(|d| d <= now) {
                ts.wildcard_deadline = None;
                changed |= !ts.known;
                ts.known = true;
            }
        }
        if changed {
            self.generation += 1;
        }
        changed
    }

    /// Whether everything needed for a consistent snapshot is known: LDS and CDS, and every
    /// route configuration and endpoint set they name (present, or known not to exist).
    pub fn is_complete(&self) -> bool {
        [ResourceType::Listener, ResourceType::Cluster]
            .iter()
            .all(|k| self.types[k].known)
            && [
                ResourceType::RouteConfiguration,
                ResourceType::ClusterLoadAssignment,
            ]
            .iter()
            .all(|k| {
                let ts = &self.types[k];
                ts.names
                    .iter()
                    .all(|n| ts.resources.contains_key(n) || ts.absent.contains(n))
            })
    }

    /// The snapshot the accepted resources make for `workload`; `None` until
    /// [complete](Self::is_complete).
    pub fn snapshot(&self, workload: &Workload) -> Option<MeshConfig> {
        if !self.is_complete() {
            return None;
        }
        let mut resources = Resources::default();
        for ts in self.types.values() {
            for (name, e) in &ts.resources {
                match &e.decoded {
                    Decoded::Listener(l) => {
                        resources.listeners.insert(name, l);
                    }
                    Decoded::RouteConfiguration(r) => {
                        resources.routes.insert(name, r);
                    }
                    Decoded::Cluster(c) => {
                        resources.clusters.insert(name, c);
                    }
                    Decoded::ClusterLoadAssignment(c) => {
                        resources.endpoints.insert(name, c);
                    }
                    Decoded::Secret(_) => {}
                }
            }
        }
        Some(translate::assemble(&resources, workload))
    }

    /// The accepted resources in a form that can be saved and given back to
    /// [`restore`](Self::restore): one delta response per type, each resource with its own
    /// version, and the SotW `version_info` as `system_version_info`.
    pub fn persisted(&self) -> Vec<DeltaDiscoveryResponse> {
        self.types
            .values()
            .filter(|ts| !ts.resources.is_empty() || ts.known)
            .map(|ts| DeltaDiscoveryResponse {
                system_version_info: ts.version_info.clone(),
                type_url: ts.kind.type_url().to_owned(),
                resources: ts
                    .resources
                    .iter()
                    .map(|(name, e)| DeltaResource {
                        name: name.clone(),
                        version: e.version.clone(),
                        resource: Some(e.raw.clone()),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect()
    }

    /// Loads resources saved by [`persisted`](Self::persisted), before the first connection,
    /// so that a snapshot can be served while the control plane is unreachable. Every
    /// resource is checked as if it had just arrived; on any error nothing is loaded.
    pub fn restore(
        &mut self,
        saved: Vec<DeltaDiscoveryResponse>,
        now: Instant,
    ) -> Result<(), Vec<InvalidResource>> {
        let mut by_kind = BTreeMap::new();
        let mut rejected = Vec::new();
        for resp in saved {
            let Some(kind) = ResourceType::from_type_url(&resp.type_url) else {
                continue;
            };
            let mut decoded = Vec::new();
            for r in resp.resources {
                let Some(any) = r.resource else { continue };
                match decode_any(kind, &any, Some(&r.name)) {
                    Ok(d) => decoded.push((r.version, d, any)),
                    Err(e) => rejected.push(e),
                }
            }
            by_kind.insert(kind, (resp.system_version_info, decoded));
        }
        if !rejected.is_empty() {
            return Err(rejected);
        }
        // Wildcard types first, so that the names of the others are subscribed to.
        let order = [
            ResourceType::Cluster,
            ResourceType::Listener,
            ResourceType::ClusterLoadAssignment,
            ResourceType::RouteConfiguration,
            ResourceType::Secret,
        ];
        for kind in order {
            let Some((version_info, decoded)) = by_kind.remove(&kind) else {
                continue;
            };
            let ts = self.ts(kind);
            ts.version_info = version_info;
            if kind.is_wildcard() {
                ts.known = true;
            }
            for (version, d, raw) in decoded {
                let name = d.name().to_owned();
                if kind.is_wildcard() || ts.names.contains(&name) {
                    accept(ts, name, version, d, raw, now);
                }
            }
            self.update_watches(now);
        }
        // What was saved was complete: a named resource missing from it did not exist.
        for ts in self.types.values_mut() {
            let missing: Vec<String> = ts
                .names
                .iter()
                .filter(|n| !ts.resources.contains_key(*n))
                .cloned()
                .collect();
            ts.absent.extend(missing);
        }
        self.generation += 1;
        Ok(())
    }

    /// The accepted secrets, by name.
    pub fn secrets(&self) -> BTreeMap<String, translate::XdsSecret> {
        self.types[&ResourceType::Secret]
            .resources
            .iter()
            .filter_map(|(n, e)| match &e.decoded {
                Decoded::Secret(s) => Some((n.clone(), s.clone())),
                _ => None,
            })
            .collect()
    }

    /// The accepted secret named `name`, if any.
    pub fn secret(&self, name: &str) -> Option<&translate::XdsSecret> {
        match &self.types[&ResourceType::Secret]
            .resources
            .get(name)?
            .decoded
        {
            Decoded::Secret(s) => Some(s),
            _ => None,
        }
    }

    /// Every resource's status, by type then name.
    pub fn status(&self) -> Vec<ResourceStatus> {
        let mut out = Vec::new();
        for ts in self.types.values() {
            let mut names: BTreeSet<&String> = ts.resources.keys().collect();
            names.extend(ts.names.iter());
            names.extend(ts.nacked.keys().filter(|n| !n.is_empty()));
            for name in names {
                let entry = ts.resources.get(name);
                let state = if let Some(error) = ts.nacked.get(name) {
                    ResourceState::Nacked {
                        error: error.clone(),
                    }
                } else if entry.is_some() {
                    ResourceState::Acked
                } else if ts.absent.contains(name) {
                    ResourceState::DoesNotExist
                } else {
                    ResourceState::Requested
                };
                out.push(ResourceStatus {
                    kind: ts.kind,
                    name: name.clone(),
                    version: entry.map(|e| e.version.clone()),
                    state,
                    last_updated: entry.map(|e| e.updated),
                    last_updated_unix_ms: None,
                });
            }
        }
        out
    }
}

/// Stores an accepted resource; whether it differs from what was there.
fn accept(
    ts: &mut TypeState,
    name: String,
    version: String,
    d: Decoded,
    raw: Any,
    now: Instant,
) -> bool {
    ts.deadlines.remove(&name);
    ts.nacked.remove(&name);
    let was_absent = ts.absent.remove(&name);
    let same = ts.resources.get(&name).is_some_and(|e| e.decoded == d);
    if same {
        if let Some(e) = ts.resources.get_mut(&name) {
            e.version = version;
        }
        return was_absent;
    }
    ts.resources.insert(
        name,
        Entry {
            version,
            decoded: d,
            raw,
            updated: now,
        },
    );
    true
}

fn duplicate(kind: ResourceType, name: &str) -> InvalidResource {
    InvalidResource {
        kind,
        name: name.to_owned(),
        field: "name".to_owned(),
        reason: "appears twice in one response".to_owned(),
    }
}

/// Decodes one resource, unwrapping `envoy.service.discovery.v3.Resource` if the server
/// wrapped it; checks the name when the envelope gives one.
fn decode_any(
    kind: ResourceType,
    any: &Any,
    expected_name: Option<&str>,
) -> Result<Decoded, InvalidResource> {
    let decoded = if any.type_url == RESOURCE_WRAPPER {
        let wrapper: DeltaResource =
            prost::Message::decode(any.value.as_slice()).map_err(|e| InvalidResource {
                kind,
                name: String::new(),
                field: "resource".to_owned(),
                reason: format!("protobuf decode error: {e}"),
            })?;
        let inner = wrapper.resource.ok_or_else(|| InvalidResource {
            kind,
            name: wrapper.name.clone(),
            field: "resource".to_owned(),
            reason: "missing".to_owned(),
        })?;
        translate::decode(kind, &inner)?
    } else {
        translate::decode(kind, any)?
    };
    if let Some(expected) = expected_name
        && decoded.name() != expected
    {
        return Err(InvalidResource {
            kind,
            name: expected.to_owned(),
            field: "name".to_owned(),
            reason: format!("the resource is named {:?}", decoded.name()),
        });
    }
    Ok(decoded)
}
