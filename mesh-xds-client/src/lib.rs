//! An xDS client: Envoy's aggregated discovery service (ADS) over gRPC, state-of-the-world and
//! delta, translated into the mesh's config model and published to a
//! [`ConfigStore`](mesh_core::store::ConfigStore), the same store the Istio YAML loader
//! writes, so every layer works unchanged whichever source the config came from.
//!
//! - [`protocol`]: the sans-io ADS state machine (subscriptions with LDS→RDS and CDS→EDS/SDS
//!   name propagation, ACK/NACK, removals, does-not-exist timers, `initial_resource_versions`
//!   on delta reconnect) and the reconnection [`backoff`](protocol::backoff). No network; it
//!   is tested on its own.
//! - [`translate`]: Envoy `Listener`, `RouteConfiguration`, `Cluster`,
//!   `ClusterLoadAssignment` and `Secret` into [`MeshConfig`](mesh_core::model::MeshConfig),
//!   with errors naming the resource, the field path and the reason. A field that would
//!   change behaviour and that the mesh cannot honour is an error (a NACK), never ignored.
//! - [`client`]: the tonic transport that drives the state machine: a list of servers in
//!   fallback order, plaintext or TLS/mTLS, jittered backoff, the last good snapshot kept on
//!   NACK or disconnect, optionally saved to a file and loaded at start.
//! - [`node`]: the node identity in Istio's form (`sidecar~IP~POD.NS~NS.svc.cluster.local`).
//! - `json` (feature `json`): Envoy's proto3 JSON (config dumps, bootstrap `static_resources`,
//!   discovery responses) decoded into the same resources, for fixtures and for running from
//!   an Envoy config file.
//! - `test_util` (feature `test-util`): an in-process ADS management server serving scripted
//!   snapshots, for tests of this crate and of its users.
//!
//! # Running it beside the YAML loader
//!
//! ```no_run
//! # async fn example() {
//! use mesh_core::{model::{MeshConfig, Workload}, store::ConfigStore};
//! use mesh_xds_client::client::{XdsClient, XdsClientConfig};
//! use mesh_xds_client::node::NodeIdentity;
//! use mesh_xds_client::protocol::Mode;
//! use std::sync::Arc;
//!
//! let workload = Workload::default(); // namespace, labels, service account from the flags
//! let node = NodeIdentity::from_workload(&workload, "10.0.0.7".parse().unwrap(), "reviews-v1-0");
//! let mut config = XdsClientConfig::new(
//!     vec!["http://istiod.istio-system.svc:15010".into(), "http://backup:15010".into()],
//!     Mode::Delta,
//!     node.to_node(),
//!     workload,
//! );
//! config.snapshot_file = Some("/var/lib/mesh/xds.snapshot".into());
//! let store = Arc::new(ConfigStore::new(MeshConfig::default()));
//! let handle = XdsClient::new(config, store.clone()).spawn();
//! // `handle.status()` (serializable) feeds `/config_dump`; `handle.secrets()` the certificates.
//! # let _ = handle;
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod client;
#[cfg(feature = "json")]
pub mod json;
pub mod node;
pub mod protocol;
pub mod resource;
pub mod sds;
pub mod translate;

#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
