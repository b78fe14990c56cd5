//! Workload credentials: certificate chain, private key and trust bundle, and a rotating holder.
//!
//! [`Credentials`] is one validated set, loaded from PEM (files given as `--cert --key --ca`, or
//! bytes in memory). Loading checks what would otherwise fail at the first handshake: the key
//! matches the leaf, the leaf carries exactly one SPIFFE ID (an X.509-SVID), it is inside its
//! validity period, and it chains to the bundle.
//!
//! [`CredentialStore`] holds the current set on an `ArcSwap`; TLS configs built by
//! [`crate::tls`] read it at every handshake, so a rotation affects new handshakes only and
//! never an open connection. [`FileWatcher::poll`] re-reads the files and swaps in a new set
//! when they changed and are valid; a bad set is reported and the old one kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::identity::{InvalidSpiffeId, SpiffeId};

/// The crypto provider every config of this crate uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Why a set of credentials was refused.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM section could not be parsed.
    #[error("{what}: invalid PEM: {reason}")]
    Pem {
        /// `certificate chain`, `private key` or `trust bundle`.
        what: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// A PEM input holds no item of the expected kind.
    #[error("{0}: no PEM item found")]
    Empty(&'static str),
    /// The private key cannot be used or does not match the leaf certificate.
    #[error("private key: {0}")]
    Key(rustls::Error),
    /// The leaf certificate cannot be parsed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The leaf certificate does not carry exactly one valid SPIFFE ID.
    #[error("certificate: {0}")]
    Identity(IdentityError),
    /// The leaf certificate is outside its validity period.
    #[error("certificate: not valid now (valid from {not_before} to {not_after}, unix seconds)")]
    NotValidNow {
        /// Start of validity, unix seconds.
        not_before: i64,
        /// End of validity, unix seconds.
        not_after: i64,
    },
    /// The leaf does not chain to the trust bundle.
    #[error("certificate: does not chain to the trust bundle: {0}")]
    Untrusted(rustls::Error),
    /// A bundle certificate could not be added as a trust anchor.
    #[error("trust bundle: {0}")]
    Bundle(rustls::Error),
}

/// Why a certificate does not name a workload.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// No URI SAN with the `spiffe` scheme.
    #[error("no spiffe:// URI subject alternative name")]
    Missing,
    /// More than one URI SAN (an X.509-SVID has exactly one).
    #[error("{0} URI subject alternative names; an X.509-SVID has exactly one")]
    Several(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN {uri:?} is not a valid SPIFFE ID: {reason}")]
    Invalid {
        /// The URI.
        uri: String,
        /// Why.
        reason: InvalidSpiffeId,
    },
    /// The certificate cannot be parsed.
    #[error("unparseable certificate: {0}")]
    Unparseable(String),
}

/// The SPIFFE ID of an X.509-SVID: its single URI SAN, parsed strictly.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, IdentityError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| IdentityError::Unparseable(e.to_string()))?;
    let uris: Vec<&str> = match x509.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(IdentityError::Unparseable(e.to_string())),
    };
    match uris.as_slice() {
        [] => Err(IdentityError::Missing),
        [uri] => SpiffeId::parse(uri).map_err(|reason| IdentityError::Invalid {
            uri: (*uri).to_owned(),
            reason,
        }),
        many => Err(IdentityError::Several(many.len())),
    }
}

/// The validity period of a certificate, unix seconds.
fn validity(cert: &CertificateDer<'_>) -> Result<(i64, i64), CredentialsError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| CredentialsError::Certificate(e.to_string()))?;
    Ok((
        x509.validity().not_before.timestamp(),
        x509.validity().not_after.timestamp(),
    ))
}

/// One validated set of workload credentials.
#[derive(Debug)]
pub struct Credentials {
    key: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    id: SpiffeId,
    not_after: i64,
}

impl Credentials {
    /// Loads credentials from PEM: the chain (leaf first), the private key (PKCS#8, PKCS#1 or
    /// SEC1) and the trust bundle (one or more CA certificates).
    pub fn from_pem(chain: &[u8], key: &[u8], bundle: &[u8]) -> Result<Self, CredentialsError> {
        let chain = certs(chain, "certificate chain")?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => CredentialsError::Empty("private key"),
            e => CredentialsError::Pem {
                what: "private key",
                reason: e.to_string(),
            },
        })?;
        let bundle = certs(bundle, "trust bundle")?;
        Self::new(chain, key, bundle)
    }

    /// Loads credentials from three PEM files.
    pub fn from_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self, CredentialsError> {
        let [c, k, b] = read_all([cert, key, ca])?;
        Self::from_pem(&c, &k, &b)
    }

    /// Validates DER credentials.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundle: Vec<CertificateDer<'static>>,
    ) -> Result<Self, CredentialsError> {
        let provider = provider();
        let leaf = chain
            .first()
            .cloned()
            .ok_or(CredentialsError::Empty("certificate chain"))?;
        let id = spiffe_id_of(&leaf).map_err(CredentialsError::Identity)?;
        let (not_before, not_after) = validity(&leaf)?;
        let now = UnixTime::now().as_secs() as i64;
        if now < not_before || now > not_after {
            return Err(CredentialsError::NotValidNow {
                not_before,
                not_after,
            });
        }
        let mut roots = RootCertStore::empty();
        for ca in bundle {
            roots.add(ca).map_err(CredentialsError::Bundle)?;
        }
        let parsed = ParsedCertificate::try_from(&leaf)
            .map_err(|e| CredentialsError::Certificate(e.to_string()))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &chain[1..],
            UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )
        .map_err(CredentialsError::Untrusted)?;
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(CredentialsError::Key)?;
        Ok(Self {
            key: Arc::new(key),
            roots: Arc::new(roots),
            id,
            not_after,
        })
    }

    /// Our SPIFFE ID (the leaf's URI SAN).
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The chain and key, as rustls presents them.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.key
    }

    /// The trust anchors peers are verified against.
    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    /// When the leaf expires, unix seconds.
    pub fn not_after_unix(&self) -> i64 {
        self.not_after
    }

    /// When the leaf expires.
    pub fn not_after(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.not_after.max(0).unsigned_abs())
    }

    /// Seconds until the leaf expires (negative once expired), for the expiry metric.
    pub fn seconds_to_expiry(&self) -> i64 {
        self.not_after - UnixTime::now().as_secs() as i64
    }
}

fn certs(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, CredentialsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CredentialsError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CredentialsError::Empty(what));
    }
    Ok(certs)
}

fn read_all(paths: [&Path; 3]) -> Result<[Vec<u8>; 3], CredentialsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| CredentialsError::Read {
            path: p.to_owned(),
            source,
        })
    };
    Ok([read(paths[0])?, read(paths[1])?, read(paths[2])?])
}

/// The current credentials, swapped atomically on rotation.
#[derive(Debug)]
pub struct CredentialStore {
    current: ArcSwap<Credentials>,
    rotations: std::sync::atomic::AtomicU64,
}

impl CredentialStore {
    /// A store holding `initial`.
    pub fn new(initial: Credentials) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::from_pointee(initial),
            rotations: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The current credentials (one atomic read).
    pub fn load(&self) -> Arc<Credentials> {
        self.current.load_full()
    }

    /// Replaces the credentials; new handshakes use them, open connections are untouched.
    pub fn rotate(&self, next: Credentials) {
        tracing::info!(
            id = %next.id(),
            not_after = next.not_after_unix(),
            "workload credentials rotated"
        );
        self.current.store(Arc::new(next));
        self.rotations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many times the credentials were replaced.
    pub fn rotations(&self) -> u64 {
        self.rotations.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Polls the three PEM files and rotates the store when their content changes.
///
/// It compares contents, not modification times, so a rewrite within the same second is seen;
/// it is meant to be called on an interval (a few seconds) by the runtime that owns it.
#[derive(Debug)]
pub struct FileWatcher {
    paths: [PathBuf; 3],
    last: Option<[Vec<u8>; 3]>,
    rejected: Option<[Vec<u8>; 3]>,
}

/// What one [`FileWatcher::poll`] did.
#[derive(Debug)]
pub enum PollOutcome {
    /// The files are as last seen.
    Unchanged,
    /// New valid credentials were swapped in.
    Rotated,
    /// The files changed but are not valid (or could not be read); the old credentials are
    /// kept, and these same contents are not reported again.
    Rejected(CredentialsError),
}

impl FileWatcher {
    /// A watcher of `cert`, `key` and `ca`; the current contents count as seen when `seen` is
    /// true (the store was loaded from them).
    pub fn new(cert: PathBuf, key: PathBuf, ca: PathBuf, seen: bool) -> Self {
        let paths = [cert, key, ca];
        let last = if seen {
            read_all([&paths[0], &paths[1], &paths[2]]).ok()
        } else {
            None
        };
        Self {
            paths,
            last,
            rejected: None,
        }
    }

    /// Reads the files and rotates `store` when they changed and are valid.
    pub fn poll(&mut self, store: &CredentialStore) -> PollOutcome {
        let contents = match read_all([&self.paths[0], &self.paths[1], &self.paths[2]]) {
            Ok(c) => c,
            Err(e) => return PollOutcome::Rejected(e),
        };
        if self.last.as_ref() == Some(&contents) || self.rejected.as_ref() == Some(&contents) {
            return PollOutcome::Unchanged;
        }
        match Credentials::from_pem(&contents[0], &contents[1], &contents[2]) {
            Ok(next) => {
                store.rotate(next);
                self.last = Some(contents);
                PollOutcome::Rotated
            }
            Err(e) => {
                tracing::warn!(error = %e, "new workload credentials rejected; keeping the current ones");
                self.rejected = Some(contents);
                PollOutcome::Rejected(e)
            }
        }
    }
}
