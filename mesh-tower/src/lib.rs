//! The mesh's tower layers and the stacks that assemble them.
//!
//! Each layer is usable on its own around any `tower::Service<http::Request<B>>`; the
//! [`outbound`] and [`inbound`] stacks compose them in the order `DESIGN.md` gives:
//!
//! ```text
//! outbound: route (and CORS) -> rate limit -> fault -> mirror -> timeout -> split -> retry -> breaker
//!           -> balance -> client
//! inbound:  -> local app
//! ```
//!
//! Layers pass what they decided down in one request extension, [`context::RequestContext`]
//! ([`route::Routed`], [`split::Target`], [`balance::Upstream`], [`timeout::Deadline`], ...);
//! failures travel up as [`error::ProxyError`] and become Envoy's responses in one place,
//! [`error::to_response`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admin;
pub mod authn;
pub mod authz;
pub mod balance;
pub mod body;
pub mod breaker;
pub mod capture;
pub mod client;
pub mod context;
pub mod cors;
pub mod embed;
pub mod error;
pub mod explain;
pub mod fault;
pub mod flags;
pub mod future;
mod graceful;
pub mod grpc;
pub mod inbound;
pub mod mirror;
pub mod outbound;
pub mod ratelimit;
pub mod retry;
pub mod rng;
pub mod route;
pub mod server;
pub mod source;
pub mod split;
pub mod tcp;
pub mod telemetry;
#[cfg(test)]
pub(crate) mod testing;
pub mod timeout;
pub mod tls;
