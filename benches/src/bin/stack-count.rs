//! Sends a fixed number of requests through one in-process stack, for an instruction count
//! under callgrind: two runs with different request counts, and the difference over the
//! difference in requests is the exact per-request cost, free of the host's noise.
//!
//! `stack-count WHAT REQUESTS`, WHAT one of `bare`, `outbound` (the sidecar's outbound service
//! over the bare service instead of the upstream client), `edge` (the same with telemetry at
//! its edge, sampling 0%: what the sidecar runs in process per request).
//!
//! ```text
//! valgrind --tool=callgrind target/release/stack-count edge 1000
//! valgrind --tool=callgrind target/release/stack-count edge 11000
//! ```

use mesh_benches::{Bare, drive, host, one_service_yaml, request, with_body};

// The sidecar's allocator: the counts are about the stack's work, as the sidecar does it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "edge".to_owned());
    let requests: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let store = mesh_benches::store(&one_service_yaml(1, 2, "simple: LEAST_REQUEST"));
    let workload = store.load().workload.clone();
    let template = request(&host(0), "/r0/items/42");
    let make = || with_body(&template);
    let rt = mesh_benches::runtime();
    rt.block_on(async {
        match what.as_str() {
            "bare" => drive(&mut Bare, make, requests).await,
            "outbound" => drive(&mut mesh_benches::outbound(store, None), make, requests).await,
            "edge" => {
                let telemetry = mesh_benches::telemetry(workload, 0.0);
                let mut edge = mesh_benches::outbound(store, Some(telemetry));
                drive(&mut edge, make, requests).await
            }
            other => {
                eprintln!("stack-count: unknown stack {other:?} (bare, outbound, edge)");
                std::process::exit(2);
            }
        }
    });
}
