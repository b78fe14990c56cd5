//! The jwt fuzz target's runner, shared with the corpus replay test
//! (`mesh-policy/tests/fuzz_corpus.rs` includes this file by path).
//!
//! The input is a token (bytes that are not UTF-8 are skipped, as a header value that is not
//! text is never a token) and also a JWKS document. A token is parsed and verified against a
//! fixed Ed25519 key at a fixed time; a JWKS is parsed and, when accepted, turned into keys.
//! Nothing may panic, and a token without a valid signature by the fixed key must never
//! verify (the key's private half is not in the corpus, so no input can carry one).

use mesh_core::model::Jwks;
use mesh_policy::jwt::{Jwt, KeySet};

/// A fixed Ed25519 public key (RFC 8032's test 1), as a JWKS.
const JWKS: &str =
    r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

/// Parses `data` as a token and as a JWKS; whether the token verified.
///
/// # Panics
/// When a token verifies (no input can be signed by the key) or a parse panics.
pub fn run(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    if let Ok(jwks) = Jwks::parse(text) {
        let keys = KeySet::new(&jwks).expect("a parsed JWKS has a key");
        assert!(!keys.is_empty());
    }
    let keys = KeySet::new(&Jwks::parse(JWKS).expect("the fixed JWKS")).expect("keys");
    let Ok(jwt) = Jwt::parse(text) else {
        return false;
    };
    let _ = jwt.issuer();
    let verified = jwt
        .verify(&["api".to_owned()], Some(&keys), 1_700_000_000)
        .is_ok();
    assert!(
        !verified,
        "a token verified without the private key: {text}"
    );
    verified
}
