//! Test certificates (a CA that issues SPIFFE workload certificates) and a test JWT issuer
//! (feature `testing`).
//!
//! Used by this workspace's tests to get real chains at test time; not for production.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    date_time_ymd,
};

use crate::credentials::{Credentials, CredentialsError};

/// A self-signed test CA.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A certificate and its key, as PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

/// What to put in a test leaf certificate.
#[derive(Clone, Debug, Default)]
pub struct LeafSpec<'a> {
    /// URI SANs (the SPIFFE ID).
    pub uris: &'a [&'a str],
    /// DNS SANs.
    pub dns: &'a [&'a str],
    /// Issue a certificate that expired in 2001.
    pub expired: bool,
}

impl TestCa {
    /// A new CA named `name`.
    ///
    /// # Panics
    /// If rcgen fails to generate a key (test helper).
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate, as PEM (the trust bundle).
    pub fn bundle_pem(&self) -> &str {
        &self.pem
    }

    /// A leaf for `spiffe_id`, with DNS SAN `localhost`.
    pub fn issue(&self, spiffe_id: &str) -> Issued {
        self.issue_with(&LeafSpec {
            uris: &[spiffe_id],
            dns: &["localhost"],
            expired: false,
        })
    }

    /// A leaf as `spec` says.
    ///
    /// # Panics
    /// On a SAN rcgen refuses (test helper).
    pub fn issue_with(&self, spec: &LeafSpec<'_>) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "workload");
        for uri in spec.uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into().expect("uri")));
        }
        for dns in spec.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName((*dns).try_into().expect("dns")));
        }
        if spec.expired {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A certificate revocation list of this CA (PEM) revoking `revoked`.
    ///
    /// # Panics
    /// If a certificate does not parse or rcgen fails to sign (test helper).
    pub fn crl_pem(&self, revoked: &[&Issued]) -> String {
        use rcgen::{
            CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber,
        };
        let revoked_certs = revoked
            .iter()
            .map(|issued| {
                let der =
                    rustls::pki_types::pem::PemObject::from_pem_slice(issued.cert_pem.as_bytes())
                        .map(|d: rustls::pki_types::CertificateDer<'_>| d.to_vec())
                        .expect("certificate PEM");
                let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("certificate");
                RevokedCertParams {
                    serial_number: SerialNumber::from_slice(cert.raw_serial()),
                    revocation_time: date_time_ymd(2024, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                }
            })
            .collect();
        CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(2090, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .expect("sign the CRL")
        .pem()
        .expect("CRL PEM")
    }

    /// Credentials for `spiffe_id` trusting this CA.
    ///
    /// # Panics
    /// If the credentials do not validate (test helper).
    pub fn credentials(&self, spiffe_id: &str) -> Credentials {
        self.issue(spiffe_id)
            .credentials(self)
            .expect("credentials")
    }
}

impl Issued {
    /// Credentials from this leaf, trusting `ca`.
    pub fn credentials(&self, ca: &TestCa) -> Result<Credentials, CredentialsError> {
        Credentials::from_pem(
            self.cert_pem.as_bytes(),
            self.key_pem.as_bytes(),
            ca.bundle_pem().as_bytes(),
        )
    }
}

/// A test JWT issuer: a signing key, its JWKS, and tokens signed with it (ES256 and EdDSA keys
/// are generated; RS256/PS256 use a fixed 2048-bit test key, `jwt/testdata/rsa2048.pk8`, as
/// `ring` cannot generate RSA keys).
pub struct TestIssuer {
    /// The `iss` of the tokens and the issuer of the rule.
    pub issuer: String,
    /// The key id, in the JWKS and in each token's header (`None`: no `kid`).
    pub kid: Option<String>,
    alg: &'static str,
    signer: Signer,
}

enum Signer {
    Ec(ring::signature::EcdsaKeyPair),
    Ed(ring::signature::Ed25519KeyPair),
    Rsa(
        ring::signature::RsaKeyPair,
        &'static dyn ring::signature::RsaEncoding,
    ),
}

/// The fixed RSA test key (PKCS#8 DER), only for tests.
const TEST_RSA_PKCS8: &[u8] = include_bytes!("jwt/testdata/rsa2048.pk8");

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl TestIssuer {
    /// An issuer signing with `alg`: `ES256`, `EdDSA`, `RS256` or `PS256`.
    ///
    /// # Panics
    /// On another algorithm (a test's mistake).
    pub fn new(issuer: &str, alg: &'static str) -> Self {
        use ring::signature as sig;
        let rng = ring::rand::SystemRandom::new();
        let signer = match alg {
            "ES256" => {
                let alg = &sig::ECDSA_P256_SHA256_FIXED_SIGNING;
                let pkcs8 = sig::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("generate EC key");
                Signer::Ec(
                    sig::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("EC key"),
                )
            }
            "EdDSA" => {
                let pkcs8 = sig::Ed25519KeyPair::generate_pkcs8(&rng).expect("generate Ed25519");
                Signer::Ed(sig::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("Ed25519 key"))
            }
            "RS256" | "PS256" => {
                let pair = sig::RsaKeyPair::from_pkcs8(TEST_RSA_PKCS8).expect("RSA test key");
                let encoding: &'static dyn sig::RsaEncoding = if alg == "RS256" {
                    &sig::RSA_PKCS1_SHA256
                } else {
                    &sig::RSA_PSS_SHA256
                };
                Signer::Rsa(pair, encoding)
            }
            other => panic!("TestIssuer: unsupported algorithm {other}"),
        };
        Self {
            issuer: issuer.to_owned(),
            kid: Some("test-key".into()),
            alg,
            signer,
        }
    }

    /// The same issuer with key id `kid` (`None`: neither the JWKS nor the tokens name one).
    pub fn with_kid(mut self, kid: Option<&str>) -> Self {
        self.kid = kid.map(str::to_owned);
        self
    }

    /// The public key as a JWKS document.
    pub fn jwks(&self) -> String {
        use ring::signature::KeyPair as _;
        let mut key = match &self.signer {
            Signer::Ec(pair) => {
                let point = pair.public_key().as_ref();
                serde_json::json!({
                    "kty": "EC", "crv": "P-256",
                    "x": b64(&point[1..33]), "y": b64(&point[33..65]),
                })
            }
            Signer::Ed(pair) => serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref()),
            }),
            Signer::Rsa(pair, _) => {
                let public: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
                serde_json::json!({ "kty": "RSA", "n": b64(&public.n), "e": b64(&public.e) })
            }
        };
        key["alg"] = self.alg.into();
        if let Some(kid) = &self.kid {
            key["kid"] = kid.as_str().into();
        }
        serde_json::json!({ "keys": [key] }).to_string()
    }

    /// A token with `claims` (an object; `iss` is added unless it is there).
    pub fn token(&self, claims: serde_json::Value) -> String {
        let mut claims = claims;
        if claims.get("iss").is_none() {
            claims["iss"] = self.issuer.as_str().into();
        }
        let mut header = serde_json::json!({ "alg": self.alg, "typ": "JWT" });
        if let Some(kid) = &self.kid {
            header["kid"] = kid.as_str().into();
        }
        self.sign_raw(&header.to_string(), &claims.to_string())
    }

    /// A token of the given header and payload JSON texts, signed with this issuer's key.
    pub fn sign_raw(&self, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let rng = ring::rand::SystemRandom::new();
        let signature = match &self.signer {
            Signer::Ec(pair) => pair
                .sign(&rng, input.as_bytes())
                .expect("EC sign")
                .as_ref()
                .to_vec(),
            Signer::Ed(pair) => pair.sign(input.as_bytes()).as_ref().to_vec(),
            Signer::Rsa(pair, encoding) => {
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(*encoding, &rng, input.as_bytes(), &mut out)
                    .expect("RSA sign");
                out
            }
        };
        format!("{input}.{}", b64(&signature))
    }
}
