//! Route matching over 10 / 100 / 1,000 routes (the request matches the last route, the worst
//! case of the first-match scan), each beside the bare service; and loading a 1,000-resource
//! Istio config from YAML.

use criterion::{BenchmarkId, Criterion};
use mesh_benches::{
    Bare, drive, host, many_resources_yaml, one_service_yaml, overhead, request, runtime, with_body,
};
use mesh_core::model::Workload;
use mesh_tower::route::RouteLayer;
use std::hint::black_box;
use std::time::Duration;
use tokio::time::Instant;
use tower::Layer;

// The sidecar's allocator, for the bare service and the stack alike (as in `layers.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn route_matching(c: &mut Criterion) {
    let rt = runtime();
    let host0 = host(0);
    let mut group = c.benchmark_group("route/match");
    let template = request(&host0, "/r0/x");
    let make = || with_body(&template);
    group.bench_function(BenchmarkId::new("bare", 0), |b| {
        b.iter_custom(|iters| rt.block_on(drive(&mut Bare, make, iters)));
    });
    let mut services = Vec::new();
    for n in [10usize, 100, 1_000] {
        let store = mesh_benches::store(&one_service_yaml(n, 2, "simple: LEAST_REQUEST"));
        let svc = RouteLayer::new(store).layer(Bare);
        let template = request(&host0, &format!("/r{}/items/42", n - 1));
        let mut layered = svc.clone();
        group.bench_function(BenchmarkId::new("routes", n), |b| {
            b.iter_custom(|iters| rt.block_on(drive(&mut layered, || with_body(&template), iters)));
        });
        services.push((n, svc, template));
    }
    group.finish();
    for (n, svc, template) in services {
        overhead(
            &rt,
            &format!("route match, {n} routes (last matches)"),
            svc,
            || with_body(&template),
        );
    }
}

fn yaml_load(c: &mut Criterion) {
    let yaml = many_resources_yaml(1_000);
    let mut group = c.benchmark_group("istio/load");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    group.bench_function(BenchmarkId::new("resources", 1_000), |b| {
        b.iter(|| {
            let out = mesh_core::istio::load(&[("bench.yaml", &yaml)], &Workload::default());
            black_box(out.config.expect("a valid config"))
        });
    });
    group.finish();
    // One timed load for the summary.
    let start = Instant::now();
    let out = mesh_core::istio::load(&[("bench.yaml", &yaml)], &Workload::default());
    let elapsed = start.elapsed();
    let config = out.config.expect("a valid config");
    println!(
        "istio load of 1,000 resources ({} KiB YAML): {:.1} ms ({} clusters, {} virtual hosts)",
        yaml.len() / 1024,
        elapsed.as_secs_f64() * 1e3,
        config.clusters.len(),
        config.routes.virtual_hosts().len()
    );
}

fn main() {
    let mut c = mesh_benches::criterion();
    route_matching(&mut c);
    yaml_load(&mut c);
    c.final_summary();
    mesh_benches::print_table("route matching overhead over the bare service");
}
