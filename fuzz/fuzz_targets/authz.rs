//! Fuzzes authorization: arbitrary AuthorizationPolicies (Istio YAML) compiled into the
//! engine and arbitrary requests evaluated against them must never panic, and every verdict
//! must agree with the reason it gives.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../common/authz.rs"]
mod authz;

fuzz_target!(|data: &[u8]| {
    let _ = authz::run(data);
});
