//! Checks parsed Istio resources together and resolves them into one [`MeshConfig`], the way
//! istiod resolves them for one sidecar.
//!
//! One concern per module: [`registry`] (ServiceEntry, WorkloadEntry -> services and
//! instances), [`policy`] (DestinationRule traffic policies), [`routes`] (VirtualService ->
//! routes), [`security`] (AuthorizationPolicy, PeerAuthentication), [`sidecar`] (inbound
//! listeners). Each records findings with the field path of the offending value and carries on,
//! so that one run reports every problem.

mod policy;
mod registry;
mod routes;
mod security;
mod sidecar;
mod tcp_routes;
mod values;

use super::{Diagnostic, Resource, Severity};
use crate::model::{MeshConfig, PathNormalization, RouteTable, Workload};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The settings of Istio's mesh-wide `MeshConfig` (the `mesh` key of the `istio` ConfigMap)
/// that shape what the loader builds. [`Default`] is Istio's defaults.
///
/// ```
/// use mesh_core::istio::MeshOptions;
/// use mesh_core::model::PathNormalization;
/// let options = MeshOptions {
///     root_namespace: "istio-config".into(),
///     path_normalization: PathNormalization::MergeSlashes,
/// };
/// assert_eq!(MeshOptions::default().root_namespace, "istio-system");
/// # let _ = options;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshOptions {
    /// `rootNamespace`: the namespace whose selector-less AuthorizationPolicies and
    /// PeerAuthentications apply mesh-wide (`istio-system` by default).
    pub root_namespace: String,
    /// `pathNormalization.normalization`, copied into
    /// [`MeshConfig::path_normalization`] (`BASE` by default).
    pub path_normalization: PathNormalization,
}

impl Default for MeshOptions {
    fn default() -> Self {
        Self {
            root_namespace: "istio-system".to_owned(),
            path_normalization: PathNormalization::default(),
        }
    }
}

/// What [`build`] produced: a config when there are no errors, and every finding.
#[derive(Clone, Debug, Default)]
pub struct BuildOutcome {
    /// The resolved config; `None` when any finding is an error.
    pub config: Option<MeshConfig>,
    /// Errors and warnings, in resource order.
    pub diagnostics: Vec<Diagnostic>,
}

impl BuildOutcome {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// The findings that are errors.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

/// Checks `resources` together and resolves them for `workload`, with Istio's default
/// [`MeshOptions`].
///
/// Never panics. Every problem becomes a [`Diagnostic`]; the config is returned only when
/// none of them is an error.
pub fn build(resources: &[Resource], workload: &Workload) -> BuildOutcome {
    build_with(resources, workload, &MeshOptions::default())
}

/// [`build`] with the mesh-wide settings `options` (root namespace, path normalization).
pub fn build_with(
    resources: &[Resource],
    workload: &Workload,
    options: &MeshOptions,
) -> BuildOutcome {
    let mut findings = Findings::default();
    let unique = deduplicate(resources, &mut findings);
    let registry = registry::Registry::build(&unique, workload, &mut findings);
    let rules = policy::DestinationRules::build(&unique, &registry, workload, &mut findings);
    let clusters = policy::clusters(&registry, &rules);
    let (routes, mut tcp_routes) =
        routes::build(&unique, &registry, &rules, workload, &mut findings);
    let sidecar = sidecar::settings(&unique, workload, &mut findings);
    let root = options.root_namespace.as_str();
    let authorization = security::authorization(&unique, workload, root, &mut findings);
    let peer_authentication = security::peer_authentication(&unique, workload, root, &mut findings);
    let request_authentication =
        security::request_authentication(&unique, workload, root, &mut findings);
    let mut services = registry.services();
    let (mut clusters, mut routes) = (clusters, routes);
    if let Some(egress) = &sidecar.egress {
        // The Sidecar's egress listeners scope what the workload sees: the service ports they
        // do not import are out of the registry, with their clusters and virtual hosts, and so
        // is a service with none left (a call to one then goes as to any unknown destination:
        // through, or nowhere under REGISTRY_ONLY).
        services.retain(|host, s| {
            if s.ports
                .iter()
                .all(|p| egress.imports(&s.namespace, host, p.number))
            {
                return true;
            }
            let service = Arc::make_mut(s);
            service
                .ports
                .retain(|p| egress.imports(&service.namespace, host, p.number));
            !service.ports.is_empty()
        });
        let seen = |host: &str, port: Option<u16>| {
            services
                .get(host)
                .is_some_and(|s| port.is_none_or(|port| s.port(port).is_some()))
        };
        clusters.retain(|_, c| seen(c.service.as_str(), Some(c.port)));
        tcp_routes.retain(|own, _| clusters.contains_key(own));
        let known = |host: &str| registry.get(host).is_some();
        let kept = routes
            .virtual_hosts()
            .iter()
            .filter(|vh| {
                let (host, port) = match vh.name.rsplit_once(':') {
                    Some((host, port)) => (host, port.parse().ok()),
                    None => (vh.name.as_str(), None),
                };
                !known(host) || seen(host, port)
            })
            .cloned()
            .collect();
        routes = RouteTable::new(kept);
    }
    let config = MeshConfig {
        workload: workload.clone(),
        services,
        clusters,
        routes,
        tcp_routes,
        inbound: sidecar.inbound,
        authorization,
        peer_authentication,
        request_authentication,
        workload_services: registry.local.iter().cloned().collect(),
        workload_service_ports: registry.local_ports.clone(),
        path_normalization: options.path_normalization,
        outbound_traffic_policy: sidecar.outbound_traffic_policy,
    };
    let diagnostics = findings.list;
    let has_errors = diagnostics.iter().any(Diagnostic::is_error);
    BuildOutcome {
        config: (!has_errors).then_some(config),
        diagnostics,
    }
}

/// Keeps the first of resources that share kind, namespace and name; later ones are errors.
fn deduplicate<'r>(resources: &'r [Resource], findings: &mut Findings) -> Vec<&'r Resource> {
    let mut seen: BTreeMap<String, &Resource> = BTreeMap::new();
    let mut unique = Vec::with_capacity(resources.len());
    for resource in resources {
        let key = resource.key();
        if let Some(first) = seen.get(&key) {
            findings.error(
                resource,
                "metadata.name",
                format!("duplicate {key}: already defined in {}", first.file),
            );
            continue;
        }
        seen.insert(key, resource);
        unique.push(resource);
    }
    unique
}

/// The findings of one build.
#[derive(Debug, Default)]
pub(super) struct Findings {
    list: Vec<Diagnostic>,
}

impl Findings {
    fn push(&mut self, severity: Severity, res: &Resource, field: &str, message: String) {
        self.list.push(Diagnostic {
            severity,
            file: res.file.clone(),
            resource: Some(res.key()),
            field: field.to_owned(),
            message,
        });
    }

    /// Records an error at `field` of `res`.
    pub(super) fn error(&mut self, res: &Resource, field: &str, message: impl Into<String>) {
        self.push(Severity::Error, res, field, message.into());
    }

    /// Records a warning at `field` of `res`.
    pub(super) fn warn(&mut self, res: &Resource, field: &str, message: impl Into<String>) {
        self.push(Severity::Warning, res, field, message.into());
    }

    /// A scope that records findings against `res`.
    pub(super) fn at<'s>(&'s mut self, res: &'s Resource) -> At<'s> {
        At {
            res,
            findings: self,
        }
    }
}

/// Findings about one resource.
pub(super) struct At<'s> {
    res: &'s Resource,
    findings: &'s mut Findings,
}

impl At<'_> {
    /// Records an error at `field`.
    pub(super) fn error(&mut self, field: &str, message: impl Into<String>) {
        self.findings.error(self.res, field, message);
    }

    /// Records a warning at `field`.
    pub(super) fn warn(&mut self, field: &str, message: impl Into<String>) {
        self.findings.warn(self.res, field, message);
    }

    /// Runs `check` and records its error at `field`; `None` when it failed.
    pub(super) fn check<T>(&mut self, field: &str, check: Result<T, String>) -> Option<T> {
        check.map_err(|message| self.error(field, message)).ok()
    }
}

/// Expands a short host (`reviews`) to its fully qualified name in `namespace`
/// (`reviews.default.svc.cluster.local`), as Istio does; other hosts are lowercased.
pub(super) fn qualify(host: &str, namespace: &str, cluster_domain: &str) -> String {
    let host = host.to_ascii_lowercase();
    if host.contains('.') || host.contains('*') {
        host
    } else {
        format!("{host}.{namespace}.svc.{cluster_domain}")
    }
}

/// Whether a resource in `namespace` with `export_to` applies to a workload in
/// `workload_namespace`, as Istio scopes VirtualServices and DestinationRules: empty or `*`
/// is every namespace, `.` the resource's own, `~` none, a name that namespace. Records an
/// error for an entry that is none of these, a repeat, or `*` beside other entries.
pub(super) fn exported_to(
    export_to: &[String],
    namespace: &str,
    workload_namespace: &str,
    at: &mut At<'_>,
) -> bool {
    if export_to.is_empty() {
        return true;
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut visible = false;
    for (i, entry) in export_to.iter().enumerate() {
        let field = format!("spec.exportTo[{i}]");
        let target = match entry.as_str() {
            "." => namespace,
            other => other,
        };
        let valid = matches!(target, "*" | "~") || is_dns_label(target);
        if !valid {
            at.error(
                &field,
                format!("{entry:?} is not `.`, `*`, `~` or a namespace name"),
            );
            continue;
        }
        if seen.contains(&target) {
            at.error(&field, format!("{entry:?} repeats an earlier entry"));
            continue;
        }
        seen.push(target);
        visible |= target == "*" || target == workload_namespace;
    }
    if seen.contains(&"*") && seen.len() > 1 {
        at.error("spec.exportTo", "`*` cannot be combined with other entries");
    }
    visible
}

/// An RFC 1123 label, as Kubernetes namespace names are.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
