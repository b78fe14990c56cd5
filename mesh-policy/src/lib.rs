//! mesh-policy
