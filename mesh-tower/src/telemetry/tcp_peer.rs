//! Istio's TCP metadata exchange: on a mutual-TLS connection whose ALPN protocol is
//! `istio-peer-exchange`, each side first sends which workload it is, so that TCP metrics name
//! the peer's workload as HTTP's do (HTTP carries it in headers: see [`super::peer`]).
//!
//! Each side writes one preamble before any payload of its own: a magic number and a length
//! (both 32-bit, most significant byte first), then a `google.protobuf.Any` holding a
//! `google.protobuf.Struct` whose field `x-envoy-peer-metadata` is the workload's metadata and
//! `x-envoy-peer-metadata-id` its node id. Then it reads the peer's preamble off the front of
//! what the peer sends. The format is that of istio/proxy's `metadata_exchange` network filter,
//! so a mesh proxy and an Envoy sidecar of Istio understand each other. As there, bytes that do
//! not start with the magic number are the peer's payload (a peer without the exchange), kept
//! for the application.
//!
//! ```
//! use mesh_core::model::Workload;
//! use mesh_tower::telemetry::TcpPeerExchange;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let mut client_side = Workload::default();
//! client_side.workload_name = "web-v1".into();
//! let mut server_side = Workload::default();
//! server_side.workload_name = "db-v1".into();
//! let (mut a, mut b) = tokio::io::duplex(4096);
//! let client = TcpPeerExchange::new(&client_side);
//! let server = TcpPeerExchange::new(&server_side);
//! let (heard_by_client, heard_by_server) =
//!     tokio::try_join!(client.run(&mut a), server.run(&mut b)).unwrap();
//! assert_eq!(heard_by_client.peer.unwrap().workload, "db-v1");
//! assert_eq!(heard_by_server.peer.unwrap().workload, "web-v1");
//! # });
//! ```

use super::PeerMetadata;
use bytes::{BufMut, Bytes, BytesMut};
use mesh_core::model::Workload;
use prost::Message as _;
use prost_types::{Any, Struct, Value, value::Kind};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The ALPN protocol under which mesh peers exchange metadata on TCP connections.
pub const PEER_EXCHANGE_ALPN: &[u8] = b"istio-peer-exchange";

/// The preamble's magic number (istio/proxy's `MetadataExchangeInitialHeader`).
const MAGIC: u32 = 0x3D23_0467;

/// The type URL of the preamble's `Any`.
const STRUCT_TYPE_URL: &str = "type.googleapis.com/google.protobuf.Struct";

/// The largest preamble read. Istio's are a few hundred bytes; a larger length is taken as
/// payload, not metadata, rather than buffered.
const MAX_PREAMBLE: u32 = 64 * 1024;

/// This workload's side of the TCP metadata exchange: the preamble it sends, made once.
#[derive(Clone, Debug)]
pub struct TcpPeerExchange {
    preamble: Bytes,
    timeout: Duration,
}

/// What the peer's preamble said.
#[derive(Debug, Default)]
pub struct PeerExchanged {
    /// The peer's workload, when its preamble could be read.
    pub peer: Option<Arc<PeerMetadata>>,
    /// The peer's node id, when it sent one.
    pub peer_id: Option<String>,
    /// Bytes read from the peer that were not a preamble: its payload, to pass on first.
    pub unread: Bytes,
}

impl TcpPeerExchange {
    /// The exchange of `workload`, without a node id; the peer's preamble is awaited for up to
    /// 10 seconds.
    pub fn new(workload: &Workload) -> Self {
        Self::with_id(workload, None)
    }

    /// As [`TcpPeerExchange::new`], sending `id` as the node id.
    pub fn with_id(workload: &Workload, id: Option<&str>) -> Self {
        let mut fields = std::collections::BTreeMap::new();
        fields.insert(
            super::PEER_METADATA.as_str().to_owned(),
            Value {
                kind: Some(Kind::StructValue(
                    PeerMetadata::of_workload(workload).to_struct(),
                )),
            },
        );
        if let Some(id) = id.filter(|id| !id.is_empty()) {
            fields.insert(
                super::PEER_METADATA_ID.as_str().to_owned(),
                Value {
                    kind: Some(Kind::StringValue(id.to_owned())),
                },
            );
        }
        let any = Any {
            type_url: STRUCT_TYPE_URL.to_owned(),
            value: Struct { fields }.encode_to_vec(),
        }
        .encode_to_vec();
        let mut preamble = BytesMut::with_capacity(8 + any.len());
        preamble.put_u32(MAGIC);
        preamble.put_u32(u32::try_from(any.len()).expect("a workload's metadata fits in 4 GiB"));
        preamble.put_slice(&any);
        Self {
            preamble: preamble.freeze(),
            timeout: Duration::from_secs(10),
        }
    }

    /// How long to wait for the peer's preamble; after that the peer is unknown and what it
    /// sent is its payload.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends this side's preamble on `stream`, then reads the peer's. Fails only when the
    /// stream does; a peer that sends no preamble is an unknown peer.
    pub async fn run<S>(&self, stream: &mut S) -> io::Result<PeerExchanged>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        stream.write_all(&self.preamble).await?;
        stream.flush().await?;
        read_preamble(stream, tokio::time::Instant::now() + self.timeout).await
    }
}

/// Reads the peer's preamble off the front of `stream`, waiting until `deadline` at most:
/// a peer silent until then is unknown, and what it sent is kept as payload.
async fn read_preamble<S: AsyncRead + Unpin>(
    stream: &mut S,
    deadline: tokio::time::Instant,
) -> io::Result<PeerExchanged> {
    let mut header = [0u8; 8];
    let mut filled = 0;
    while filled < header.len() {
        match tokio::time::timeout_at(deadline, stream.read(&mut header[filled..])).await {
            Ok(Ok(0)) => return Ok(unread(&header[..filled])),
            Ok(Ok(n)) => filled += n,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                tracing::debug!("tcp metadata exchange: no preamble from the peer in time");
                return Ok(unread(&header[..filled]));
            }
        }
    }
    let [m0, m1, m2, m3, l0, l1, l2, l3] = header;
    let len = u32::from_be_bytes([l0, l1, l2, l3]);
    if u32::from_be_bytes([m0, m1, m2, m3]) != MAGIC || len > MAX_PREAMBLE {
        tracing::debug!("tcp metadata exchange: the peer sent no preamble");
        return Ok(unread(&header));
    }
    let mut data = vec![0u8; len as usize];
    match tokio::time::timeout_at(deadline, stream.read_exact(&mut data)).await {
        Ok(read) => read?,
        Err(_) => {
            // The peer began a preamble and stalled: it is unknown, and the part read is
            // metadata, not payload.
            tracing::debug!("tcp metadata exchange: the peer's preamble did not arrive in time");
            return Ok(PeerExchanged::default());
        }
    };
    let Some((peer, peer_id)) = decode(&data) else {
        tracing::debug!("tcp metadata exchange: unreadable preamble; the peer is unknown");
        return Ok(PeerExchanged::default());
    };
    Ok(PeerExchanged {
        peer: peer.map(Arc::new),
        peer_id,
        unread: Bytes::new(),
    })
}

fn unread(bytes: &[u8]) -> PeerExchanged {
    PeerExchanged {
        unread: Bytes::copy_from_slice(bytes),
        ..PeerExchanged::default()
    }
}

/// The metadata and node id in a preamble's `Any`; `None` when it is not an `Any` of a
/// `Struct`.
fn decode(data: &[u8]) -> Option<(Option<PeerMetadata>, Option<String>)> {
    let any = Any::decode(data).ok()?;
    if any.type_url != STRUCT_TYPE_URL {
        return None;
    }
    let fields = Struct::decode(any.value.as_slice()).ok()?.fields;
    let kind = |key: &str| fields.get(key).and_then(|v| v.kind.as_ref());
    let peer = match kind(super::PEER_METADATA.as_str()) {
        Some(Kind::StructValue(metadata)) => Some(PeerMetadata::from_struct(metadata)),
        _ => None,
    };
    let id = match kind(super::PEER_METADATA_ID.as_str()) {
        Some(Kind::StringValue(id)) => Some(id.clone()),
        _ => None,
    };
    Some((peer, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    fn workload(name: &str) -> Workload {
        let mut w = Workload {
            workload_name: name.to_owned(),
            namespace: "shop".to_owned(),
            cluster_id: "east".to_owned(),
            ..Workload::default()
        };
        w.labels.insert("app".to_owned(), "db".to_owned());
        w.labels.insert("version".to_owned(), "v2".to_owned());
        w
    }

    /// istio/proxy's preamble for `metadata` and `id`, built field by field from the format.
    fn istio_preamble(metadata: Struct, id: &str) -> Vec<u8> {
        let mut fields = std::collections::BTreeMap::new();
        fields.insert(
            "x-envoy-peer-metadata".to_owned(),
            Value {
                kind: Some(Kind::StructValue(metadata)),
            },
        );
        fields.insert(
            "x-envoy-peer-metadata-id".to_owned(),
            Value {
                kind: Some(Kind::StringValue(id.to_owned())),
            },
        );
        let any = Any {
            type_url: "type.googleapis.com/google.protobuf.Struct".to_owned(),
            value: Struct { fields }.encode_to_vec(),
        }
        .encode_to_vec();
        let mut out = 0x3D23_0467u32.to_be_bytes().to_vec();
        out.extend_from_slice(&u32::try_from(any.len()).unwrap().to_be_bytes());
        out.extend_from_slice(&any);
        out
    }

    #[tokio::test]
    async fn both_sides_learn_each_other_and_the_payload_follows_untouched() {
        let (mut a, mut b) = duplex(4096);
        let client = TcpPeerExchange::with_id(&workload("web-v1"), Some("sidecar~10.0.0.1~web"));
        let server = TcpPeerExchange::new(&workload("db-v2"));
        let (to_client, to_server) = tokio::join!(
            async {
                let heard = client.run(&mut a).await.unwrap();
                a.write_all(b"hello").await.unwrap();
                heard
            },
            async {
                let heard = server.run(&mut b).await.unwrap();
                let mut payload = [0u8; 5];
                b.read_exact(&mut payload).await.unwrap();
                (heard, payload)
            }
        );
        let (to_server, payload) = to_server;
        assert_eq!(&payload, b"hello");
        let peer = to_server.peer.unwrap();
        assert_eq!(
            *peer,
            PeerMetadata {
                workload: "web-v1".into(),
                namespace: "shop".into(),
                app: "db".into(),
                version: "v2".into(),
                canonical_service: "db".into(),
                canonical_revision: "v2".into(),
                cluster: "east".into(),
            }
        );
        assert_eq!(to_server.peer_id.as_deref(), Some("sidecar~10.0.0.1~web"));
        assert!(to_server.unread.is_empty());
        assert_eq!(to_client.peer.unwrap().workload, "db-v2");
        assert_eq!(to_client.peer_id, None);
    }

    #[tokio::test]
    async fn istio_s_preamble_is_read_a_byte_at_a_time() {
        let metadata = PeerMetadata::of_workload(&workload("ratings-v1")).to_struct();
        let bytes = istio_preamble(
            metadata,
            "sidecar~10.1.2.3~ratings-v1.shop~shop.svc.cluster.local",
        );
        let (mut ours, mut theirs) = duplex(1);
        let exchange = TcpPeerExchange::new(&workload("web-v1"));
        let (heard, ()) = tokio::join!(async { exchange.run(&mut ours).await.unwrap() }, async {
            // Their side: read our preamble, then send theirs one byte per write.
            let mut ours_seen = vec![0u8; exchange.preamble.len()];
            theirs.read_exact(&mut ours_seen).await.unwrap();
            assert_eq!(ours_seen, exchange.preamble);
            for byte in &bytes {
                theirs.write_all(std::slice::from_ref(byte)).await.unwrap();
            }
        });
        assert_eq!(heard.peer.unwrap().workload, "ratings-v1");
        assert_eq!(
            heard.peer_id.as_deref(),
            Some("sidecar~10.1.2.3~ratings-v1.shop~shop.svc.cluster.local")
        );
        assert!(heard.unread.is_empty());
        let mut rest = [0u8; 7];
        let (written, read) =
            tokio::join!(theirs.write_all(b"payload"), ours.read_exact(&mut rest));
        written.unwrap();
        read.unwrap();
        assert_eq!(&rest, b"payload");
    }

    #[tokio::test]
    async fn a_peer_without_the_exchange_is_unknown_and_its_bytes_are_kept() {
        for sent in [&b"GET / HTTP/1.1\r\n"[..], b"hi"] {
            let (mut ours, mut theirs) = duplex(4096);
            theirs.write_all(sent).await.unwrap();
            if sent.len() < 8 {
                // The peer ends its side after fewer bytes than a preamble's header.
                theirs.shutdown().await.unwrap();
            }
            let heard = TcpPeerExchange::new(&workload("web-v1"))
                .run(&mut ours)
                .await
                .unwrap();
            assert!(heard.peer.is_none());
            let mut got = heard.unread.to_vec();
            if sent.len() >= 8 {
                let mut rest = vec![0u8; sent.len() - got.len()];
                ours.read_exact(&mut rest).await.unwrap();
                got.extend_from_slice(&rest);
            }
            assert_eq!(got, sent);
        }
    }

    #[tokio::test]
    async fn an_oversize_length_is_payload_and_garbage_is_an_unknown_peer() {
        let (mut ours, mut theirs) = duplex(4096);
        let mut oversize = 0x3D23_0467u32.to_be_bytes().to_vec();
        oversize.extend_from_slice(&u32::MAX.to_be_bytes());
        theirs.write_all(&oversize).await.unwrap();
        let heard = TcpPeerExchange::new(&workload("a"))
            .run(&mut ours)
            .await
            .unwrap();
        assert!(heard.peer.is_none());
        assert_eq!(heard.unread.as_ref(), oversize.as_slice());

        let (mut ours, mut theirs) = duplex(4096);
        let mut garbage = 0x3D23_0467u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&3u32.to_be_bytes());
        garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
        theirs.write_all(&garbage).await.unwrap();
        let heard = TcpPeerExchange::new(&workload("a"))
            .run(&mut ours)
            .await
            .unwrap();
        assert!(heard.peer.is_none());
        assert!(heard.unread.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_silent_until_the_timeout_is_unknown_and_what_it_sent_is_kept() {
        let (mut ours, mut theirs) = duplex(4096);
        theirs.write_all(b"abc").await.unwrap();
        let started = tokio::time::Instant::now();
        let heard = TcpPeerExchange::new(&workload("a"))
            .timeout(Duration::from_secs(2))
            .run(&mut ours)
            .await
            .unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert!(heard.peer.is_none());
        assert_eq!(heard.unread.as_ref(), b"abc");
    }
}
