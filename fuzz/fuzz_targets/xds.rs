//! Fuzzes xDS resource decoding and translation: arbitrary bytes as a Listener,
//! RouteConfiguration, Cluster, ClusterLoadAssignment or Secret (the first byte picks the
//! type), decoded, checked, translated and assembled into a snapshot, must never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../common/xds.rs"]
mod xds;

fuzz_target!(|data: &[u8]| {
    let _ = xds::run(data);
});
