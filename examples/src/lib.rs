//! The `mesh-proxy` sidecar's wiring, and small programs that show the mesh at work.
//!
//! - [`proxy`]: starts the sidecar's listeners (outbound, inbound, admin, health) over a
//!   watched config, and drains them on shutdown. The binary is argument parsing and signal
//!   handling around it; tests start the same thing in-process.
//! - [`iptables`]: the `mesh-proxy iptables --apply/--remove` rules for transparent
//!   interception, as Istio's init container writes them.
//! - [`demo`]: tiny HTTP servers standing in for a config's endpoints, so that the quick
//!   start shows a canary split without any other software.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod canary;
pub mod demo;
pub mod grpc;
pub mod iptables;
pub mod metrics;
pub mod proxy;
