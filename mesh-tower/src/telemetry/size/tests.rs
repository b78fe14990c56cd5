use super::*;

/// The header bytes of `req`, as `Telemetry::start` counts them.
fn header_bytes<B>(req: &Request<B>) -> u64 {
    request_header_bytes(req, &TraceHeaders::scan(req.headers()))
}

#[test]
fn a_request_counts_the_same_over_http1_and_http2() {
    // HTTP/1.1 as hyper parses it: origin-form target, `Host` header.
    let h1 = Request::get("/path?q=1")
        .header("host", "hello")
        .header("user-agent", "curl")
        .body(())
        .unwrap();
    // HTTP/2: the pseudo-headers make the URI, no `Host`.
    let h2 = Request::get("http://hello/path?q=1")
        .version(http::Version::HTTP_2)
        .header("user-agent", "curl")
        .body(())
        .unwrap();
    let expected = (":method".len() + 3)
        + (":path".len() + "/path?q=1".len())
        + (":scheme".len() + 4)
        + (":authority".len() + 5)
        + ("user-agent".len() + 4);
    assert_eq!(header_bytes(&h1), expected as u64);
    assert_eq!(header_bytes(&h2), expected as u64);
    // An absolute-form HTTP/1.1 request with its `Host` counts the authority once.
    let absolute = Request::get("http://hello/path?q=1")
        .header("host", "hello")
        .header("user-agent", "curl")
        .body(())
        .unwrap();
    assert_eq!(header_bytes(&absolute), expected as u64);
}

#[test]
fn every_value_of_a_repeated_header_counts() {
    let req = Request::get("https://a/")
        .header("x", "1")
        .header("x", "22")
        .body(())
        .unwrap();
    let pseudo = (7 + 3) + (5 + 1) + (7 + 5) + (10 + 1);
    assert_eq!(header_bytes(&req), (pseudo + 2 + 3) as u64);
}

#[test]
fn a_response_counts_its_status_and_headers() {
    let response = Response::builder()
        .status(404)
        .header("content-length", "0")
        .body(())
        .unwrap();
    assert_eq!(
        response_header_bytes(&response),
        (":status".len() + 3 + "content-length".len() + 1) as u64
    );
}

#[test]
fn a_counted_body_reads_its_counter() {
    let mut bytes = RequestBytes::new(100, 7);
    assert_eq!((bytes.body(), bytes.total()), (7, 107));
    let counter = Arc::new(AtomicU64::new(0));
    bytes.set_body(BodyBytes::Counted(counter.clone()));
    assert_eq!(bytes.total(), 100);
    counter.fetch_add(30, Ordering::Relaxed);
    assert_eq!((bytes.body(), bytes.total()), (30, 130));
}

/// Through the stacks: a real hyper server on 127.0.0.1 and a real client, with a recorder
/// that keeps every histogram sample.
mod stacks {
    use super::super::super::{AccessLogFormat, Reporter, RequestBody, Telemetry, TelemetryLayer};
    use crate::body::{self, BoxBody, BoxError};
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body::Frame;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Incoming;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use mesh_core::model::Workload;
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::net::TcpListener;
    use tower_layer::Layer;

    /// Every histogram sample, as (metric name, value).
    #[derive(Clone, Default)]
    struct Samples(Arc<Mutex<Vec<(String, f64)>>>);

    impl Samples {
        fn of(&self, name: &str) -> Vec<u64> {
            let samples = self.0.lock().unwrap();
            samples
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| *v as u64)
                .collect()
        }
    }

    struct Sample {
        name: String,
        samples: Samples,
    }

    impl metrics::HistogramFn for Sample {
        fn record(&self, value: f64) {
            self.samples
                .0
                .lock()
                .unwrap()
                .push((self.name.clone(), value));
        }
    }

    impl metrics::Recorder for Samples {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Counter {
            metrics::Counter::noop()
        }
        fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::noop()
        }
        fn register_histogram(
            &self,
            key: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            metrics::Histogram::from_arc(Arc::new(Sample {
                name: key.name().to_owned(),
                samples: self.clone(),
            }))
        }
    }

    /// Three chunks of 3, 4 and 2 bytes, with no length up front: HTTP/1.1 sends it chunked,
    /// HTTP/2 as DATA frames without `content-length`.
    fn three_chunks() -> BoxBody {
        let chunks: [Result<Frame<Bytes>, BoxError>; 3] = [
            Ok(Frame::data(Bytes::from_static(b"abc"))),
            Ok(Frame::data(Bytes::from_static(b"defg"))),
            Ok(Frame::data(Bytes::from_static(b"hi"))),
        ];
        body::erase(StreamBody::new(futures_util::stream::iter(chunks)))
    }

    /// Serves `service` on 127.0.0.1 until the returned sender is dropped.
    async fn server<S>(
        service: S,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<crate::server::Drain>,
    )
    where
        S: tower_service::Service<
                Request<Incoming>,
                Response = Response<BoxBody>,
                Error = Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(crate::server::serve(
            listener,
            service,
            async move {
                let _ = stopped.await;
            },
            Duration::from_secs(1),
        ));
        (addr, stop, task)
    }

    /// Sends `body` to `uri` (with `host`, when given) and returns the response's headers
    /// and body.
    async fn send(
        http2: bool,
        uri: &str,
        host: Option<&str>,
        body: BoxBody,
    ) -> (http::HeaderMap, Bytes) {
        let client = Client::builder(TokioExecutor::new())
            .http2_only(http2)
            .build_http::<BoxBody>();
        let mut req = Request::post(uri);
        if let Some(host) = host {
            req = req.header("host", host);
        }
        let response = client.request(req.body(body).unwrap()).await.unwrap();
        assert_eq!(response.status(), 200);
        let headers = response.headers().clone();
        (
            headers,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    }

    /// An app that reads the whole request body and answers `accepted` with one header.
    async fn app(req: Request<RequestBody<Incoming>>) -> Result<Response<BoxBody>, Infallible> {
        let received = req.into_body().collect().await.unwrap().to_bytes();
        assert!(!received.is_empty());
        Ok(Response::builder()
            .header("x-reply", "yes")
            .body(body::full("accepted"))
            .unwrap())
    }

    #[tokio::test]
    async fn the_inbound_stack_counts_headers_and_the_bytes_each_body_carried() {
        let samples = Samples::default();
        let _recorder = metrics::set_default_local_recorder(&samples);
        let telemetry = Telemetry::new(Reporter::Destination, Workload::default());
        let service = TelemetryLayer::new(telemetry).layer(tower::service_fn(app));
        let (addr, stop, task) = server(service).await;
        let uri = format!("http://{addr}/upload");
        let mut expected_requests = Vec::new();
        for http2 in [false, true] {
            let (headers, body) = send(http2, &uri, None, three_chunks()).await;
            assert_eq!(
                (headers["x-reply"].as_bytes(), &body[..]),
                (&b"yes"[..], &b"accepted"[..])
            );
            send(http2, &uri, None, body::full("0123456789")).await;
            // `:method POST`, `:path /upload`, `:scheme http` and `:authority 127.0.0.1:port`
            // (HTTP/1.1's `Host`).
            let pseudo = (7 + 4) + (5 + 7) + (7 + 4) + (10 + addr.to_string().len());
            // HTTP/1.1 frames a body of unknown length as `transfer-encoding: chunked`.
            let chunked = if http2 {
                0
            } else {
                "transfer-encoding".len() + "chunked".len()
            };
            expected_requests.push((pseudo + chunked + 9) as u64);
            // A known length: its `content-length` header and its bytes.
            expected_requests.push((pseudo + "content-length".len() + 2 + 10) as u64);
        }
        drop(stop);
        task.await.unwrap();
        assert_eq!(samples.of("istio_request_bytes"), expected_requests);
        // `:status 200`, `x-reply: yes` and the body `accepted`.
        let response = (7 + 3) + (7 + 3) + 8;
        assert_eq!(samples.of("istio_response_bytes"), [response; 4]);
    }

    #[tokio::test]
    async fn the_outbound_stack_counts_the_request_body_it_forwards_and_logs_bodies_only() {
        let samples = Samples::default();
        let _recorder = metrics::set_default_local_recorder(&samples);
        // The upstream: reads the body, answers `v1`.
        let upstream = tower::service_fn(|req: Request<Incoming>| async move {
            let received = req.into_body().collect().await.unwrap().to_bytes();
            assert!(!received.is_empty());
            Ok::<_, Infallible>(Response::new(body::full("v1")))
        });
        let (upstream, stop_upstream, upstream_task) = server(upstream).await;
        let yaml = format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: hello }}
spec:
  hosts: [hello]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{ number: 80, name: http, protocol: HTTP }}]
  endpoints: [{{ address: 127.0.0.1, ports: {{ http: {} }} }}]
",
            upstream.port()
        );
        let loaded = mesh_core::istio::load(&[("hello.yaml", &yaml)], &Workload::default());
        let store = Arc::new(mesh_core::store::ConfigStore::new(loaded.config.unwrap()));
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        let telemetry = Telemetry::new(Reporter::Source, Workload::default()).access_log(
            AccessLogFormat::Json,
            Arc::new(move |line: &str| sink.lock().unwrap().push(line.to_owned())),
        );
        let outbound = crate::outbound::Outbound::builder(store)
            .telemetry(telemetry)
            .build();
        let (addr, stop, task) = server(outbound).await;
        let uri = format!("http://{addr}/upload");
        let mut expected_responses = Vec::new();
        for body in [three_chunks(), body::full("0123456789")] {
            let (headers, received) = send(false, &uri, Some("hello"), body).await;
            assert_eq!(&received[..], b"v1");
            // The response as the stack sent it: `:status 200`, the upstream's headers, `v1`.
            let fields: usize = headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len())
                .sum();
            expected_responses.push((7 + 3 + fields + 2) as u64);
        }
        drop(stop);
        task.await.unwrap();
        drop(stop_upstream);
        upstream_task.await.unwrap();
        // The access log has the bodies' bytes only, as Envoy's %BYTES_RECEIVED% / %BYTES_SENT%.
        let lines = lines.lock().unwrap().clone();
        let bytes: Vec<_> = lines
            .iter()
            .map(|line| {
                let json: serde_json::Value = serde_json::from_str(line).unwrap();
                (json["bytes_received"].as_u64(), json["bytes_sent"].as_u64())
            })
            .collect();
        assert_eq!(bytes, [(Some(9), Some(2)), (Some(10), Some(2))]);
        // `:method POST`, `:path /upload`, `:scheme http`, `:authority hello`.
        let pseudo = (7 + 4) + (5 + 7) + (7 + 4) + (10 + 5);
        assert_eq!(
            samples.of("istio_request_bytes"),
            [
                (pseudo + "transfer-encoding".len() + "chunked".len() + 9) as u64,
                (pseudo + "content-length".len() + 2 + 10) as u64,
            ]
        );
        assert_eq!(samples.of("istio_response_bytes"), expected_responses);
    }
}
