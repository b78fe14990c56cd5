//! Telemetry at a stack's edge: Istio's standard metrics, trace context propagation and the
//! access log, for every request, including the ones the proxy answered itself.
//!
//! [`Telemetry::start`] runs when a request enters (request id, trace context); the returned
//! [`Observation`] wraps the response body and records metrics and the access log line when
//! the body ends, so durations and byte counts cover the whole exchange.
//!
//! `istio_request_bytes` and `istio_response_bytes` are sizes on the wire, as Istio's byte
//! meters (`wireBytesReceived`, `wireBytesSent`) give them: the headers (counted as Envoy's
//! `HeaderMap::byteSize()` does, the same for HTTP/1.1 and HTTP/2) and the body bytes actually
//! carried. A stack hands the request's body to [`Observation::request_body`]: a body of known
//! length counts its length, any other is counted as it streams ([`RequestBody`]). The access
//! log's byte counts are the bodies' alone, as Envoy's `%BYTES_RECEIVED%` / `%BYTES_SENT%`.
//!
//! Metrics go through the `metrics` facade: a program installs a recorder (the sidecar
//! installs the Prometheus one); without one they cost a few atomic loads. A program that
//! installs `metrics-exporter-prometheus` itself runs its upkeep (`PrometheusHandle::run_upkeep`)
//! every few seconds, as the sidecar does: the exporter keeps each histogram sample (three a
//! request here) until a scrape or an upkeep folds it into its buckets. The sidecar's own
//! recorder (`mesh-examples`, module `metrics`) counts Istio's histograms in place in their
//! fixed buckets instead: a fifth of the instructions and half the atomic operations.

mod access_log;
mod grpc_messages;
mod istio_metrics;
mod local_service;
pub mod otlp;
mod peer;
mod propagation;
mod request_body;
mod size;
mod spans;
mod tcp_peer;

pub use access_log::AccessLogFormat;
pub use istio_metrics::{BYTES_BUCKETS, DURATION_BUCKETS_MS};
pub use peer::{PEER_METADATA, PEER_METADATA_ID, PeerMetadata};
pub use propagation::{Propagators, TraceContext, UnknownPropagator, parse_b3, parse_traceparent};
pub use request_body::RequestBody;
pub use spans::{SpanKind, SpanRecord, SpanSink, TraceScope};
pub use tcp_peer::{PEER_EXCHANGE_ALPN, PeerExchanged, TcpPeerExchange};

use crate::body::{self, BoxBody, BoxError};
use crate::flags::ResponseFlags;
use crate::rng::Rng;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use mesh_core::model::{Labels, PathNormalization, Percentage, Workload};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;

/// Which side of the exchange this proxy reports for (Istio's `reporter` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reporter {
    /// The client side: the outbound stack.
    Source,
    /// The server side: the inbound stack.
    Destination,
}

impl Reporter {
    fn label(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

/// What telemetry reports of the endpoint the balancer chose: built once per endpoint and
/// snapshot, and found in the response's [`crate::context::RequestContext`].
#[derive(Clone, Debug)]
pub struct UpstreamInfo {
    /// The endpoint, `address:port`.
    pub authority: String,
    /// The service's host name.
    pub service: String,
    /// The service's namespace, when known.
    pub namespace: Option<String>,
    /// The endpoint's labels (`app`, `version`).
    pub labels: Labels,
    /// The endpoint's service account, when known.
    pub service_account: Option<String>,
    /// The endpoint's workload name, when known (istiod's EDS metadata says).
    pub workload: Option<String>,
    /// The endpoint's cluster id, when known.
    pub cluster: Option<String>,
}

/// How many tries a request took, left in the response's extensions by the retry layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempts(pub u32);

/// Which try a request is, in the request's [`crate::context::RequestContext`] (set by the
/// retry layer on a retry: a request without one is a first try), so that the balancer can
/// send a retry to another locality when the route allows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the first try.
    pub number: u32,
    /// Istio's `retryRemoteLocalities`: retries may leave the workload's locality.
    pub remote_localities: bool,
}

/// Where access log lines go.
pub type AccessLogSink = Arc<dyn Fn(&str) + Send + Sync>;

/// The telemetry of one stack.
#[derive(Clone)]
pub struct Telemetry {
    reporter: Reporter,
    rng: Rng,
    sampling: Percentage,
    propagators: Propagators,
    access_log: Option<(AccessLogFormat, AccessLogSink)>,
    spans: Option<SpanSink>,
    labels: Arc<istio_metrics::WorkloadLabels>,
    /// Istio's metadata exchange ([`Telemetry::metadata_exchange`]).
    exchange: Arc<peer::Exchange>,
    /// Where a server-side stack finds its service ([`Telemetry::local_service`]).
    local_service: Option<Arc<local_service::LocalService>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("reporter", &self.reporter)
            .field("sampling", &self.sampling)
            .field("propagators", &self.propagators)
            .field("access_log", &self.access_log.as_ref().map(|(f, _)| f))
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Telemetry for `workload` reporting as `reporter`, sampling new traces at Istio's
    /// default 1%, without an access log, with Istio's metadata exchange.
    pub fn new(reporter: Reporter, workload: Workload) -> Self {
        Self {
            reporter,
            exchange: Arc::new(peer::Exchange::new(&workload)),
            local_service: None,
            labels: Arc::new(istio_metrics::WorkloadLabels::new(&workload)),
            rng: Rng::from_entropy(),
            sampling: Percentage::from_ppm(10_000).unwrap_or(Percentage::NONE),
            propagators: Propagators::default(),
            access_log: None,
            spans: None,
        }
    }

    /// Reads and writes the trace context in the formats `propagators` names (default:
    /// W3C and B3 multi-header; see [`Propagators`]).
    pub fn propagators(mut self, propagators: Propagators) -> Self {
        self.propagators = propagators;
        self
    }

    /// Sends the spans of sampled requests (the request's, and one per upstream try) to `sink`,
    /// e.g. an [`otlp::exporter`].
    pub fn spans(mut self, sink: SpanSink) -> Self {
        self.spans = Some(sink);
        self
    }

    /// Samples `percentage` of new traces (a caller's sampling decision is kept).
    pub fn sampling(mut self, percentage: Percentage) -> Self {
        self.sampling = percentage;
        self
    }

    /// Writes one access log line per request to `sink`.
    pub fn access_log(mut self, format: AccessLogFormat, sink: AccessLogSink) -> Self {
        self.access_log = Some((format, sink));
        self
    }

    /// Istio's metadata exchange (on by default): the workload's metadata goes to the peer in
    /// `x-envoy-peer-metadata` (on requests from an outbound stack; on responses from an
    /// inbound stack, when the request carried the peer's), and the peer's, taken out of the
    /// message it came in, labels the metrics (`source_workload` and the other `source_*`
    /// labels on the server's side, `destination_*` on the client's). See
    /// [`PeerMetadata`].
    ///
    /// Off, the headers are neither sent nor read: an inbound stack passes a caller's to the
    /// app, and the peer's labels come from the config alone (the endpoint's labels and
    /// metadata on the client's side, `unknown` on the server's).
    pub fn metadata_exchange(mut self, enabled: bool) -> Self {
        Arc::make_mut(&mut self.exchange).enabled = enabled;
        self
    }

    /// Sends `node_id` (Istio's `sidecar~IP~POD.NS~NS.svc.DOMAIN`) in
    /// `x-envoy-peer-metadata-id` with the workload's metadata: Envoy caches what it read
    /// from a peer by this id.
    pub fn node_id(mut self, node_id: &str) -> Self {
        Arc::make_mut(&mut self.exchange).set_id(node_id);
        self
    }

    /// On a server-side stack ([`Reporter::Destination`]), names the service the workload is
    /// an instance of in `destination_service` and `destination_service_name`: the service of
    /// the workload port the request came in on (`TlsInfo::workload_port`, else the
    /// connection's local port) in `store`'s live
    /// [`MeshConfig::workload_service_ports`](mesh_core::model::MeshConfig), else the first of
    /// its `workload_services`, as Istio names an inbound cluster's service (`unknown` while it
    /// names none). The access log and
    /// spans then also show the request path normalized as the store's live
    /// [`MeshConfig::path_normalization`](mesh_core::model::MeshConfig::path_normalization)
    /// says, as authorization and the app see it (Istio's default, `BASE`, without a store).
    pub fn local_service(mut self, store: Arc<mesh_core::store::ConfigStore>) -> Self {
        self.local_service = Some(Arc::new(local_service::LocalService::new(store)));
        self
    }

    /// The path normalization the inbound side applies: the live config's, when the stack has
    /// one ([`Telemetry::local_service`]).
    fn path_normalization(&self) -> PathNormalization {
        self.local_service
            .as_ref()
            .map_or_else(PathNormalization::default, |l| l.path_normalization())
    }

    /// Draws ids and sampling decisions from `rng`.
    pub fn rng(mut self, rng: Rng) -> Self {
        self.rng = rng;
        self
    }

    /// Starts observing `req`: sets `x-request-id` when absent and the trace context headers
    /// (of the configured [`Propagators`]) for the next hop. Hand the request's body to
    /// [`Observation::request_body`] to count the bytes it actually carries.
    pub fn start<B>(&self, req: &mut Request<B>) -> Observation {
        let found = propagation::TraceHeaders::scan(req.headers());
        let has_request_id = found.request_id.is_some_and(|v| v.to_str().is_ok());
        let trace = propagation::continue_trace(&found, self.propagators, &self.rng, self.sampling);
        let stale_b3 = found.stale_b3();
        // Before the headers added below: the size of the request as it came in.
        let request_bytes =
            size::RequestBytes::new(size::request_header_bytes(req, &found), found.body_size());
        let grpc = found.is_grpc();
        // For the outbound layers below that would each look the content type up again (retry,
        // timeout). An inbound stack has none, and a context made for this alone would cost
        // its request an allocation and, beside the connection's extensions, a regrown map
        // (about 500 instructions); without it, a reader scans the headers itself.
        if self.reporter == Reporter::Source {
            crate::context::RequestContext::of_mut(req).grpc = Some(grpc);
        }
        let headers = req.headers_mut();
        // Room for every header added here at once: a map parsed to fit its headers grows
        // once, not once per header.
        headers.reserve(7);
        let received = match (self.exchange.enabled, self.reporter) {
            (true, Reporter::Source) => {
                self.exchange.write(headers, true, true);
                peer::Received::default()
            }
            (true, Reporter::Destination) => peer::take(headers),
            (false, _) => peer::Received::default(),
        };
        // A request without an id gets one, in the same buffer as the trace headers' values.
        let request_id = (!has_request_id).then(|| propagation::uuid_v4_bytes(&self.rng));
        trace.write(headers, self.propagators, stale_b3, request_id.as_ref());
        let sink = self.spans.clone().filter(|_| trace.sampled);
        // The strings only the access log, a collected span or a debug log read.
        let details = (self.access_log.is_some()
            || sink.is_some()
            || tracing::enabled!(tracing::Level::DEBUG))
        .then(|| {
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_owned()
            };
            Box::new(Details {
                method: req.method().to_string(),
                path: logged_path(self.reporter, self.path_normalization(), req.uri()),
                protocol: format!("{:?}", req.version()),
                authority: crate::route::destination(req).unwrap_or("-").to_owned(),
                user_agent: header("user-agent"),
                forwarded_for: header("x-forwarded-for"),
                request_id: header("x-request-id"),
                trace: trace.clone(),
            })
        });
        if let Some(sink) = sink {
            // For the retry layer's span per try. Unsampled, nothing below adds a span (and
            // the trace context is in the request's `traceparent` header).
            crate::context::RequestContext::of_mut(req).trace = Some(Arc::new(TraceScope {
                context: trace,
                sink,
            }));
        }
        // A clone shares the identity's strings (no copy per request).
        let peer = req.extensions().get::<mesh_policy::PeerIdentity>().cloned();
        let tls_info = req.extensions().get::<crate::tls::TlsInfo>();
        let mutual_tls = peer.is_some() && tls_info.is_some_and(|t| t.tls);
        // Without exchange headers, the peer its connection's TCP metadata exchange named
        // (a peer that took this connection for TCP), as Istio's stats filter falls back to.
        let peer_metadata = received
            .peer
            .or_else(|| tls_info.and_then(|t| t.peer_metadata.clone()));
        // The workload port the request came in on, which names its service (server side).
        let local_port = match (&self.local_service, self.reporter) {
            (Some(_), Reporter::Destination) => {
                tls_info.and_then(|t| t.workload_port).or_else(|| {
                    req.extensions()
                        .get::<crate::server::ConnectionInfo>()
                        .map(|c| c.local.port())
                })
            }
            _ => None,
        };
        Observation {
            telemetry: self.clone(),
            started: Instant::now(),
            details,
            grpc,
            request_bytes,
            peer,
            mutual_tls,
            peer_metadata,
            local_port,
            answer_id: received.id,
            answer_metadata: received.metadata,
            request_messages: None,
        }
    }
}

/// The path the access log and spans show: on the inbound side normalized as authorization
/// and the app see it (`mode`, the live config's path normalization, which Envoy applies
/// before it logs), with the query; on the outbound side, and for a path normalization
/// refuses, as it came.
fn logged_path(reporter: Reporter, mode: PathNormalization, uri: &http::Uri) -> String {
    let raw = uri.path_and_query().map_or("/", |p| p.as_str());
    if reporter == Reporter::Source {
        return raw.to_owned();
    }
    match (
        mesh_policy::authz::normalize_path_with(uri.path(), mode),
        uri.query(),
    ) {
        (Ok(path), Some(query)) => format!("{path}?{query}"),
        (Ok(path), None) => path.into_owned(),
        (Err(_), _) => raw.to_owned(),
    }
}

/// Puts [`Telemetry`] around any service that answers every request (the inbound stack, an
/// app): metrics, trace context, access log.
#[derive(Clone, Debug)]
pub struct TelemetryLayer {
    telemetry: Telemetry,
}

impl TelemetryLayer {
    /// A layer recording with `telemetry`.
    pub fn new(telemetry: Telemetry) -> Self {
        Self { telemetry }
    }
}

impl<S> tower_layer::Layer<S> for TelemetryLayer {
    type Service = Telemetered<S>;

    fn layer(&self, inner: S) -> Telemetered<S> {
        Telemetered {
            telemetry: self.telemetry.clone(),
            inner,
        }
    }
}

/// The service [`TelemetryLayer`] makes. The inner service gets the request's body as a
/// [`RequestBody`], which counts its bytes when its length is not known up front.
#[derive(Clone, Debug)]
pub struct Telemetered<S> {
    telemetry: Telemetry,
    inner: S,
}

impl<S, B> tower_service::Service<Request<B>> for Telemetered<S>
where
    B: Body,
    S: tower_service::Service<
            Request<RequestBody<B>>,
            Response = Response<BoxBody>,
            Error = std::convert::Infallible,
        >,
{
    type Response = Response<BoxBody>;
    type Error = std::convert::Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), std::convert::Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let mut observation = self.telemetry.start(&mut req);
        let req = req.map(|body| observation.request_body(body));
        ResponseFuture {
            future: self.inner.call(req),
            observation: Some(observation),
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Telemetered`]'s response future: the inner service's own (not boxed), its response
    /// handed to the request's [`Observation`].
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        observation: Option<Observation>,
    }
}

impl<F> std::future::Future for ResponseFuture<F>
where
    F: std::future::Future<Output = Result<Response<BoxBody>, std::convert::Infallible>>,
{
    type Output = Result<Response<BoxBody>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = std::task::ready!(this.future.poll(cx));
        Poll::Ready(Ok(match this.observation.take() {
            Some(observation) => observation.finish(response),
            None => response,
        }))
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// One request under observation.
#[derive(Clone, Debug)]
pub struct Observation {
    telemetry: Telemetry,
    started: Instant,
    /// Filled only when something reads it (access log, a collected span, debug logging).
    details: Option<Box<Details>>,
    grpc: bool,
    /// Headers and body (the body is counted once [`Observation::request_body`] has it).
    request_bytes: size::RequestBytes,
    /// The verified peer on an mTLS connection.
    peer: Option<mesh_policy::PeerIdentity>,
    mutual_tls: bool,
    /// The peer workload, from its exchanged metadata (the request's on an inbound stack,
    /// the response's on an outbound one).
    peer_metadata: Option<Arc<PeerMetadata>>,
    /// The workload port a server-side request came in on (with a local service to name).
    local_port: Option<u16>,
    /// An inbound stack answers with its node id: the request carried the peer's.
    answer_id: bool,
    /// An inbound stack answers with its metadata: the request carried the peer's.
    answer_metadata: bool,
    /// A gRPC request's messages so far, once its body is handed over
    /// ([`Observation::request_body`]).
    request_messages: Option<Arc<std::sync::atomic::AtomicU64>>,
}

/// The request's strings for the access log and spans.
#[derive(Clone, Debug)]
struct Details {
    method: String,
    path: String,
    protocol: String,
    authority: String,
    user_agent: String,
    forwarded_for: String,
    request_id: String,
    /// Here rather than in [`Observation`]: its 128-bit trace id would make every
    /// observation, and the response body box that holds it, 16-byte aligned, which costs
    /// the allocator a slower path.
    trace: TraceContext,
}

/// What the response looked like, kept until its body ends (for the access log and spans).
#[derive(Clone, Debug)]
struct Outcome {
    status: u16,
    flags: ResponseFlags,
    upstream: Option<Arc<UpstreamInfo>>,
    attempts: u32,
}

/// Everything recorded when the response body ends.
struct Finished {
    observation: Observation,
    handles: istio_metrics::LocalHandles,
    /// Only with [`Details`].
    outcome: Option<Outcome>,
    /// A gRPC response with no `grpc-status` in its headers (all but trailers-only ones):
    /// what its labels are made of, to label it again with the status its trailers carry.
    grpc_trailers: Option<TrailerLabels>,
    /// The response's header bytes (see [`size::response_header_bytes`]).
    response_headers: u64,
}

/// The labels of a response other than its gRPC status.
struct TrailerLabels {
    status: u16,
    flags: ResponseFlags,
    upstream: Option<Arc<UpstreamInfo>>,
}

impl Observation {
    /// Whether the request is gRPC.
    pub fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// The verified peer's SPIFFE ID (mTLS only).
    fn peer_principal(&self) -> Option<&str> {
        self.peer.as_ref().map(|p| p.id.as_str())
    }

    /// The verified peer's namespace (mTLS, from an ID of Istio's form).
    fn peer_namespace(&self) -> Option<&str> {
        self.peer.as_ref()?.namespace.as_deref()
    }

    /// Wraps `response` so that metrics and the access log are recorded when its body ends.
    pub fn finish(mut self, mut response: Response<BoxBody>) -> Response<BoxBody> {
        if self.telemetry.exchange.enabled {
            match self.telemetry.reporter {
                Reporter::Source => {
                    self.peer_metadata = peer::take(response.headers_mut()).peer;
                }
                Reporter::Destination => {
                    let (id, metadata) = (self.answer_id, self.answer_metadata);
                    let exchange = &self.telemetry.exchange;
                    exchange.write(response.headers_mut(), id, metadata);
                }
            }
        }
        let status = response.status().as_u16();
        let flags = ResponseFlags::of_response(&response);
        // A server-side stack has no upstream: its service stands in for the labels.
        let local = match (&self.telemetry.local_service, self.telemetry.reporter) {
            (Some(local), Reporter::Destination) => local.get(self.local_port),
            _ => None,
        };
        let endpoint = crate::context::RequestContext::of_response(&response)
            .and_then(|c| c.upstream.as_ref()?.info.as_ref());
        // What the labels read (the access log and spans name only a real endpoint).
        let upstream = endpoint.or(local.as_ref());
        // Istio reports a gRPC status for gRPC requests only ("" for any other).
        let grpc_status = self
            .grpc
            .then(|| response.headers().get(&crate::grpc::GRPC_STATUS))
            .flatten()
            .and_then(|v| v.to_str().ok());
        let handles = istio_metrics::handles(
            &self,
            &istio_metrics::OutcomeRef {
                status,
                flags,
                upstream,
                grpc_status,
            },
        );
        let grpc_trailers = (self.grpc && grpc_status.is_none()).then(|| TrailerLabels {
            status,
            flags,
            upstream: upstream.cloned(),
        });
        let outcome = self.details.is_some().then(|| Outcome {
            status,
            flags,
            upstream: endpoint.cloned(),
            attempts: response.extensions().get::<Attempts>().map_or(1, |a| a.0),
        });
        if let Some(details) = &self.details {
            let _span = tracing::debug_span!(
                "request",
                trace_id = %details.trace.trace_id_hex(),
                span_id = %details.trace.span_id_hex(),
                request_id = %details.request_id,
            );
        }
        let response_headers = size::response_header_bytes(&response);
        response.map(|inner| {
            body::erase(ObservedBody {
                inner,
                bytes: 0,
                messages: self.grpc.then(grpc_messages::MessageCount::default),
                done: Some(Finished {
                    observation: self,
                    handles,
                    outcome,
                    grpc_trailers,
                    response_headers,
                }),
            })
        })
    }

    /// Records the metrics and the access log line: `response_headers` and `response_bytes`
    /// (the body's) make `istio_response_bytes`, the access log's `bytes_sent` is the body's.
    fn record(
        &self,
        handles: &istio_metrics::Handles,
        outcome: Option<&Outcome>,
        response_headers: u64,
        response_bytes: u64,
        response_messages: u64,
    ) {
        let elapsed = self.started.elapsed();
        istio_metrics::record(self, handles, response_headers + response_bytes, elapsed);
        istio_metrics::record_messages(self, handles, response_messages);
        let (Some(details), Some(outcome)) = (self.details.as_deref(), outcome) else {
            return;
        };
        if let Some(sink) = self
            .telemetry
            .spans
            .as_ref()
            .filter(|_| details.trace.sampled)
        {
            let end = std::time::SystemTime::now();
            let mut attributes = vec![
                ("http.request.method".to_owned(), details.method.clone()),
                ("url.path".to_owned(), details.path.clone()),
                (
                    "http.response.status_code".to_owned(),
                    outcome.status.to_string(),
                ),
                ("mesh.response_flags".to_owned(), outcome.flags.to_string()),
                ("mesh.attempts".to_owned(), outcome.attempts.to_string()),
                ("guid:x-request-id".to_owned(), details.request_id.clone()),
            ];
            if let Some(up) = &outcome.upstream {
                attributes.push(("upstream_cluster.service".to_owned(), up.service.clone()));
                attributes.push(("server.address".to_owned(), up.authority.clone()));
            }
            sink(SpanRecord {
                trace_id: details.trace.trace_id,
                span_id: details.trace.span_id,
                parent_span_id: details.trace.parent_span_id,
                name: format!("{} {}", self.telemetry.reporter.label(), details.authority),
                kind: SpanKind::Server,
                start: end - elapsed,
                end,
                attributes,
                error: outcome.status >= 500,
            });
        }
        if let Some((format, sink)) = &self.telemetry.access_log {
            sink(&access_log::line(
                *format,
                self,
                details,
                outcome,
                response_bytes,
                elapsed,
            ));
        }
    }
}

/// A body that reports its byte count once, when it ends or is dropped (its data frames' bytes,
/// to which the metrics add the response's header bytes).
struct ObservedBody {
    inner: BoxBody,
    bytes: u64,
    /// A gRPC response's messages, for `istio_response_messages_total`.
    messages: Option<grpc_messages::MessageCount>,
    done: Option<Finished>,
}

impl ObservedBody {
    /// A gRPC call's status usually comes in its trailers: its metrics are labelled with it.
    fn relabel_grpc(&mut self, trailers: &http::HeaderMap) {
        let Some(done) = self.done.as_mut() else {
            return;
        };
        let Some(labels) = done.grpc_trailers.take() else {
            return;
        };
        let Some(grpc_status) = trailers
            .get(&crate::grpc::GRPC_STATUS)
            .and_then(|v| v.to_str().ok())
        else {
            return;
        };
        done.handles = istio_metrics::handles(
            &done.observation,
            &istio_metrics::OutcomeRef {
                status: labels.status,
                flags: labels.flags,
                upstream: labels.upstream.as_ref(),
                grpc_status: Some(grpc_status),
            },
        );
    }

    fn end(&mut self) {
        if let Some(done) = self.done.take() {
            done.observation.record(
                &done.handles,
                done.outcome.as_ref(),
                done.response_headers,
                self.bytes,
                self.messages.as_ref().map_or(0, |m| m.messages()),
            );
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                    if let Some(messages) = this.messages.as_mut() {
                        messages.feed(data);
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    this.relabel_grpc(trailers);
                }
                if this.inner.is_end_stream() {
                    this.end();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.end(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        self.end();
    }
}
