//! Fuzzes route matching: arbitrary requests (method, URI, Host, headers decoded from the input)
//! against a fixed config with every kind of match, routed through `RouteLayer` over a service
//! that answers at once. Matching, rewriting and redirecting must never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../common/route.rs"]
mod route;

fuzz_target!(|data: &[u8]| {
    let _ = route::run(data);
});
