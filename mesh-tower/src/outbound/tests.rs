//! The outbound stack against real hyper servers on 127.0.0.1.

use super::*;
use crate::context::RequestContext;
use crate::error::ProxyError;
use crate::retry::Unsent;
use crate::testing::{self, Protocol};
use http::StatusCode;
use mesh_core::model::Workload;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;
use tower::ServiceExt;

/// What an upstream saw of one try: the request's `x-test-id`, the try number and every
/// `x-v` value it carried.
#[derive(Clone, Debug)]
struct Seen {
    id: String,
    attempt: u32,
    x_v: Vec<String>,
}

type Log = Arc<Mutex<Vec<(u16, Seen)>>>;

fn seen<B>(req: &Request<B>) -> Seen {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    Seen {
        id: header("x-test-id").unwrap_or_default(),
        attempt: header("x-envoy-attempt-count").map_or(1, |v| v.parse().unwrap()),
        x_v: req
            .headers()
            .get_all("x-v")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect(),
    }
}

/// An HTTP/1.1 upstream answering try `n` with `status(n)`, logging each try under its port.
async fn upstream(log: Log, status: fn(u32) -> u16) -> u16 {
    let listener = testing::listener().await;
    let port = listener.local_addr().unwrap().port();
    testing::serve(listener, Protocol::Http1, move |req| {
        let seen = seen(&req);
        let mut response = Response::new(body::empty());
        *response.status_mut() = StatusCode::from_u16(status(seen.attempt)).unwrap();
        log.lock().unwrap().push((port, seen));
        std::future::ready(response)
    });
    port
}

/// `hello` split 50/50 between services `v1` and `v2` (on `ports`), each destination adding
/// `x-v: <its number>`, retried by `retries`.
fn split_config(ports: [u16; 2], retries: &str) -> mesh_core::model::MeshConfig {
    let mut yaml = String::new();
    for (host, port) in [("hello", ports[0]), ("v1", ports[0]), ("v2", ports[1])] {
        yaml.push_str(&format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: {host} }}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  endpoints: [{{ address: 127.0.0.1, ports: {{ http: {port} }} }}]
---
"
        ));
    }
    yaml.push_str(&format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: hello }}
spec:
  hosts: [hello]
  http:
  - retries: {retries}
    route:
    - {{ destination: {{ host: v1 }}, weight: 50, headers: {{ request: {{ add: {{ x-v: \"1\" }} }} }} }}
    - {{ destination: {{ host: v2 }}, weight: 50, headers: {{ request: {{ add: {{ x-v: \"2\" }} }} }} }}
"
    ));
    let loaded = mesh_core::istio::load(&[("split.yaml", &yaml)], &Workload::default());
    loaded.config.expect("a valid config")
}

/// A budget that refuses no retry here.
fn no_budget() -> RetryBudget {
    RetryBudget::new(100, 1_000, Duration::from_secs(10))
}

fn request(id: usize) -> Request<BoxBody> {
    Request::get("http://hello/")
        .header("x-test-id", id.to_string())
        .body(body::empty())
        .unwrap()
}

/// The ports each request's tries went to, by request id.
fn ports_by_request(log: &[(u16, Seen)]) -> HashMap<String, HashSet<u16>> {
    let mut by_request: HashMap<String, HashSet<u16>> = HashMap::new();
    for (port, seen) in log {
        by_request.entry(seen.id.clone()).or_default().insert(*port);
    }
    by_request
}

#[tokio::test]
async fn every_try_of_a_request_goes_to_the_destination_drawn_for_it() {
    let log: Log = Arc::default();
    // v1 always fails; v2 fails the first try and answers the retry.
    let v1 = upstream(log.clone(), |_| 503).await;
    let v2 = upstream(log.clone(), |n| if n == 1 { 503 } else { 200 }).await;
    let store = Arc::new(ConfigStore::new(split_config(
        [v1, v2],
        "{ attempts: 2, retryOn: 5xx }",
    )));
    let outbound = Outbound::builder(store)
        .rng(Rng::with_seed(7))
        .retry_budget(no_budget())
        .build();
    let mut statuses = HashMap::<u16, usize>::new();
    for id in 0..40 {
        let response = outbound.clone().oneshot(request(id)).await.unwrap();
        *statuses.entry(response.status().as_u16()).or_default() += 1;
    }
    let log = log.lock().unwrap();
    let by_request = each_request_kept_its_destination(&log, v1);
    assert_eq!(by_request.len(), 40);
    // A request drawn to v1 is tried 3 times there; one drawn to v2 twice.
    let to_v1 = by_request.values().filter(|p| p.contains(&v1)).count();
    assert!((10..=30).contains(&to_v1), "{to_v1} of 40 drawn to v1");
    let tries = |port| log.iter().filter(|(p, _)| *p == port).count();
    assert_eq!((tries(v1), tries(v2)), (3 * to_v1, 2 * (40 - to_v1)));
    assert_eq!(statuses.get(&503), Some(&to_v1), "{statuses:?}");
    assert_eq!(statuses.get(&200), Some(&(40 - to_v1)), "{statuses:?}");
}

#[tokio::test]
async fn a_request_handed_back_for_a_retry_keeps_its_destination_and_its_headers_once() {
    // Istio's default policy: only tries the upstream never saw are retried, with the request
    // the client gives back (as the real client does after a refused connection).
    let log: Log = Arc::default();
    let client = {
        let log = log.clone();
        tower::service_fn(move |req: Request<BoxBody>| {
            let port = RequestContext::of(&req)
                .and_then(|c| c.upstream.as_ref())
                .and_then(|u| u.authority.port_u16())
                .unwrap();
            let seen = seen(&req);
            let first = seen.attempt == 1;
            log.lock().unwrap().push((port, seen));
            if first {
                Unsent::give_back(req);
                let refused = ProxyError::ConnectFailure {
                    endpoint: format!("127.0.0.1:{port}"),
                    source: "connection refused".into(),
                };
                return std::future::ready(Err::<Response<BoxBody>, BoxError>(refused.into()));
            }
            std::future::ready(Ok(Response::new(body::empty())))
        })
    };
    let store = Arc::new(ConfigStore::new(split_config(
        [1001, 1002],
        "{ attempts: 2 }",
    )));
    let outbound = Outbound::builder(store)
        .rng(Rng::with_seed(11))
        .retry_budget(no_budget())
        .client(client)
        .build();
    for id in 0..40 {
        let response = outbound.clone().oneshot(request(id)).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 80, "two tries each");
    let by_request = each_request_kept_its_destination(&log, 1001);
    let to_v1 = by_request.values().filter(|p| p.contains(&1001)).count();
    assert!((10..=30).contains(&to_v1), "{to_v1} of 40 drawn to v1");
}

/// Checks that every try of a request went to one port and carried its destination's `x-v`
/// once (`1` on `v1_port`, else `2`); returns the ports by request.
fn each_request_kept_its_destination(
    log: &[(u16, Seen)],
    v1_port: u16,
) -> HashMap<String, HashSet<u16>> {
    let by_request = ports_by_request(log);
    for (id, ports) in &by_request {
        assert_eq!(ports.len(), 1, "request {id} went to {ports:?}");
    }
    for (port, seen) in log {
        let x_v = if *port == v1_port { "1" } else { "2" };
        assert_eq!(
            seen.x_v,
            [x_v],
            "try {} of request {}",
            seen.attempt,
            seen.id
        );
    }
    by_request
}

/// An HTTP/1.1 upstream that logs each try under its port and never answers.
async fn silent_upstream(log: Log) -> u16 {
    let listener = testing::listener().await;
    let port = listener.local_addr().unwrap().port();
    testing::serve(listener, Protocol::Http1, move |req| {
        log.lock().unwrap().push((port, seen(&req)));
        std::future::pending()
    });
    port
}

/// `hello` on three endpoints (`ports`), balanced at random, its one rule hedged by the
/// VirtualService annotations `hedge`, retried by `retries` and timed out after 250 ms (when
/// every try went to an endpoint that does not answer).
fn hedged_config(ports: [u16; 3], hedge: &str, retries: &str) -> mesh_core::model::MeshConfig {
    let [a, b, c] = ports;
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: hello }}
spec:
  hosts: [hello]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  endpoints:
  - {{ address: 127.0.0.1, ports: {{ http: {a} }} }}
  - {{ address: 127.0.0.1, ports: {{ http: {b} }} }}
  - {{ address: 127.0.0.1, ports: {{ http: {c} }} }}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: hello }}
spec:
  host: hello
  trafficPolicy: {{ loadBalancer: {{ simple: RANDOM }} }}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: hello
  annotations: {{ {hedge} }}
spec:
  hosts: [hello]
  http:
  - retries: {retries}
    timeout: 250ms
    route:
    - destination: {{ host: hello }}
"
    );
    let loaded = mesh_core::istio::load(&[("hedged.yaml", &yaml)], &Workload::default());
    assert!(loaded.diagnostics.is_empty(), "{:#?}", loaded.diagnostics);
    loaded.config.expect("a valid config")
}

#[tokio::test]
async fn a_hedged_try_avoids_the_endpoint_of_the_try_still_in_flight() {
    // One endpoint of three never answers. A request whose first try lands there is hedged
    // (after the hedge delay, the first try still running; or after its per-try timeout);
    // the hedged try goes to a random endpoint, the silent one a third of the time, unless
    // it avoids the previous hosts (five picks, so (1/3)^5).
    let modes = [
        ("hedging.mesh.io/delay: 50ms", ""),
        ("hedging.mesh.io/delay: 10s", ", perTryTimeout: 50ms"),
    ];
    for (hedge, per_try) in modes {
        for ignore in [true, false] {
            let log: Log = Arc::default();
            let silent = silent_upstream(log.clone()).await;
            let a = upstream(log.clone(), |_| 200).await;
            let b = upstream(log.clone(), |_| 200).await;
            let retries = format!("{{ attempts: 1{per_try}, retryIgnorePreviousHosts: {ignore} }}");
            let store = Arc::new(ConfigStore::new(hedged_config(
                [silent, a, b],
                hedge,
                &retries,
            )));
            let outbound = Outbound::builder(store)
                .rng(Rng::with_seed(5))
                .retry_budget(no_budget())
                .build();
            let mut failed = 0;
            for id in 0..90 {
                let response = outbound.clone().oneshot(request(id)).await.unwrap();
                failed += usize::from(response.status() != StatusCode::OK);
            }
            let log = log.lock().unwrap();
            let at_silent = |first: bool| {
                log.iter()
                    .filter(|(port, seen)| *port == silent && (seen.attempt == 1) == first)
                    .count()
            };
            let (first_tries, hedged_tries) = (at_silent(true), at_silent(false));
            let mode = format!("{hedge}{per_try}, retryIgnorePreviousHosts: {ignore}");
            assert!(
                (15..=45).contains(&first_tries),
                "{mode}: {first_tries} of 90 first tries to the silent endpoint"
            );
            if ignore {
                assert!(
                    hedged_tries <= 2,
                    "{mode}: {hedged_tries} hedged tries to the silent endpoint"
                );
                assert_eq!(failed, 0, "{mode}");
            } else {
                assert!(
                    hedged_tries >= 5,
                    "{mode}: {hedged_tries} hedged tries to the silent endpoint"
                );
            }
        }
    }
}
