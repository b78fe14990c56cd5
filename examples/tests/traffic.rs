//! Traffic management through the sidecar against real upstreams: retries, faults, mirroring.

mod common;

use common::*;
use http::{Request, Response};
use hyper::body::Incoming;
use mesh_tower::body::{self, BoxBody};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An upstream that answers with `status(request)` and records each request's `Host`.
async fn scripted(
    name: &str,
    status: impl Fn(&Request<Incoming>) -> u16 + Send + Sync + 'static,
) -> (Upstream, Arc<Mutex<Vec<String>>>) {
    let hosts = Arc::new(Mutex::new(Vec::new()));
    let (reply, seen, status) = (name.to_owned(), hosts.clone(), Arc::new(status));
    let service = tower::service_fn(move |req: Request<Incoming>| {
        let host = req
            .headers()
            .get("host")
            .map(|h| h.to_str().unwrap_or("").to_owned())
            .unwrap_or_default();
        seen.lock().unwrap().push(host);
        let mut response = Response::new(body::full(reply.clone()));
        *response.status_mut() = http::StatusCode::from_u16(status(&req)).unwrap();
        std::future::ready(Ok::<Response<BoxBody>, Infallible>(response))
    });
    (serve_upstream(name, service).await, hosts)
}

fn vs(http: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: hello }}\nspec:\n  hosts: [hello]\n  http:\n{http}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_upstream_is_hidden_by_retries_and_exposed_without_them() {
    // Fails the first try of every tenth request (the sidecar numbers tries in
    // x-envoy-attempt-count); a tenth of the load stays inside the default 20% retry budget.
    let first_tries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (flaky, _) = scripted("v1", move |req| {
        let first = req
            .headers()
            .get("x-envoy-attempt-count")
            .is_none_or(|v| v == "1");
        let n = if first {
            first_tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        } else {
            1
        };
        if first && n % 10 == 0 { 503 } else { 200 }
    })
    .await;
    for (retries, expected_failures) in [
        ("{ attempts: 2, retryOn: 5xx }", 0),
        ("{ attempts: 0 }", 100),
    ] {
        let rules = vs(&format!(
            "  - retries: {retries}\n    route: [{{ destination: {{ host: hello, subset: v1 }} }}]\n"
        ));
        let config = ConfigDir::new(&(registry(&[&flaky]) + &rules));
        let proxy = start_proxy(&config).await;
        let counts = tally(&client(proxy.outbound, false), 1_000, 8).await;
        let failures = counts.get("status 503").copied().unwrap_or(0);
        assert_eq!(failures, expected_failures, "retries {retries}: {counts:?}");
        assert_eq!(counts.get("v1").copied().unwrap_or(0) + failures, 1_000);
        proxy.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_split_holds_with_faults_and_mirroring_on_and_the_mirror_gets_its_share() {
    let v1 = upstream("v1", Duration::ZERO).await;
    let v2 = upstream("v2", Duration::ZERO).await;
    let (shadow, shadow_hosts) = scripted("shadow", |_| 200).await;
    let mirror_entry = format!(
        "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: mirror }}
spec:
  hosts: [mirror.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  endpoints: [{{ address: 127.0.0.1, ports: {{ http: {} }} }}]
",
        shadow.addr.port()
    );
    let rules = vs("  - fault:
      delay: { fixedDelay: 1ms, percentage: { value: 5 } }
      abort: { httpStatus: 418, percentage: { value: 2.5 } }
    mirror: { host: mirror }
    mirrorPercentage: { value: 30 }
    route:
    - { destination: { host: hello, subset: v1 }, weight: 90 }
    - { destination: { host: hello, subset: v2 }, weight: 10 }
");
    let config = ConfigDir::new(&(registry(&[&v1, &v2]) + &mirror_entry + &rules));
    let proxy = start_proxy(&config).await;
    let counts = tally(&client(proxy.outbound, false), 5_000, 8).await;
    let aborted = percent(&counts, "status 418");
    assert!(
        (1.5..=3.5).contains(&aborted),
        "aborts {aborted}%: {counts:?}"
    );
    let forwarded = (counts["v1"] + counts["v2"]) as f64;
    let v1_share = 100.0 * counts["v1"] as f64 / forwarded;
    assert!(
        (88.0..=92.0).contains(&v1_share),
        "v1 got {v1_share}% of forwarded: {counts:?}"
    );

    // Shadows are fire-and-forget: give the last ones a moment to land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hosts = shadow_hosts.lock().unwrap().clone();
    let mirrored = 100.0 * hosts.len() as f64 / forwarded;
    assert!(
        (28.0..=32.0).contains(&mirrored),
        "mirrored {mirrored}% ({} of {forwarded})",
        hosts.len()
    );
    assert!(
        hosts.iter().all(|h| h == "hello-shadow"),
        "{:?}",
        &hosts[..3.min(hosts.len())]
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_timeout_answers_504() {
    let slow = upstream("v1", Duration::from_secs(5)).await;
    let config = ConfigDir::new(
        &(registry(&[&slow])
            + &vs("  - timeout: 200ms\n    route: [{ destination: { host: hello } }]\n")),
    );
    let proxy = start_proxy(&config).await;
    let started = tokio::time::Instant::now();
    let (status, body, _) = get(&client(proxy.outbound, false), "hello", "/", &[]).await;
    assert_eq!((status, body.as_str()), (504, "upstream request timeout"));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered at the timeout, not the upstream's pace"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_route_answers_429_past_its_burst() {
    let v1 = upstream("v1", Duration::ZERO).await;
    let annotated = "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: hello
  annotations: { ratelimit.mesh.io/requests-per-second: \"1\", ratelimit.mesh.io/burst: \"5\" }
spec:
  hosts: [hello]
  http:
  - route: [{ destination: { host: hello } }]
";
    let config = ConfigDir::new(&(registry(&[&v1]) + annotated));
    let proxy = start_proxy(&config).await;
    let c = client(proxy.outbound, false);
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..8 {
        let (status, _, headers) = get(&c, "hello", "/", &[]).await;
        statuses.push(status);
        last = Some(headers);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    let headers = last.unwrap();
    assert_eq!(headers["x-ratelimit-limit"], "5");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    proxy.shutdown().await;
}
