//! The process-wide Prometheus recorder the sidecar renders on `/stats/prometheus`, with
//! Istio's histogram buckets, and its upkeep.
//!
//! The recorder keeps every histogram sample until something folds the samples into their
//! buckets: a scrape does, and so does [`PrometheusHandle::run_upkeep`]. A sidecar that nobody
//! scrapes would otherwise grow by about 60 bytes a request (measured: +30 MB per 500,000
//! requests), so a thread runs the upkeep every [`UPKEEP_INTERVAL`], for as long as the
//! process-wide recorder exists: the process.

use mesh_tower::telemetry::{BYTES_BUCKETS, DURATION_BUCKETS_MS};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

/// How often histogram samples are folded into their buckets without a scrape (the
/// exporter's own default for the recorders it runs itself).
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

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
                    spawn_upkeep(handle.clone());
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

/// A thread, not a task: the recorder outlives any one runtime (tests start many).
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("metrics upkeep not started (histograms grow until scraped): {e}");
    }
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
