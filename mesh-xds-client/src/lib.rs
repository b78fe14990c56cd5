//! mesh-xds-client
