//! Resilience through the sidecar against real upstreams: outlier ejection with retries, a
//! killed endpoint, circuit-breaker overflow, consistent hashing, locality failover.

mod common;

use common::*;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mesh_examples::proxy::Proxy;
use mesh_tower::body::{self, BoxBody};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// An upstream answering `status` (500 while `failing`), counting requests, that can be
/// killed: its listener and every open connection close at once.
struct Killable {
    upstream: Upstream,
    hits: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    tasks: Arc<std::sync::Mutex<JoinSet<()>>>,
}

impl Killable {
    async fn start(name: &str, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let tasks = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let (reply, h, f, t) = (
            name.to_owned(),
            hits.clone(),
            failing.clone(),
            tasks.clone(),
        );
        tasks.lock().unwrap().spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let (reply, h, f) = (reply.clone(), h.clone(), f.clone());
                let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    h.fetch_add(1, Ordering::SeqCst);
                    let (reply, fail) = (reply.clone(), f.load(Ordering::SeqCst));
                    async move {
                        tokio::time::sleep(delay).await;
                        let mut response = Response::new(body::full(reply));
                        if fail {
                            *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        Ok::<Response<BoxBody>, Infallible>(response)
                    }
                });
                t.lock().unwrap().spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            upstream: Upstream {
                addr,
                name: name.to_owned(),
            },
            hits,
            failing,
            tasks,
        }
    }

    fn kill(&self) {
        self.tasks.lock().unwrap().abort_all();
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn rules(policy: &str, vs_rule: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: hello-policy }}
spec:
  host: hello
  trafficPolicy:
{policy}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: hello }}
spec:
  hosts: [hello]
  http:
  - {vs_rule}
    route: [{{ destination: {{ host: hello }} }}]
"
    )
}

/// The registry without the DestinationRule (the policy comes in `rules`).
fn service_only(upstreams: &[&Upstream], localities: &[&str]) -> String {
    let mut endpoints = String::new();
    for (i, u) in upstreams.iter().enumerate() {
        let locality = localities
            .get(i)
            .map(|l| format!(", locality: {l}"))
            .unwrap_or_default();
        endpoints.push_str(&format!(
            "  - {{ address: 127.0.0.1, ports: {{ http: {} }}, labels: {{ version: {} }}{locality} }}\n",
            u.addr.port(),
            u.name
        ));
    }
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: hello }}
spec:
  hosts: [hello.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  endpoints:
{endpoints}"
    )
}

const OUTLIERS: &str = "    outlierDetection: { consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50 }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_and_retries_hide_it() {
    let (a, b, c) = (
        Killable::start("a", Duration::ZERO).await,
        Killable::start("b", Duration::ZERO).await,
        Killable::start("bad", Duration::ZERO).await,
    );
    c.failing.store(true, Ordering::SeqCst);
    let yaml = service_only(&[&a.upstream, &b.upstream, &c.upstream], &[])
        + &rules(OUTLIERS, "retries: { attempts: 2, retryOn: 5xx }");
    let config = ConfigDir::new(&yaml);
    let proxy = start_proxy(&config).await;
    let client = client(proxy.outbound, false);
    let first = tally(&client, 1_000, 8).await;
    let bad_hits = c.hits();
    let rest = tally(&client, 4_000, 8).await;
    let ok = first.get("a").unwrap_or(&0)
        + first.get("b").unwrap_or(&0)
        + rest.get("a").unwrap_or(&0)
        + rest.get("b").unwrap_or(&0);
    assert!(
        ok * 1_000 >= 5_000 * 999,
        "{ok} of 5,000 succeeded: {first:?} {rest:?}"
    );
    assert!(
        bad_hits <= 10,
        "ejected after 3 consecutive 5xx: {bad_hits} hits"
    );
    assert_eq!(
        c.hits(),
        bad_hits,
        "no traffic to the ejected endpoint after ejection"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_endpoint_costs_no_request() {
    let (a, b, c) = (
        Killable::start("a", Duration::ZERO).await,
        Killable::start("b", Duration::ZERO).await,
        Killable::start("c", Duration::ZERO).await,
    );
    let yaml = service_only(&[&a.upstream, &b.upstream, &c.upstream], &[])
        + &rules(
            OUTLIERS,
            "retries: { attempts: 2, retryOn: \"connect-failure,reset,5xx\" }",
        );
    let config = ConfigDir::new(&yaml);
    let proxy = start_proxy(&config).await;
    let client = client(proxy.outbound, false);
    let before = tally(&client, 1_500, 8).await;
    assert_eq!(before.len(), 3, "all three serve: {before:?}");
    c.kill();
    let after = tally(&client, 3_500, 8).await;
    let failed: usize = after
        .iter()
        .filter(|(k, _)| k.starts_with("status"))
        .map(|(_, v)| v)
        .sum();
    assert!(failed <= 3, "{failed} failures after the kill: {after:?}");
    assert!(!after.contains_key("c"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_default_retries_send_a_refused_connects_request_to_the_live_endpoint() {
    let dead = dead_upstream("dead");
    let live = Killable::start("live", Duration::ZERO).await;
    // Round robin: the tries take turns, so every first try goes to the dead endpoint. No `retries` in the
    // route: Istio's default (2 attempts on connect-failure,refused-stream,unavailable,
    // cancelled), which keeps no copy of the request; the retry sends the one the client gave
    // back when its connect was refused.
    let yaml = service_only(&[&dead, &live.upstream], &[])
        + &rules(
            "    loadBalancer: { simple: ROUND_ROBIN }\n",
            "name: default-retries",
        );
    let config = ConfigDir::new(&yaml);
    let proxy = start_proxy(&config).await;
    let client = client(proxy.outbound, false);
    // Three requests, three retries: within the retry budget's floor.
    let answers = tally(&client, 3, 1).await;
    assert_eq!(answers.get("live"), Some(&3), "{answers:?}");
    assert_eq!(live.hits(), 3);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_answers_503_at_once_and_nothing_hangs() {
    let slow = Killable::start("slow", Duration::from_millis(800)).await;
    let pool = "    connectionPool: { tcp: { maxConnections: 1 }, http: { http1MaxPendingRequests: 1 } }\n";
    let yaml = service_only(&[&slow.upstream], &[]) + &rules(pool, "retries: { attempts: 0 }");
    let config = ConfigDir::new(&yaml);
    let proxy = start_proxy(&config).await;
    let client = client(proxy.outbound, false);
    let started = tokio::time::Instant::now();
    let requests = (0..10).map(|_| {
        let client = client.clone();
        async move {
            let (status, body, _) = get(&client, "hello", "/", &[]).await;
            (status, body, started.elapsed())
        }
    });
    let results = futures_util::future::join_all(requests).await;
    let ok: Vec<_> = results.iter().filter(|r| r.0 == 200).collect();
    let overflowed: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!((ok.len(), overflowed.len()), (2, 8), "{results:?}");
    for (_, body, at) in &overflowed {
        assert!(body.contains("upstream overflow"), "{body}");
        assert!(
            *at < Duration::from_millis(400),
            "an overflow waited {at:?}"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_keeps_reaching_one_endpoint() {
    let ups: Vec<Killable> = futures_util::future::join_all(
        (0..4).map(|i| Killable::start(["a", "b", "c", "d"][i], Duration::ZERO)),
    )
    .await;
    let refs: Vec<&Upstream> = ups.iter().map(|k| &k.upstream).collect();
    let lb = "    loadBalancer: { consistentHash: { httpHeaderName: x-user, maglev: { tableSize: 65537 } } }\n";
    let config = ConfigDir::new(&(service_only(&refs, &[]) + &rules(lb, "timeout: 5s")));
    let proxy = start_proxy(&config).await;
    let client = client(proxy.outbound, false);
    for user in ["alice", "bob", "carol"] {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..500 {
            seen.insert(get(&client, "hello", "/", &[("x-user", user)]).await.1);
        }
        assert_eq!(seen.len(), 1, "{user} reached {seen:?}");
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_stays_local_and_fails_over_to_the_other_region() {
    let east = [
        Killable::start("east-1", Duration::ZERO).await,
        Killable::start("east-2", Duration::ZERO).await,
    ];
    let west = [
        Killable::start("west-1", Duration::ZERO).await,
        Killable::start("west-2", Duration::ZERO).await,
    ];
    let refs = [
        &east[0].upstream,
        &east[1].upstream,
        &west[0].upstream,
        &west[1].upstream,
    ];
    let policy = "    outlierDetection: { consecutive5xxErrors: 1, baseEjectionTime: 60s, maxEjectionPercent: 100 }\n    loadBalancer: { localityLbSetting: { enabled: true, failover: [{ from: us-east, to: eu-west }] } }\n";
    let yaml = service_only(&refs, &["us-east/a", "us-east/a", "eu-west/b", "eu-west/b"])
        + &rules(
            policy,
            "retries: { attempts: 3, retryOn: \"connect-failure,reset,5xx\" }",
        );
    let config = ConfigDir::new(&yaml);
    let mut options = test_options(vec![config.path()]);
    options.workload.locality = mesh_core::model::Locality::parse("us-east/a");
    options.seed = Some(3);
    let proxy = Proxy::start(options).await.unwrap();
    let client = client(proxy.outbound, false);
    let local = tally(&client, 2_000, 8).await;
    let local_share =
        (local.get("east-1").unwrap_or(&0) + local.get("east-2").unwrap_or(&0)) as f64 / 2_000.0;
    assert!(local_share >= 0.99, "{local:?}");
    east.iter().for_each(Killable::kill);
    let failover = tally(&client, 2_000, 8).await;
    let failed: usize = failover
        .iter()
        .filter(|(k, _)| k.starts_with("status"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(failed, 0, "{failover:?}");
    assert!(
        failover.keys().all(|k| k.starts_with("west")),
        "{failover:?}"
    );
    proxy.shutdown().await;
}
