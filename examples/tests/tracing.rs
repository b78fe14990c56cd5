//! Spans over OTLP to an in-process collector: a retried request gives the proxy's span
//! (child of the caller's) and one child span per try, all in the caller's trace.

mod common;

use common::*;
use http::{Request, Response};
use hyper::body::Incoming;
use mesh_examples::proxy::Proxy;
use mesh_tower::body::{self, BoxBody};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        self.0.lock().unwrap().extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_exports_its_span_and_one_child_per_try() {
    // The collector.
    let collector = Collector::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream_listener(listener)),
    );

    // An upstream failing the first try and recording the traceparent of each.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let upstream_service = tower::service_fn(move |req: Request<Incoming>| {
        let parent = req.headers()["traceparent"].to_str().unwrap().to_owned();
        let first = req.headers()["x-envoy-attempt-count"] == "1";
        log.lock().unwrap().push(parent);
        let mut response = Response::new(body::full("ok"));
        if first {
            *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        }
        std::future::ready(Ok::<Response<BoxBody>, Infallible>(response))
    });
    let upstream = serve_upstream("v1", upstream_service).await;

    let rules = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: hello }\nspec:\n  hosts: [hello]\n  http:\n  - retries: { attempts: 2, retryOn: 5xx }\n    route: [{ destination: { host: hello } }]\n";
    let config = ConfigDir::new(&(registry(&[&upstream]) + rules));
    let mut options = test_options(vec![config.path()]);
    options.otlp_endpoint = Some(format!("http://{otlp}"));
    options.trace_sampling = mesh_core::model::Percentage::NONE;
    let proxy = Proxy::start(options).await.unwrap();

    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let (status, _, _) = get(
        &client(proxy.outbound, false),
        "hello",
        "/",
        &[(
            "traceparent",
            &format!("00-{caller_trace}-{caller_span}-01"),
        )],
    )
    .await;
    assert_eq!(status, 200);

    let mut spans = Vec::new();
    for _ in 0..100 {
        spans = collector.0.lock().unwrap().clone();
        if spans.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(spans.len(), 3, "{spans:#?}");
    assert!(
        spans.iter().all(|s| hex(&s.trace_id) == caller_trace),
        "one trace: the caller's"
    );
    let server = spans
        .iter()
        .find(|s| s.kind == 2)
        .expect("the proxy's span");
    assert_eq!(hex(&server.parent_span_id), caller_span);
    let mut tries: Vec<&Span> = spans.iter().filter(|s| s.kind == 3).collect();
    tries.sort_by_key(|s| s.name.clone());
    assert_eq!(
        tries.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["attempt 1", "attempt 2"]
    );
    for t in &tries {
        assert_eq!(
            t.parent_span_id, server.span_id,
            "each try is a child of the proxy's span"
        );
    }
    let upstream_saw = seen.lock().unwrap().clone();
    for (t, parent) in tries.iter().zip(&upstream_saw) {
        assert!(
            parent.contains(&hex(&t.span_id)),
            "the upstream's parent is the try's span: {parent}"
        );
    }
    // Unsampled requests export nothing (0% sampling, no caller decision).
    get(&client(proxy.outbound, false), "hello", "/", &[]).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(collector.0.lock().unwrap().len(), 3);
    proxy.shutdown().await;
}

/// The listener as the stream of connections tonic serves.
fn tokio_stream_listener(
    listener: TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(s, _)| s);
        Some((accepted, listener))
    })
}
