//! The balancer over 1,000 endpoints: P2C least-request, round robin, ring hash and Maglev
//! (through `BalanceLayer`, beside the bare service), the bare ring / Maglev table lookups, the
//! circuit breaker's per-request cost, and a random draw (the balancer's pick, trace ids) on one
//! thread and on two at once.

use criterion::{BenchmarkId, Criterion};
use http::Request;
use mesh_benches::{Bare, drive, host, one_service_yaml, overhead, request, runtime, with_body};
use mesh_core::model::ClusterName;
use mesh_tower::balance::{BalanceLayer, Table, hash64};
use mesh_tower::breaker::BreakerLayer;
use mesh_tower::context::RequestContext;
use mesh_tower::rng::Rng;
use mesh_tower::split::Target;
use std::hint::black_box;
use tower::Layer;

// The sidecar's allocator, for the bare service and the stack alike (as in `layers.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ENDPOINTS: usize = 1_000;

/// A request template carrying the `Target` of `lb`'s 1,000-endpoint cluster.
fn targeted(lb: &str) -> Request<()> {
    let store = mesh_benches::store(&one_service_yaml(1, ENDPOINTS, lb));
    let snapshot = store.load();
    let host0 = host(0);
    let cluster = snapshot
        .cluster(&ClusterName::outbound(80, None, &host0))
        .expect("the service's cluster")
        .clone();
    assert_eq!(cluster.endpoints.len(), ENDPOINTS);
    let mut r = request(&host0, "/r0/items/42");
    r.headers_mut()
        .insert("x-user", http::HeaderValue::from_static("user-12345"));
    RequestContext::of_mut(&mut r).target = Some(Target { cluster });
    r
}

fn balancers(c: &mut Criterion) {
    let rt = runtime();
    let cases: Vec<(&str, Request<()>)> = vec![
        ("P2C least-request", targeted("simple: LEAST_REQUEST")),
        ("round robin", targeted("simple: ROUND_ROBIN")),
        (
            "ring hash (header)",
            targeted(
                "consistentHash: { httpHeaderName: x-user, ringHash: { minimumRingSize: 4096 } }",
            ),
        ),
        (
            "maglev (header)",
            targeted("consistentHash: { httpHeaderName: x-user, maglev: { tableSize: 65537 } }"),
        ),
    ];
    let mut group = c.benchmark_group(format!("balance/{ENDPOINTS} endpoints"));
    let first = &cases[0].1;
    group.bench_function(BenchmarkId::from_parameter("bare"), |b| {
        b.iter_custom(|iters| rt.block_on(drive(&mut Bare, || with_body(first), iters)));
    });
    for (name, template) in &cases {
        let mut svc = BalanceLayer::new(Rng::with_seed(1)).layer(Bare);
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| rt.block_on(drive(&mut svc, || with_body(template), iters)));
        });
    }
    let mut breaker = BreakerLayer::new().layer(Bare);
    group.bench_function(BenchmarkId::from_parameter("breaker"), |b| {
        b.iter_custom(|iters| rt.block_on(drive(&mut breaker, || with_body(first), iters)));
    });
    group.finish();
    for (name, template) in &cases {
        overhead(
            &rt,
            &format!("{name}, {ENDPOINTS} endpoints"),
            BalanceLayer::new(Rng::with_seed(1)).layer(Bare),
            || with_body(template),
        );
    }
    overhead(&rt, "breaker", BreakerLayer::new().layer(Bare), || {
        with_body(first)
    });
}

fn tables(c: &mut Criterion) {
    let endpoints: Vec<(String, u32)> = (0..ENDPOINTS)
        .map(|i| (format!("10.0.{}.{}:8080", i / 256, i % 256), 1))
        .collect();
    let ring = Table::ring(&endpoints, 4096);
    let maglev = Table::maglev(&endpoints, 65_537);
    let mut group = c.benchmark_group(format!("table/{ENDPOINTS} endpoints"));
    let mut key = 0u64;
    group.bench_function("hash64 of a key", |b| {
        b.iter(|| {
            key = key.wrapping_add(1);
            black_box(hash64(black_box(key)))
        });
    });
    group.bench_function("ring lookup", |b| {
        b.iter(|| {
            key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
            black_box(ring.lookup(black_box(key)))
        });
    });
    group.bench_function("maglev lookup", |b| {
        b.iter(|| {
            key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
            black_box(maglev.lookup(black_box(key)))
        });
    });
    group.sample_size(10);
    group.bench_function("ring build", |b| {
        b.iter(|| black_box(Table::ring(&endpoints, 4096)));
    });
    group.bench_function("maglev build", |b| {
        b.iter(|| black_box(Table::maglev(&endpoints, 65_537)));
    });
    group.finish();
}

/// A draw from a seeded generator (one atomic counter shared by every thread) beside one from
/// entropy (each thread's own state), alone and with two threads drawing at once: the time
/// is per draw of each thread.
fn draws(c: &mut Criterion) {
    let mut group = c.benchmark_group("rng draw");
    for (name, rng) in [
        ("seeded (shared)", Rng::with_seed(1)),
        ("from entropy (per thread)", Rng::from_entropy()),
    ] {
        group.bench_function(BenchmarkId::new("1 thread", name), |b| {
            b.iter(|| black_box(rng.next_u64()));
        });
        group.bench_function(BenchmarkId::new("2 threads", name), |b| {
            b.iter_custom(|iters| {
                let run = |rng: Rng| {
                    move || {
                        let started = tokio::time::Instant::now();
                        for _ in 0..iters {
                            black_box(rng.next_u64());
                        }
                        started.elapsed()
                    }
                };
                mesh_benches::slowest_of(2, || run(rng.clone()))
            });
        });
    }
    group.finish();
}

fn main() {
    let mut c = mesh_benches::criterion();
    balancers(&mut c);
    tables(&mut c);
    draws(&mut c);
    c.final_summary();
    mesh_benches::print_table("balancer overhead over the bare service");
}
