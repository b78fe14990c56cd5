use super::*;
use crate::testing::TestIssuer;
use serde_json::json;

const ISS: &str = "https://issuer.example";
const NOW: u64 = 1_700_000_000;

fn keys(issuer: &TestIssuer) -> KeySet {
    KeySet::new(&Jwks::parse(&issuer.jwks()).unwrap()).unwrap()
}

fn check(issuer: &TestIssuer, token: &str, audiences: &[&str]) -> Result<Claims, JwtError> {
    let audiences: Vec<String> = audiences.iter().map(|a| (*a).to_owned()).collect();
    Jwt::parse(token)?.verify(&audiences, Some(&keys(issuer)), NOW)
}

#[test]
fn valid_tokens_of_each_algorithm_verify() {
    for alg in ["RS256", "PS256", "ES256", "EdDSA"] {
        let issuer = TestIssuer::new(ISS, alg);
        let token = issuer.token(json!({"sub": "alice", "exp": NOW + 600, "groups": ["dev"]}));
        let claims = check(&issuer, &token, &[]).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(claims.principal(), "https://issuer.example/alice", "{alg}");
        assert_eq!(claims.claim(&["groups"]), Some(&json!(["dev"])));
    }
}

#[test]
fn a_wrong_signature_fails() {
    let issuer = TestIssuer::new(ISS, "ES256");
    let other = TestIssuer::new(ISS, "ES256");
    let token = other.token(json!({"sub": "alice"}));
    assert_eq!(
        check(&issuer, &token, &[]).unwrap_err(),
        JwtError::VerificationFail
    );
    // A payload changed after signing.
    let good = issuer.token(json!({"sub": "alice"}));
    let forged_payload = URL_SAFE_NO_PAD.encode(format!(r#"{{"iss":"{ISS}","sub":"admin"}}"#));
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    assert_eq!(
        check(&issuer, &forged, &[]).unwrap_err(),
        JwtError::VerificationFail
    );
    let rsa = TestIssuer::new(ISS, "RS256");
    let token = rsa.token(json!({"sub": "alice"}));
    let mut tampered = token.into_bytes();
    let last = tampered.len() - 3;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_eq!(
        check(&rsa, &tampered, &[]).unwrap_err(),
        JwtError::VerificationFail
    );
}

#[test]
fn the_issuer_is_read_for_the_caller_to_match() {
    let issuer = TestIssuer::new(ISS, "EdDSA");
    let token = issuer.token(json!({"iss": "https://other.example", "sub": "x"}));
    assert_eq!(
        Jwt::parse(&token).unwrap().issuer(),
        Some("https://other.example")
    );
    let token = issuer.sign_raw(r#"{"alg":"EdDSA"}"#, r#"{"sub":"x"}"#);
    assert_eq!(Jwt::parse(&token).unwrap().issuer(), None);
}

#[test]
fn exp_and_nbf_allow_sixty_seconds_of_skew() {
    let issuer = TestIssuer::new(ISS, "ES256");
    let at = |claims| check(&issuer, &issuer.token(claims), &[]);
    assert!(
        at(json!({"sub": "a", "exp": NOW - 60})).is_ok(),
        "within skew"
    );
    assert_eq!(
        at(json!({"sub": "a", "exp": NOW - 61})).unwrap_err(),
        JwtError::Expired
    );
    assert!(
        at(json!({"sub": "a", "nbf": NOW + 60})).is_ok(),
        "within skew"
    );
    assert_eq!(
        at(json!({"sub": "a", "nbf": NOW + 61})).unwrap_err(),
        JwtError::NotYetValid
    );
}

#[test]
fn audiences_string_or_array_are_checked_when_configured() {
    let issuer = TestIssuer::new(ISS, "ES256");
    let token = |aud| issuer.token(json!({"sub": "a", "aud": aud}));
    assert!(check(&issuer, &token(json!("api")), &["api"]).is_ok());
    assert!(check(&issuer, &token(json!(["web", "api"])), &["api"]).is_ok());
    // jwt_verify_lib compares without scheme and trailing slash.
    assert!(check(&issuer, &token(json!("https://api/")), &["api"]).is_ok());
    assert_eq!(
        check(&issuer, &token(json!(["web"])), &["api"]).unwrap_err(),
        JwtError::AudienceNotAllowed
    );
    let no_aud = issuer.token(json!({"sub": "a"}));
    assert_eq!(
        check(&issuer, &no_aud, &["api"]).unwrap_err(),
        JwtError::AudienceNotAllowed
    );
    assert!(check(&issuer, &no_aud, &[]).is_ok(), "no audiences: any");
}

#[test]
fn alg_none_and_unsupported_algorithms_are_refused() {
    let issuer = TestIssuer::new(ISS, "ES256");
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(format!(r#"{{"iss":"{ISS}","sub":"a"}}"#))
    );
    assert_eq!(Jwt::parse(&unsigned).unwrap_err(), JwtError::UnsupportedAlg);
    let hs = issuer.sign_raw(r#"{"alg":"HS256"}"#, r#"{"sub":"a"}"#);
    assert_eq!(Jwt::parse(&hs).unwrap_err(), JwtError::UnsupportedAlg);
    let no_alg = issuer.sign_raw(r#"{"typ":"JWT"}"#, r#"{"sub":"a"}"#);
    assert_eq!(Jwt::parse(&no_alg).unwrap_err(), JwtError::HeaderBadAlg);
    // The key says ES256; a token claiming EdDSA finds no key.
    let other_alg = issuer.sign_raw(r#"{"alg":"EdDSA","kid":"test-key"}"#, r#"{"sub":"a"}"#);
    assert_eq!(
        check(&issuer, &other_alg, &[]).unwrap_err(),
        JwtError::KidAlgMismatch
    );
}

#[test]
fn keys_are_chosen_by_kid_or_tried_in_turn_without_one() {
    let issuer = TestIssuer::new(ISS, "ES256");
    let unknown = issuer.sign_raw(
        r#"{"alg":"ES256","kid":"rotated-away"}"#,
        &format!(r#"{{"iss":"{ISS}","sub":"a"}}"#),
    );
    assert_eq!(
        check(&issuer, &unknown, &[]).unwrap_err(),
        JwtError::KidAlgMismatch
    );
    // Two keys without kid: a token without kid verifies with whichever signed it.
    let a = TestIssuer::new(ISS, "ES256").with_kid(None);
    let b = TestIssuer::new(ISS, "ES256").with_kid(None);
    let both: serde_json::Value = {
        let mut ka: serde_json::Value = serde_json::from_str(&a.jwks()).unwrap();
        let kb: serde_json::Value = serde_json::from_str(&b.jwks()).unwrap();
        ka["keys"]
            .as_array_mut()
            .unwrap()
            .push(kb["keys"][0].clone());
        ka
    };
    let set = KeySet::new(&Jwks::parse(&both.to_string()).unwrap()).unwrap();
    assert_eq!(set.len(), 2);
    let token = b.token(json!({"sub": "bob"}));
    let claims = Jwt::parse(&token)
        .unwrap()
        .verify(&[], Some(&set), NOW)
        .unwrap();
    assert_eq!(claims.principal(), "https://issuer.example/bob");
}

#[test]
fn malformed_tokens_are_refused_with_their_reason() {
    let b = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let cases = [
        ("a.b".to_owned(), JwtError::BadFormat),
        ("a.b.c.d".to_owned(), JwtError::BadFormat),
        (format!("!!.{}.AA", b("{}")), JwtError::HeaderParse),
        (
            format!("{}.{}.AA", b("[1]"), b("{}")),
            JwtError::HeaderParse,
        ),
        (
            format!("{}.{}.AA", b(r#"{"alg":5}"#), b("{}")),
            JwtError::HeaderBadAlg,
        ),
        (
            format!("{}.{}.AA", b(r#"{"alg":"ES256","kid":1}"#), b("{}")),
            JwtError::HeaderBadKid,
        ),
        (
            format!("{}.%%.AA", b(r#"{"alg":"ES256"}"#)),
            JwtError::PayloadParse,
        ),
        (
            format!("{}.{}.AA", b(r#"{"alg":"ES256"}"#), b("not json")),
            JwtError::PayloadParse,
        ),
        (
            format!("{}.{}.AA", b(r#"{"alg":"ES256"}"#), b(r#"{"exp":"soon"}"#)),
            JwtError::PayloadParse,
        ),
        (
            format!("{}.{}.AA", b(r#"{"alg":"ES256"}"#), b(r#"{"aud":[1]}"#)),
            JwtError::PayloadParse,
        ),
        (
            format!("{}.{}.*", b(r#"{"alg":"ES256"}"#), b("{}")),
            JwtError::SignatureParse,
        ),
    ];
    for (token, want) in cases {
        assert_eq!(Jwt::parse(&token).unwrap_err(), want, "{token}");
    }
}

#[test]
fn unknown_keys_fail_as_against_istiods_placeholder_key() {
    let issuer = TestIssuer::new(ISS, "ES256");
    let token = issuer.token(json!({"sub": "a"}));
    assert_eq!(
        Jwt::parse(&token)
            .unwrap()
            .verify(&[], None, NOW)
            .unwrap_err(),
        JwtError::KidAlgMismatch
    );
    let token = issuer.with_kid(None).token(json!({"sub": "a"}));
    assert_eq!(
        Jwt::parse(&token)
            .unwrap()
            .verify(&[], None, NOW)
            .unwrap_err(),
        JwtError::VerificationFail
    );
}

#[test]
fn claims_become_header_values_as_envoy_writes_them() {
    let claims = Claims::new(
        json!({"iss": "i", "sub": "s", "n": 42, "f": 1.5, "b": true, "o": {"x": "y"}, "e": ""})
            .as_object()
            .unwrap()
            .clone(),
        "payload",
    );
    assert_eq!(claims.claim_as_header("n").as_deref(), Some("42"));
    assert_eq!(claims.claim_as_header("f").as_deref(), Some("1.5"));
    assert_eq!(claims.claim_as_header("b").as_deref(), Some("true"));
    assert_eq!(claims.claim_as_header("o"), None);
    assert_eq!(claims.claim_as_header("e"), None);
    assert_eq!(claims.claim(&["o", "x"]), Some(&json!("y")));
    assert_eq!(claims.principal(), "i/s");
}
