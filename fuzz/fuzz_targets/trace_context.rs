//! Fuzzes trace-context propagation: an `OTEL_PROPAGATORS` list and a request's headers in,
//! never a panic, and the trace headers written agree with those read.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../common/trace.rs"]
mod trace;

fuzz_target!(|data: &[u8]| {
    let _ = trace::run(data);
});
