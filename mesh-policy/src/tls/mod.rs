//! rustls configurations for mesh mTLS, verified by SPIFFE identity.
//!
//! Certificates in a mesh name workloads, not hosts: the server's chain is verified against the
//! trust bundle and its SPIFFE ID (the single URI SAN) against the identities the caller
//! expects, instead of matching a DNS name. On the server, the client's chain is verified
//! against the bundle and its SPIFFE ID becomes the connection's [`PeerIdentity`].
//!
//! Every config reads the [`CredentialStore`] at each handshake (the certificate we present, the
//! bundle we verify against), so a rotation affects new handshakes only; open connections keep
//! the keys they were set up with.
//!
//! ALPN follows Istio's sidecars, so that mesh peers of either kind understand each other: a
//! client offers Istio's mesh protocols (`istio-h2`, `istio-http/1.1`, `istio-peer-exchange`,
//! `istio`) before the plain ones ([`HTTP_ALPN`], [`HTTP1_ALPN`], [`TCP_ALPN`]); an Envoy
//! sidecar's inbound listener picks its mutual-TLS filter chain by them (a mesh connection
//! without one is taken for the app's own TLS and passed through to the app in PERMISSIVE
//! mode). A server accepts [`SERVER_ALPN`]: `istio-peer-exchange` first (the peers then
//! exchange metadata before any payload, see `mesh_tower::telemetry::TcpPeerExchange`), `h2`,
//! `http/1.1`, and `istio`, which is all an older TCP client may share with it (rustls refuses a
//! handshake whose offer shares nothing with its list: `no_application_protocol`).

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, ResolvesClientCert};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use crate::credentials::{CredentialStore, IdentityError, provider, spiffe_id_of};
use crate::identity::{PeerIdentity, SpiffeId};

/// ALPN protocols of plain (non-mesh) TLS, most preferred first: what a DestinationRule's
/// `SIMPLE` / `MUTUAL` origination offers.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// ALPN protocols a mesh server accepts, most preferred first. `istio-peer-exchange` is what
/// a mesh peer's TCP connection offers (Istio's `istio-peer-exchange`, `istio`): once it is
/// negotiated each side sends its metadata before any payload. HTTP clients do not offer it
/// (their offer holds `h2` or `http/1.1`); `istio` comes last, for a TCP client without the
/// exchange. After the handshake the HTTP server tells HTTP/2 from HTTP/1 by the connection
/// preface, whatever was negotiated.
pub const SERVER_ALPN: [&[u8]; 4] = [b"istio-peer-exchange", b"h2", b"http/1.1", b"istio"];

/// ALPN protocols a mesh client offers for HTTP when either version may be used: Istio's
/// HTTP/2 then HTTP/1.1 mesh protocols, `istio`, then the plain ones, which the server picks
/// from.
pub const HTTP_ALPN: [&[u8]; 5] = [b"istio-h2", b"istio-http/1.1", b"istio", b"h2", b"http/1.1"];

/// ALPN protocols a mesh client offers for HTTP/1.1 only (Istio's HTTP/1.1 set: the server
/// cannot turn the connection into HTTP/2).
pub const HTTP1_ALPN: [&[u8]; 3] = [b"istio-http/1.1", b"istio", b"http/1.1"];

/// ALPN protocols a mesh client offers for TCP, as Istio's sidecars (`ALPNInMeshWithMxc`):
/// the metadata exchange, else `istio` (no HTTP protocol for the server to pick).
pub const TCP_ALPN: [&[u8]; 2] = [b"istio-peer-exchange", b"istio"];

/// Istio's mesh ALPN protocols (`allIstioMtlsALPNs` in Istio's `pilot/pkg/networking/core`):
/// a ClientHello offering one of them comes from a mesh peer, and a sidecar's PERMISSIVE
/// inbound listener terminates it with mutual TLS; a ClientHello offering none of them is the
/// application's own TLS, which that listener passes through.
///
/// ```
/// use mesh_policy::tls::{HTTP1_ALPN, is_mesh_alpn};
/// assert!(HTTP1_ALPN.iter().any(|p| is_mesh_alpn(p)));
/// assert!(!is_mesh_alpn(b"h2"));
/// ```
pub const MESH_ALPN: [&[u8]; 5] = [
    b"istio",
    b"istio-peer-exchange",
    b"istio-http/1.0",
    b"istio-http/1.1",
    b"istio-h2",
];

/// Whether `protocol` is one of Istio's mesh ALPN protocols ([`MESH_ALPN`]).
pub fn is_mesh_alpn(protocol: &[u8]) -> bool {
    MESH_ALPN.contains(&protocol)
}

/// What a mesh client connection will carry, which decides the ALPN protocols it offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MeshProtocol {
    /// HTTP/2 or HTTP/1.1, as the server picks ([`HTTP_ALPN`]).
    Http,
    /// HTTP/1.1 only ([`HTTP1_ALPN`]).
    Http1,
    /// Bytes ([`TCP_ALPN`]).
    Tcp,
}

impl MeshProtocol {
    /// The ALPN protocols a client offers for this protocol, most preferred first.
    ///
    /// ```
    /// use mesh_policy::tls::MeshProtocol;
    /// assert_eq!(MeshProtocol::Tcp.alpn(), [&b"istio-peer-exchange"[..], b"istio"]);
    /// assert_eq!(MeshProtocol::Http1.alpn(), [&b"istio-http/1.1"[..], b"istio", b"http/1.1"]);
    /// ```
    pub fn alpn(self) -> &'static [&'static [u8]] {
        match self {
            Self::Http => &HTTP_ALPN,
            Self::Http1 => &HTTP1_ALPN,
            Self::Tcp => &TCP_ALPN,
        }
    }
}

fn alpn_list(protocols: &[&[u8]]) -> Vec<Vec<u8>> {
    protocols.iter().map(|p| p.to_vec()).collect()
}

/// Whether the server requires a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// A verified client certificate is required (PeerAuthentication STRICT).
    Required,
    /// A client certificate is verified when sent, but may be absent (TLS side of PERMISSIVE).
    Optional,
}

/// The server presented a valid chain, but not an identity we expect.
///
/// Its `Debug` is its message, because rustls shows a custom verification error by `Debug`.
#[derive(Clone, thiserror::Error)]
#[error("server identity {got} is not one of the expected identities [{}]", list(.expected))]
pub struct UnexpectedIdentity {
    /// The identity the server presented.
    pub got: SpiffeId,
    /// The identities we accept.
    pub expected: Vec<SpiffeId>,
}

fn list(ids: &[SpiffeId]) -> String {
    ids.iter()
        .map(SpiffeId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The peer's certificate does not carry a usable SPIFFE ID (`Debug` is its message, as for
/// [`UnexpectedIdentity`]).
#[derive(Clone, thiserror::Error)]
#[error("peer certificate: {0}")]
pub struct NoIdentity(pub IdentityError);

impl fmt::Debug for UnexpectedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Debug for NoIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// The peer identity of an established connection: the SPIFFE ID of its end-entity certificate.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<PeerIdentity> {
    let leaf = certs?.first()?;
    spiffe_id_of(leaf).ok().map(PeerIdentity::from)
}

/// Serves the current certificate on the server side.
#[derive(Debug)]
struct ServerResolver(Arc<CredentialStore>);

impl ResolvesServerCert for ServerResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().certified_key().clone())
    }
}

/// Presents the current certificate on the client side.
#[derive(Debug)]
struct ClientResolver(Arc<CredentialStore>);

impl ResolvesClientCert for ClientResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().certified_key().clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies client chains against the current bundle and requires a SPIFFE ID.
#[derive(Debug)]
struct SpiffeClientVerifier {
    store: Arc<CredentialStore>,
    mandatory: bool,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints would have to borrow from the current credentials; mesh clients have one
        // certificate and need none.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_chain(&self.store, end_entity, intermediates, now)?;
        spiffe_id_of(end_entity).map_err(|e| other(NoIdentity(e)))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Verifies server chains against the current bundle and the SPIFFE ID against the expected
/// identities (any ID when the list is empty).
struct SpiffeServerVerifier {
    store: Arc<CredentialStore>,
    expected: Vec<SpiffeId>,
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerVerifier")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

fn verify_chain(
    store: &CredentialStore,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let creds = store.load();
    let parsed = ParsedCertificate::try_from(end_entity)?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        creds.roots(),
        intermediates,
        now,
        provider().signature_verification_algorithms.all,
    )
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_chain(&self.store, end_entity, intermediates, now)?;
        let id = spiffe_id_of(end_entity).map_err(|e| other(NoIdentity(e)))?;
        if !self.expected.is_empty() && !self.expected.contains(&id) {
            return Err(other(UnexpectedIdentity {
                got: id,
                expected: self.expected.clone(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A server config presenting the store's current certificate and verifying client
/// certificates against its current bundle.
pub fn server_config(
    store: Arc<CredentialStore>,
    auth: ClientAuth,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let verifier = SpiffeClientVerifier {
        store: store.clone(),
        mandatory: auth == ClientAuth::Required,
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(ServerResolver(store)));
    config.alpn_protocols = alpn_list(&SERVER_ALPN);
    Ok(Arc::new(config))
}

/// A client config presenting the store's current certificate and accepting a server whose
/// chain verifies against the current bundle and whose SPIFFE ID is in `expected` (any
/// verified SPIFFE ID when `expected` is empty), for HTTP of either version
/// ([`MeshProtocol::Http`]; see [`mesh_client_config`]).
pub fn client_config(
    store: Arc<CredentialStore>,
    expected: Vec<SpiffeId>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    mesh_client_config(store, expected, MeshProtocol::Http)
}

/// As [`client_config`], offering the ALPN protocols of `protocol` (Istio's: see the module
/// docs and [`MeshProtocol::alpn`]).
pub fn mesh_client_config(
    store: Arc<CredentialStore>,
    expected: Vec<SpiffeId>,
    protocol: MeshProtocol,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let verifier = SpiffeServerVerifier {
        store: store.clone(),
        expected,
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(ClientResolver(store)));
    config.alpn_protocols = alpn_list(protocol.alpn());
    Ok(Arc::new(config))
}

/// Why a `SIMPLE` / `MUTUAL` client config could not be built from its files.
#[derive(Debug, thiserror::Error)]
pub enum FileTlsError {
    /// A file could not be read or parsed.
    #[error("{field} {path:?}: {reason}")]
    File {
        /// `caCertificates`, `caCrl`, `clientCertificate` or `privateKey`.
        field: &'static str,
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// Verification without `caCertificates` would need the system's roots, which this build
    /// does not carry.
    #[error("caCertificates is required: system root certificates are not available")]
    NoRoots,
    /// A `subjectAltNames` entry is neither a DNS name nor an IP address.
    #[error("subjectAltNames {name:?}: {reason}")]
    SubjectAltName {
        /// The entry.
        name: String,
        /// Why.
        reason: String,
    },
    /// The config could not be built (bad key, no usable protocol version).
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// What a DestinationRule `SIMPLE` / `MUTUAL` policy gives a TLS client: files, and the
/// names the server's certificate must be valid for.
#[derive(Clone, Copy, Debug, Default)]
pub struct FileTls<'a> {
    /// `caCertificates`: the roots the server's chain must lead to.
    pub ca: Option<&'a std::path::Path>,
    /// `clientCertificate` and `privateKey` (`MUTUAL`).
    pub client: Option<(&'a std::path::Path, &'a std::path::Path)>,
    /// `caCrl`: revocation lists (PEM); a revoked certificate in the server's chain is
    /// refused, and so is a chain with a certificate whose issuer has no list here (as
    /// Envoy: a list for one authority of a chain needs lists for all of them).
    pub crl: Option<&'a std::path::Path>,
    /// `subjectAltNames`: DNS names or IP addresses, one of which the server's certificate
    /// must be valid for, checked instead of the SNI (Envoy's SAN matchers); empty: the SNI.
    pub subject_alt_names: &'a [String],
}

/// A client config for DestinationRule `tls.mode: SIMPLE` (no `client`) or `MUTUAL` (with
/// `client` = certificate chain and key files): the server's chain is verified against `ca`
/// (and `crl`), and its names against `subject_alt_names`, else the SNI, as any TLS client
/// does.
pub fn client_config_from_files(files: &FileTls<'_>) -> Result<Arc<ClientConfig>, FileTlsError> {
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateRevocationListDer, PrivateKeyDer};
    let read = |field: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| FileTlsError::File {
            field,
            path: path.to_owned(),
            reason: e.to_string(),
        })
    };
    let bad = |field: &'static str, path: &std::path::Path, reason: String| FileTlsError::File {
        field,
        path: path.to_owned(),
        reason,
    };
    let certs = |field: &'static str, path: &std::path::Path| {
        let pem = read(field, path)?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(field, path, e.to_string()))?;
        if certs.is_empty() {
            return Err(bad(field, path, "no certificate found".into()));
        }
        Ok(certs)
    };
    let ca = files.ca.ok_or(FileTlsError::NoRoots)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs("caCertificates", ca)? {
        roots
            .add(cert)
            .map_err(|e| bad("caCertificates", ca, e.to_string()))?;
    }
    let mut verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider());
    if let Some(path) = files.crl {
        let pem = read("caCrl", path)?;
        let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("caCrl", path, e.to_string()))?;
        if crls.is_empty() {
            return Err(bad(
                "caCrl",
                path,
                "no certificate revocation list found".into(),
            ));
        }
        verifier = verifier.with_crls(crls);
    }
    let verifier = verifier.build().map_err(|e| match files.crl {
        Some(path) => bad("caCrl", path, e.to_string()),
        None => bad("caCertificates", ca, e.to_string()),
    })?;
    let verifier: Arc<dyn ServerCertVerifier> = if files.subject_alt_names.is_empty() {
        verifier
    } else {
        let names = files
            .subject_alt_names
            .iter()
            .map(|n| {
                ServerName::try_from(n.clone()).map_err(|e| FileTlsError::SubjectAltName {
                    name: n.clone(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Arc::new(SubjectAltNameVerifier {
            inner: verifier,
            names,
        })
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match files.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certs("clientCertificate", cert)?;
            let pem = read("privateKey", key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&pem)
                .map_err(|e| bad("privateKey", key, e.to_string()))?;
            builder.with_client_auth_cert(chain, key_der)?
        }
    };
    config.alpn_protocols = alpn_list(&ALPN);
    Ok(Arc::new(config))
}

/// Verifies a server's chain as `inner` does, and its names against a list instead of the
/// name the client connected to: the certificate must be valid for one of `names`.
#[derive(Debug)]
struct SubjectAltNameVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for SubjectAltNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut last = None;
        for name in &self.names {
            match self
                .inner
                .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
            {
                Ok(verified) => return Ok(verified),
                // Only a name mismatch lets the next name be tried: a bad chain is bad for
                // every name.
                Err(
                    e @ rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. },
                    ),
                ) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests;
