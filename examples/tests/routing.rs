//! The sidecar routes real traffic: weighted splits, header and path rules, both protocols.

mod common;

use common::*;
use mesh_tower::flags::{ResponseFlag, ResponseFlags};
use std::time::Duration;
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_split_90_10_within_one_and_a_half_points() {
    let v1 = upstream("v1", Duration::ZERO).await;
    let v2 = upstream("v2", Duration::ZERO).await;
    let config = ConfigDir::new(&(registry(&[&v1, &v2]) + &split(&[("v1", 90), ("v2", 10)])));
    let proxy = start_proxy(&config).await;
    let counts = tally(&client(proxy.outbound, false), 10_000, 16).await;
    assert_eq!(counts.values().sum::<usize>(), 10_000, "{counts:?}");
    let v1_share = percent(&counts, "v1");
    assert!(
        (88.5..=91.5).contains(&v1_share),
        "v1 got {v1_share}%: {counts:?}"
    );
    assert!((8.5..=11.5).contains(&percent(&counts, "v2")), "{counts:?}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_http1_clients_are_both_served_on_the_outbound_port() {
    let v1 = upstream("v1", Duration::ZERO).await;
    let v2 = upstream("v2", Duration::ZERO).await;
    let config = ConfigDir::new(&(registry(&[&v1, &v2]) + &split(&[("v1", 50), ("v2", 50)])));
    let proxy = start_proxy(&config).await;
    for http2 in [false, true] {
        let counts = tally(&client(proxy.outbound, http2), 1_000, 8).await;
        assert_eq!(
            counts.get("v1").unwrap_or(&0) + counts.get("v2").unwrap_or(&0),
            1_000,
            "http2={http2}: {counts:?}"
        );
        assert!(
            (40.0..=60.0).contains(&percent(&counts, "v1")),
            "http2={http2}: {counts:?}"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_path_rules_pick_the_first_matching_route() {
    let v1 = upstream("v1", Duration::ZERO).await;
    let v2 = upstream("v2", Duration::ZERO).await;
    let v3 = upstream("v3", Duration::ZERO).await;
    let rules = "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: hello }
spec:
  hosts: [hello]
  http:
  - name: jason
    match: [{ headers: { end-user: { exact: jason } } }]
    route: [{ destination: { host: hello, subset: v2 } }]
  - name: api
    match: [{ uri: { prefix: /api/ }, method: { exact: GET } }, { uri: { regex: \"/legacy/[0-9]+\" } }]
    rewrite: { uri: /v3/ }
    route: [{ destination: { host: hello, subset: v3 } }]
  - name: health
    match: [{ uri: { exact: /status }, queryParams: { verbose: { exact: \"1\" } } }]
    directResponse: { status: 200, body: { string: \"ok\" } }
  - name: rest
    route: [{ destination: { host: hello, subset: v1 } }]
";
    let config = ConfigDir::new(&(registry(&[&v1, &v2, &v3]) + rules));
    let proxy = start_proxy(&config).await;
    let c = client(proxy.outbound, false);

    let (status, body, headers) = get(&c, "hello", "/reviews/1", &[("end-user", "jason")]).await;
    assert_eq!((status, body.as_str()), (200, "v2"));
    assert_eq!(headers["x-end-user"], "jason");
    assert_eq!(
        get(&c, "hello", "/reviews/1", &[("end-user", "bob")])
            .await
            .1,
        "v1"
    );

    let (_, body, headers) = get(
        &c,
        "hello.default.svc.cluster.local",
        "/api/items?page=2",
        &[],
    )
    .await;
    assert_eq!(body, "v3");
    assert_eq!(
        headers["x-path"], "/v3/items?page=2",
        "the prefix is rewritten, the query kept"
    );
    let (_, body, headers) = get(&c, "hello:80", "/legacy/42", &[]).await;
    assert_eq!(
        (body.as_str(), headers["x-path"].to_str().unwrap()),
        ("v3", "/v3/")
    );
    assert_eq!(
        get(&c, "hello", "/legacy/abc", &[]).await.1,
        "v1",
        "the regex covers the whole path"
    );

    assert_eq!(get(&c, "hello", "/status?verbose=1", &[]).await.1, "ok");
    assert_eq!(get(&c, "hello", "/status", &[]).await.1, "v1");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_uri_names_the_destination_like_an_http_proxy() {
    let v1 = upstream("v1", Duration::ZERO).await;
    let config = ConfigDir::new(&registry(&[&v1]));
    let proxy = start_proxy(&config).await;
    let stream = tokio::net::TcpStream::connect(proxy.outbound)
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("http://hello/x")
        .header("host", "hello")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = send.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-path"], "/x");
    proxy.shutdown().await;
}

/// Sends `GET uri` through the proxy's outbound stack in process, expects `status`, and
/// returns the response flags (what the access log records).
async fn in_process(proxy: &mesh_examples::proxy::Proxy, uri: &str, status: u16) -> ResponseFlags {
    let outbound = mesh_tower::outbound::Outbound::builder(proxy.store().clone()).build();
    let req = http::Request::get(uri)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = outbound.oneshot(req).await.unwrap();
    assert_eq!(response.status(), status);
    ResponseFlags::of_response(&response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_gets_404_with_the_nr_flag() {
    let v1 = upstream("v1", Duration::ZERO).await;
    let config = ConfigDir::new(&registry(&[&v1]));
    let proxy = start_proxy(&config).await;
    let (status, body, _) = get(&client(proxy.outbound, false), "ratings", "/", &[]).await;
    assert_eq!(status, 404);
    assert!(body.starts_with("no route for \"ratings\""), "{body}");

    // The same stack in-process shows the flag the access log records.
    let flags = in_process(&proxy, "http://ratings/", 404).await;
    assert!(flags.contains(ResponseFlag::NoRouteFound));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_naming_no_host_gets_400_with_the_dpe_flag() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let v1 = upstream("v1", Duration::ZERO).await;
    let config = ConfigDir::new(&registry(&[&v1]));
    let proxy = start_proxy(&config).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.outbound)
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    let flags = in_process(&proxy, "/", 400).await;
    assert!(flags.contains(ResponseFlag::DownstreamProtocolError));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_a_503_with_the_uf_flag() {
    let dead = dead_upstream("v1");
    let config = ConfigDir::new(&registry(&[&dead]));
    let proxy = start_proxy(&config).await;
    let flags = in_process(&proxy, "http://hello/", 503).await;
    assert!(flags.contains(ResponseFlag::UpstreamConnectionFailure));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_requests_reach_the_app_the_sidecar_resource_names() {
    let app = upstream("app", Duration::ZERO).await;
    let other = upstream("other", Duration::ZERO).await;
    let sidecar = format!(
        "---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{ name: default }}
spec:
  ingress:
  - port: {{ number: 9080, protocol: HTTP, name: http }}
    defaultEndpoint: 127.0.0.1:{}
  - port: {{ number: 9090, protocol: HTTP, name: http-admin }}
    defaultEndpoint: 127.0.0.1:{}
",
        app.addr.port(),
        other.addr.port()
    );
    let config = ConfigDir::new(&(registry(&[&app]) + &sidecar));
    let proxy = start_proxy(&config).await;
    let c = client(proxy.inbound, false);
    assert_eq!(get(&c, "reviews:9080", "/", &[]).await.1, "app");
    assert_eq!(get(&c, "reviews:9090", "/", &[]).await.1, "other");
    assert_eq!(
        get(&c, "reviews", "/", &[]).await.1,
        "app",
        "no port: the first ingress listener"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_http1_requests_are_answered_in_order_on_one_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = upstream("a", Duration::ZERO).await;
    let config = ConfigDir::new(&(registry(&[&a]) + &split(&[("a", 100)])));
    let proxy = start_proxy(&config).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.outbound)
        .await
        .unwrap();
    // Three requests in one write, before any answer.
    let mut burst = String::new();
    for path in ["/one", "/two", "/three"] {
        burst.push_str(&format!("GET {path} HTTP/1.1\r\nHost: hello\r\n\r\n"));
    }
    stream.write_all(burst.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 8192];
    let mut text = String::new();
    for _ in 0..100 {
        if text.matches("x-path: ").count() == 3 {
            break;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("answers")
            .unwrap();
        assert!(n > 0, "closed early: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    for line in text.lines() {
        if let Some(path) = line.strip_prefix("x-path: ") {
            seen.push(path.to_owned());
        }
    }
    assert_eq!(seen, ["/one", "/two", "/three"], "{text}");
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3);
    proxy.shutdown().await;
}
