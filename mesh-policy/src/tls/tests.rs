//! Handshakes in memory between real rustls connections, with certificates issued at test time.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::{ClientConnection, ServerConnection};

use super::*;
use crate::credentials::{Credentials, CredentialsError};
use crate::testing::{LeafSpec, TestCa};

const FRONTEND: &str = "spiffe://cluster.local/ns/frontend/sa/web";
const BACKEND: &str = "spiffe://cluster.local/ns/backend/sa/api";

#[derive(Debug)]
enum Failed {
    Client(rustls::Error),
    Server(rustls::Error),
}

/// Runs a handshake; on success returns the identity the server saw and the ALPN protocol.
fn handshake(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
) -> Result<(Option<PeerIdentity>, Option<Vec<u8>>), Failed> {
    let name = ServerName::try_from("backend.backend.svc.cluster.local").unwrap();
    let mut c = ClientConnection::new(client, name).unwrap();
    let mut s = ServerConnection::new(server).unwrap();
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets().map_err(Failed::Server)?;
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets().map_err(Failed::Client)?;
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok((
                peer_identity(s.peer_certificates()),
                s.alpn_protocol().map(<[u8]>::to_vec),
            ));
        }
    }
    panic!("handshake did not finish in 20 rounds");
}

fn store(c: Credentials) -> Arc<CredentialStore> {
    CredentialStore::new(c)
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn message(e: &rustls::Error) -> String {
    e.to_string()
}

#[test]
fn the_expected_identity_connects_and_the_server_sees_the_client_id() {
    let ca = TestCa::new("mesh root");
    let client = client_config(store(ca.credentials(FRONTEND)), vec![id(BACKEND)]).unwrap();
    let server = server_config(store(ca.credentials(BACKEND)), ClientAuth::Required).unwrap();
    let (peer, alpn) = handshake(client, server).unwrap();
    let peer = peer.unwrap();
    assert_eq!(peer.id.as_str(), FRONTEND);
    assert_eq!(peer.namespace.as_deref(), Some("frontend"));
    assert_eq!(peer.service_account.as_deref(), Some("web"));
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
}

#[test]
fn a_wrong_server_identity_is_refused_naming_both() {
    let ca = TestCa::new("mesh root");
    let client = client_config(store(ca.credentials(FRONTEND)), vec![id(BACKEND)]).unwrap();
    let server = server_config(
        store(ca.credentials("spiffe://cluster.local/ns/backend/sa/impostor")),
        ClientAuth::Required,
    )
    .unwrap();
    let Err(Failed::Client(e)) = handshake(client, server) else {
        panic!("expected the client to refuse");
    };
    let m = message(&e);
    assert!(
        m.contains("server identity spiffe://cluster.local/ns/backend/sa/impostor is not one of the expected identities [spiffe://cluster.local/ns/backend/sa/api]"),
        "{m}"
    );
}

#[test]
fn an_untrusted_ca_is_refused_on_both_sides() {
    let ours = TestCa::new("mesh root");
    let theirs = TestCa::new("other root");
    // Server from another CA: the client refuses.
    let client = client_config(store(ours.credentials(FRONTEND)), vec![]).unwrap();
    let server = server_config(store(theirs.credentials(BACKEND)), ClientAuth::Required).unwrap();
    let Err(Failed::Client(e)) = handshake(client, server) else {
        panic!("expected the client to refuse");
    };
    assert_eq!(
        e,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        "{e}"
    );
    // Client from another CA (trusting both, so only the server's check can fail): the
    // server refuses.
    let trusting = format!("{}{}", theirs.bundle_pem(), ours.bundle_pem());
    let leaf = theirs.issue(FRONTEND);
    let creds = Credentials::from_pem(
        leaf.cert_pem.as_bytes(),
        leaf.key_pem.as_bytes(),
        trusting.as_bytes(),
    )
    .unwrap();
    let client = client_config(store(creds), vec![]).unwrap();
    let server = server_config(store(ours.credentials(BACKEND)), ClientAuth::Required).unwrap();
    let Err(Failed::Server(e)) = handshake(client, server) else {
        panic!("expected the server to refuse");
    };
    assert_eq!(
        e,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
}

#[test]
fn an_expired_certificate_is_refused() {
    let ca = TestCa::new("mesh root");
    // Loading refuses an expired leaf outright.
    let expired = ca.issue_with(&LeafSpec {
        uris: &[BACKEND],
        dns: &[],
        expired: true,
    });
    let err = expired.credentials(&ca).unwrap_err();
    assert!(matches!(err, CredentialsError::NotValidNow { .. }), "{err}");
    // A peer presenting one is refused at the handshake: a server with an expired leaf, built
    // past the loader's check through rustls directly.
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(expired.key_pem.as_bytes()).unwrap();
    let cert =
        rustls::pki_types::CertificateDer::from_pem_slice(expired.cert_pem.as_bytes()).unwrap();
    let server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let client = client_config(store(ca.credentials(FRONTEND)), vec![]).unwrap();
    let Err(Failed::Client(e)) = handshake(client, Arc::new(server)) else {
        panic!("expected the client to refuse");
    };
    assert!(
        matches!(
            e,
            rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("certificate expired"), "{e}");
}

#[test]
fn a_missing_client_certificate_is_refused_when_required_and_accepted_when_optional() {
    let ca = TestCa::new("mesh root");
    let server_store = store(ca.credentials(BACKEND));
    let anonymous = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(server_store.load().roots().clone())
        .with_no_client_auth();
    let anonymous = Arc::new(anonymous);
    let strict = server_config(server_store.clone(), ClientAuth::Required).unwrap();
    // The anonymous client verifies DNS names: the leaf has `localhost`, so use that name.
    let name = ServerName::try_from("localhost").unwrap();
    let mut c = ClientConnection::new(anonymous.clone(), name.clone()).unwrap();
    let mut s = ServerConnection::new(strict).unwrap();
    let mut result = Ok(());
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        if buf.is_empty() && !s.wants_write() {
            break;
        }
        s.read_tls(&mut buf.as_slice()).unwrap();
        if let Err(e) = s.process_new_packets() {
            result = Err(e);
            break;
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        c.read_tls(&mut buf.as_slice()).unwrap();
        c.process_new_packets().unwrap();
    }
    assert_eq!(result, Err(rustls::Error::NoCertificatesPresented));

    // Optional: the same client completes the handshake, with no peer identity.
    let optional = server_config(server_store, ClientAuth::Optional).unwrap();
    let mut c = ClientConnection::new(anonymous, name).unwrap();
    let mut s = ServerConnection::new(optional).unwrap();
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        s.read_tls(&mut buf.as_slice()).unwrap();
        s.process_new_packets().unwrap();
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        c.read_tls(&mut buf.as_slice()).unwrap();
        c.process_new_packets().unwrap();
        if !c.is_handshaking() && !s.is_handshaking() {
            break;
        }
    }
    assert!(!s.is_handshaking());
    assert_eq!(peer_identity(s.peer_certificates()), None);
}

#[test]
fn a_client_certificate_without_a_spiffe_id_is_refused() {
    let ca = TestCa::new("mesh root");
    let leaf = ca.issue_with(&LeafSpec {
        uris: &[],
        dns: &["client.example"],
        expired: false,
    });
    // Our loader refuses it ...
    assert!(matches!(
        leaf.credentials(&ca).unwrap_err(),
        CredentialsError::Identity(IdentityError::Missing)
    ));
    // ... and so does the server when a client presents one.
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let cert = rustls::pki_types::CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
    let server_store = store(ca.credentials(BACKEND));
    let client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(server_store.load().roots().clone())
        .with_client_auth_cert(vec![cert], key)
        .unwrap();
    let server = server_config(server_store, ClientAuth::Required).unwrap();
    let mut c = ClientConnection::new(Arc::new(client), ServerName::try_from("localhost").unwrap())
        .unwrap();
    let mut s = ServerConnection::new(server).unwrap();
    let mut result = Ok(());
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        s.read_tls(&mut buf.as_slice()).unwrap();
        if let Err(e) = s.process_new_packets() {
            result = Err(e);
            break;
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        c.read_tls(&mut buf.as_slice()).unwrap();
        c.process_new_packets().unwrap();
    }
    let e = result.unwrap_err();
    assert!(
        e.to_string()
            .contains("no spiffe:// URI subject alternative name"),
        "{e}"
    );
}

#[test]
fn rotation_changes_what_new_handshakes_present() {
    let old_ca = TestCa::new("old root");
    let server_store = store(old_ca.credentials(BACKEND));
    let client_store = store(old_ca.credentials(FRONTEND));
    let server = server_config(server_store.clone(), ClientAuth::Required).unwrap();
    let client = client_config(client_store.clone(), vec![id(BACKEND)]).unwrap();
    assert!(handshake(client.clone(), server.clone()).is_ok());

    // Rotate both sides to a new CA (the bundle holds both roots during the overlap).
    let new_ca = TestCa::new("new root");
    let both = format!("{}{}", new_ca.bundle_pem(), old_ca.bundle_pem());
    let leaf = new_ca.issue(BACKEND);
    let next = Credentials::from_pem(
        leaf.cert_pem.as_bytes(),
        leaf.key_pem.as_bytes(),
        both.as_bytes(),
    )
    .unwrap();
    server_store.rotate(next);
    assert_eq!(server_store.rotations(), 1);
    // A client that does not trust the new root yet refuses the server's new certificate: the
    // server config is the same, what it presents changed. (A fresh client config, so that
    // TLS session resumption does not skip certificate verification.)
    let fresh = || client_config(client_store.clone(), vec![id(BACKEND)]).unwrap();
    assert!(matches!(
        handshake(fresh(), server.clone()),
        Err(Failed::Client(_))
    ));
    let leaf = new_ca.issue(FRONTEND);
    client_store.rotate(
        Credentials::from_pem(
            leaf.cert_pem.as_bytes(),
            leaf.key_pem.as_bytes(),
            both.as_bytes(),
        )
        .unwrap(),
    );
    let (peer, _) = handshake(fresh(), server).unwrap();
    assert_eq!(peer.unwrap().id.as_str(), FRONTEND);
    drop(client);
}

#[test]
fn bad_credentials_are_refused_with_the_reason() {
    let ca = TestCa::new("mesh root");
    let other = TestCa::new("other");
    let a = ca.issue(FRONTEND);
    let b = ca.issue(BACKEND);
    let err =
        |c: &[u8], k: &[u8], b: &[u8]| Credentials::from_pem(c, k, b).unwrap_err().to_string();
    let bundle = ca.bundle_pem().as_bytes();
    assert_eq!(
        err(b"", a.key_pem.as_bytes(), bundle),
        "certificate chain: no PEM item found"
    );
    assert_eq!(
        err(a.cert_pem.as_bytes(), b"", bundle),
        "private key: no PEM item found"
    );
    assert_eq!(
        err(a.cert_pem.as_bytes(), a.key_pem.as_bytes(), b""),
        "trust bundle: no PEM item found"
    );
    let mismatch = err(a.cert_pem.as_bytes(), b.key_pem.as_bytes(), bundle);
    assert!(mismatch.starts_with("private key:"), "{mismatch}");
    let untrusted = err(
        a.cert_pem.as_bytes(),
        a.key_pem.as_bytes(),
        other.bundle_pem().as_bytes(),
    );
    assert!(
        untrusted.starts_with("certificate: does not chain to the trust bundle"),
        "{untrusted}"
    );
    let two = ca.issue_with(&LeafSpec {
        uris: &[FRONTEND, BACKEND],
        dns: &[],
        expired: false,
    });
    assert!(err(two.cert_pem.as_bytes(), two.key_pem.as_bytes(), bundle).contains("exactly one"));
    let bad = ca.issue_with(&LeafSpec {
        uris: &["spiffe://Bad/x"],
        dns: &[],
        expired: false,
    });
    assert!(
        err(bad.cert_pem.as_bytes(), bad.key_pem.as_bytes(), bundle)
            .contains("not a valid SPIFFE ID")
    );
    let ok = a.credentials(&ca).unwrap();
    assert_eq!(ok.id().as_str(), FRONTEND);
    assert!(ok.seconds_to_expiry() > 0);
}

#[test]
fn the_file_watcher_rotates_on_change_and_keeps_the_old_on_a_bad_file() {
    let dir = std::env::temp_dir().join(format!("mesh-policy-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key, ca_path) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("ca.pem"),
    );
    let ca = TestCa::new("mesh root");
    let first = ca.issue(FRONTEND);
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();
    std::fs::write(&ca_path, ca.bundle_pem()).unwrap();
    let creds = Credentials::from_files(&cert, &key, &ca_path).unwrap();
    let st = store(creds);
    let mut watcher =
        crate::credentials::FileWatcher::new(cert.clone(), key.clone(), ca_path.clone(), true);
    assert!(matches!(
        watcher.poll(&st),
        crate::credentials::PollOutcome::Unchanged
    ));
    // A cert without its key: rejected, the old identity stays.
    let second = ca.issue("spiffe://cluster.local/ns/frontend/sa/web2");
    std::fs::write(&cert, &second.cert_pem).unwrap();
    assert!(matches!(
        watcher.poll(&st),
        crate::credentials::PollOutcome::Rejected(CredentialsError::Key(_))
    ));
    assert_eq!(st.load().id().as_str(), FRONTEND);
    assert!(matches!(
        watcher.poll(&st),
        crate::credentials::PollOutcome::Unchanged
    ));
    // The key arrives: rotated.
    std::fs::write(&key, &second.key_pem).unwrap();
    assert!(matches!(
        watcher.poll(&st),
        crate::credentials::PollOutcome::Rotated
    ));
    assert_eq!(
        st.load().id().as_str(),
        "spiffe://cluster.local/ns/frontend/sa/web2"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `config` offering `alpn` instead of its own protocols.
fn offering(config: Arc<ClientConfig>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut config = Arc::unwrap_or_clone(config);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

#[test]
fn istio_sidecars_offers_are_accepted_and_the_http_version_is_kept() {
    // What Istio's Envoy sidecars offer on mesh connections (pilot's mtlsHTTP11ALPN,
    // mtlsHTTP2ALPN, ALPNInMeshWithMxc and, from older ones, ALPNInMesh): a TCP offer shares
    // nothing with `h2`/`http/1.1`, and rustls refuses such a handshake unless the server
    // also knows its protocols.
    let ca = TestCa::new("mesh root");
    let server = server_config(store(ca.credentials(BACKEND)), ClientAuth::Required).unwrap();
    let client = client_config(store(ca.credentials(FRONTEND)), vec![id(BACKEND)]).unwrap();
    for (offer, negotiated) in [
        (
            &[&b"istio-peer-exchange"[..], b"istio"][..],
            &b"istio-peer-exchange"[..],
        ),
        (&[&b"istio"[..]][..], b"istio"),
        (
            &[&b"istio-http/1.1"[..], b"istio", b"http/1.1"][..],
            b"http/1.1",
        ),
        (&[&b"istio-h2"[..], b"istio", b"h2"][..], b"h2"),
    ] {
        let (peer, alpn) = handshake(offering(client.clone(), offer), server.clone())
            .unwrap_or_else(|e| panic!("offer {offer:?} refused: {e:?}"));
        assert_eq!(peer.unwrap().id.as_str(), FRONTEND);
        assert_eq!(alpn.as_deref(), Some(negotiated), "offer {offer:?}");
    }
    // An offer sharing nothing with the server's list is still refused, as before.
    let Err(Failed::Server(e)) = handshake(offering(client, &[b"spdy/3"]), server) else {
        panic!("an unknown protocol should be refused");
    };
    assert_eq!(e, rustls::Error::NoApplicationProtocol);
}

#[test]
fn mesh_clients_offer_istio_s_protocols_and_negotiate_by_what_they_carry() {
    // An Envoy sidecar's inbound listener takes a TLS connection for mesh mTLS only when its
    // ClientHello offers one of these (pilot's allIstioMtlsALPNs); without one, a PERMISSIVE
    // port passes the connection through to the app as the app's own TLS.
    const ISTIO_MTLS: [&[u8]; 5] = [
        b"istio",
        b"istio-peer-exchange",
        b"istio-http/1.0",
        b"istio-http/1.1",
        b"istio-h2",
    ];
    let ca = TestCa::new("mesh root");
    let server = server_config(store(ca.credentials(BACKEND)), ClientAuth::Required).unwrap();
    for (protocol, negotiated) in [
        (MeshProtocol::Http, &b"h2"[..]),
        (MeshProtocol::Http1, b"http/1.1"),
        (MeshProtocol::Tcp, b"istio-peer-exchange"),
    ] {
        let client =
            mesh_client_config(store(ca.credentials(FRONTEND)), vec![id(BACKEND)], protocol)
                .unwrap();
        assert!(
            client
                .alpn_protocols
                .iter()
                .any(|p| ISTIO_MTLS.contains(&p.as_slice())),
            "{protocol:?} offers no Istio mesh protocol"
        );
        let (_, alpn) = handshake(client, server.clone()).unwrap();
        assert_eq!(alpn.as_deref(), Some(negotiated), "{protocol:?}");
    }
    // An HTTP/1.1-only client cannot be turned into HTTP/2 by the server.
    assert!(!HTTP1_ALPN.iter().any(|p| p.ends_with(b"h2")));
}

/// A server presenting `leaf`, asking for no client certificate.
fn plain_server(leaf: &crate::testing::Issued) -> Arc<ServerConfig> {
    let chain = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    )
}

#[test]
fn file_tls_refuses_a_revoked_server_and_checks_the_listed_names_instead_of_the_sni() {
    let ca = TestCa::new("app root");
    // `handshake` connects to this name.
    let sni = ["backend.backend.svc.cluster.local"];
    let good = ca.issue_with(&LeafSpec {
        dns: &sni,
        ..Default::default()
    });
    let revoked = ca.issue_with(&LeafSpec {
        dns: &sni,
        ..Default::default()
    });
    let elsewhere = ca.issue_with(&LeafSpec {
        dns: &["api.example.com"],
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.bundle_pem()).unwrap();
    let crl_path = dir.path().join("crl.pem");
    std::fs::write(&crl_path, ca.crl_pem(&[&revoked])).unwrap();
    let client = |crl: bool, names: &[String]| {
        client_config_from_files(&FileTls {
            ca: Some(&ca_path),
            crl: crl.then_some(crl_path.as_path()),
            subject_alt_names: names,
            ..Default::default()
        })
        .unwrap()
    };
    let refused = |r: Result<_, Failed>| match r {
        Err(Failed::Client(rustls::Error::InvalidCertificate(e))) => e,
        other => panic!("expected the client to refuse the certificate, got {other:?}"),
    };
    // Without the list, both certificates for the SNI pass; with it, the revoked one fails.
    for leaf in [&good, &revoked] {
        handshake(client(false, &[]), plain_server(leaf)).unwrap();
    }
    handshake(client(true, &[]), plain_server(&good)).unwrap();
    assert_eq!(
        refused(handshake(client(true, &[]), plain_server(&revoked))),
        CertificateError::Revoked
    );
    // The SNI decides without names; the names decide when listed (any one of them).
    assert!(matches!(
        refused(handshake(client(false, &[]), plain_server(&elsewhere))),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
    ));
    let names = ["other.example.com".to_owned(), "api.example.com".to_owned()];
    handshake(client(true, &names), plain_server(&elsewhere)).unwrap();
    assert!(matches!(
        refused(handshake(client(true, &names), plain_server(&good))),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
    ));
    // A revoked certificate stays refused whatever names it carries.
    let names = [sni[0].to_owned()];
    assert_eq!(
        refused(handshake(client(true, &names), plain_server(&revoked))),
        CertificateError::Revoked
    );
    // Bad files name their field.
    std::fs::write(&crl_path, "not a CRL").unwrap();
    let e = client_config_from_files(&FileTls {
        ca: Some(&ca_path),
        crl: Some(&crl_path),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().starts_with("caCrl"), "{e}");
}
