//! The outbound stack with telemetry, as the sidecar's workers run it, on one thread and on
//! two at once: what state shared between workers (locks, atomics, one cache line written by
//! both) costs when the sidecar runs with more than one worker (`--concurrency`, by default
//! one per core).
//!
//! Unlike the `layers` bench, the sidecar's Prometheus recorder is installed (metrics are
//! recorded, as the sidecar records them) and ids and picks are drawn from entropy, as the
//! sidecar draws them. Each thread has its own current-thread runtime and its own clone of
//! the stack (the layers' shared state is shared, as between the sidecar's workers); the time
//! is per request of each thread, so perfect scaling shows equal times.

use criterion::{BenchmarkId, Criterion};
use http::Request;
use mesh_benches::{Bare, drive, runtime, store, with_body};
use mesh_core::model::Percentage;
use mesh_tower::body::BoxBody;
use mesh_tower::outbound::Outbound;
use mesh_tower::rng::Rng;
use mesh_tower::telemetry::{Reporter, Telemetry};
use std::time::Duration;
use tower_service::Service;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The request each thread sends copies of: made per thread, so that no header value's
/// reference count is shared between threads (the bench's own cost must not contend).
fn template() -> Request<()> {
    mesh_benches::request(&mesh_benches::host(0), "/r0/items/42")
}

/// Drives `iters` requests through a clone of `svc` on each of `threads` threads at once and
/// returns the slowest thread's time.
fn on_threads<S>(svc: &S, threads: usize, iters: u64) -> Duration
where
    S: Service<Request<BoxBody>, Response = http::Response<BoxBody>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
{
    mesh_benches::slowest_of(threads, || {
        let mut svc = svc.clone();
        move || {
            let (rt, template) = (runtime(), template());
            rt.block_on(drive(&mut svc, || with_body(&template), iters))
        }
    })
}

/// As [`on_threads`], but each thread drives its own stack that `build` makes: nothing is
/// shared between the threads but the machine, the control for what sharing costs.
fn on_own_threads<S>(build: impl Fn() -> S, threads: usize, iters: u64) -> Duration
where
    S: Service<Request<BoxBody>, Response = http::Response<BoxBody>> + Send + 'static,
    S::Error: std::fmt::Debug,
{
    mesh_benches::slowest_of(threads, || {
        let mut svc = build();
        move || {
            let (rt, template) = (runtime(), template());
            rt.block_on(drive(&mut svc, || with_body(&template), iters))
        }
    })
}

/// The config every stack in the bench routes by.
fn config() -> String {
    mesh_benches::one_service_yaml(1, 2, "simple: LEAST_REQUEST")
}

fn scaling(c: &mut Criterion) {
    let recorder = mesh_examples::metrics::prometheus().is_some();
    assert!(recorder, "the sidecar's recorder is installed");
    let store = store(&config());
    let workload = store.load().workload.clone();
    let telemetry = Telemetry::new(Reporter::Source, workload)
        .rng(Rng::from_entropy())
        .sampling(Percentage::from_ppm(10_000).expect("1%"))
        .spans(std::sync::Arc::new(|_span| {}));
    let plain = Outbound::builder(store.clone())
        .rng(Rng::from_entropy())
        .client(Bare)
        .build();
    let stack = Outbound::builder(store)
        .rng(Rng::from_entropy())
        .client(Bare)
        .telemetry(telemetry)
        .build();
    let mut group = c.benchmark_group("scaling");
    for threads in [1, 2] {
        group.bench_function(BenchmarkId::new("bare", threads), |b| {
            b.iter_custom(|iters| on_threads(&Bare, threads, iters));
        });
        group.bench_function(BenchmarkId::new("outbound stack", threads), |b| {
            b.iter_custom(|iters| on_threads(&plain, threads, iters));
        });
        group.bench_function(
            BenchmarkId::new("outbound stack, each thread its own", threads),
            |b| {
                b.iter_custom(|iters| {
                    let build = || {
                        Outbound::builder(mesh_benches::store(&config()))
                            .rng(Rng::from_entropy())
                            .client(Bare)
                            .build()
                    };
                    on_own_threads(build, threads, iters)
                })
            },
        );
        group.bench_function(
            BenchmarkId::new("outbound stack + telemetry", threads),
            |b| b.iter_custom(|iters| on_threads(&stack, threads, iters)),
        );
    }
    group.finish();
}

fn main() {
    let mut c = mesh_benches::criterion();
    scaling(&mut c);
    c.final_summary();
}
