//! Fuzzes JWT parsing and verification and JWKS parsing: never a panic, never a forged token
//! accepted.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../common/jwt.rs"]
mod jwt;

fuzz_target!(|data: &[u8]| {
    let _ = jwt::run(data);
});
