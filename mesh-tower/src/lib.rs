//! The mesh's tower layers and the stacks that assemble them.
//!
//! Each layer is usable on its own around any `tower::Service<http::Request<B>>`; the
//! outbound and inbound stacks compose them in the order `DESIGN.md` gives.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod flags;
