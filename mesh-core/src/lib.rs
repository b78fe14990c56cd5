//! mesh-core
