//! mesh-policy: workload identity (SPIFFE), mTLS configuration on rustls, and the
//! authorization engine with Istio's AuthorizationPolicy semantics.
//!
//! - [`identity`]: [`SpiffeId`] and the verified [`PeerIdentity`] of a connection.
//! - [`credentials`]: certificate chain, key and bundle from PEM, and the rotating store.
//! - [`tls`]: rustls client and server configs verified by SPIFFE identity.
//! - [`authz`]: the authorization engine over `mesh_core::model::AuthorizationPolicy`.
//! - [`header`]: request headers as Envoy's matchers read them.
//! - [`jwt`]: end-user JWT verification (Istio's RequestAuthentication).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod authz;
pub mod credentials;
pub mod header;
pub mod identity;
pub mod jwt;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;

pub use identity::{InvalidSpiffeId, PeerIdentity, SpiffeId};
