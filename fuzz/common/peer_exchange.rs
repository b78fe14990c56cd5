//! The peer_exchange fuzz target's runner, shared with the corpus replay test
//! (`mesh-tower/tests/fuzz_corpus.rs` includes this file by path).
//!
//! The input is what a peer sends first on a mutual-TLS connection that negotiated Istio's
//! TCP metadata exchange (ALPN `istio-peer-exchange`): `TcpPeerExchange::run` reads its
//! preamble off it. Nothing may panic, a peer's payload is never lost (bytes not taken as a
//! preamble come back as `unread`, and they are where the input began), a peer is known only
//! from a preamble, and the only failure is the input ending inside a preamble (the peer
//! closed mid-way: the connection is dropped).

use mesh_core::model::Workload;
use mesh_tower::telemetry::{PeerExchanged, TcpPeerExchange};

/// Runs the exchange over `data` (this side's own preamble goes nowhere); `None` when the
/// input ends inside a preamble.
///
/// # Panics
/// When the outcome breaks a promise above: a bug the fuzzer reports.
pub fn run(data: &[u8]) -> Option<PeerExchanged> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let mut stream = tokio::io::join(data, tokio::io::sink());
    let exchanged =
        match runtime.block_on(TcpPeerExchange::new(&Workload::default()).run(&mut stream)) {
            Ok(exchanged) => exchanged,
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
                return None;
            }
        };
    if !exchanged.unread.is_empty() {
        assert!(
            data.starts_with(&exchanged.unread),
            "unread bytes are the input's first"
        );
        assert!(exchanged.peer.is_none(), "payload and a peer at once");
    }
    if exchanged.peer.is_some() {
        assert!(
            data.starts_with(&0x3D23_0467u32.to_be_bytes()),
            "a peer without the magic number"
        );
    }
    Some(exchanged)
}
