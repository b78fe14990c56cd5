//! Telemetry through the sidecar: Istio's metrics on /stats/prometheus, trace context and
//! request id propagation, the access log, /explain, /logging, /clusters.

mod common;

use common::*;
use http::{Request, Response};
use hyper::body::Incoming;
use mesh_examples::proxy::Proxy;
use mesh_tower::body::{self, BoxBody};
use mesh_tower::server::serve;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// An upstream that echoes the trace headers it received.
async fn echo(name: &str) -> (Upstream, Arc<Mutex<Vec<http::HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (reply, log) = (name.to_owned(), seen.clone());
    let service = tower::service_fn(move |req: Request<Incoming>| {
        log.lock().unwrap().push(req.headers().clone());
        std::future::ready(Ok::<Response<BoxBody>, Infallible>(Response::new(
            body::full(reply.clone()),
        )))
    });
    (serve_upstream(name, service).await, seen)
}

/// `istio_requests_total` samples: labels -> value.
fn requests_total(text: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .map(|l| {
            let (labels, value) = l.rsplit_once(' ').unwrap();
            let labels = labels
                .trim_start_matches("istio_requests_total{")
                .trim_end_matches('}');
            let mut map = BTreeMap::new();
            for pair in labels.split("\",") {
                let (k, v) = pair.split_once("=\"").unwrap();
                map.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
            }
            (map, value.parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_split_and_the_flags_show_in_istio_requests_total() {
    // Versions no other test in this binary uses: they share one metrics recorder.
    let v1 = upstream("split-v1", Duration::ZERO).await;
    let v2 = upstream("split-v2", Duration::ZERO).await;
    let config =
        ConfigDir::new(&(registry(&[&v1, &v2]) + &split(&[("split-v1", 90), ("split-v2", 10)])));
    let proxy = start_proxy(&config).await;
    let counts = tally(&client(proxy.outbound, false), 2_000, 8).await;
    let (status, _, _) = get(&client(proxy.outbound, false), "nowhere", "/", &[]).await;
    assert_eq!(status, 404);
    // Counted when the response body ends: give the last ones a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (status, text, headers) = get(
        &client(proxy.admin, false),
        "localhost",
        "/stats/prometheus",
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let samples = requests_total(&text);
    let by_version = |v: &str| -> f64 {
        samples
            .iter()
            .filter(|(l, _)| {
                l["destination_version"] == v
                    && l["destination_service"] == "hello.default.svc.cluster.local"
                    && l["response_code"] == "200"
            })
            .map(|(_, n)| n)
            .sum()
    };
    // Other tests in this binary share the recorder: compare with this test's own tally.
    assert!(
        by_version("split-v1") >= counts["split-v1"] as f64,
        "{text}"
    );
    assert!(by_version("split-v2") >= counts["split-v2"] as f64);
    let one = samples
        .iter()
        .find(|(l, _)| l["destination_version"] == "split-v1")
        .unwrap();
    for label in [
        "reporter",
        "source_workload",
        "source_workload_namespace",
        "source_principal",
        "source_app",
        "source_version",
        "source_canonical_service",
        "source_canonical_revision",
        "source_cluster",
        "destination_workload",
        "destination_workload_namespace",
        "destination_principal",
        "destination_app",
        "destination_version",
        "destination_service",
        "destination_service_name",
        "destination_service_namespace",
        "destination_canonical_service",
        "destination_canonical_revision",
        "destination_cluster",
        "request_protocol",
        "response_code",
        "grpc_response_status",
        "response_flags",
        "connection_security_policy",
    ] {
        assert!(
            one.0.contains_key(label),
            "missing label {label}: {:?}",
            one.0
        );
    }
    assert_eq!(one.0["reporter"], "source");
    assert_eq!(
        one.0["source_principal"],
        "spiffe://cluster.local/ns/default/sa/default"
    );
    assert_eq!(one.0["destination_service_name"], "hello");
    assert!(
        samples
            .iter()
            .any(|(l, _)| l["response_code"] == "404" && l["response_flags"] == "NR"),
        "{text}"
    );
    assert!(
        text.contains("istio_request_duration_milliseconds_bucket{"),
        "a histogram with buckets"
    );
    assert!(text.contains("le=\"0.5\""), "Istio's duration buckets");

    // promtool, when the machine has it (.ci/run installs Debian's prometheus package).
    if let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let report = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        // The text parses; the only lint finding allowed is the one Istio's own name carries
        // (milliseconds, kept so that Istio's dashboards work unchanged).
        let findings: Vec<&str> = report
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter(|l| !l.starts_with("istio_request_duration_milliseconds use base unit"))
            .collect();
        assert!(findings.is_empty(), "promtool: {report}");
    } else {
        eprintln!("promtool not installed: skipping `promtool check metrics`");
    }
    proxy.shutdown().await;
}

/// Two sidecars in a row (plaintext): `productpage-v1` in `web` calls `ratings` in `shop`,
/// whose sidecar runs as `ratings-v1` in cluster `east` in front of `app`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peers_exchange_their_workloads_and_label_their_metrics_with_them() {
    let (app, seen) = echo("ratings").await;
    // The service the server workload is an instance of: its `destination_service`.
    let server_cfg = ConfigDir::new(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: ratings, namespace: shop }
spec:
  hosts: [ratings.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{ number: 80, name: http, protocol: HTTP }]
  workloadSelector: { labels: { app: ratings } }
",
    );
    let mut options = test_options(vec![server_cfg.path()]);
    options.app = Some(app.addr);
    options.workload.namespace = "shop".into();
    options.workload.workload_name = "ratings-v1".into();
    options.workload.cluster_id = "east".into();
    options.workload.labels = [
        ("app".to_owned(), "ratings".to_owned()),
        ("version".to_owned(), "v1".to_owned()),
    ]
    .into();
    let server = Proxy::start(options).await.unwrap();
    // The caller's config says nothing of the endpoint's workload: what the metrics name
    // comes from the exchange.
    let client_cfg = ConfigDir::new(&format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: ratings, namespace: shop }}
spec:
  hosts: [ratings.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  endpoints: [{{ address: 127.0.0.1, ports: {{ http: {} }} }}]
",
        server.inbound.port()
    ));
    let mut options = test_options(vec![client_cfg.path()]);
    options.workload.namespace = "web".into();
    options.workload.workload_name = "productpage-v1".into();
    options.workload.labels = [
        ("app".to_owned(), "productpage".to_owned()),
        ("version".to_owned(), "v1".to_owned()),
    ]
    .into();
    let caller = Proxy::start(options).await.unwrap();

    let (status, body, headers) = get(
        &client(caller.outbound, false),
        "ratings.shop.svc.cluster.local",
        "/",
        &[],
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "ratings"));
    // Neither app sees the exchange: the server sidecar took the caller's headers out of the
    // request, the calling sidecar the server's out of the response.
    let exchange = ["x-envoy-peer-metadata", "x-envoy-peer-metadata-id"];
    let app_saw = seen.lock().unwrap().last().cloned().unwrap();
    for name in exchange {
        assert!(!app_saw.contains_key(name), "the app got {name}");
        assert!(!headers.contains_key(name), "the caller got {name}");
    }
    // A caller without a sidecar: no metadata in, none out.
    let (status, _, headers) = get(&client(server.inbound, false), "ratings", "/", &[]).await;
    assert_eq!(status, 200);
    assert!(exchange.iter().all(|name| !headers.contains_key(*name)));

    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = prometheus(server.admin).await;
    // Both sidecars record into this test binary's one recorder.
    let samples = requests_total(&text);
    let find = |reporter: &str, source_workload: &str| {
        samples
            .iter()
            .map(|(labels, _)| labels)
            .find(|l| {
                l["reporter"] == reporter
                    && l["source_workload"] == source_workload
                    && l["destination_workload"] == "ratings-v1"
            })
            .unwrap_or_else(|| panic!("no {reporter} sample from {source_workload}: {text}"))
            .clone()
    };
    let expected_source = [
        ("source_workload_namespace", "web"),
        ("source_canonical_service", "productpage"),
        ("source_canonical_revision", "v1"),
        ("source_app", "productpage"),
        ("source_version", "v1"),
        ("source_cluster", "Kubernetes"),
    ];
    let expected_destination = [
        ("destination_workload_namespace", "shop"),
        ("destination_canonical_service", "ratings"),
        ("destination_canonical_revision", "v1"),
        ("destination_app", "ratings"),
        ("destination_version", "v1"),
        ("destination_cluster", "east"),
    ];
    for reporter in ["source", "destination"] {
        let labels = find(reporter, "productpage-v1");
        for (key, value) in expected_source.iter().chain(&expected_destination) {
            assert_eq!(labels[*key], *value, "{reporter}: {key} in {labels:?}");
        }
    }
    // The server's own report of the caller without a sidecar: an unknown source, Istio's
    // defaults.
    let served = find("destination", "productpage-v1");
    assert_eq!(
        served["destination_service"],
        "ratings.shop.svc.cluster.local"
    );
    assert_eq!(served["destination_service_name"], "ratings");
    let unknown = find("destination", "unknown");
    assert_eq!(unknown["source_canonical_service"], "unknown");
    assert_eq!(unknown["source_canonical_revision"], "latest");
    assert_eq!(unknown["destination_service_namespace"], "shop");
    caller.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_and_request_ids_propagate() {
    let (v1, seen) = echo("v1").await;
    let config = ConfigDir::new(&registry(&[&v1]));
    let proxy = start_proxy(&config).await;
    let c = client(proxy.outbound, false);
    // B3 in: the upstream gets W3C and B3 with the same trace id, our span as the parent.
    get(
        &c,
        "hello",
        "/",
        &[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
            ("x-request-id", "req-1"),
        ],
    )
    .await;
    // W3C in.
    get(
        &c,
        "hello",
        "/",
        &[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )],
    )
    .await;
    let seen = seen.lock().unwrap().clone();
    let first = &seen[0];
    let traceparent = first["traceparent"].to_str().unwrap();
    assert!(
        traceparent.starts_with("00-463ac35c9f6413ad48485a3953bb6124-"),
        "{traceparent}"
    );
    assert!(traceparent.ends_with("-01"));
    assert_eq!(first["x-b3-traceid"], "463ac35c9f6413ad48485a3953bb6124");
    assert_eq!(first["x-b3-parentspanid"], "a2fb4a1d1a96d312");
    assert_ne!(
        first["x-b3-spanid"], "a2fb4a1d1a96d312",
        "the proxy's own span"
    );
    assert_eq!(first["x-request-id"], "req-1", "kept when present");
    let second = &seen[1];
    assert!(
        second["traceparent"]
            .to_str()
            .unwrap()
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    );
    assert_eq!(second["x-b3-parentspanid"], "00f067aa0ba902b7");
    assert_eq!(
        second["x-request-id"].len(),
        36,
        "generated when absent: {:?}",
        second["x-request-id"]
    );
    proxy.shutdown().await;
}

/// `OTEL_PROPAGATORS` (`Options::trace_propagators`): only the chosen formats go upstream,
/// the others pass through as the caller sent them, and `x-request-id` is set either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_configured_trace_formats_go_upstream() {
    let (v1, seen) = echo("v1").await;
    let config = ConfigDir::new(&registry(&[&v1]));
    let mut options = test_options(vec![config.path()]);
    options.trace_propagators = "b3".parse().unwrap();
    let proxy = Proxy::start(options).await.unwrap();
    let c = client(proxy.outbound, false);
    get(
        &c,
        "hello",
        "/",
        &[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )],
    )
    .await;
    get(
        &c,
        "hello",
        "/",
        &[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "0"),
        ],
    )
    .await;
    let seen = seen.lock().unwrap().clone();
    // W3C in, B3 only: W3C is not read, so the request starts a trace of its own, and its
    // traceparent reaches the upstream as the caller sent it.
    let first = &seen[0];
    assert_eq!(
        first["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    let b3 = first["b3"].to_str().unwrap();
    assert!(!b3.starts_with("4bf92f3577b34da6a3ce929d0e0e4736"), "{b3}");
    assert_eq!(b3.len(), 32 + 1 + 16 + 2, "{b3}");
    assert!(first.get("x-b3-traceid").is_none());
    assert_eq!(first["x-request-id"].len(), 36);
    // B3 multi in: read, and continued in the single header (our span, the caller's decision).
    let second = &seen[1];
    let b3 = second["b3"].to_str().unwrap();
    assert!(b3.starts_with("463ac35c9f6413ad48485a3953bb6124-"), "{b3}");
    assert!(!b3.contains("a2fb4a1d1a96d312"), "our own span: {b3}");
    assert!(b3.ends_with("-0"), "{b3}");
    assert!(second.get("traceparent").is_none());
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_line_per_request() {
    let v1 = upstream("v1", Duration::ZERO).await;
    let config = ConfigDir::new(&registry(&[&v1]));
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink_lines = lines.clone();
    let store = {
        let loaded = mesh_tower::source::FileSource::new(vec![config.path()], Default::default())
            .load()
            .await;
        Arc::new(mesh_core::store::ConfigStore::new(loaded.config.unwrap()))
    };
    for format in [
        mesh_tower::telemetry::AccessLogFormat::Text,
        mesh_tower::telemetry::AccessLogFormat::Json,
    ] {
        let sink_lines = sink_lines.clone();
        let telemetry = mesh_tower::telemetry::Telemetry::new(
            mesh_tower::telemetry::Reporter::Source,
            Default::default(),
        )
        .access_log(
            format,
            Arc::new(move |l: &str| sink_lines.lock().unwrap().push(l.to_owned())),
        );
        let outbound = mesh_tower::outbound::Outbound::builder(store.clone())
            .telemetry(telemetry)
            .build();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            outbound,
            async move {
                let _ = stopped.await;
            },
            Duration::from_secs(1),
        ));
        let c = client(addr, false);
        get(
            &c,
            "hello",
            "/path?q=1",
            &[("user-agent", "test-agent"), ("x-request-id", "abc")],
        )
        .await;
        get(&c, "nowhere", "/", &[]).await;
        let _ = stop.send(());
        server.await.unwrap();
    }
    let lines = lines.lock().unwrap().clone();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(
        lines[0].contains("\"GET /path?q=1 HTTP/1.1\" 200 - 0 2 "),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("\"test-agent\" \"abc\" \"hello\" \"127.0.0.1:"),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains("\" 404 NR "), "{}", lines[1]);
    let json: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
    assert_eq!(
        (json["response_code"].as_u64(), json["request_id"].as_str()),
        (Some(200), Some("abc"))
    );
    assert_eq!(json["upstream_service"], "hello.default.svc.cluster.local");
    let json: serde_json::Value = serde_json::from_str(&lines[3]).unwrap();
    assert_eq!(json["response_flags"], "NR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_answers_for_the_bundled_bookinfo_config() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/bookinfo");
    let mut options = test_options(vec![
        root.join("services.yaml"),
        root.join("destination-rules.yaml"),
        root.join("virtual-service-reviews-jason-v2-v3.yaml"),
    ]);
    let levels = Arc::new(Mutex::new(Vec::new()));
    let recorded = levels.clone();
    options.log_level = Some(Arc::new(move |l: &str| {
        recorded.lock().unwrap().push(l.to_owned());
        Ok(l.to_owned())
    }));
    let proxy = Proxy::start(options).await.unwrap();
    let admin = client(proxy.admin, false);
    let ask = |query: &'static str| {
        let admin = admin.clone();
        async move {
            let (status, body, _) =
                get(&admin, "localhost", &format!("/explain?{query}"), &[]).await;
            assert_eq!(status, 200, "{query}: {body}");
            serde_json::from_str::<serde_json::Value>(&body).unwrap()
        }
    };
    let table: [(&str, &str, Option<&str>); 5] = [
        (
            "host=reviews:9080&header=end-user:jason",
            "jason-to-v2",
            Some("outbound|9080|v2|reviews.default.svc.cluster.local"),
        ),
        (
            "host=reviews:9080",
            "default-v3",
            Some("outbound|9080|v3|reviews.default.svc.cluster.local"),
        ),
        (
            "host=reviews.default.svc.cluster.local:9080&path=/reviews/0&method=POST",
            "default-v3",
            Some("outbound|9080|v3|reviews.default.svc.cluster.local"),
        ),
        (
            "host=ratings:9080",
            "default",
            Some("outbound|9080||ratings.default.svc.cluster.local"),
        ),
        ("host=unknown.example.com", "", None),
    ];
    for (query, route, cluster) in table {
        let answer = ask(query).await;
        match cluster {
            Some(cluster) => {
                assert_eq!(answer["route"]["name"], route, "{query}: {answer}");
                assert_eq!(
                    answer["route"]["destinations"][0]["cluster"], cluster,
                    "{query}: {answer}"
                );
                assert!(
                    answer["route"]["destinations"][0]["endpoints"][0]
                        .as_str()
                        .unwrap()
                        .starts_with("127.0.0.1:")
                );
            }
            None => assert!(
                answer["outcome"]
                    .as_str()
                    .unwrap()
                    .starts_with("404 no route (NR)"),
                "{answer}"
            ),
        }
    }
    let (status, _, _) = get(&admin, "localhost", "/logging?level=debug", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(*levels.lock().unwrap(), ["debug"]);
    let (status, html, _) = get(&admin, "localhost", "/dashboard", &[]).await;
    assert_eq!(status, 200);
    assert!(html.contains("/stats/prometheus") && html.contains("<table id=\"traffic\">"));
    proxy.shutdown().await;
}

/// `istio_request_bytes` and `istio_response_bytes` through the sidecar are sizes on the wire
/// (headers and the body bytes carried), for a chunked request too, whose body has no
/// `Content-Length` to read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_metrics_count_headers_and_the_body_a_chunked_request_carried() {
    // An upstream that reads the whole request body before it answers, named for labels of
    // this test's own (other tests in this binary share the recorder).
    let service = tower::service_fn(|req: Request<Incoming>| async move {
        let received = http_body_util::BodyExt::collect(req.into_body())
            .await
            .unwrap()
            .to_bytes();
        Ok::<_, Infallible>(Response::new(body::full(format!("got {}", received.len()))))
    });
    let sizes = serve_upstream("sizes", service).await;
    let config = ConfigDir::new(&registry(&[&sizes]));
    let proxy = start_proxy(&config).await;

    // Three chunks (9 bytes) and no length: HTTP/1.1 sends them chunked.
    let chunks: [Result<hyper::body::Frame<bytes::Bytes>, Infallible>; 3] = [
        Ok(hyper::body::Frame::data(bytes::Bytes::from_static(b"abc"))),
        Ok(hyper::body::Frame::data(bytes::Bytes::from_static(b"defg"))),
        Ok(hyper::body::Frame::data(bytes::Bytes::from_static(b"hi"))),
    ];
    let chunked = body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
        chunks,
    )));
    let sender = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, BoxBody>(Dial(proxy.outbound));
    let response = sender
        .request(Request::post("http://hello/upload").body(chunked).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let received = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(received, "got 9");

    let text = prometheus(proxy.admin).await;
    let sum = |metric: &str| -> f64 {
        let prefix = format!("{metric}_sum{{");
        text.lines()
            .filter(|l| l.starts_with(&prefix) && l.contains("destination_version=\"sizes\""))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
            .sum()
    };
    // `:method POST`, `:path /upload`, `:scheme http`, `:authority hello` (the `Host`
    // header), `transfer-encoding: chunked`, and the 9 bytes of body.
    let request = (7 + 4) + (5 + 7) + (7 + 4) + (10 + 5) + (17 + 7) + 9;
    assert_eq!(sum("istio_request_bytes"), request as f64, "{text}");
    // `:status 200`, the headers as the sidecar sent them, and `got 9`.
    let fields: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    assert_eq!(
        sum("istio_response_bytes"),
        (7 + 3 + fields + 5) as f64,
        "{text}"
    );
    proxy.shutdown().await;
}
