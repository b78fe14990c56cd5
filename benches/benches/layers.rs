//! Each mesh-tower layer alone, and the outbound stack down to the balancer, beside the bare
//! service in the same criterion group; afterwards a fixed loop per layer prints the overhead as
//! ns/request and as a ratio over the bare service (`layer: X ns/req, ratio Y`).
//!
//! In-process, no network: the innermost service answers at once.

use criterion::Criterion;
use http::{Request, Response};
use mesh_benches::{Bare, compare, host, one_service_yaml, request, runtime, with_body};
use mesh_core::model::{
    AbortError, ClusterName, Fault, FaultAbort, LocalRateLimit, Percentage, RetryPolicy,
};
use mesh_tower::balance::BalanceLayer;
use mesh_tower::body::BoxBody;
use mesh_tower::breaker::BreakerLayer;
use mesh_tower::context::RequestContext;
use mesh_tower::fault::FaultLayer;
use mesh_tower::mirror::MirrorLayer;
use mesh_tower::ratelimit::RateLimitLayer;
use mesh_tower::retry::RetryLayer;
use mesh_tower::rng::Rng;
use mesh_tower::route::RouteLayer;
use mesh_tower::split::{SplitLayer, Target};
use mesh_tower::telemetry::{RequestBody, TelemetryLayer};
use mesh_tower::timeout::TimeoutLayer;
use std::time::Duration;
use tower::{Layer, ServiceBuilder};

// The sidecar's allocator, for the bare service and the layers alike: the ratios are about the
// layers' work as the sidecar runs it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn layers(c: &mut Criterion) {
    let rt = runtime();
    let store = mesh_benches::store(&one_service_yaml(1, 2, "simple: LEAST_REQUEST"));
    let snapshot = store.load();
    let host0 = host(0);
    let template = request(&host0, "/r0/items/42");
    let plain = move || with_body(&template);
    // The layers below the split find their cluster in the request's context (`Target`).
    let cluster = snapshot
        .cluster(&ClusterName::outbound(80, Some("v1"), &host0))
        .expect("cluster v1")
        .clone();
    let targeted_template = {
        let mut r = request(&host0, "/r0/items/42");
        RequestContext::of_mut(&mut r).target = Some(Target {
            cluster: cluster.clone(),
        });
        r
    };
    let targeted = move || with_body(&targeted_template);
    // Leak the closures' captures into 'static Copy closures: `compare` runs each many times.
    let plain: &'static _ = Box::leak(Box::new(plain));
    let targeted: &'static _ = Box::leak(Box::new(targeted));
    let plain = || plain();
    let targeted = || targeted();

    compare(
        c,
        &rt,
        "layer",
        "route",
        RouteLayer::new(store.clone()).layer(Bare),
        plain,
    );
    compare(
        c,
        &rt,
        "layer",
        "route+split",
        ServiceBuilder::new()
            .layer(RouteLayer::new(store.clone()))
            .layer(SplitLayer::new(Rng::with_seed(1)))
            .service(Bare),
        plain,
    );
    compare(
        c,
        &rt,
        "layer",
        "ratelimit",
        RateLimitLayer::fixed(LocalRateLimit {
            max_tokens: u32::MAX,
            tokens_per_fill: u32::MAX,
            fill_interval: Duration::from_secs(1),
        })
        .layer(Bare),
        plain,
    );
    compare(
        c,
        &rt,
        "layer",
        "fault(abort 0%)",
        FaultLayer::fixed(
            Fault {
                delay: None,
                abort: Some(FaultAbort {
                    error: AbortError::Http(503),
                    percentage: Percentage::NONE,
                }),
            },
            Rng::with_seed(1),
        )
        .layer(Bare),
        plain,
    );
    compare(
        c,
        &rt,
        "layer",
        "mirror(0%)",
        MirrorLayer::to(Bare, Percentage::NONE, Rng::with_seed(1)).layer(Bare),
        plain,
    );
    compare(
        c,
        &rt,
        "layer",
        "timeout(10s)",
        TimeoutLayer::fixed(Duration::from_secs(10)).layer(Bare),
        plain,
    );
    compare(
        c,
        &rt,
        "layer",
        "retry(2 attempts)",
        RetryLayer::fixed(RetryPolicy::istio_default()).layer(Bare),
        plain,
    );
    compare(
        c,
        &rt,
        "layer",
        "breaker",
        BreakerLayer::new().layer(Bare),
        targeted,
    );
    compare(
        c,
        &rt,
        "layer",
        "balance(P2C, 1 endpoint)",
        BalanceLayer::new(Rng::with_seed(1)).layer(Bare),
        targeted,
    );

    // The sidecar's outbound service, every layer from the route to the balancer, over the
    // bare service instead of the upstream client; then the same with telemetry at its edge.
    let outbound = mesh_benches::outbound(store.clone(), None);
    compare(c, &rt, "layer", "outbound stack", outbound, plain);
    let with_telemetry = mesh_benches::telemetry(snapshot.workload.clone(), 0.0);
    let outbound = mesh_benches::outbound(store.clone(), Some(with_telemetry));
    compare(
        c,
        &rt,
        "layer",
        "outbound stack + telemetry (sampling 0%)",
        outbound,
        plain,
    );

    // The same, on a route without `retries` (Istio's default policy: only tries the upstream
    // never saw are retried, so no copy of the request is kept) and W3C trace context only
    // (`OTEL_PROPAGATORS=tracecontext`).
    let without_retries = one_service_yaml(1, 2, "simple: LEAST_REQUEST").replace(
        "    retries: { attempts: 2, retryOn: \"5xx,connect-failure\" }\n",
        "",
    );
    assert!(
        !without_retries.contains("retries"),
        "the route's retries removed"
    );
    let istio_default = mesh_benches::store(&without_retries);
    let w3c = mesh_benches::telemetry(snapshot.workload.clone(), 0.0)
        .propagators("tracecontext".parse().expect("a propagator list"));
    compare(
        c,
        &rt,
        "layer",
        "outbound stack, Istio default retries + telemetry (W3C only)",
        mesh_benches::outbound(istio_default, Some(w3c)),
        plain,
    );

    // Telemetry at a stack's edge: Istio's labels and metrics (no recorder installed: the cost
    // of building them), trace context, request id; spans to a sink that drops them.
    let answer = tower::service_fn(|_req: Request<RequestBody<BoxBody>>| async {
        Ok::<_, std::convert::Infallible>(Response::new(mesh_tower::body::empty()))
    });
    for (name, percent) in [
        ("telemetry (sampling 0%)", 0.0),
        ("telemetry (sampling 1%)", 1.0),
    ] {
        let telemetry = mesh_benches::telemetry(snapshot.workload.clone(), percent);
        compare(
            c,
            &rt,
            "layer",
            name,
            TelemetryLayer::new(telemetry).layer(answer),
            plain,
        );
    }

    // Mirroring every request: the caller-side cost (buffering, the shadow copy, the spawn).
    // The shadows run on a worker thread, so this one uses a multi-thread runtime.
    let mt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    compare(
        c,
        &mt,
        "layer",
        "mirror(100%)",
        MirrorLayer::to(Bare, Percentage::ALL, Rng::with_seed(1)).layer(Bare),
        plain,
    );
}

fn main() {
    let mut c = mesh_benches::criterion();
    layers(&mut c);
    c.final_summary();
    mesh_benches::print_table("layer overhead over the bare service");
}
