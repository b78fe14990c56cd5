//! The mesh's config model: plain data, validation, and the Istio YAML loader. No I/O.
//!
//! - [`model`]: the resolved snapshot every layer reads ([`model::MeshConfig`]).
//! - [`store`]: the atomic, versioned holder of the live snapshot.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod istio;
pub mod model;
pub mod store;
