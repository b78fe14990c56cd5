//! Fuzzes Istio's path normalization modes: a request path normalized in each mode must never
//! panic, and each mode must keep its promises (see `common/path_normalization.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../common/path_normalization.rs"]
mod path_normalization;

fuzz_target!(|data: &[u8]| {
    let _ = path_normalization::run(data);
});
