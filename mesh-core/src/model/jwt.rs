//! End-user (JWT) authentication as data: Istio's RequestAuthentication after it is resolved
//! for one workload, and JSON Web Key Sets parsed and checked (the verification itself is
//! `mesh_policy::jwt`).
//!
//! A JWKS is parsed once, when the config is built (or when the sidecar fetches it from a
//! `jwksUri`): a key this mesh cannot verify with is an error there, not a surprise on the first
//! request. The supported keys are the ones `ring` verifies with: RSA (2048 to 8192 bits;
//! RS256/384/512, PS256/384/512), EC P-256 (ES256) and P-384 (ES384), and Ed25519 (EdDSA).
//! Envoy also supports HMAC (`oct`) keys and ES512; a JWKS with one is refused with a reason.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The JWT rules that apply to this workload (every applicable RequestAuthentication's
/// `jwtRules`, sorted by issuer as istiod sorts them), and the policies they came from.
///
/// Empty when no RequestAuthentication selects the workload: then no request is authenticated
/// and none carries a request principal.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RequestAuthentication {
    /// The rules, one per issuer entry, sorted by issuer.
    pub rules: Vec<JwtRule>,
    /// The policies that contributed, as `namespace/name`.
    pub sources: Vec<String>,
}

impl RequestAuthentication {
    /// Whether no rule applies (requests are not authenticated).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// One issuer's rule (Istio's `JWTRule`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct JwtRule {
    /// The `iss` a token must carry.
    pub issuer: String,
    /// Accepted `aud` values; empty accepts any audience.
    pub audiences: Vec<String>,
    /// Where the verification keys come from.
    pub keys: JwksSource,
    /// Headers the token is read from; with no header, parameter or cookie location, the
    /// defaults `Authorization: Bearer <token>` and the `access_token` query parameter.
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters the token is read from.
    pub from_params: Vec<String>,
    /// Cookies the token is read from.
    pub from_cookies: Vec<String>,
    /// A header that receives the verified token's payload (base64url, as in the token).
    pub output_payload_to_header: Option<String>,
    /// Whether the token stays in the request forwarded to the application.
    pub forward_original_token: bool,
    /// Claims copied to request headers.
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// How long a fetch of `jwksUri` may take (Istio's default is 5 s), and so how long a
    /// request waits for the first one.
    pub timeout: Option<Duration>,
}

impl JwtRule {
    /// Whether the rule reads tokens from the default locations (it names none of its own).
    pub fn uses_default_locations(&self) -> bool {
        self.from_headers.is_empty() && self.from_params.is_empty() && self.from_cookies.is_empty()
    }
}

/// A header a token is read from: `name: <prefix><token>`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct JwtHeader {
    /// The header name (lowercase).
    pub name: String,
    /// The prefix before the token (`Bearer `), empty for none.
    pub prefix: String,
}

/// A claim copied to a request header after verification.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ClaimToHeader {
    /// The header name (lowercase).
    pub header: String,
    /// The claim (a top-level claim name).
    pub claim: String,
}

/// Where a rule's keys come from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum JwksSource {
    /// Keys given in the config (`jwks`).
    Inline(Jwks),
    /// Keys fetched from this `http://` or `https://` URI by the proxy (`jwksUri`) when the
    /// config is installed, and refreshed.
    Uri(String),
}

/// A signature algorithm a token may use (JWS `alg`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum JwsAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
    /// Ed25519.
    EdDsa,
}

impl JwsAlgorithm {
    /// The algorithm named `name` (`RS256`), if it is one this mesh verifies.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "EdDSA" => Self::EdDsa,
            _ => return None,
        })
    }

    /// The JWS name (`RS256`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::EdDsa => "EdDSA",
        }
    }

    /// Whether a key of type `key` can verify this algorithm.
    pub fn fits(self, key: &JwkKey) -> bool {
        match key {
            JwkKey::Rsa { .. } => matches!(
                self,
                Self::Rs256 | Self::Rs384 | Self::Rs512 | Self::Ps256 | Self::Ps384 | Self::Ps512
            ),
            JwkKey::Ec {
                curve: EcCurve::P256,
                ..
            } => self == Self::Es256,
            JwkKey::Ec {
                curve: EcCurve::P384,
                ..
            } => self == Self::Es384,
            JwkKey::Ed25519 { .. } => self == Self::EdDsa,
        }
    }
}

/// An elliptic curve of an EC key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum EcCurve {
    /// NIST P-256 (`crv: P-256`).
    P256,
    /// NIST P-384 (`crv: P-384`).
    P384,
}

impl EcCurve {
    /// The length of one coordinate, in bytes.
    pub fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }
}

/// A public key's material, decoded.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum JwkKey {
    /// `kty: RSA`: modulus and exponent, big-endian.
    Rsa {
        /// The modulus (`n`).
        n: Vec<u8>,
        /// The public exponent (`e`).
        e: Vec<u8>,
    },
    /// `kty: EC`: the curve and the point's coordinates, big-endian.
    Ec {
        /// The curve (`crv`).
        curve: EcCurve,
        /// `x`.
        x: Vec<u8>,
        /// `y`.
        y: Vec<u8>,
    },
    /// `kty: OKP`, `crv: Ed25519`: the public key (`x`).
    Ed25519 {
        /// The 32-byte public key.
        x: Vec<u8>,
    },
}

/// One verification key of a JWKS.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Jwk {
    /// The key id (`kid`), matched against a token's `kid`.
    pub kid: Option<String>,
    /// The algorithm the key is restricted to (`alg`), if it says.
    pub alg: Option<JwsAlgorithm>,
    /// The key material.
    pub key: JwkKey,
}

/// A JSON Web Key Set (RFC 7517): the signature keys of an issuer.
///
/// ```
/// use mesh_core::model::Jwks;
/// let jwks = Jwks::parse(r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1",
///     "x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#).unwrap();
/// assert_eq!(jwks.keys[0].kid.as_deref(), Some("k1"));
/// let bad = Jwks::parse(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap_err();
/// assert_eq!(bad.field, "keys[0].kty");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Jwks {
    /// The signature keys (keys marked `use: enc` are left out).
    pub keys: Vec<Jwk>,
}

/// Why a JWKS cannot be used: the field inside it (`keys[1].crv`) and the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
pub struct InvalidJwks {
    /// The field inside the JWKS, empty for the whole document.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// The smallest RSA modulus `ring` verifies with (`RSA_PKCS1_2048_8192_*`, `RSA_PSS_2048_8192_*`).
const MIN_RSA_BITS: usize = 2048;

impl Jwks {
    /// Parses and checks a JWKS document (`{"keys": [...]}`).
    pub fn parse(json: &str) -> Result<Self, InvalidJwks> {
        let bad = |field: String, reason: String| InvalidJwks { field, reason };
        let doc: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| bad(String::new(), format!("not valid JSON: {e}")))?;
        let keys = doc
            .get("keys")
            .ok_or_else(|| bad(String::new(), "no \"keys\" field".into()))?
            .as_array()
            .ok_or_else(|| bad("keys".into(), "not an array".into()))?;
        let mut out = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            let at = format!("keys[{i}]");
            if let Some(jwk) = parse_jwk(key, &at)? {
                out.push(jwk);
            }
        }
        if out.is_empty() {
            return Err(bad("keys".into(), "no signature key".into()));
        }
        Ok(Self { keys: out })
    }
}

/// One key; `None` for an encryption key (`use: enc`), which is not for signatures.
fn parse_jwk(key: &serde_json::Value, at: &str) -> Result<Option<Jwk>, InvalidJwks> {
    let bad = |field: &str, reason: String| InvalidJwks {
        field: format!("{at}.{field}"),
        reason,
    };
    if !key.is_object() {
        return Err(InvalidJwks {
            field: at.to_owned(),
            reason: "not an object".into(),
        });
    }
    let text = |field: &str| -> Result<Option<&str>, InvalidJwks> {
        match key.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| bad(field, "not a string".into())),
        }
    };
    let required = |field: &str| -> Result<&str, InvalidJwks> {
        text(field)?.ok_or_else(|| bad(field, "missing".into()))
    };
    let bytes = |field: &str| -> Result<Vec<u8>, InvalidJwks> {
        URL_SAFE_NO_PAD
            .decode(required(field)?.trim_end_matches('='))
            .map_err(|e| bad(field, format!("not base64url: {e}")))
    };
    if text("use")? == Some("enc") {
        return Ok(None);
    }
    let kid = text("kid")?.map(str::to_owned);
    let alg = match text("alg")? {
        None => None,
        Some(name) => Some(JwsAlgorithm::from_name(name).ok_or_else(|| {
            bad(
                "alg",
                format!(
                    "unsupported algorithm {name:?} (supported: RS256, RS384, RS512, PS256, \
                     PS384, PS512, ES256, ES384, EdDSA)"
                ),
            )
        })?),
    };
    let material = match required("kty")? {
        "RSA" => {
            let n = strip_zeros(bytes("n")?);
            let e = strip_zeros(bytes("e")?);
            if n.len() * 8 < MIN_RSA_BITS {
                return Err(bad(
                    "n",
                    format!(
                        "RSA modulus of {} bits: at least {MIN_RSA_BITS} are required",
                        n.len() * 8
                    ),
                ));
            }
            if e.is_empty() {
                return Err(bad("e", "zero exponent".into()));
            }
            JwkKey::Rsa { n, e }
        }
        "EC" => {
            let curve = match required("crv")? {
                "P-256" => EcCurve::P256,
                "P-384" => EcCurve::P384,
                other => {
                    return Err(bad(
                        "crv",
                        format!("unsupported curve {other:?} (supported: P-256, P-384)"),
                    ));
                }
            };
            let (x, y) = (bytes("x")?, bytes("y")?);
            for (name, c) in [("x", &x), ("y", &y)] {
                if c.len() != curve.coordinate_len() {
                    return Err(bad(
                        name,
                        format!(
                            "{} bytes, expected {} for the curve",
                            c.len(),
                            curve.coordinate_len()
                        ),
                    ));
                }
            }
            JwkKey::Ec { curve, x, y }
        }
        "OKP" => {
            match required("crv")? {
                "Ed25519" => {}
                other => {
                    return Err(bad(
                        "crv",
                        format!("unsupported curve {other:?} (supported: Ed25519)"),
                    ));
                }
            }
            let x = bytes("x")?;
            if x.len() != 32 {
                return Err(bad("x", format!("{} bytes, expected 32", x.len())));
            }
            JwkKey::Ed25519 { x }
        }
        other => {
            return Err(bad(
                "kty",
                format!("unsupported key type {other:?} (supported: RSA, EC, OKP)"),
            ));
        }
    };
    if let Some(alg) = alg
        && !alg.fits(&material)
    {
        return Err(bad(
            "alg",
            format!("algorithm {} does not fit the key type", alg.name()),
        ));
    }
    Ok(Some(Jwk {
        kid,
        alg,
        key: material,
    }))
}

/// A big-endian integer without its leading zero bytes.
fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros);
    v
}

/// The claim a `request.auth.claims[...]` condition key names, as a path into the token's
/// payload: `request.auth.claims[groups]` is `["groups"]`, `request.auth.claims[a][b]` is
/// `["a", "b"]` (Istio's nested claims); `None` when the key is not of that form.
///
/// ```
/// use mesh_core::model::claim_path;
/// assert_eq!(claim_path("request.auth.claims[groups]"), Some(vec!["groups"]));
/// assert_eq!(claim_path("request.auth.claims[a][b]"), Some(vec!["a", "b"]));
/// assert_eq!(claim_path("request.auth.claims[]"), None);
/// assert_eq!(claim_path("request.auth.claims[a]b"), None);
/// ```
pub fn claim_path(key: &str) -> Option<Vec<&str>> {
    let mut rest = key.strip_prefix("request.auth.claims")?;
    let mut path = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        let name = &inner[..end];
        if name.is_empty() || name.contains('[') {
            return None;
        }
        path.push(name);
        rest = &inner[end + 1..];
    }
    (!path.is_empty()).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bad_key_names_its_field() {
        let cases = [
            ("not json", ""),
            (r#"{"nokeys":[]}"#, ""),
            (r#"{"keys":{}}"#, "keys"),
            (r#"{"keys":[]}"#, "keys"),
            (
                r#"{"keys":[{"kty":"EC","crv":"P-521","x":"AA","y":"AA"}]}"#,
                "keys[0].crv",
            ),
            (
                r#"{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#,
                "keys[0].x",
            ),
            (
                r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#,
                "keys[0].n",
            ),
            (r#"{"keys":[{"kty":"RSA","e":"AQAB"}]}"#, "keys[0].n"),
            (
                r#"{"keys":[{"kty":"RSA","n":"!!","e":"AQAB"}]}"#,
                "keys[0].n",
            ),
            (
                r#"{"keys":[{"alg":"HS256","kty":"oct","k":"AA"}]}"#,
                "keys[0].alg",
            ),
            (
                r#"{"keys":[{"kty":"OKP","crv":"X25519","x":"AA"}]}"#,
                "keys[0].crv",
            ),
            (r#"{"keys":[{"kid":1,"kty":"OKP"}]}"#, "keys[0].kid"),
            (r#"{"keys":[{"crv":"Ed25519"}]}"#, "keys[0].kty"),
        ];
        for (json, field) in cases {
            let err = Jwks::parse(json).unwrap_err();
            assert_eq!(err.field, field, "{json}: {err}");
        }
    }

    #[test]
    fn an_algorithm_must_fit_its_key_and_encryption_keys_are_skipped() {
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        let err = Jwks::parse(&format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","alg":"ES256","x":"{x}"}}]}}"#
        ))
        .unwrap_err();
        assert_eq!(err.field, "keys[0].alg");
        let jwks = Jwks::parse(&format!(
            r#"{{"keys":[{{"kty":"RSA","use":"enc","n":"AA","e":"AA"}},
                {{"kty":"OKP","crv":"Ed25519","alg":"EdDSA","x":"{x}"}}]}}"#
        ))
        .unwrap();
        assert_eq!(jwks.keys.len(), 1);
        assert_eq!(jwks.keys[0].alg, Some(JwsAlgorithm::EdDsa));
    }
}
