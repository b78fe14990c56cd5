//! Fuzzes SPIFFE ID parsing, from a string and from a certificate's URI SAN: never a panic,
//! and an accepted ID is self-consistent.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../common/spiffe.rs"]
mod spiffe;

fuzz_target!(|data: &[u8]| {
    let _ = spiffe::run(data);
});
