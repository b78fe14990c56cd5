//! Test certificates: a CA that issues SPIFFE workload certificates (feature `testing`).
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
