//! Fuzzes the Istio YAML loader: parsing arbitrary text, then building a proxy
//! configuration from whatever resources were accepted, must never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let out = mesh_core::istio::parse("fuzz.yaml", s);
    let _ = mesh_core::istio::build(&out.resources, &mesh_core::model::Workload::default());
});
