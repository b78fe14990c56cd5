//! gRPC through the sidecar over h2c, with the framing written out (no generated code): a
//! server stream of 10,000 messages arrives whole with its trailers, and a unary call answered
//! `unavailable` (trailers-only) on its first try succeeds on the retry.

mod common;

use bytes::{Buf, Bytes, BytesMut};
use common::*;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use mesh_tower::body::{self, BoxBody};
use std::convert::Infallible;
use std::time::Duration;

const MESSAGES: u32 = 10_000;

fn frame(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b.freeze()
}

fn trailers(status: u32) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from(status));
    t
}

/// A gRPC server: `/test.Stream/Many` streams 10,000 numbered messages; `/test.Unary/Flaky`
/// answers UNAVAILABLE on a first try and a message on a retry.
async fn grpc_upstream() -> Upstream {
    let service = tower::service_fn(|req: Request<Incoming>| async move {
        // A unary handler reads the whole request message before it answers.
        let (parts, body) = req.into_parts();
        let _ = body.collect().await;
        let req = Request::from_parts(parts, ());
        let grpc = |body: BoxBody| {
            let mut r = Response::new(body);
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            r
        };
        let response = match req.uri().path() {
            "/test.Stream/Many" => {
                let frames = (0..MESSAGES)
                    .map(|i| Ok::<_, Infallible>(Frame::data(frame(&i.to_be_bytes()))))
                    .chain(std::iter::once(Ok(Frame::trailers(trailers(0)))));
                grpc(body::boxed(StreamBody::new(futures_util::stream::iter(
                    frames,
                ))))
            }
            _ if req
                .headers()
                .get("x-envoy-attempt-count")
                .is_some_and(|v| v == "1") =>
            {
                // Trailers-only: the status in the headers, no body.
                let mut r = grpc(body::empty());
                r.headers_mut()
                    .insert("grpc-status", HeaderValue::from_static("14"));
                r
            }
            _ => {
                let frames = vec![
                    Ok::<_, Infallible>(Frame::data(frame(b"pong"))),
                    Ok(Frame::trailers(trailers(0))),
                ];
                grpc(body::boxed(StreamBody::new(futures_util::stream::iter(
                    frames,
                ))))
            }
        };
        Ok::<_, Infallible>(response)
    });
    serve_upstream("grpc", service).await
}

fn grpc_registry(u: &Upstream) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: echo }}
spec:
  hosts: [echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 50051, name: grpc, protocol: GRPC }}]
  endpoints: [{{ address: 127.0.0.1, ports: {{ grpc: {} }} }}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: echo }}
spec:
  hosts: [echo]
  http:
  - retries: {{ attempts: 2, retryOn: unavailable }}
    route: [{{ destination: {{ host: echo }} }}]
",
        u.addr.port()
    )
}

/// Calls `path` through the sidecar over h2c; returns the messages and the trailers.
async fn call(
    proxy: std::net::SocketAddr,
    path: &str,
) -> (u16, Vec<Bytes>, Option<HeaderMap>, HeaderMap) {
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::post(format!("http://echo:50051{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(frame(b"ping")))
        .unwrap();
    let response = send.send_request(req).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = response.into_body();
    let mut buf = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            buf.extend_from_slice(data);
        } else if let Ok(t) = frame.into_trailers() {
            trailers = Some(t);
        }
    }
    let mut messages = Vec::new();
    let mut buf = buf.freeze();
    while buf.len() >= 5 {
        buf.advance(1);
        let len = buf.get_u32() as usize;
        messages.push(buf.split_to(len));
    }
    (status, messages, trailers, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stream_of_ten_thousand_messages_arrives_whole_with_its_trailers() {
    let upstream = grpc_upstream().await;
    let config = ConfigDir::new(&grpc_registry(&upstream));
    let proxy = start_proxy(&config).await;
    let (status, messages, trailers, _) = call(proxy.outbound, "/test.Stream/Many").await;
    assert_eq!(status, 200);
    assert_eq!(messages.len(), MESSAGES as usize);
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m.as_ref(), (i as u32).to_be_bytes(), "message {i} in order");
    }
    assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
    // Istio's message counters: the call sent one message and got 10,000 (only this test
    // streams that many; the binary's tests share one recorder).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = prometheus(proxy.admin).await;
    let counter = |name: &str| -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .map(|l| {
                let (labels, value) = l.rsplit_once(' ').unwrap();
                (labels.to_owned(), value.parse().unwrap())
            })
            .collect()
    };
    let responses = counter("istio_response_messages_total");
    let (labels, _) = responses
        .iter()
        .find(|(_, n)| *n >= f64::from(MESSAGES))
        .unwrap_or_else(|| panic!("no stream of {MESSAGES} messages: {responses:?}"));
    assert!(labels.contains("request_protocol=\"grpc\""), "{labels}");
    assert!(labels.contains("grpc_response_status=\"0\""), "{labels}");
    // The same label set's request count: one message per call so far.
    let requests = counter("istio_request_messages_total");
    let sent = requests
        .iter()
        .find(|(l, _)| {
            l.replace("istio_request_messages_total", "")
                == labels.replace("istio_response_messages_total", "")
        })
        .map(|(_, n)| *n);
    let calls = counter("istio_requests_total")
        .iter()
        .find(|(l, _)| {
            l.replace("istio_requests_total", "")
                == labels.replace("istio_response_messages_total", "")
        })
        .map(|(_, n)| *n);
    assert_eq!(sent, calls, "{requests:?}");
    assert!(sent.is_some_and(|n| n >= 1.0));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_answered_unavailable_is_retried_and_succeeds() {
    let upstream = grpc_upstream().await;
    let config = ConfigDir::new(&grpc_registry(&upstream));
    let proxy = start_proxy(&config).await;
    // Every first try fails here: three calls stay within the retry budget's floor.
    for _ in 0..3 {
        let (status, messages, trailers, headers) = call(proxy.outbound, "/test.Unary/Flaky").await;
        assert_eq!(status, 200);
        assert!(
            headers.get("grpc-status").is_none(),
            "not the trailers-only failure: {headers:?}"
        );
        assert_eq!(messages, [Bytes::from_static(b"pong")]);
        assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_call_denied_by_policy_gets_permission_denied_as_grpc() {
    let upstream = grpc_upstream().await;
    let deny = "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: no-streams }
spec:
  action: DENY
  rules: [{ to: [{ operation: { paths: [\"/test.Stream/*\"] } }] }]
";
    let config = ConfigDir::new(&(grpc_registry(&upstream) + deny));
    let mut options = test_options(vec![config.path()]);
    options.app = Some(upstream.addr);
    let proxy = mesh_examples::proxy::Proxy::start(options).await.unwrap();
    let (status, messages, _, headers) = call(proxy.inbound, "/test.Stream/Many").await;
    // Trailers-only, as Envoy answers a gRPC request it refuses: not a text 403.
    assert_eq!(status, 200);
    assert!(messages.is_empty());
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(
        headers["grpc-status"], "7",
        "PERMISSION_DENIED: {headers:?}"
    );
    assert!(
        headers["grpc-message"].to_str().unwrap().contains("RBAC"),
        "{headers:?}"
    );
    proxy.shutdown().await;
}
