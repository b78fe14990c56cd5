//! Istio's standard HTTP metrics, with their names and label sets.

use super::{Observation, PeerMetadata, Reporter, UpstreamInfo};
use crate::flags::ResponseFlags;
use foldhash::HashMap;
use metrics::{Label, SharedString};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Istio's buckets for `istio_request_duration_milliseconds`.
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5,
    1.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    30_000.0,
    60_000.0,
    300_000.0,
    600_000.0,
    1_800_000.0,
    3_600_000.0,
];

/// Istio's buckets for `istio_request_bytes` and `istio_response_bytes`.
pub const BYTES_BUCKETS: [f64; 9] = [
    1.0,
    10.0,
    100.0,
    1_000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
    10_000_000.0,
    100_000_000.0,
];

/// The labels that describe this workload, computed once per stack and shared (cheap
/// clones) by every request's label set, and the metric handles of the label sets seen so far.
pub(super) struct WorkloadLabels {
    /// This workload, as its side of the labels names it.
    me: Side,
    trust_domain: String,
    /// One registry lookup per new label set instead of four per request, found by a
    /// fingerprint of what varies between requests ([`Key`]), so the labels are built and
    /// hashed only for a set not seen before.
    handles: Mutex<HandleCache>,
}

/// Metric handles by label-set fingerprint (a collision keeps both sets under one entry).
#[derive(Default)]
struct HandleCache {
    sets: HashMap<u64, Vec<Arc<Handles>>>,
}

/// The other workload of an exchange, as far as the request and its response tell: from
/// the peer's exchanged metadata first, else (on the client's side) from what the config says
/// of the endpoint. `S` is `&str` while a request's labels are looked up, `String` in the
/// cache.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
struct PeerLabels<S> {
    workload: Option<S>,
    namespace: Option<S>,
    app: Option<S>,
    version: Option<S>,
    canonical_service: Option<S>,
    canonical_revision: Option<S>,
    cluster: Option<S>,
}

impl<'a> PeerLabels<&'a str> {
    fn new(o: &'a Observation, upstream: Option<&'a UpstreamInfo>) -> Self {
        // On the server side the upstream is the workload's own service, not the peer.
        let upstream = upstream.filter(|_| o.telemetry.reporter == Reporter::Source);
        let peer = o.peer_metadata.as_deref();
        let told = |field: fn(&PeerMetadata) -> &String| {
            peer.map(|p| field(p).as_str()).filter(|v| !v.is_empty())
        };
        let labels = upstream.map(|u| &u.labels);
        let label = |key: &str| labels?.get(key).map(String::as_str);
        Self {
            // The endpoint's `app` label stands in for a workload name the config does not
            // give (a ServiceEntry's endpoints have labels, not workload names).
            workload: told(|p| &p.workload)
                .or_else(|| upstream?.workload.as_deref())
                .or_else(|| label("app")),
            namespace: told(|p| &p.namespace).or_else(|| upstream?.namespace.as_deref()),
            app: told(|p| &p.app).or_else(|| label("app")),
            version: told(|p| &p.version).or_else(|| label("version")),
            canonical_service: told(|p| &p.canonical_service)
                .or_else(|| mesh_core::model::canonical_service(labels?)),
            canonical_revision: told(|p| &p.canonical_revision)
                .or_else(|| mesh_core::model::canonical_revision(labels?)),
            cluster: told(|p| &p.cluster).or_else(|| upstream?.cluster.as_deref()),
        }
    }

    fn to_owned(&self) -> PeerLabels<String> {
        let own = |v: Option<&str>| v.map(str::to_owned);
        PeerLabels {
            workload: own(self.workload),
            namespace: own(self.namespace),
            app: own(self.app),
            version: own(self.version),
            canonical_service: own(self.canonical_service),
            canonical_revision: own(self.canonical_revision),
            cluster: own(self.cluster),
        }
    }
}

impl PeerLabels<String> {
    fn as_deref(&self) -> PeerLabels<&str> {
        PeerLabels {
            workload: self.workload.as_deref(),
            namespace: self.namespace.as_deref(),
            app: self.app.as_deref(),
            version: self.version.as_deref(),
            canonical_service: self.canonical_service.as_deref(),
            canonical_revision: self.canonical_revision.as_deref(),
            cluster: self.cluster.as_deref(),
        }
    }
}

/// What makes one request's label set differ from another's in the same stack (the workload's
/// own labels and the reporter are fixed per stack).
#[derive(Debug)]
struct Key {
    service: Option<String>,
    service_namespace: Option<String>,
    service_account: Option<String>,
    peer: PeerLabels<String>,
    status: u16,
    flags: ResponseFlags,
    grpc_status: Option<String>,
    grpc: bool,
    peer_principal: Option<String>,
    peer_namespace: Option<String>,
    mutual_tls: bool,
}

/// [`Key`], borrowed from the request and its response.
#[derive(Hash)]
struct KeyRef<'a> {
    service: Option<&'a str>,
    service_namespace: Option<&'a str>,
    service_account: Option<&'a str>,
    peer: PeerLabels<&'a str>,
    status: u16,
    flags: ResponseFlags,
    grpc_status: Option<&'a str>,
    grpc: bool,
    peer_principal: Option<&'a str>,
    peer_namespace: Option<&'a str>,
    mutual_tls: bool,
}

impl<'a> KeyRef<'a> {
    fn new(o: &'a Observation, outcome: &'a OutcomeRef<'a>) -> Self {
        let up = outcome.upstream.map(|u| &**u);
        Self {
            service: up.map(|u| u.service.as_str()),
            service_namespace: up.and_then(|u| u.namespace.as_deref()),
            service_account: up.and_then(|u| u.service_account.as_deref()),
            peer: PeerLabels::new(o, up),
            status: outcome.status,
            flags: outcome.flags,
            grpc_status: outcome.grpc_status,
            grpc: o.grpc,
            peer_principal: o.peer_principal(),
            peer_namespace: o.peer_namespace(),
            mutual_tls: o.mutual_tls,
        }
    }

    fn fingerprint(&self) -> u64 {
        use std::hash::BuildHasher;
        // Not keyed: a collision only costs a field-by-field comparison (`matches`).
        foldhash::fast::FixedState::default().hash_one(self)
    }

    fn matches(&self, key: &Key) -> bool {
        self.service == key.service.as_deref()
            && self.service_namespace == key.service_namespace.as_deref()
            && self.service_account == key.service_account.as_deref()
            && self.peer == key.peer.as_deref()
            && self.status == key.status
            && self.flags == key.flags
            && self.grpc_status == key.grpc_status.as_deref()
            && self.grpc == key.grpc
            && self.peer_principal == key.peer_principal.as_deref()
            && self.peer_namespace == key.peer_namespace.as_deref()
            && self.mutual_tls == key.mutual_tls
    }

    fn to_owned(&self) -> Key {
        let own = |v: Option<&str>| v.map(str::to_owned);
        Key {
            service: own(self.service),
            service_namespace: own(self.service_namespace),
            service_account: own(self.service_account),
            peer: self.peer.to_owned(),
            status: self.status,
            flags: self.flags,
            grpc_status: own(self.grpc_status),
            grpc: self.grpc,
            peer_principal: own(self.peer_principal),
            peer_namespace: own(self.peer_namespace),
            mutual_tls: self.mutual_tls,
        }
    }
}

impl Key {
    /// Whether the labels that come neither from the endpoint nor from the peer's metadata
    /// are those of `o` and `outcome`.
    fn same_outcome(&self, o: &Observation, outcome: &OutcomeRef<'_>) -> bool {
        self.status == outcome.status
            && self.flags == outcome.flags
            && self.grpc_status.as_deref() == outcome.grpc_status
            && self.grpc == o.grpc
            && self.peer_principal.as_deref() == o.peer_principal()
            && self.peer_namespace.as_deref() == o.peer_namespace()
            && self.mutual_tls == o.mutual_tls
    }
}

/// What the label set needs of a response, borrowed from it.
pub(super) struct OutcomeRef<'a> {
    pub(super) status: u16,
    pub(super) flags: ResponseFlags,
    pub(super) upstream: Option<&'a Arc<UpstreamInfo>>,
    pub(super) grpc_status: Option<&'a str>,
}

/// The four standard metrics of one label set.
pub(super) struct Handles {
    /// What the label set was made of.
    key: Key,
    requests: metrics::Counter,
    duration: metrics::Histogram,
    request_bytes: metrics::Histogram,
    response_bytes: metrics::Histogram,
    /// `istio_request_messages_total` and `istio_response_messages_total`, for gRPC only
    /// (as Istio registers them).
    messages: Option<[metrics::Counter; 2]>,
}

/// Label sets beyond this many are recorded without caching their handles (a bound on memory
/// should label values ever grow without bound).
const MAX_CACHED_LABEL_SETS: usize = 4_096;

impl std::fmt::Debug for WorkloadLabels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadLabels")
            .field("workload", &self.me.workload)
            .field("namespace", &self.me.namespace)
            .finish_non_exhaustive()
    }
}

impl Handles {
    fn new(key: Key, labels: Vec<Label>) -> Self {
        let grpc = key.grpc;
        Self {
            key,
            requests: metrics::counter!("istio_requests_total", labels.clone()),
            duration: metrics::histogram!("istio_request_duration_milliseconds", labels.clone()),
            request_bytes: metrics::histogram!("istio_request_bytes", labels.clone()),
            response_bytes: metrics::histogram!("istio_response_bytes", labels.clone()),
            messages: grpc.then(|| {
                [
                    metrics::counter!("istio_request_messages_total", labels.clone()),
                    metrics::counter!("istio_response_messages_total", labels),
                ]
            }),
        }
    }
}

impl WorkloadLabels {
    pub(super) fn new(w: &mesh_core::model::Workload) -> Self {
        let me = PeerMetadata::of_workload(w);
        let known = |v: &str| or_unknown(Some(v));
        Self {
            me: Side {
                workload: known(&me.workload),
                namespace: known(&me.namespace),
                principal: SharedString::from(format!(
                    "spiffe://{}/ns/{}/sa/{}",
                    w.trust_domain, w.namespace, w.service_account
                )),
                app: known(&me.app),
                version: known(&me.version),
                canonical_service: known(&me.canonical_service),
                canonical_revision: known(&me.canonical_revision),
                cluster: known(&me.cluster),
            },
            trust_domain: w.trust_domain.clone(),
            handles: Mutex::default(),
        }
    }
}

const UNKNOWN: &str = "unknown";

fn or_unknown(value: Option<&str>) -> SharedString {
    or(value, UNKNOWN)
}

fn or(value: Option<&str>, default: &'static str) -> SharedString {
    match value.filter(|v| !v.is_empty()) {
        Some(v) => SharedString::from(v.to_owned()),
        None => SharedString::from(default),
    }
}

/// One side of an exchange (source or destination), as its labels name it.
#[derive(Clone, Debug)]
struct Side {
    workload: SharedString,
    namespace: SharedString,
    principal: SharedString,
    app: SharedString,
    version: SharedString,
    canonical_service: SharedString,
    canonical_revision: SharedString,
    cluster: SharedString,
}

/// The standard label set for one request, in the order Istio's stats filter writes it.
fn labels(o: &Observation, outcome: &OutcomeRef<'_>) -> Vec<Label> {
    let me = o.telemetry.labels.me.clone();
    let up = outcome.upstream.map(|u| &**u);
    let peer = PeerLabels::new(o, up);
    let service = up.map(|u| u.service.as_str());
    let service_name = service.and_then(|s| s.split('.').next());
    let source = o.telemetry.reporter == Reporter::Source;
    let peer_principal = if source {
        // The endpoint's expected identity (the connection's certificate is checked
        // against it).
        up.and_then(|u| {
            Some(format!(
                "spiffe://{}/ns/{}/sa/{}",
                o.telemetry.labels.trust_domain,
                u.namespace.as_deref()?,
                u.service_account.as_deref()?
            ))
        })
    } else {
        o.peer_principal().map(str::to_owned)
    };
    let them = Side {
        workload: or_unknown(peer.workload),
        // Istio's order: the namespace in the peer's verified identity, then its metadata's.
        namespace: or_unknown(o.peer_namespace().filter(|_| !source).or(peer.namespace)),
        principal: or_unknown(peer_principal.as_deref()),
        app: or_unknown(peer.app),
        version: or_unknown(peer.version),
        canonical_service: or_unknown(peer.canonical_service),
        canonical_revision: or(peer.canonical_revision, "latest"),
        cluster: or_unknown(peer.cluster),
    };
    let service_namespace = if source {
        or_unknown(up.and_then(|u| u.namespace.as_deref()))
    } else {
        me.namespace.clone()
    };
    let (src, dst) = if source { (me, them) } else { (them, me) };
    let label = |key: &'static str, value: SharedString| Label::new(key, value);
    vec![
        label("reporter", SharedString::from(o.telemetry.reporter.label())),
        label("source_workload", src.workload),
        label("source_canonical_service", src.canonical_service),
        label("source_canonical_revision", src.canonical_revision),
        label("source_workload_namespace", src.namespace),
        label("source_principal", src.principal),
        label("source_app", src.app),
        label("source_version", src.version),
        label("source_cluster", src.cluster),
        label("destination_workload", dst.workload),
        label("destination_workload_namespace", dst.namespace),
        label("destination_principal", dst.principal),
        label("destination_app", dst.app),
        label("destination_version", dst.version),
        label("destination_service", or_unknown(service)),
        label("destination_canonical_service", dst.canonical_service),
        label("destination_canonical_revision", dst.canonical_revision),
        label("destination_service_name", or_unknown(service_name)),
        label("destination_service_namespace", service_namespace),
        label("destination_cluster", dst.cluster),
        label(
            "request_protocol",
            SharedString::from(if o.grpc { "grpc" } else { "http" }),
        ),
        label(
            "response_code",
            SharedString::from(outcome.status.to_string()),
        ),
        label(
            "grpc_response_status",
            outcome
                .grpc_status
                .map_or(SharedString::from(""), |v| SharedString::from(v.to_owned())),
        ),
        label(
            "response_flags",
            SharedString::from(outcome.flags.to_string()),
        ),
        label(
            "connection_security_policy",
            SharedString::from(match (source, o.mutual_tls) {
                (false, true) => "mutual_tls",
                (false, false) => "none",
                (true, _) => UNKNOWN,
            }),
        ),
    ]
}

/// The metric handles a thread used last, for a stack's label cache.
pub(super) type LocalHandles = Arc<Arc<Handles>>;

/// One thread's last label set of one stack: what [`handles`] finds without the stack's lock
/// or a reference count that every worker writes.
struct Last {
    /// Whose entry this is. A weak reference keeps the address from being reused by
    /// another stack's labels (the allocation outlives the labels while it is held).
    labels: std::sync::Weak<WorkloadLabels>,
    upstream: Option<Arc<UpstreamInfo>>,
    /// The peer's exchanged metadata, one `Arc` per header value a thread decoded.
    peer: Option<Arc<PeerMetadata>>,
    /// This thread's own reference to the handles: cloning it writes only its count.
    handles: LocalHandles,
}

/// Entries kept per thread: a sidecar worker serves an inbound and an outbound stack.
const LAST_PER_THREAD: usize = 4;

thread_local! {
    static LAST: std::cell::RefCell<Vec<Last>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The metric handles of a finished response's label set. The thread's last set of this stack
/// is tried first (a stack's traffic mostly repeats one label set: one service's endpoints,
/// 200); else the stack's cache is searched by a fingerprint of what varies between
/// requests, and the labels are built (and the registry asked) only for a new set.
pub(super) fn handles(o: &Observation, outcome: &OutcomeRef<'_>) -> LocalHandles {
    let labels = &o.telemetry.labels;
    // `None` also when the thread is exiting and its entries are gone.
    let found = LAST
        .try_with(|last| {
            last.borrow()
                .iter()
                .find(|l| std::ptr::eq(l.labels.as_ptr(), Arc::as_ptr(labels)))
                .filter(|l| {
                    same_arc(l.upstream.as_ref(), outcome.upstream)
                        && same_arc(l.peer.as_ref(), o.peer_metadata.as_ref())
                        && l.handles.key.same_outcome(o, outcome)
                })
                .map(|l| l.handles.clone())
        })
        .ok()
        .flatten();
    if let Some(handles) = found {
        return handles;
    }
    let handles = Arc::new(shared_handles(labels, o, outcome));
    // Not kept when the thread is exiting.
    let _ = LAST.try_with(|last| {
        let mut last = last.borrow_mut();
        let entry = Last {
            labels: Arc::downgrade(labels),
            upstream: outcome.upstream.cloned(),
            peer: o.peer_metadata.clone(),
            handles: handles.clone(),
        };
        match last
            .iter()
            .position(|l| std::ptr::eq(l.labels.as_ptr(), Arc::as_ptr(labels)))
        {
            Some(i) => last[i] = entry,
            None => {
                // Entries of stacks since dropped go first, then the oldest.
                last.retain(|l| l.labels.strong_count() > 0);
                if last.len() == LAST_PER_THREAD {
                    last.remove(0);
                }
                last.push(entry);
            }
        }
    });
    handles
}

/// The handles of the label set of `o` and `outcome` from the stack's cache, made and cached
/// when the set is new.
fn shared_handles(
    labels: &WorkloadLabels,
    o: &Observation,
    outcome: &OutcomeRef<'_>,
) -> Arc<Handles> {
    let cache = &labels.handles;
    let key = KeyRef::new(o, outcome);
    let fingerprint = key.fingerprint();
    if let Some(handles) = cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .sets
        .get(&fingerprint)
        .and_then(|sets| sets.iter().find(|h| key.matches(&h.key)))
    {
        return handles.clone();
    }
    let handles = Arc::new(Handles::new(key.to_owned(), self::labels(o, outcome)));
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if cache.sets.len() < MAX_CACHED_LABEL_SETS {
        cache
            .sets
            .entry(fingerprint)
            .or_default()
            .push(handles.clone());
    }
    handles
}

/// Whether two responses came from the same endpoint object, or had the same decoded peer
/// metadata (or both none).
fn same_arc<T>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Records a gRPC call's message counts: the request's (its body as read by the time the
/// response ended) and the response's.
pub(super) fn record_messages(o: &Observation, handles: &Handles, response_messages: u64) {
    if let Some([request, response]) = &handles.messages {
        let requests = o
            .request_messages
            .as_ref()
            .map_or(0, |n| n.load(std::sync::atomic::Ordering::Relaxed));
        request.increment(requests);
        response.increment(response_messages);
    }
}

/// Records the standard metrics for one finished request: `response_bytes` are its headers'
/// and its body's, as the request's are (see the `size` module).
pub(super) fn record(o: &Observation, handles: &Handles, response_bytes: u64, elapsed: Duration) {
    handles.requests.increment(1);
    handles.duration.record(elapsed.as_secs_f64() * 1_000.0);
    handles.request_bytes.record(o.request_bytes.total() as f64);
    handles.response_bytes.record(response_bytes as f64);
}

#[cfg(test)]
mod tests {
    use super::super::{Reporter, Telemetry};
    use crate::body;
    use http::{HeaderValue, Request, Response};
    use mesh_core::model::Workload;

    #[test]
    fn only_a_grpc_request_reports_the_grpc_status_as_istio_does() {
        let telemetry = Telemetry::new(Reporter::Source, Workload::default());
        for content_type in ["application/grpc", "text/plain"] {
            let mut req = Request::builder()
                .header("content-type", content_type)
                .body(())
                .unwrap();
            let observation = telemetry.start(&mut req);
            let mut response = Response::new(body::empty());
            response
                .headers_mut()
                .insert("grpc-status", HeaderValue::from_static("14"));
            drop(observation.finish(response));
        }
        let cache = telemetry.labels.handles.lock().unwrap();
        let mut seen: Vec<_> = cache
            .sets
            .values()
            .flatten()
            .map(|h| (h.key.grpc, h.key.grpc_status.clone()))
            .collect();
        seen.sort();
        assert_eq!(seen, [(false, None), (true, Some("14".to_owned()))]);
    }

    #[tokio::test]
    async fn a_grpc_status_in_the_trailers_labels_the_call() {
        use http_body_util::BodyExt;
        let telemetry = Telemetry::new(Reporter::Source, Workload::default());
        let call = |trailer: Option<&'static str>| {
            let mut req = Request::builder()
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
            let observation = telemetry.start(&mut req);
            let mut trailers = http::HeaderMap::new();
            if let Some(status) = trailer {
                trailers.insert("grpc-status", HeaderValue::from_static(status));
            }
            let frames: [Result<_, crate::body::BoxError>; 2] = [
                Ok(http_body::Frame::data(bytes::Bytes::from_static(
                    b"\0\0\0\0\0",
                ))),
                Ok(http_body::Frame::trailers(trailers)),
            ];
            let stream = futures_util::stream::iter(frames);
            let inner = body::erase(http_body_util::StreamBody::new(stream));
            observation.finish(Response::new(inner))
        };
        for trailer in [Some("0"), Some("7"), None] {
            let response = call(trailer);
            let collected = response.into_body().collect().await.unwrap();
            assert!(collected.trailers().is_some());
        }
        let cache = telemetry.labels.handles.lock().unwrap();
        let mut seen: Vec<_> = cache
            .sets
            .values()
            .flatten()
            .map(|h| h.key.grpc_status.clone())
            .collect();
        seen.sort();
        // Without a status anywhere, the label stays empty.
        assert_eq!(seen, [None, Some("0".to_owned()), Some("7".to_owned())]);
    }

    #[test]
    fn the_request_size_is_its_headers_and_its_body_and_grpc_comes_from_content_type() {
        let telemetry = Telemetry::new(Reporter::Source, Workload::default());
        // `:method GET`, `:path /`, `:scheme http`; no authority.
        let pseudo = (7 + 3) + (5 + 1) + (7 + 4);
        let observe = |headers: &[(&'static str, &'static str)]| {
            let mut req = Request::new(());
            for (name, value) in headers {
                req.headers_mut()
                    .append(*name, HeaderValue::from_static(value));
            }
            let o = telemetry.start(&mut req);
            (o.request_bytes.total(), o.grpc)
        };
        // Until the body is handed over, its `Content-Length` stands in for it.
        assert_eq!(
            observe(&[("content-length", "42")]),
            (pseudo + 14 + 2 + 42, false)
        );
        assert_eq!(
            observe(&[("content-length", "forty")]),
            (pseudo + 14 + 5, false)
        );
        assert_eq!(observe(&[]), (pseudo, false));
        assert_eq!(
            observe(&[
                ("content-type", "application/grpc+proto"),
                ("content-length", "7")
            ]),
            (pseudo + 12 + 22 + 14 + 1 + 7, true)
        );
    }

    #[tokio::test]
    async fn a_body_of_known_length_counts_its_length_and_any_other_its_frames() {
        use http_body_util::BodyExt;
        let telemetry = Telemetry::new(Reporter::Source, Workload::default());
        let pseudo = (7 + 3) + (5 + 1) + (7 + 4);

        // A length known up front (the header says 100, the body 5): the body's.
        let mut req = Request::builder()
            .header("content-length", "100")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"12345",
            )))
            .unwrap();
        let mut o = telemetry.start(&mut req);
        let counted = o.request_body(req.into_body());
        assert!(counted.counter.is_none(), "no counter for a known length");
        assert_eq!(o.request_bytes.body(), 5);
        assert_eq!(o.request_bytes.total(), pseudo + 14 + 3 + 5);

        // Three chunks and no length: counted as they are read.
        let mut req = Request::new(());
        let mut o = telemetry.start(&mut req);
        let chunks: [Result<_, std::convert::Infallible>; 3] = [
            Ok(http_body::Frame::data(bytes::Bytes::from_static(b"abc"))),
            Ok(http_body::Frame::data(bytes::Bytes::from_static(b"defg"))),
            Ok(http_body::Frame::data(bytes::Bytes::from_static(b"hi"))),
        ];
        let stream = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
        let mut counted = o.request_body(stream);
        assert_eq!(o.request_bytes.total(), pseudo);
        counted.frame().await.unwrap().unwrap();
        assert_eq!(o.request_bytes.body(), 3);
        let rest = counted.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "defghi");
        assert_eq!(o.request_bytes.body(), 9);
        assert_eq!(o.request_bytes.total(), pseudo + 9);
    }

    #[test]
    fn alternating_label_sets_each_get_their_own_handles() {
        let telemetry = Telemetry::new(Reporter::Source, Workload::default());
        let observation = telemetry.start(&mut Request::new(()));
        let handles_for = |status| {
            super::handles(
                &observation,
                &super::OutcomeRef {
                    status,
                    flags: Default::default(),
                    upstream: None,
                    grpc_status: None,
                },
            )
        };
        let ok = handles_for(200);
        let unavailable = handles_for(503);
        assert_eq!((ok.key.status, unavailable.key.status), (200, 503));
        for _ in 0..2 {
            // Each status finds its own set again, whichever was used last.
            assert!(std::sync::Arc::ptr_eq(&*handles_for(200), &*ok));
            assert!(std::sync::Arc::ptr_eq(&*handles_for(503), &*unavailable));
        }
        assert_eq!(telemetry.labels.handles.lock().unwrap().sets.len(), 2);
    }

    #[test]
    fn each_thread_keeps_its_own_reference_to_the_label_set_it_used_last() {
        use std::sync::Arc;
        let telemetry = Telemetry::new(Reporter::Source, Workload::default());
        let observation = telemetry.start(&mut Request::new(()));
        let outcome = super::OutcomeRef {
            status: 200,
            flags: Default::default(),
            upstream: None,
            grpc_status: None,
        };
        let here = super::handles(&observation, &outcome);
        // Again on this thread: the thread's own reference, cloned.
        assert!(Arc::ptr_eq(&super::handles(&observation, &outcome), &here));
        let there = std::thread::scope(|s| {
            s.spawn(|| {
                let first = super::handles(&observation, &outcome);
                let again = super::handles(&observation, &outcome);
                assert!(Arc::ptr_eq(&first, &again));
                first
            })
            .join()
            .unwrap()
        });
        // Another thread has a reference of its own, to the same metric handles.
        assert!(!Arc::ptr_eq(&there, &here));
        assert!(Arc::ptr_eq(&*there, &*here));
        // A second stack on the same thread has its own entry and does not evict the first.
        let other = Telemetry::new(Reporter::Destination, Workload::default());
        let other_observation = other.start(&mut Request::new(()));
        let theirs = super::handles(&other_observation, &outcome);
        assert!(!Arc::ptr_eq(&*theirs, &*here));
        assert!(Arc::ptr_eq(&super::handles(&observation, &outcome), &here));
        assert_eq!(telemetry.labels.handles.lock().unwrap().sets.len(), 1);
    }

    #[test]
    fn endpoints_are_told_apart_by_their_labels_not_their_address() {
        use super::super::UpstreamInfo;
        use std::sync::Arc;
        let telemetry = Telemetry::new(Reporter::Source, Workload::default());
        let observation = telemetry.start(&mut Request::new(()));
        let endpoint = |version: &str| {
            Arc::new(UpstreamInfo {
                authority: "10.0.0.1:80".into(),
                service: "reviews.default.svc.cluster.local".into(),
                namespace: Some("default".into()),
                labels: [("version".to_owned(), version.to_owned())].into(),
                service_account: None,
                workload: None,
                cluster: None,
            })
        };
        let handles_for = |upstream: &Arc<UpstreamInfo>| {
            super::handles(
                &observation,
                &super::OutcomeRef {
                    status: 200,
                    flags: Default::default(),
                    upstream: Some(upstream),
                    grpc_status: None,
                },
            )
        };
        let (v1, v2) = (endpoint("v1"), endpoint("v2"));
        let first = handles_for(&v1);
        assert_eq!(handles_for(&v2).key.peer.version.as_deref(), Some("v2"));
        assert_eq!(handles_for(&v1).key.peer.version.as_deref(), Some("v1"));
        // The same endpoint rebuilt by a new config snapshot: the same label set.
        let v1_again = endpoint("v1");
        assert!(Arc::ptr_eq(&*handles_for(&v1_again), &*first));
        assert!(Arc::ptr_eq(&*handles_for(&v1_again), &*first));
        assert_eq!(telemetry.labels.handles.lock().unwrap().sets.len(), 2);
    }
}
