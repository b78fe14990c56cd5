//! Istio resources in YAML -> the mesh's model, with `istioctl analyze`-style diagnostics.
//!
//! Two steps, both pure (the caller reads the files):
//! 1. [`parse`] turns one file's multi-document YAML into typed [`Resource`]s. Syntax errors,
//!    wrong types and unknown fields become [`Diagnostic`]s naming the file, the resource and
//!    the field path (`spec.http[0].route[1].weight`).
//! 2. [`build`] checks the resources together (missing subsets, unknown hosts, duplicates) and
//!    resolves them into a [`MeshConfig`](crate::model::MeshConfig) the way istiod resolves them for one proxy.
//!
//! ```
//! use mesh_core::istio;
//! use mesh_core::model::Workload;
//!
//! let yaml = r#"
//! apiVersion: networking.istio.io/v1
//! kind: ServiceEntry
//! metadata: { name: hello }
//! spec:
//!   hosts: [hello.default.svc.cluster.local]
//!   ports: [{ number: 80, name: http, protocol: HTTP }]
//!   resolution: STATIC
//!   endpoints: [{ address: 127.0.0.1, ports: { http: 8080 } }]
//! "#;
//! let parsed = istio::parse("hello.yaml", yaml);
//! assert!(parsed.diagnostics.is_empty());
//! let built = istio::build(&parsed.resources, &Workload::default());
//! let config = built.config.expect("valid");
//! assert!(config.routes.find("hello").is_some());
//! ```

pub mod api;
mod build;
mod duration;

pub use build::{BuildOutcome, MeshOptions, build, build_with};
pub use duration::parse_duration;

use std::fmt;

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The config cannot be used.
    Error,
    /// The config is usable but probably not what was meant.
    Warning,
}

/// One finding about the config: where it is and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file the resource came from.
    pub file: String,
    /// The resource (`VirtualService default/reviews`), when known.
    pub resource: Option<String>,
    /// The field path (`spec.http[0].route[1].weight`), empty for the whole resource.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl Diagnostic {
    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    /// `file: Kind ns/name: field.path: message` (parts that are unknown are left out).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file)?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        if let Some(r) = &self.resource {
            write!(f, "{r}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// The kinds of resource the loader understands.
#[allow(clippy::large_enum_variant)] // Parsed once per reload; boxing buys nothing.
#[derive(Clone, Debug, PartialEq)]
pub enum Spec {
    /// `networking.istio.io` ServiceEntry.
    ServiceEntry(api::ServiceEntry),
    /// `networking.istio.io` WorkloadEntry.
    WorkloadEntry(api::WorkloadEntry),
    /// `networking.istio.io` VirtualService.
    VirtualService(api::VirtualService),
    /// `networking.istio.io` DestinationRule.
    DestinationRule(api::DestinationRule),
    /// `networking.istio.io` Sidecar.
    Sidecar(api::Sidecar),
    /// `security.istio.io` AuthorizationPolicy.
    AuthorizationPolicy(api::AuthorizationPolicy),
    /// `security.istio.io` PeerAuthentication.
    PeerAuthentication(api::PeerAuthentication),
    /// `security.istio.io` RequestAuthentication.
    RequestAuthentication(api::RequestAuthentication),
}

/// One parsed resource and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    /// The file it was read from.
    pub file: String,
    /// Its kind (`VirtualService`).
    pub kind: &'static str,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, `default` when absent.
    pub namespace: String,
    /// `metadata.annotations`.
    pub annotations: std::collections::BTreeMap<String, String>,
    /// The spec.
    pub spec: Spec,
}

impl Resource {
    /// `Kind namespace/name`, as diagnostics name it.
    pub fn key(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// What [`parse`] found in one file.
#[derive(Clone, Debug, Default)]
pub struct ParseOutcome {
    /// The resources that parsed.
    pub resources: Vec<Resource>,
    /// Findings, errors and warnings.
    pub diagnostics: Vec<Diagnostic>,
}

const NETWORKING: [&str; 3] = [
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];
const SECURITY: [&str; 2] = ["security.istio.io/v1", "security.istio.io/v1beta1"];

/// Parses one file's YAML documents into resources. Never panics; every problem is a
/// diagnostic.
pub fn parse(file: &str, text: &str) -> ParseOutcome {
    let mut out = ParseOutcome::default();
    let error = |resource: Option<String>, field: String, message: String| Diagnostic {
        severity: Severity::Error,
        file: file.to_owned(),
        resource,
        field,
        message,
    };
    let docs: Vec<serde_json::Value> = match serde_saphyr::from_multiple(text) {
        Ok(docs) => docs,
        Err(e) => {
            let message = match e.location() {
                Some(loc) => format!(
                    "invalid YAML at line {}, column {}: {e}",
                    loc.line(),
                    loc.column()
                ),
                None => format!("invalid YAML: {e}"),
            };
            out.diagnostics.push(error(None, String::new(), message));
            return out;
        }
    };
    for (index, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let header = |field: &str| doc.get(field).and_then(|v| v.as_str()).unwrap_or_default();
        let kind = header("kind").to_owned();
        let api_version = header("apiVersion").to_owned();
        let meta = doc.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_owned();
        let namespace = meta
            .and_then(|m| m.get("namespace"))
            .and_then(|n| n.as_str())
            .unwrap_or("default")
            .to_owned();
        let key = format!("{kind} {namespace}/{name}");
        if !doc.is_object() {
            out.diagnostics.push(error(
                None,
                String::new(),
                format!(
                    "document {index}: expected a mapping with apiVersion, kind, metadata and spec"
                ),
            ));
            continue;
        }
        if kind.is_empty() {
            out.diagnostics.push(error(
                None,
                "kind".into(),
                format!("document {index}: missing kind"),
            ));
            continue;
        }
        if name.is_empty() {
            out.diagnostics.push(error(
                Some(key.clone()),
                "metadata.name".into(),
                "missing name".into(),
            ));
            continue;
        }
        let group_ok = |allowed: &[&str]| allowed.contains(&api_version.as_str());
        macro_rules! typed {
            ($variant:ident, $kind:literal, $group:expr) => {{
                if !group_ok(&$group) {
                    out.diagnostics.push(error(
                        Some(key.clone()),
                        "apiVersion".into(),
                        format!(
                            "unsupported apiVersion {api_version:?} for {}; expected one of {:?}",
                            $kind, $group
                        ),
                    ));
                    continue;
                }
                match serde_path_to_error::deserialize::<_, api::Object<api::$variant>>(&doc) {
                    Ok(obj) => (Spec::$variant(obj.spec), $kind, obj.metadata.annotations),
                    Err(e) => {
                        out.diagnostics.push(error(
                            Some(key.clone()),
                            e.path().to_string(),
                            e.inner().to_string(),
                        ));
                        continue;
                    }
                }
            }};
        }
        let (spec, kind, annotations) = match kind.as_str() {
            "ServiceEntry" => typed!(ServiceEntry, "ServiceEntry", NETWORKING),
            "WorkloadEntry" => typed!(WorkloadEntry, "WorkloadEntry", NETWORKING),
            "VirtualService" => typed!(VirtualService, "VirtualService", NETWORKING),
            "DestinationRule" => typed!(DestinationRule, "DestinationRule", NETWORKING),
            "Sidecar" => typed!(Sidecar, "Sidecar", NETWORKING),
            "AuthorizationPolicy" => typed!(AuthorizationPolicy, "AuthorizationPolicy", SECURITY),
            "PeerAuthentication" => typed!(PeerAuthentication, "PeerAuthentication", SECURITY),
            "RequestAuthentication" => {
                typed!(RequestAuthentication, "RequestAuthentication", SECURITY)
            }
            other => {
                out.diagnostics.push(error(
                    Some(key.clone()),
                    "kind".into(),
                    format!("unsupported kind {other:?}"),
                ));
                continue;
            }
        };
        out.resources.push(Resource {
            file: file.to_owned(),
            kind,
            name,
            namespace,
            annotations,
            spec,
        });
    }
    out
}

/// A convenience for tests and tools: parses and builds in one step, with Istio's default
/// [`MeshOptions`].
pub fn load(files: &[(&str, &str)], workload: &crate::model::Workload) -> BuildOutcome {
    load_with(files, workload, &MeshOptions::default())
}

/// [`load`] with the mesh-wide settings `options` (root namespace, path normalization).
pub fn load_with(
    files: &[(&str, &str)],
    workload: &crate::model::Workload,
    options: &MeshOptions,
) -> BuildOutcome {
    let mut resources = Vec::new();
    let mut diagnostics = Vec::new();
    for (file, text) in files {
        let parsed = parse(file, text);
        resources.extend(parsed.resources);
        diagnostics.extend(parsed.diagnostics);
    }
    let mut built = build_with(&resources, workload, options);
    diagnostics.append(&mut built.diagnostics);
    if diagnostics.iter().any(Diagnostic::is_error) {
        built.config = None;
    }
    built.diagnostics = diagnostics;
    built
}
