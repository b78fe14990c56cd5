//! Istio's HTTP metadata exchange: each side of a request tells the other which workload it
//! is, so that both label their metrics with the peer's workload (the server its `source_*`
//! labels, the client its `destination_*` ones).
//!
//! The client puts two headers on each request: `x-envoy-peer-metadata-id` (its node id, when
//! it has one) and `x-envoy-peer-metadata` (the workload's metadata, a `google.protobuf.Struct`
//! in protobuf encoding, base64). The server reads and removes them before the app sees the
//! request and, when the request carried them, puts its own on the response, which the client
//! reads and removes before its caller sees the response. The format is that of istio/proxy's
//! `peer_metadata` filter, so a mesh proxy and an Envoy sidecar of Istio understand each
//! other.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::{HeaderMap, HeaderName, HeaderValue};
use mesh_core::model::Workload;
use prost::Message as _;
use prost_types::{Struct, Value, value::Kind};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The header that carries the sender's metadata.
pub const PEER_METADATA: HeaderName = HeaderName::from_static("x-envoy-peer-metadata");
/// The header that carries the sender's node id (the receiver's cache key in Envoy).
pub const PEER_METADATA_ID: HeaderName = HeaderName::from_static("x-envoy-peer-metadata-id");

/// Istio's encoding: standard base64, padded when written, read with or without padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A workload as Istio's metric labels describe it. Empty strings are unknown fields.
///
/// ```
/// use mesh_core::model::Workload;
/// use mesh_tower::telemetry::PeerMetadata;
///
/// let mut workload = Workload::default();
/// workload.workload_name = "reviews-v2".into();
/// workload.labels.insert("app".into(), "reviews".into());
/// workload.labels.insert("version".into(), "v2".into());
/// let me = PeerMetadata::of_workload(&workload);
/// assert_eq!(me.canonical_service, "reviews");
/// assert_eq!(me.canonical_revision, "v2");
/// // What the other side reads from the header value.
/// let header = me.to_header_value();
/// assert_eq!(PeerMetadata::from_header_value(header.as_bytes()), Some(me));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerMetadata {
    /// The workload's name (`WORKLOAD_NAME`, such as `reviews-v2`).
    pub workload: String,
    /// The workload's namespace (`NAMESPACE`).
    pub namespace: String,
    /// The `app` label.
    pub app: String,
    /// The `version` label.
    pub version: String,
    /// The canonical service (label `service.istio.io/canonical-name`).
    pub canonical_service: String,
    /// The canonical revision (label `service.istio.io/canonical-revision`).
    pub canonical_revision: String,
    /// The cluster id (`CLUSTER_ID`).
    pub cluster: String,
}

const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";

impl PeerMetadata {
    /// What `workload` tells its peers, with the canonical service and revision Istio's
    /// injector would label its pods with.
    pub fn of_workload(workload: &Workload) -> Self {
        let label = |k: &str| workload.labels.get(k).cloned().unwrap_or_default();
        Self {
            workload: workload.name().to_owned(),
            namespace: workload.namespace.clone(),
            app: label("app"),
            version: label("version"),
            canonical_service: workload.canonical_service().to_owned(),
            canonical_revision: workload.canonical_revision().to_owned(),
            cluster: workload.cluster_id.clone(),
        }
    }

    /// The `x-envoy-peer-metadata` value: [`PeerMetadata::to_struct`] in protobuf encoding,
    /// base64.
    pub fn to_header_value(&self) -> HeaderValue {
        let encoded = BASE64.encode(self.to_struct().encode_to_vec());
        HeaderValue::try_from(encoded).expect("base64 is a valid header value")
    }

    /// The metadata in an `x-envoy-peer-metadata` value; `None` when it is not base64 of a
    /// protobuf `Struct` (as Istio, a peer that cannot be read is an unknown peer).
    pub fn from_header_value(value: &[u8]) -> Option<Self> {
        if value.is_empty() {
            return None;
        }
        let bytes = BASE64.decode(value).ok()?;
        Some(Self::from_struct(&Struct::decode(bytes.as_slice()).ok()?))
    }

    /// The metadata as Istio's filters write it: `NAMESPACE`, `WORKLOAD_NAME`, `CLUSTER_ID`,
    /// and `LABELS` with `app`, `version` and the canonical name and revision, each only when
    /// known.
    pub fn to_struct(&self) -> Struct {
        let string = |v: &str| Value {
            kind: Some(Kind::StringValue(v.to_owned())),
        };
        let known = |fields: &[(&str, &str)]| -> BTreeMap<String, Value> {
            fields
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| ((*k).to_owned(), string(v)))
                .collect()
        };
        let mut fields = known(&[
            ("NAMESPACE", &self.namespace),
            ("WORKLOAD_NAME", &self.workload),
            ("CLUSTER_ID", &self.cluster),
        ]);
        let labels = known(&[
            ("app", &self.app),
            ("version", &self.version),
            (CANONICAL_NAME, &self.canonical_service),
            (CANONICAL_REVISION, &self.canonical_revision),
        ]);
        if !labels.is_empty() {
            fields.insert(
                "LABELS".to_owned(),
                Value {
                    kind: Some(Kind::StructValue(Struct { fields: labels })),
                },
            );
        }
        Struct { fields }
    }

    /// The metadata in Istio's `Struct`; fields other than Istio's are ignored, missing ones
    /// are empty.
    pub fn from_struct(metadata: &Struct) -> Self {
        let string = |s: &Struct, key: &str| match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(v)) => v.clone(),
            _ => String::new(),
        };
        let empty = Struct::default();
        let labels = match metadata.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
            Some(Kind::StructValue(labels)) => labels,
            _ => &empty,
        };
        Self {
            workload: string(metadata, "WORKLOAD_NAME"),
            namespace: string(metadata, "NAMESPACE"),
            app: string(labels, "app"),
            version: string(labels, "version"),
            canonical_service: string(labels, CANONICAL_NAME),
            canonical_revision: string(labels, CANONICAL_REVISION),
            cluster: string(metadata, "CLUSTER_ID"),
        }
    }
}

/// A stack's side of the exchange: its own two header values, made once.
#[derive(Clone, Debug)]
pub(super) struct Exchange {
    /// Whether the stack exchanges metadata at all.
    pub(super) enabled: bool,
    id: Option<HeaderValue>,
    metadata: HeaderValue,
}

impl Exchange {
    pub(super) fn new(workload: &Workload) -> Self {
        Self {
            enabled: true,
            id: None,
            metadata: PeerMetadata::of_workload(workload).to_header_value(),
        }
    }

    /// Sends `id` as the node id (when it is a valid header value).
    pub(super) fn set_id(&mut self, id: &str) {
        self.id = HeaderValue::try_from(id).ok();
    }

    /// Puts this side's headers on a request or response. `id` and `metadata` say which:
    /// a server answers with each only when the request carried it, as Istio's does.
    pub(super) fn write(&self, headers: &mut HeaderMap, id: bool, metadata: bool) {
        if let (true, Some(value)) = (id, &self.id) {
            headers.insert(PEER_METADATA_ID, value.clone());
        }
        if metadata {
            headers.insert(PEER_METADATA, self.metadata.clone());
        }
    }
}

/// What a message's exchange headers said; the headers themselves are removed.
#[derive(Debug, Default)]
pub(super) struct Received {
    /// The peer, when its metadata could be read.
    pub(super) peer: Option<Arc<PeerMetadata>>,
    /// The message had an `x-envoy-peer-metadata-id`.
    pub(super) id: bool,
    /// The message had an `x-envoy-peer-metadata`.
    pub(super) metadata: bool,
}

/// Takes the exchange headers out of `headers` (the app on either side never sees them) and
/// reads the peer from them.
pub(super) fn take(headers: &mut HeaderMap) -> Received {
    // Most messages carry neither header (a caller or an upstream without a sidecar): one
    // pass over the names, most of them shorter than the prefix, costs less than hashing
    // both names for their lookups.
    let prefix = "x-envoy-peer-metadata";
    if !headers.keys().any(|name| name.as_str().starts_with(prefix)) {
        return Received::default();
    }
    let metadata = headers.remove(PEER_METADATA);
    let id = headers.remove(PEER_METADATA_ID).is_some();
    Received {
        peer: metadata.as_ref().and_then(decode_cached),
        id,
        metadata: metadata.is_some(),
    }
}

/// Values decoded per thread: a peer sends the same value on every request, and the metric
/// labels' cache recognises a peer by this `Arc` (see `istio_metrics`).
const DECODED_PER_THREAD: usize = 8;

/// A header value a thread decoded, and what it read.
type Decoded = (Box<[u8]>, Arc<PeerMetadata>);

thread_local! {
    static DECODED: RefCell<Vec<Decoded>> = const { RefCell::new(Vec::new()) };
}

fn decode_cached(value: &HeaderValue) -> Option<Arc<PeerMetadata>> {
    let bytes = value.as_bytes();
    let found = DECODED
        .try_with(|cache| {
            cache
                .borrow()
                .iter()
                .find(|(seen, _)| **seen == *bytes)
                .map(|(_, peer)| peer.clone())
        })
        .ok()
        .flatten();
    if found.is_some() {
        return found;
    }
    let Some(peer) = PeerMetadata::from_header_value(bytes) else {
        tracing::debug!("unreadable x-envoy-peer-metadata: the peer is unknown");
        return None;
    };
    let peer = Arc::new(peer);
    // Not kept when the thread is exiting.
    let _ = DECODED.try_with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.len() == DECODED_PER_THREAD {
            cache.pop();
        }
        cache.insert(0, (bytes.into(), peer.clone()));
    });
    Some(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reviews_v2() -> Workload {
        let mut w = Workload {
            namespace: "shop".into(),
            workload_name: "reviews-v2".into(),
            cluster_id: "east".into(),
            ..Workload::default()
        };
        w.labels.insert("app".into(), "reviews".into());
        w.labels.insert("version".into(), "v2".into());
        w
    }

    #[test]
    fn a_header_value_reads_back_as_the_workload_it_describes() {
        let me = PeerMetadata::of_workload(&reviews_v2());
        assert_eq!(
            me,
            PeerMetadata {
                workload: "reviews-v2".into(),
                namespace: "shop".into(),
                app: "reviews".into(),
                version: "v2".into(),
                canonical_service: "reviews".into(),
                canonical_revision: "v2".into(),
                cluster: "east".into(),
            }
        );
        let value = me.to_header_value();
        assert_eq!(PeerMetadata::from_header_value(value.as_bytes()), Some(me));
        // The same workload always encodes the same bytes (sorted fields).
        assert_eq!(
            value,
            PeerMetadata::of_workload(&reviews_v2()).to_header_value()
        );
    }

    #[test]
    fn istio_s_struct_is_read_with_or_without_padding_and_with_fields_it_does_not_use() {
        // The fields istio-proxy's filter writes, and two this reader skips.
        let s = |v: &str| Value {
            kind: Some(Kind::StringValue(v.to_owned())),
        };
        let labels = Struct {
            fields: [
                ("app".to_owned(), s("ratings")),
                (CANONICAL_NAME.to_owned(), s("ratings-svc")),
                (CANONICAL_REVISION.to_owned(), s("v1")),
                ("pod-template-hash".to_owned(), s("abc")),
            ]
            .into(),
        };
        let metadata = Struct {
            fields: [
                ("NAME".to_owned(), s("ratings-v1-7d8f-x2x")),
                ("NAMESPACE".to_owned(), s("default")),
                ("WORKLOAD_NAME".to_owned(), s("ratings-v1")),
                ("CLUSTER_ID".to_owned(), s("Kubernetes")),
                (
                    "LABELS".to_owned(),
                    Value {
                        kind: Some(Kind::StructValue(labels)),
                    },
                ),
                (
                    "OWNER".to_owned(),
                    s("kubernetes://apis/apps/v1/namespaces/default/deployments/ratings-v1"),
                ),
            ]
            .into(),
        };
        let padded = base64::engine::general_purpose::STANDARD.encode(metadata.encode_to_vec());
        let unpadded = padded.trim_end_matches('=');
        assert_ne!(padded, unpadded, "the test needs a value that has padding");
        for value in [padded.as_str(), unpadded] {
            let peer = PeerMetadata::from_header_value(value.as_bytes()).unwrap();
            assert_eq!(peer.workload, "ratings-v1");
            assert_eq!(peer.namespace, "default");
            assert_eq!(peer.app, "ratings");
            assert_eq!(peer.version, "");
            assert_eq!(peer.canonical_service, "ratings-svc");
            assert_eq!(peer.canonical_revision, "v1");
            assert_eq!(peer.cluster, "Kubernetes");
        }
    }

    #[test]
    fn a_value_that_is_not_a_struct_is_no_peer() {
        for value in [&b"not base64!"[..], b"AAAA", b"", b"/w=="] {
            assert_eq!(
                PeerMetadata::from_header_value(value),
                None,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn taking_the_headers_removes_them_and_one_value_decodes_to_one_shared_peer() {
        let mut exchange = Exchange::new(&reviews_v2());
        exchange.set_id("sidecar~10.0.0.7~r.shop~shop.svc");
        let received = |id: bool| {
            let mut headers = HeaderMap::new();
            headers.insert("x-other", HeaderValue::from_static("kept"));
            exchange.write(&mut headers, id, true);
            let received = take(&mut headers);
            assert_eq!(
                headers.len(),
                1,
                "only the exchange headers go: {headers:?}"
            );
            received
        };
        let (first, second) = (received(true), received(false));
        assert!(first.id && first.metadata && !second.id && second.metadata);
        let (first, second) = (first.peer.unwrap(), second.peer.unwrap());
        assert_eq!(first.workload, "reviews-v2");
        assert!(Arc::ptr_eq(&first, &second), "decoded once per thread");
        let none = take(&mut HeaderMap::new());
        assert!(none.peer.is_none() && !none.id && !none.metadata);
    }

    #[test]
    fn a_stack_sends_its_metadata_outbound_and_leaves_a_caller_s_alone_when_off() {
        use super::super::{Reporter, Telemetry};
        let workload = reviews_v2();
        let outbound = |on: bool| {
            let telemetry = Telemetry::new(Reporter::Source, workload.clone())
                .node_id("sidecar~10.0.0.7~reviews-v2-0.shop~shop.svc.cluster.local")
                .metadata_exchange(on);
            let mut req = http::Request::new(());
            drop(telemetry.start(&mut req));
            req
        };
        let sent = outbound(true);
        assert_eq!(
            sent.headers()[PEER_METADATA_ID],
            "sidecar~10.0.0.7~reviews-v2-0.shop~shop.svc.cluster.local"
        );
        let peer = PeerMetadata::from_header_value(sent.headers()[PEER_METADATA].as_bytes());
        assert_eq!(peer.unwrap().workload, "reviews-v2");
        let off = outbound(false);
        assert!(!off.headers().contains_key(PEER_METADATA));
        assert!(!off.headers().contains_key(PEER_METADATA_ID));
        // Off, an inbound stack passes a caller's headers on to the app.
        let inbound = Telemetry::new(Reporter::Destination, workload).metadata_exchange(false);
        let mut req = http::Request::new(());
        Exchange::new(&reviews_v2()).write(req.headers_mut(), false, true);
        drop(inbound.start(&mut req));
        assert!(req.headers().contains_key(PEER_METADATA));
    }

    #[test]
    fn an_inbound_request_without_exchange_headers_takes_its_connection_s_peer() {
        use super::super::{Reporter, Telemetry};
        let inbound = Telemetry::new(Reporter::Destination, reviews_v2());
        let exchanged = Arc::new(PeerMetadata {
            workload: "db-client-v1".into(),
            ..PeerMetadata::default()
        });
        let connection = crate::tls::TlsInfo {
            tls: true,
            peer_metadata: Some(exchanged.clone()),
            ..crate::tls::TlsInfo::default()
        };
        // The connection's TCP metadata exchange named the peer; the request says nothing.
        let mut req = http::Request::new(());
        req.extensions_mut().insert(connection.clone());
        let observation = inbound.start(&mut req);
        assert!(Arc::ptr_eq(
            observation
                .peer_metadata
                .as_ref()
                .expect("the connection's peer"),
            &exchanged
        ));
        // The request's own headers win.
        let mut req = http::Request::new(());
        Exchange::new(&reviews_v2()).write(req.headers_mut(), false, true);
        req.extensions_mut().insert(connection);
        let observation = inbound.start(&mut req);
        assert_eq!(
            observation
                .peer_metadata
                .expect("the header's peer")
                .workload,
            "reviews-v2"
        );
    }
}
