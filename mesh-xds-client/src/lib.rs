//! An xDS client: Envoy's aggregated discovery service (ADS) over gRPC, state-of-the-world and
//! delta, translated into the mesh's config model and published to a
//! [`ConfigStore`](mesh_core::store::ConfigStore).
//!
//! - [`protocol`]: the sans-io ADS state machine (subscriptions, ACK/NACK, removals,
//!   does-not-exist timers, backoff). No network; tested on its own.
//! - [`translate`]: Envoy `Listener`, `RouteConfiguration`, `Cluster`, `ClusterLoadAssignment`
//!   and `Secret` into [`MeshConfig`](mesh_core::model::MeshConfig), with errors naming the
//!   resource and field.
//! - [`client`]: the tonic transport that drives the state machine.
//! - `test_util` (feature `test-util`): an in-process ADS management server for tests.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod client;
pub mod node;
pub mod protocol;
pub mod resource;
pub mod translate;

#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
