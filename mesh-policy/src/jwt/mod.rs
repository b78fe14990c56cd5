//! End-user JWT verification: compact JWS tokens checked against an issuer's keys, as Envoy's
//! `envoy.filters.http.jwt_authn` filter (and the `jwt_verify_lib` it builds on) checks them.
//! No I/O: the caller extracts the token from the request and supplies the keys and the clock.
//!
//! The steps and their order follow Envoy's `AuthenticatorImpl::startVerify` and
//! `jwt_verify_lib`'s `verifyJwtWithoutTimeChecking`:
//! 1. [`Jwt::parse`]: three base64url sections; the header's `alg` must be one this mesh
//!    verifies (`none` and HMAC are refused); the payload a JSON object whose `iss`/`sub` are
//!    strings, `aud` a string or an array of strings, `exp`/`nbf` numbers.
//! 2. The caller picks the rule whose issuer equals [`Jwt::issuer`] (none: [`JwtError::UnknownIssuer`]).
//! 3. [`Jwt::verify`]: `nbf` and `exp` with a clock skew ([`CLOCK_SKEW_SECS`], Envoy's default
//!    `clock_skew_seconds` of 60), then the audiences, then the signature: with the key whose
//!    `kid` matches (when both the token and the key have one) and whose `alg` matches (when the
//!    key names one), trying each candidate in turn as `jwt_verify_lib` does.
//!
//! Each failure is a [`JwtError`] whose text is `jwt_verify_lib`'s status string, the body of
//! Envoy's 401 (`Jwt verification fails`, `Jwt is expired`, ...).
//!
//! Signatures are verified with `ring` (the crypto rustls already ships): RSA PKCS#1 v1.5 and
//! PSS with 2048- to 8192-bit keys, ECDSA P-256 and P-384 (fixed-length `r || s`, as JWS
//! encodes them), Ed25519.
//!
//! ```
//! use mesh_core::model::Jwks;
//! use mesh_policy::jwt::{Jwt, JwtError, KeySet};
//! use ring::signature::{Ed25519KeyPair, KeyPair};
//! # use base64::Engine as _;
//! # let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
//! let rng = ring::rand::SystemRandom::new();
//! let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
//! let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
//! let jwks = format!(
//!     r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{}"}}]}}"#,
//!     b64(pair.public_key().as_ref())
//! );
//! let keys = KeySet::new(&Jwks::parse(&jwks).unwrap()).unwrap();
//! let input = format!(
//!     "{}.{}",
//!     b64(br#"{"alg":"EdDSA"}"#),
//!     b64(br#"{"iss":"https://auth.example","sub":"alice","exp":2000}"#)
//! );
//! let token = format!("{input}.{}", b64(pair.sign(input.as_bytes()).as_ref()));
//!
//! let jwt = Jwt::parse(&token).unwrap();
//! assert_eq!(jwt.issuer(), Some("https://auth.example"));
//! let claims = jwt.verify(&[], Some(&keys), 1000).unwrap();
//! assert_eq!(claims.principal(), "https://auth.example/alice");
//! // Expired beyond the 60 s skew:
//! assert_eq!(Jwt::parse(&token).unwrap().verify(&[], Some(&keys), 2061).unwrap_err(), JwtError::Expired);
//! ```

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mesh_core::model::{EcCurve, Jwk, JwkKey, Jwks, JwsAlgorithm};
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};

/// Envoy's default allowance for clock differences when checking `exp` and `nbf`
/// (`JwtProvider.clock_skew_seconds`, 60 when unset; `jwt_verify_lib`'s `kClockSkewInSecond`).
pub const CLOCK_SKEW_SECS: u64 = 60;

/// Why a token was refused. The text is `jwt_verify_lib`'s status string, which Envoy sends as
/// the body of its 401 (403 for [`JwtError::AudienceNotAllowed`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three dot-separated sections.
    #[error("Jwt is not in the form of Header.Payload.Signature")]
    BadFormat,
    /// The header is not base64url, not JSON, or not an object.
    #[error("Jwt header is an invalid Base64url input or an invalid JSON")]
    HeaderParse,
    /// The header's `alg` is missing or not a string.
    #[error("Jwt header [alg] field is not a string")]
    HeaderBadAlg,
    /// The header's `alg` is not one this mesh verifies (`none`, `HS256`, `ES512`, ...).
    #[error("Jwt header [alg] field value is invalid")]
    UnsupportedAlg,
    /// The header's `kid` is not a string.
    #[error("Jwt header [kid] field is not a string")]
    HeaderBadKid,
    /// The payload is not base64url, not a JSON object, or a registered claim has the wrong
    /// type.
    #[error("Jwt payload is an invalid Base64 or an invalid JSON")]
    PayloadParse,
    /// The signature is not base64url.
    #[error("Jwt signature is an invalid Base64")]
    SignatureParse,
    /// No rule has the token's issuer.
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    /// `nbf` is later than now plus the clock skew.
    #[error("Jwt not yet valid")]
    NotYetValid,
    /// `exp` is earlier than now minus the clock skew.
    #[error("Jwt is expired")]
    Expired,
    /// None of the token's audiences is accepted.
    #[error("Audiences in Jwt are not allowed")]
    AudienceNotAllowed,
    /// No key matches the token's `kid` and `alg`.
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    KidAlgMismatch,
    /// A matching key exists but the signature does not verify with any.
    #[error("Jwt verification fails")]
    VerificationFail,
}

/// One verification key, ready for `ring`.
#[derive(Clone, Debug)]
struct Key {
    kid: Option<String>,
    alg: Option<JwsAlgorithm>,
    material: Material,
}

#[derive(Clone, Debug)]
enum Material {
    Rsa(RsaPublicKeyComponents<Vec<u8>>),
    /// An uncompressed point, `04 || x || y`.
    Ec(EcCurve, Vec<u8>),
    Ed25519(Vec<u8>),
}

/// An issuer's verification keys (from a checked [`Jwks`]).
#[derive(Clone, Debug)]
pub struct KeySet {
    keys: Vec<Key>,
}

/// A JWKS without a single key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Jwks doesn't have any valid public key")]
pub struct NoKeys;

impl KeySet {
    /// The keys of `jwks` (already checked by [`Jwks::parse`]).
    pub fn new(jwks: &Jwks) -> Result<Self, NoKeys> {
        if jwks.keys.is_empty() {
            return Err(NoKeys);
        }
        Ok(Self {
            keys: jwks.keys.iter().map(key).collect(),
        })
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there is no key (never, for a set built by [`KeySet::new`]).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn key(jwk: &Jwk) -> Key {
    let material = match &jwk.key {
        JwkKey::Rsa { n, e } => Material::Rsa(RsaPublicKeyComponents {
            n: n.clone(),
            e: e.clone(),
        }),
        JwkKey::Ec { curve, x, y } => {
            let mut point = Vec::with_capacity(1 + x.len() + y.len());
            point.push(0x04);
            point.extend_from_slice(x);
            point.extend_from_slice(y);
            Material::Ec(*curve, point)
        }
        JwkKey::Ed25519 { x } => Material::Ed25519(x.clone()),
    };
    Key {
        kid: jwk.kid.clone(),
        alg: jwk.alg,
        material,
    }
}

impl Key {
    /// Whether the signature verifies with this key, `alg` being the token's.
    fn verifies(&self, alg: JwsAlgorithm, message: &[u8], sig: &[u8]) -> bool {
        use JwsAlgorithm as A;
        match &self.material {
            Material::Rsa(components) => {
                let params = match alg {
                    A::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    A::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    A::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    A::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                    A::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                    A::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                components.verify(params, message, sig).is_ok()
            }
            Material::Ec(curve, point) => {
                let params = match (curve, alg) {
                    (EcCurve::P256, A::Es256) => &signature::ECDSA_P256_SHA256_FIXED,
                    (EcCurve::P384, A::Es384) => &signature::ECDSA_P384_SHA384_FIXED,
                    _ => return false,
                };
                UnparsedPublicKey::new(params, point)
                    .verify(message, sig)
                    .is_ok()
            }
            Material::Ed25519(x) => {
                alg == A::EdDsa
                    && UnparsedPublicKey::new(&signature::ED25519, x)
                        .verify(message, sig)
                        .is_ok()
            }
        }
    }
}

/// A parsed, not yet verified token.
#[derive(Clone, Debug)]
pub struct Jwt<'t> {
    alg: JwsAlgorithm,
    kid: Option<String>,
    payload: Map<String, Value>,
    /// `header.payload`, what the signature covers.
    signing_input: &'t str,
    payload_b64: &'t str,
    signature: Vec<u8>,
}

fn decode(section: &str) -> Option<Vec<u8>> {
    // Base64url without padding (RFC 7515); tolerate padding as jwt_verify_lib does.
    URL_SAFE_NO_PAD.decode(section.trim_end_matches('=')).ok()
}

impl<'t> Jwt<'t> {
    /// Parses a compact JWS. Only the structure is checked; see [`Jwt::verify`].
    pub fn parse(token: &'t str) -> Result<Self, JwtError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::BadFormat);
        };
        let header: Map<String, Value> = decode(header)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(JwtError::HeaderParse)?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(JwtError::HeaderBadAlg)?;
        // `none` (RFC 7519 unsecured JWTs) and HMAC are never accepted.
        let alg = JwsAlgorithm::from_name(alg).ok_or(JwtError::UnsupportedAlg)?;
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(JwtError::HeaderBadKid),
        };
        let claims: Map<String, Value> = decode(payload)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(JwtError::PayloadParse)?;
        let string_or_absent = |name: &str| claims.get(name).is_none_or(Value::is_string);
        let number_or_absent = |name: &str| {
            claims
                .get(name)
                .is_none_or(|v| v.as_f64().is_some_and(|n| n >= 0.0))
        };
        let aud_ok = match claims.get("aud") {
            None | Some(Value::String(_)) => true,
            Some(Value::Array(list)) => list.iter().all(Value::is_string),
            Some(_) => false,
        };
        if !(string_or_absent("iss")
            && string_or_absent("sub")
            && aud_ok
            && ["exp", "nbf", "iat"].iter().all(|n| number_or_absent(n)))
        {
            return Err(JwtError::PayloadParse);
        }
        let signature = decode(sig).ok_or(JwtError::SignatureParse)?;
        let signing_input = &token[..header_len(token)];
        Ok(Self {
            alg,
            kid,
            payload: claims,
            signing_input,
            payload_b64: payload,
            signature,
        })
    }

    /// The `iss` claim, if any.
    pub fn issuer(&self) -> Option<&str> {
        self.payload.get("iss").and_then(Value::as_str)
    }

    /// Checks the token's time window (at `now`, seconds since the Unix epoch), its audiences
    /// against `audiences` (empty: any), and its signature with `keys`. The caller has matched
    /// the issuer.
    ///
    /// `keys` is `None` when the issuer's keys are not known (no fetch of its `jwksUri` has
    /// succeeded): the token then fails as it does in Istio, where istiod inlines a placeholder
    /// JWKS (one RSA key with `kid: abc` that verifies nothing, `CreateFakeJwks` in istiod's
    /// `jwks_resolver.go`): a token with another `kid` finds no key
    /// ([`JwtError::KidAlgMismatch`]), any other fails its signature check.
    pub fn verify(
        self,
        audiences: &[String],
        keys: Option<&KeySet>,
        now: u64,
    ) -> Result<Claims, JwtError> {
        let time = |name: &str| self.payload.get(name).and_then(Value::as_f64);
        // jwt_verify_lib's verifyTimeConstraint: `now + skew < nbf`, `now > exp + skew`.
        if let Some(nbf) = time("nbf")
            && (now.saturating_add(CLOCK_SKEW_SECS) as f64) < nbf
        {
            return Err(JwtError::NotYetValid);
        }
        if let Some(exp) = time("exp")
            && now as f64 > exp + CLOCK_SKEW_SECS as f64
        {
            return Err(JwtError::Expired);
        }
        if !audiences.is_empty() && !audience_allowed(&self.payload, audiences) {
            return Err(JwtError::AudienceNotAllowed);
        }
        let Some(keys) = keys else {
            return Err(match self.kid.as_deref() {
                Some(kid) if kid != "abc" => JwtError::KidAlgMismatch,
                _ => JwtError::VerificationFail,
            });
        };
        let mut matched = false;
        for key in &keys.keys {
            if let (Some(want), Some(have)) = (&self.kid, &key.kid)
                && want != have
            {
                continue;
            }
            if key.alg.is_some_and(|a| a != self.alg) {
                continue;
            }
            matched = true;
            if key.verifies(self.alg, self.signing_input.as_bytes(), &self.signature) {
                return Ok(Claims::new(self.payload, self.payload_b64));
            }
        }
        Err(if matched {
            JwtError::VerificationFail
        } else {
            JwtError::KidAlgMismatch
        })
    }
}

/// The length of `header.payload` in a token already known to have three sections.
fn header_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(token.len())
}

/// jwt_verify_lib's `CheckAudience`: any of the token's audiences is accepted. Both sides are
/// compared without a scheme prefix and a trailing slash, as it does (`http://a/` = `a`).
fn audience_allowed(payload: &Map<String, Value>, allowed: &[String]) -> bool {
    fn sanitize(a: &str) -> &str {
        let a = a
            .strip_prefix("http://")
            .or_else(|| a.strip_prefix("https://"))
            .unwrap_or(a);
        a.strip_suffix('/').unwrap_or(a)
    }
    let allowed = |a: &str| allowed.iter().any(|x| sanitize(x) == sanitize(a));
    match payload.get("aud") {
        Some(Value::String(a)) => allowed(a),
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(allowed),
        _ => false,
    }
}

/// A verified token's claims: what authorization reads (`requestPrincipals`,
/// `request.auth.*`) and what the layer copies to headers. Cheap to clone.
#[derive(Clone, Debug, PartialEq)]
pub struct Claims {
    inner: Arc<Inner>,
}

#[derive(Debug, PartialEq)]
struct Inner {
    principal: String,
    payload: Map<String, Value>,
    payload_b64: String,
}

impl Claims {
    /// The claims of a verified payload (given decoded and as its base64url text).
    pub fn new(payload: Map<String, Value>, payload_b64: &str) -> Self {
        let text = |name: &str| payload.get(name).and_then(Value::as_str).unwrap_or("");
        // Istio's request principal: `iss/sub`.
        let principal = format!("{}/{}", text("iss"), text("sub"));
        Self {
            inner: Arc::new(Inner {
                principal,
                payload,
                payload_b64: payload_b64.to_owned(),
            }),
        }
    }

    /// The request principal, `iss/sub` (Istio's `request.auth.principal`).
    pub fn principal(&self) -> &str {
        &self.inner.principal
    }

    /// The decoded payload.
    pub fn payload(&self) -> &Map<String, Value> {
        &self.inner.payload
    }

    /// The payload as it was in the token (base64url), for `outputPayloadToHeader`.
    pub fn payload_base64url(&self) -> &str {
        &self.inner.payload_b64
    }

    /// The claim at `path` (`["a", "b"]` for `request.auth.claims[a][b]`), if present.
    pub fn claim(&self, path: &[impl AsRef<str>]) -> Option<&Value> {
        let (first, rest) = path.split_first()?;
        let mut value = self.inner.payload.get(first.as_ref())?;
        for name in rest {
            value = value.as_object()?.get(name.as_ref())?;
        }
        Some(value)
    }

    /// A claim as a header value, as Envoy's `claim_to_headers` writes it: a string as is, a
    /// number as an integer when it is one, `true`/`false`; `None` for other types.
    pub fn claim_as_header(&self, name: &str) -> Option<String> {
        match self.inner.payload.get(name)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => u.to_string(),
                (None, Some(i)) => i.to_string(),
                _ => n.to_string(),
            }),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
