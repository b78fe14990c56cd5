//! The process-wide Prometheus recorder the sidecar renders on `/stats/prometheus`, with
//! Istio's histogram buckets.

use mesh_tower::telemetry::{BYTES_BUCKETS, DURATION_BUCKETS_MS};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder on first use and returns its handle; `None` when another recorder
/// was installed first (an embedding program's own).
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("istio_request_duration_milliseconds".into()),
                    &DURATION_BUCKETS_MS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("istio_request_bytes".into()),
                        &BYTES_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("istio_response_bytes".into()),
                        &BYTES_BUCKETS,
                    )
                });
            match builder.and_then(|b| b.install_recorder()) {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!("metrics recorder not installed: {e}");
                    None
                }
            }
        })
        .as_ref()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        "istio_requests_total",
        "Requests, by source, destination, response code and flags."
    );
    describe_histogram!(
        "istio_request_duration_milliseconds",
        Unit::Milliseconds,
        "Request duration."
    );
    describe_histogram!("istio_request_bytes", Unit::Bytes, "Request body sizes.");
    describe_histogram!("istio_response_bytes", Unit::Bytes, "Response body sizes.");
    describe_counter!("mesh_retries_total", "Retries sent.");
    describe_counter!(
        "mesh_retry_budget_exhausted_total",
        "Retries refused by the retry budget."
    );
    describe_counter!(
        "mesh_outlier_ejections_total",
        "Endpoints ejected by outlier detection."
    );
    describe_counter!(
        "mesh_circuit_breaker_overflow_total",
        "Requests refused by circuit breakers."
    );
    describe_counter!(
        "mesh_rate_limited_total",
        "Requests refused by local rate limits."
    );
    describe_counter!("mesh_faults_injected_total", "Faults injected, by kind.");
    describe_counter!(
        "mesh_mirror_requests_total",
        "Mirrored requests sent and skipped."
    );
    describe_counter!(
        "mesh_config_reloads_total",
        "Config reloads accepted and rejected."
    );
}
