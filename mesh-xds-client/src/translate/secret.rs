//! `Secret` (SDS) -> PEM material.

use super::{FieldError, FieldResult};
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};

/// A translated secret: PEM bytes, inline in the resource.
#[derive(Clone, PartialEq, Eq)]
pub struct XdsSecret {
    /// The secret's name (`default`, `ROOTCA` in Istio).
    pub name: String,
    /// What it holds.
    pub kind: SecretKind,
}

impl std::fmt::Debug for XdsSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        let kind = match &self.kind {
            SecretKind::Certificate { .. } => "Certificate",
            SecretKind::ValidationContext { .. } => "ValidationContext",
        };
        f.debug_struct("XdsSecret")
            .field("name", &self.name)
            .field("kind", &kind)
            .finish()
    }
}

/// The content of a secret.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretKind {
    /// A certificate chain and its private key (PEM).
    Certificate {
        /// The chain, leaf first.
        chain_pem: Vec<u8>,
        /// The private key.
        key_pem: Vec<u8>,
    },
    /// Trusted CA certificates (PEM).
    ValidationContext {
        /// The CA bundle.
        trusted_ca_pem: Vec<u8>,
    },
}

pub(super) fn translate(s: &Secret) -> FieldResult<XdsSecret> {
    if s.name.is_empty() {
        return Err(FieldError::new("name", "must not be empty"));
    }
    let kind = match &s.r#type {
        Some(secret::Type::TlsCertificate(c)) => SecretKind::Certificate {
            chain_pem: inline(
                c.certificate_chain.as_ref(),
                "tls_certificate.certificate_chain",
            )?,
            key_pem: inline(c.private_key.as_ref(), "tls_certificate.private_key")?,
        },
        Some(secret::Type::ValidationContext(v)) => SecretKind::ValidationContext {
            trusted_ca_pem: inline(v.trusted_ca.as_ref(), "validation_context.trusted_ca")?,
        },
        _ => {
            return Err(FieldError::new(
                "type",
                "only tls_certificate and validation_context are supported",
            ));
        }
    };
    Ok(XdsSecret {
        name: s.name.clone(),
        kind,
    })
}

fn inline(d: Option<&DataSource>, field: &str) -> FieldResult<Vec<u8>> {
    match d.and_then(|d| d.specifier.as_ref()) {
        Some(data_source::Specifier::InlineBytes(b)) => Ok(b.clone()),
        Some(data_source::Specifier::InlineString(s)) => Ok(s.clone().into_bytes()),
        Some(_) => Err(FieldError::new(
            field,
            "only inline_bytes and inline_string are supported",
        )),
        None => Err(FieldError::new(field, "is required")),
    }
}
