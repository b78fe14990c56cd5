//! mesh-policy: workload identity (SPIFFE), mTLS configuration on rustls, and the
//! authorization engine with Istio's AuthorizationPolicy semantics.
//!
//! - [`identity`]: [`SpiffeId`] and the verified [`PeerIdentity`] of a connection.
//! - [`authz`]: the authorization engine over `mesh_core::model::AuthorizationPolicy`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod authz;
pub mod identity;

pub use identity::{InvalidSpiffeId, PeerIdentity, SpiffeId};
