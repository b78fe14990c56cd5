//! The spiffe fuzz target's runner, shared with the corpus replay test
//! (`mesh-policy/tests/fuzz_corpus.rs` includes this file by path).
//!
//! The input is tried both as a SPIFFE ID string (strict parsing per the SPIFFE-ID spec) and
//! as a DER certificate whose URI SAN is the ID (what the TLS layer does with a peer
//! certificate). Nothing may panic, and an accepted ID must be self-consistent: it re-parses
//! to itself, its principal is the ID without the scheme, and its trust domain and path put
//! together give it back.

use mesh_policy::credentials::spiffe_id_of;
use mesh_policy::{PeerIdentity, SpiffeId};
use rustls_pki_types::CertificateDer;

/// Checks what an accepted ID promises.
///
/// # Panics
/// When the ID is inconsistent: that is a bug the fuzzer reports.
pub fn check(id: &SpiffeId) {
    let again = SpiffeId::parse(id.as_str()).expect("an accepted ID re-parses");
    assert_eq!(&again, id);
    assert_eq!(
        format!("spiffe://{}{}", id.trust_domain(), id.path()),
        id.as_str()
    );
    assert_eq!(
        Some(id.principal()),
        id.as_str().strip_prefix("spiffe://"),
        "principal of {id}"
    );
    let peer = PeerIdentity::from(id.clone());
    if let Some((ns, sa)) = id.istio_parts() {
        assert_eq!(peer.namespace.as_deref(), Some(ns));
        assert_eq!(peer.service_account.as_deref(), Some(sa));
        let built = SpiffeId::from_parts(id.trust_domain(), ns, sa);
        assert_eq!(built.as_ref().ok(), Some(id), "from_parts of {id}");
    }
}

/// Parses the input as an ID and as a certificate; returns the IDs accepted.
pub fn run(data: &[u8]) -> (Option<SpiffeId>, Option<SpiffeId>) {
    let from_str = std::str::from_utf8(data)
        .ok()
        .and_then(|s| SpiffeId::parse(s).ok());
    if let Some(id) = &from_str {
        check(id);
    }
    let from_cert = spiffe_id_of(&CertificateDer::from(data)).ok();
    if let Some(id) = &from_cert {
        check(id);
    }
    (from_str, from_cert)
}
