//! Istio's standard HTTP metrics, with their names and label sets.

use super::{Observation, Outcome, Reporter};
use std::time::Duration;

/// Istio's buckets for `istio_request_duration_milliseconds`.
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5,
    1.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    30_000.0,
    60_000.0,
    300_000.0,
    600_000.0,
    1_800_000.0,
    3_600_000.0,
];

/// Istio's buckets for `istio_request_bytes` and `istio_response_bytes`.
pub const BYTES_BUCKETS: [f64; 9] = [
    1.0,
    10.0,
    100.0,
    1_000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
    10_000_000.0,
    100_000_000.0,
];

fn or_unknown(value: Option<&str>) -> String {
    value
        .filter(|v| !v.is_empty())
        .unwrap_or("unknown")
        .to_owned()
}

/// The standard label set for one request.
fn labels(o: &Observation, outcome: &Outcome) -> Vec<(&'static str, String)> {
    let w = &o.telemetry.workload;
    let app = w.labels.get("app").map(String::as_str);
    let spiffe = format!(
        "spiffe://{}/ns/{}/sa/{}",
        w.trust_domain, w.namespace, w.service_account
    );
    let up = outcome.upstream.as_ref();
    let service = up.map(|u| u.service.as_str());
    let service_name = service.and_then(|s| s.split('.').next());
    let dest_ns = up.and_then(|u| u.namespace.as_deref());
    let dest_app = up.and_then(|u| u.labels.get("app").map(String::as_str));
    let dest_principal = up.and_then(|u| {
        Some(format!(
            "spiffe://{}/ns/{}/sa/{}",
            w.trust_domain,
            u.namespace.as_deref()?,
            u.service_account.as_deref()?
        ))
    });
    let (source, destination) = match o.telemetry.reporter {
        Reporter::Source => (true, false),
        Reporter::Destination => (false, true),
    };
    let me = |v: Option<&str>| {
        if source {
            or_unknown(v)
        } else {
            "unknown".to_owned()
        }
    };
    let peer_principal = o.peer.as_ref().map(|(id, _)| id.as_str());
    let peer_namespace = o.peer.as_ref().and_then(|(_, ns)| ns.as_deref());
    vec![
        ("reporter", o.telemetry.reporter.label().to_owned()),
        ("source_workload", me(app)),
        (
            "source_workload_namespace",
            if source {
                w.namespace.clone()
            } else {
                or_unknown(peer_namespace)
            },
        ),
        (
            "source_principal",
            if source {
                spiffe.clone()
            } else {
                or_unknown(peer_principal)
            },
        ),
        ("source_app", me(app)),
        (
            "source_version",
            me(w.labels.get("version").map(String::as_str)),
        ),
        (
            "destination_workload",
            if destination {
                or_unknown(app)
            } else {
                or_unknown(dest_app)
            },
        ),
        (
            "destination_workload_namespace",
            if destination {
                w.namespace.clone()
            } else {
                or_unknown(dest_ns)
            },
        ),
        (
            "destination_principal",
            if destination {
                spiffe
            } else {
                or_unknown(dest_principal.as_deref())
            },
        ),
        (
            "destination_app",
            if destination {
                or_unknown(app)
            } else {
                or_unknown(dest_app)
            },
        ),
        (
            "destination_version",
            if destination {
                or_unknown(w.labels.get("version").map(String::as_str))
            } else {
                or_unknown(up.and_then(|u| u.labels.get("version").map(String::as_str)))
            },
        ),
        ("destination_service", or_unknown(service)),
        ("destination_service_name", or_unknown(service_name)),
        ("destination_service_namespace", or_unknown(dest_ns)),
        (
            "request_protocol",
            if o.grpc { "grpc" } else { "http" }.to_owned(),
        ),
        ("response_code", outcome.status.to_string()),
        (
            "grpc_response_status",
            outcome.grpc_status.clone().unwrap_or_default(),
        ),
        ("response_flags", outcome.flags.to_string()),
        (
            "connection_security_policy",
            match (destination, o.mutual_tls) {
                (true, true) => "mutual_tls",
                (true, false) => "none",
                (false, _) => "unknown",
            }
            .to_owned(),
        ),
    ]
}

/// Records the standard metrics for one finished request.
pub(super) fn record(o: &Observation, outcome: &Outcome, response_bytes: u64, elapsed: Duration) {
    let labels = labels(o, outcome);
    metrics::counter!("istio_requests_total", &labels).increment(1);
    metrics::histogram!("istio_request_duration_milliseconds", &labels)
        .record(elapsed.as_secs_f64() * 1_000.0);
    metrics::histogram!("istio_request_bytes", &labels).record(o.request_bytes as f64);
    metrics::histogram!("istio_response_bytes", &labels).record(response_bytes as f64);
}
