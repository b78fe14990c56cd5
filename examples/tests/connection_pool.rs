//! The DestinationRule's connection-level settings through the sidecar, against real
//! upstreams on 127.0.0.1: `maxRequestsPerConnection`, `maxConnectionDuration`,
//! `connectTimeout`, `h2UpgradePolicy` and `maxRetries`.

mod common;

use common::*;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use mesh_tower::body::{self, BoxBody};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// An upstream (HTTP/1.1 and h2c) that answers `status` after `delay`, with the client
/// connection's port in `x-peer-port` and the HTTP version it saw in `x-version`; counts
/// requests.
async fn peer_echo(status: u16, delay: Duration) -> (Upstream, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let service = tower::service_fn(move |req: Request<Incoming>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(delay).await;
            let peer = req
                .extensions()
                .get::<mesh_tower::server::ConnectionInfo>()
                .map(|c| c.peer.port())
                .unwrap_or_default();
            let mut response = Response::new(body::full("ok"));
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            let headers = response.headers_mut();
            headers.insert("x-peer-port", HeaderValue::from(peer));
            let version = format!("{:?}", req.version());
            headers.insert("x-version", HeaderValue::try_from(version).unwrap());
            Ok::<Response<BoxBody>, Infallible>(response)
        }
    });
    (serve_upstream("echo", service).await, hits)
}

/// Service `hello` on `upstream`, with subsets `limited` (whose trafficPolicy is `policy`) and
/// `plain` (defaults), routed by header `x-pool`; `vs_extra` is added to each route.
fn config(upstream: &Upstream, policy: &str, vs_extra: &str) -> String {
    config_with(upstream, "HTTP", policy, vs_extra)
}

/// As [`config`], with the service port's `protocol`.
fn config_with(upstream: &Upstream, protocol: &str, policy: &str, vs_extra: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: hello }}
spec:
  hosts: [hello.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 80, name: http, protocol: {protocol} }}]
  endpoints:
  - {{ address: 127.0.0.1, ports: {{ http: {port} }}, labels: {{ pool: any }} }}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: hello }}
spec:
  host: hello
  subsets:
  - name: limited
    labels: {{ pool: any }}
    trafficPolicy:
{policy}
  - name: plain
    labels: {{ pool: any }}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: hello }}
spec:
  hosts: [hello]
  http:
  - match: [{{ headers: {{ x-pool: {{ exact: limited }} }} }}]
    route: [{{ destination: {{ host: hello, subset: limited }} }}]
    {vs_extra}
  - route: [{{ destination: {{ host: hello, subset: plain }} }}]
    {vs_extra}
",
        port = upstream.addr.port()
    )
}

/// The upstream-side ports of `n` sequential requests through `client`, with `x-pool: pool`.
async fn ports(client: &HttpClient, pool: &str, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let (status, body, headers) = get(client, "hello", "/", &[("x-pool", pool)]).await;
        assert_eq!(status, 200, "{body}");
        seen.push(headers["x-peer-port"].to_str().unwrap().to_owned());
    }
    seen
}

fn distinct(ports: &[String]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for p in ports {
        *counts.entry(p.as_str()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_opens_a_new_connection_every_n_requests() {
    let (upstream, _) = peer_echo(200, Duration::ZERO).await;
    let policy = "      connectionPool: { http: { maxRequestsPerConnection: 2 } }";
    let config = ConfigDir::new(&config(&upstream, policy, ""));
    let proxy = start_proxy(&config).await;
    let client = client(proxy.outbound, false);

    let limited = ports(&client, "limited", 6).await;
    let counts = distinct(&limited);
    assert_eq!(
        counts.len(),
        3,
        "three connections of two requests: {limited:?}"
    );
    assert!(counts.values().all(|&n| n == 2), "{limited:?}");
    assert_eq!(limited[0], limited[1]);
    assert_ne!(limited[1], limited[2]);

    // The subset without the setting keeps one connection.
    let plain = ports(&client, "plain", 6).await;
    assert_eq!(distinct(&plain).len(), 1, "{plain:?}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_max_connection_duration_is_not_reused() {
    let (upstream, _) = peer_echo(200, Duration::ZERO).await;
    let policy = "      connectionPool: { tcp: { maxConnectionDuration: 300ms } }";
    let config = ConfigDir::new(&config(&upstream, policy, ""));
    let proxy = start_proxy(&config).await;
    let client = client(proxy.outbound, false);
    let plain = ports(&client, "plain", 1).await;

    let first = ports(&client, "limited", 2).await;
    assert_eq!(first[0], first[1], "reused within its lifetime");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = ports(&client, "limited", 2).await;
    assert_ne!(
        later[0], first[0],
        "an idle connection past its lifetime is dropped"
    );
    assert_eq!(later[0], later[1]);

    // The other subset's pool is its own: its connection, as old, is still reused.
    assert_ne!(plain[0], first[0], "one pool per subset");
    assert_eq!(
        ports(&client, "plain", 1).await,
        plain,
        "no lifetime: reused"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_upgrade_policy_speaks_http2_to_an_http_port() {
    let (upstream, _) = peer_echo(200, Duration::ZERO).await;
    let policy = "      connectionPool: { http: { h2UpgradePolicy: UPGRADE } }";
    let config = ConfigDir::new(&config(&upstream, policy, ""));
    let proxy = start_proxy(&config).await;
    let client = client(proxy.outbound, false);
    let (_, _, upgraded) = get(&client, "hello", "/", &[("x-pool", "limited")]).await;
    assert_eq!(upgraded["x-version"], "HTTP/2.0");
    let (_, _, plain) = get(&client, "hello", "/", &[("x-pool", "plain")]).await;
    assert_eq!(plain["x-version"], "HTTP/1.1");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_destination_rules_connect_timeout_bounds_connecting() {
    // A listener that never accepts, with a backlog of 0: once its queue is full, the kernel
    // drops further SYNs and a connect hangs until the connector gives up.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let silent = socket.listen(0).unwrap();
    let addr = silent.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        let connect = tokio::net::TcpStream::connect(addr);
        match tokio::time::timeout(Duration::from_millis(200), connect).await {
            Ok(Ok(stream)) => fillers.push(stream),
            _ => break,
        }
    }
    let upstream = Upstream {
        addr,
        name: "silent".into(),
    };
    let policy = "      connectionPool: { tcp: { connectTimeout: 250ms } }";
    let config = ConfigDir::new(&config(&upstream, policy, "retries: { attempts: 0 }"));
    let proxy = start_proxy(&config).await;
    let client = client(proxy.outbound, false);
    let limited = get(&client, "hello", "/", &[("x-pool", "limited")]);
    let (status, body, _) = tokio::time::timeout(Duration::from_secs(5), limited)
        .await
        .expect("the 250 ms connect timeout ends the request, not the 10 s default");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("upstream connect error"), "{body}");
    // The default subset still waits for the default 10 s connect timeout.
    let plain = get(&client, "hello", "/", &[("x-pool", "plain")]);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), plain)
            .await
            .is_err(),
        "the default connect timeout is longer"
    );
    drop(fillers);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_over_max_retries_is_not_sent_and_the_first_answer_stands() {
    let (upstream, hits) = peer_echo(500, Duration::from_millis(300)).await;
    let policy = "      connectionPool: { http: { maxRetries: 1 } }";
    let retries = "retries: { attempts: 1, retryOn: 5xx }";
    let config = ConfigDir::new(&config(&upstream, policy, retries));
    let proxy = start_proxy(&config).await;
    let client = client(proxy.outbound, false);
    let both = futures_util::future::join(
        get(&client, "hello", "/", &[("x-pool", "limited")]),
        get(&client, "hello", "/", &[("x-pool", "limited")]),
    )
    .await;
    assert_eq!(
        (both.0.0, both.1.0),
        (500, 500),
        "the upstream's own answers"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        3,
        "two first tries and one retry: the second retry overflowed"
    );
    proxy.shutdown().await;

    // Without the limit (and with a fresh retry budget), both retry.
    let proxy = start_proxy(&config).await;
    let client = common::client(proxy.outbound, false);
    hits.store(0, Ordering::SeqCst);
    futures_util::future::join(
        get(&client, "hello", "/", &[("x-pool", "plain")]),
        get(&client, "hello", "/", &[("x-pool", "plain")]),
    )
    .await;
    assert_eq!(hits.load(Ordering::SeqCst), 4);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_past_max_concurrent_streams_open_another_connection() {
    let (upstream, _) = peer_echo(200, Duration::from_millis(300)).await;
    let policy = "      connectionPool: { http: { maxConcurrentStreams: 2 } }";
    let config = ConfigDir::new(&config_with(&upstream, "HTTP2", policy, ""));
    let proxy = start_proxy(&config).await;
    let client = client(proxy.outbound, true);
    let concurrent = |pool: &'static str| {
        let client = client.clone();
        async move {
            let headers = [("x-pool", pool)];
            let calls = (0..6).map(|_| get(&client, "hello", "/", &headers));
            let answers = futures_util::future::join_all(calls).await;
            let mut ports: Vec<String> = answers
                .iter()
                .map(|(status, _, headers)| {
                    assert_eq!(*status, 200);
                    assert_eq!(headers["x-version"], "HTTP/2.0");
                    headers["x-peer-port"].to_str().unwrap().to_owned()
                })
                .collect();
            ports.sort();
            ports.dedup();
            ports.len()
        }
    };
    assert_eq!(
        concurrent("limited").await,
        3,
        "six streams, two per connection"
    );
    assert_eq!(
        concurrent("plain").await,
        1,
        "no cap: one multiplexed connection"
    );
    proxy.shutdown().await;
}
