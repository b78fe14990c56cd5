//! mesh-tower
