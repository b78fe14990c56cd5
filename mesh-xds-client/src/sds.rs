//! SDS secrets into the workload's credentials: the certificate secret (`default` in Istio)
//! and the root secret (`ROOTCA`) a control plane serves become a
//! [`mesh_policy::credentials::Credentials`], and every change rotates a
//! [`CredentialStore`] (new handshakes use the new certificate, open connections are left
//! alone). A secret that does not make valid credentials (a key that does not match, a
//! certificate without a SPIFFE ID) is refused with a warning and the previous credentials
//! keep serving.
//!
//! ```no_run
//! # async fn example(handle: mesh_xds_client::client::XdsHandle, store: std::sync::Arc<mesh_policy::credentials::CredentialStore>) {
//! tokio::spawn(mesh_xds_client::sds::rotate(handle.secrets(), store));
//! # }
//! ```

use crate::client::Secrets;
use crate::translate::{SecretKind, XdsSecret};
use mesh_policy::credentials::{CredentialStore, Credentials, CredentialsError};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

/// Istio's name for the workload certificate secret.
pub const CERTIFICATE: &str = "default";
/// Istio's name for the trust bundle secret.
pub const ROOT_CA: &str = "ROOTCA";

/// The credentials `secrets` hold (`None` until both the certificate and the root secret are
/// there).
pub fn credentials(
    secrets: &BTreeMap<String, XdsSecret>,
) -> Option<Result<Credentials, CredentialsError>> {
    let Some(SecretKind::Certificate { chain_pem, key_pem }) =
        secrets.get(CERTIFICATE).map(|s| &s.kind)
    else {
        return None;
    };
    let Some(SecretKind::ValidationContext { trusted_ca_pem }) =
        secrets.get(ROOT_CA).map(|s| &s.kind)
    else {
        return None;
    };
    Some(Credentials::from_pem(chain_pem, key_pem, trusted_ca_pem))
}

/// Rotates `store` to every new set of valid credentials `secrets` carries, until the xDS
/// client ends.
pub async fn rotate(mut secrets: watch::Receiver<Secrets>, store: Arc<CredentialStore>) {
    loop {
        let current = secrets.borrow_and_update().clone();
        match credentials(&current) {
            Some(Ok(next)) => store.rotate(next),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "SDS secrets refused: the previous credentials stay");
            }
            None => {}
        }
        if secrets.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_policy::testing::TestCa;

    fn secrets(cert: &str, key: &str, ca: &str) -> BTreeMap<String, XdsSecret> {
        [
            XdsSecret {
                name: CERTIFICATE.into(),
                kind: SecretKind::Certificate {
                    chain_pem: cert.as_bytes().to_vec(),
                    key_pem: key.as_bytes().to_vec(),
                },
            },
            XdsSecret {
                name: ROOT_CA.into(),
                kind: SecretKind::ValidationContext {
                    trusted_ca_pem: ca.as_bytes().to_vec(),
                },
            },
        ]
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect()
    }

    #[tokio::test]
    async fn sds_secrets_rotate_the_store_and_a_bad_pair_keeps_the_previous() {
        let ca = TestCa::new("mesh-root");
        let first = ca.credentials("spiffe://cluster.local/ns/default/sa/first");
        let store = CredentialStore::new(first);
        let (tx, rx) = watch::channel(Secrets::default());
        let task = tokio::spawn(rotate(rx, store.clone()));

        let second = ca.issue("spiffe://cluster.local/ns/default/sa/second");
        tx.send(Arc::new(secrets(
            &second.cert_pem,
            &second.key_pem,
            ca.bundle_pem(),
        )))
        .unwrap();
        for _ in 0..100 {
            if store.load().id().to_string().ends_with("/second") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            store.load().id().to_string(),
            "spiffe://cluster.local/ns/default/sa/second"
        );

        // A key that is not the certificate's: refused, the second identity stays.
        let third = ca.issue("spiffe://cluster.local/ns/default/sa/third");
        tx.send(Arc::new(secrets(
            &third.cert_pem,
            &second.key_pem,
            ca.bundle_pem(),
        )))
        .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(store.load().id().to_string().ends_with("/second"));
        assert!(matches!(
            credentials(&secrets(&third.cert_pem, &second.key_pem, ca.bundle_pem())),
            Some(Err(_))
        ));
        // Only one of the two secrets: nothing yet.
        let mut partial = secrets(&third.cert_pem, &third.key_pem, ca.bundle_pem());
        partial.remove(ROOT_CA);
        assert!(credentials(&partial).is_none());
        drop(tx);
        task.await.unwrap();
    }
}
