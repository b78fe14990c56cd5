//! Benchmark support: generated Istio configs of a chosen size, the bare service every layer is
//! measured against, and a fixed-loop timer that prints each layer's overhead as ns/request and
//! as a ratio over the bare service.

pub mod chart;

use http::{Request, Response};
use mesh_core::model::Percentage;
use mesh_core::model::{MeshConfig, Workload};
use mesh_core::store::ConfigStore;
use mesh_tower::body::{self, BoxBody, BoxError};
use mesh_tower::outbound::Outbound;
use mesh_tower::rng::Rng;
use mesh_tower::telemetry::{Reporter, Telemetry};
use std::fmt::Write as _;
use std::future::{Ready, ready};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tower_service::Service;

/// The namespace every generated resource lives in.
pub const NAMESPACE: &str = "default";

/// The fully qualified host of generated service `i`.
pub fn host(i: usize) -> String {
    format!("svc-{i}.{NAMESPACE}.svc.cluster.local")
}

/// A `ServiceEntry` for `host(i)` with `endpoints` static endpoints (127.0.0.x:8080).
pub fn service_entry(i: usize, endpoints: usize) -> String {
    let mut y = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{ name: svc-{i}, namespace: {NAMESPACE} }}\nspec:\n  hosts: [{h}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{ number: 80, name: http, protocol: HTTP, targetPort: 8080 }}]\n  endpoints:\n",
        h = host(i)
    );
    for e in 0..endpoints {
        let _ = writeln!(
            y,
            "  - {{ address: 10.{}.{}.{}, labels: {{ version: v{} }} }}",
            (e >> 16) & 255,
            (e >> 8) & 255,
            e & 255,
            1 + e % 2
        );
    }
    y
}

/// A `DestinationRule` for `host(i)`: subsets v1/v2, `lb` (e.g. `simple: LEAST_REQUEST`),
/// outlier detection and connection-pool limits, as a production rule would have.
pub fn destination_rule(i: usize, lb: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: svc-{i}, namespace: {NAMESPACE} }}\nspec:\n  host: {h}\n  trafficPolicy:\n    loadBalancer: {{ {lb} }}\n    connectionPool:\n      tcp: {{ maxConnections: 10000 }}\n      http: {{ http1MaxPendingRequests: 10000, http2MaxRequests: 10000 }}\n    outlierDetection: {{ consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50 }}\n  subsets:\n  - {{ name: v1, labels: {{ version: v1 }} }}\n  - {{ name: v2, labels: {{ version: v2 }} }}\n",
        h = host(i)
    )
}

/// A `VirtualService` for `host(i)` with `routes` HTTP routes: route `r` matches the URI prefix
/// `/r{r}/` and a GET, splits 90/10 between the subsets, with a timeout and retries.
pub fn virtual_service(i: usize, routes: usize) -> String {
    let mut y = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: svc-{i}, namespace: {NAMESPACE} }}\nspec:\n  hosts: [{h}]\n  http:\n",
        h = host(i)
    );
    for r in 0..routes {
        let _ = write!(
            y,
            "  - name: r{r}\n    match:\n    - uri: {{ prefix: /r{r}/ }}\n      method: {{ exact: GET }}\n    route:\n    - {{ destination: {{ host: {h}, subset: v1 }}, weight: 90 }}\n    - {{ destination: {{ host: {h}, subset: v2 }}, weight: 10 }}\n    timeout: 10s\n    retries: {{ attempts: 2, retryOn: \"5xx,connect-failure\" }}\n",
            h = host(i)
        );
    }
    y
}

/// One service with `endpoints` endpoints, a `DestinationRule` with `lb` and a
/// `VirtualService` with `routes` routes.
pub fn one_service_yaml(routes: usize, endpoints: usize, lb: &str) -> String {
    [
        service_entry(0, endpoints),
        destination_rule(0, lb),
        virtual_service(0, routes),
    ]
    .join("---\n")
}

/// A config of about `resources` resources: a third each `ServiceEntry` (2 endpoints),
/// `DestinationRule` and `VirtualService` (2 routes).
pub fn many_resources_yaml(resources: usize) -> String {
    let services = resources.div_ceil(3);
    let mut docs = Vec::with_capacity(resources);
    for i in 0..services {
        docs.push(service_entry(i, 2));
        docs.push(destination_rule(i, "simple: LEAST_REQUEST"));
        docs.push(virtual_service(i, 2));
    }
    docs.truncate(resources);
    docs.join("---\n")
}

/// Loads `yaml` into a config for a default workload.
///
/// # Panics
/// If the YAML has errors: the generators above must produce valid configs.
pub fn build_config(yaml: &str) -> MeshConfig {
    let out = mesh_core::istio::load(&[("bench.yaml", yaml)], &Workload::default());
    let errors: Vec<_> = out.diagnostics.iter().filter(|d| d.is_error()).collect();
    assert!(errors.is_empty(), "bench config has errors: {errors:?}");
    out.config.expect("a config without errors")
}

/// A store serving `yaml`'s config.
pub fn store(yaml: &str) -> Arc<ConfigStore> {
    Arc::new(ConfigStore::new(build_config(yaml)))
}

/// A GET request template for `host` and `path` (clone it and [`with_body`] per request).
pub fn request(host: &str, path: &str) -> Request<()> {
    Request::builder()
        .uri(path)
        .header(http::header::HOST, host)
        .header("x-request-id", "bench-0123456789abcdef")
        .header(http::header::USER_AGENT, "mesh-bench")
        .body(())
        .expect("a valid request")
}

/// A copy of `template` with an empty body.
pub fn with_body(template: &Request<()>) -> Request<BoxBody> {
    template.clone().map(|()| body::empty())
}

/// The bare service: answers 200 with an empty body at once. As the stacks' client it stands
/// for the mesh's own, which hands the request's extensions over to the response (see
/// `mesh_tower::context::RequestContext::of_response`): so does this one.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bare;

impl<B> Service<Request<B>> for Bare {
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = Ready<Result<Response<BoxBody>, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let mut response = Response::new(body::empty());
        *response.extensions_mut() = std::mem::take(req.extensions_mut());
        ready(Ok(response))
    }
}

/// Sends `iters` requests made by `make` through `svc`, one at a time, and returns the time
/// taken. Panics if a request fails: a benchmark of an error path would measure the wrong thing.
pub async fn drive<S, F>(svc: &mut S, make: F, iters: u64) -> Duration
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>>,
    S::Error: std::fmt::Debug,
    F: Fn() -> Request<BoxBody>,
{
    let start = Instant::now();
    for _ in 0..iters {
        std::future::poll_fn(|cx| svc.poll_ready(cx))
            .await
            .expect("ready");
        let response = svc.call(make()).await.expect("a response");
        assert!(
            response.status().is_success(),
            "status {}",
            response.status()
        );
        std::hint::black_box(response);
    }
    start.elapsed()
}

/// Benches `svc` beside [`Bare`] in criterion group `{group}/{name}`, then prints its
/// overhead ([`overhead`]).
///
/// With `MESH_BENCH_COUNT=NAME:REQUESTS` set, nothing is timed: only the service named NAME
/// (`bare` for the bare service) serves REQUESTS requests, for an instruction count under
/// callgrind. Two runs with different counts give the exact cost per request, free of the
/// host's noise:
///
/// ```text
/// cargo bench -p mesh-benches --bench layers --no-run   # prints the bench executable
/// MESH_BENCH_COUNT="outbound stack:1000" valgrind --tool=callgrind target/release/deps/layers-…
/// MESH_BENCH_COUNT="outbound stack:11000" valgrind --tool=callgrind target/release/deps/layers-…
/// ```
pub fn compare<S, F>(
    c: &mut criterion::Criterion,
    rt: &tokio::runtime::Runtime,
    group: &str,
    name: &str,
    mut svc: S,
    make: F,
) where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>> + Clone,
    S::Error: std::fmt::Debug,
    F: Fn() -> Request<BoxBody> + Copy,
{
    if let Some((only, requests)) = count_only() {
        static BARE: std::sync::Once = std::sync::Once::new();
        if only == "bare" {
            BARE.call_once(|| {
                rt.block_on(drive(&mut Bare, make, requests));
            });
        } else if only == name {
            rt.block_on(drive(&mut svc, make, requests));
        }
        return;
    }
    let mut bench = c.benchmark_group(format!("{group}/{name}"));
    bench.bench_function(criterion::BenchmarkId::from_parameter("bare"), |b| {
        b.iter_custom(|iters| rt.block_on(drive(&mut Bare, make, iters)));
    });
    let mut layered = svc.clone();
    bench.bench_function(criterion::BenchmarkId::from_parameter(name), |b| {
        b.iter_custom(|iters| rt.block_on(drive(&mut layered, make, iters)));
    });
    bench.finish();
    overhead(rt, name, svc, make);
}

/// `MESH_BENCH_COUNT=NAME:REQUESTS`, when set and well formed (see [`compare`]).
pub fn count_only() -> Option<(String, u64)> {
    let spec = std::env::var("MESH_BENCH_COUNT").ok()?;
    let (name, requests) = spec.rsplit_once(':')?;
    Some((name.to_owned(), requests.trim().parse().ok()?))
}

/// Whether the bench binary runs as a benchmark (`cargo bench`), not as a test
/// (`cargo test --benches` runs each bench once), and whether criterion's `--quick` is on.
pub fn mode() -> (bool, bool) {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let quick = args.iter().any(|a| a == "--quick");
    (bench, quick)
}

/// How many requests one overhead measurement sends: many under `cargo bench`, fewer with
/// `--quick`, a handful as a test.
pub fn loop_len() -> u64 {
    match mode() {
        (false, _) => 100,
        (true, true) => 20_000,
        (true, false) => 200_000,
    }
}

/// One line of the overhead table.
#[derive(Clone, Debug)]
pub struct Overhead {
    /// What was measured.
    pub name: String,
    /// Its time per request.
    pub ns_per_req: f64,
    /// The bare service's time per request, measured in the same run.
    pub bare_ns_per_req: f64,
}

impl Overhead {
    /// The layer's time over the bare service's.
    pub fn ratio(&self) -> f64 {
        self.ns_per_req / self.bare_ns_per_req
    }

    /// The time the layer adds per request.
    pub fn added_ns(&self) -> f64 {
        self.ns_per_req - self.bare_ns_per_req
    }
}

static TABLE: Mutex<Vec<Overhead>> = Mutex::new(Vec::new());

/// Times `svc` and the bare service in alternating rounds (11 each, the fastest round counts,
/// so a noisy neighbour inflates neither), prints `name: X ns/req, ratio Y` and records it for
/// [`print_table`].
pub fn overhead<S, F>(rt: &tokio::runtime::Runtime, name: &str, mut svc: S, make: F) -> Overhead
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>>,
    S::Error: std::fmt::Debug,
    F: Fn() -> Request<BoxBody>,
{
    let n = loop_len();
    let mut bare = Bare;
    let (mut best, mut best_bare) = (Duration::MAX, Duration::MAX);
    rt.block_on(async {
        // Warm-up: fill caches, create per-cluster state.
        drive(&mut svc, &make, n / 10 + 1).await;
        for _ in 0..11 {
            best_bare = best_bare.min(drive(&mut bare, &make, n).await);
            best = best.min(drive(&mut svc, &make, n).await);
        }
    });
    let per = |d: Duration| d.as_nanos() as f64 / n as f64;
    let o = Overhead {
        name: name.to_owned(),
        ns_per_req: per(best),
        bare_ns_per_req: per(best_bare),
    };
    println!(
        "{}: {:.0} ns/req, ratio {:.2} (bare {:.0} ns/req, +{:.0} ns)",
        o.name,
        o.ns_per_req,
        o.ratio(),
        o.bare_ns_per_req,
        o.added_ns()
    );
    TABLE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(o.clone());
    o
}

/// Prints every recorded [`overhead`] as a markdown table.
pub fn print_table(title: &str) {
    let table = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    println!("\n### {title} ({} requests per round)\n", loop_len());
    println!("| what | ns/req | bare ns/req | added ns | ratio |\n|---|---|---|---|---|");
    for o in table.iter() {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.2} |",
            o.name,
            o.ns_per_req,
            o.bare_ns_per_req,
            o.added_ns(),
            o.ratio()
        );
    }
}

/// The sidecar's outbound service over the bare service instead of the upstream client: every
/// layer from the route to the balancer, errors turned into responses at the edge, with
/// `telemetry` when given.
pub fn outbound(store: Arc<ConfigStore>, telemetry: Option<Telemetry>) -> Outbound<Bare> {
    let builder = Outbound::builder(store).rng(Rng::with_seed(1)).client(Bare);
    match telemetry {
        Some(telemetry) => builder.telemetry(telemetry).build(),
        None => builder.build(),
    }
}

/// Telemetry as the sidecar's edge runs it for `workload`: Istio's labels and metrics (the
/// cost of building them: no recorder is installed), trace context, request id; a sampled
/// share of `percent` of the spans goes to a sink that drops them.
pub fn telemetry(workload: Workload, percent: f64) -> Telemetry {
    Telemetry::new(Reporter::Source, workload)
        .rng(Rng::with_seed(1))
        .sampling(Percentage::from_percent_f64(percent).expect("a percentage"))
        .spans(Arc::new(|_span| {}))
}

/// Runs the work `make` gives on each of `threads` threads, started together, and returns the
/// slowest thread's time (each piece of work times itself): a cost per operation of each
/// thread, for what threads sharing state pay.
pub fn slowest_of<W>(threads: usize, make: impl Fn() -> W) -> Duration
where
    W: FnOnce() -> Duration + Send + 'static,
{
    let start = Arc::new(std::sync::Barrier::new(threads));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (work, start) = (make(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                work()
            })
        })
        .collect();
    workers
        .into_iter()
        .map(|w| w.join().expect("a bench thread"))
        .max()
        .unwrap_or_default()
}

/// A current-thread runtime with timers, as one sidecar worker has.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Criterion settings that keep the whole suite to a few minutes (and `--quick` to well under
/// one); command-line flags still override them.
pub fn criterion() -> criterion::Criterion {
    criterion::Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
        .configure_from_args()
}
