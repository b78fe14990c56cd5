//! Fuzzes PERMISSIVE protocol sniffing: the first bytes of a connection told apart as TLS or
//! plaintext, and a TLS ClientHello parsed as the acceptor would, must never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../common/sniff.rs"]
mod sniff;

fuzz_target!(|data: &[u8]| {
    let _ = sniff::run(data);
});
