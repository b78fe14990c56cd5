//! Fuzzes Istio's TCP metadata exchange: a peer's first bytes read as its preamble must never
//! panic nor lose payload (see `common/peer_exchange.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../common/peer_exchange.rs"]
mod peer_exchange;

fuzz_target!(|data: &[u8]| {
    let _ = peer_exchange::run(data);
});
