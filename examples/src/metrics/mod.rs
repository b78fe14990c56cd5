//! The process-wide metrics recorder the sidecar renders on `/stats/prometheus`: Istio's
//! histograms with their fixed buckets counted in place (module `fixed`), every other metric in the
//! Prometheus exporter, and the exporter's upkeep.
//!
//! The exporter keeps every histogram sample until something folds the samples into their
//! buckets: a scrape does, and so does [`PrometheusHandle::run_upkeep`]. A sidecar that nobody
//! scrapes would otherwise grow with every sample of a histogram the exporter holds, so a
//! thread runs the upkeep every [`UPKEEP_INTERVAL`], for as long as the process-wide recorder
//! exists: the process. (Istio's histograms, held apart, do not grow.)

mod fixed;

use fixed::FixedHistograms;
use mesh_tower::telemetry::{BYTES_BUCKETS, DURATION_BUCKETS_MS};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How often histogram samples are folded into their buckets without a scrape (the
/// exporter's own default for the recorders it runs itself).
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The sidecar's metrics, as a scrape reads them.
#[derive(Debug)]
pub struct Metrics {
    prometheus: PrometheusHandle,
    fixed: Arc<FixedHistograms>,
}

impl Metrics {
    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = self.prometheus.render();
        self.fixed.render(&mut text);
        text
    }
}

/// The recorder the sidecar installs: Istio's histograms in [`FixedHistograms`], the rest in
/// the Prometheus exporter.
struct SidecarRecorder {
    prometheus: PrometheusRecorder,
    fixed: Arc<FixedHistograms>,
}

impl Recorder for SidecarRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        if self.fixed.holds(&key) {
            self.fixed.describe(&key, description);
        } else {
            self.prometheus.describe_histogram(key, unit, description);
        }
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.prometheus.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.prometheus.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.fixed
            .register(key)
            .unwrap_or_else(|| self.prometheus.register_histogram(key, metadata))
    }
}

static METRICS: OnceLock<Option<Metrics>> = OnceLock::new();

/// Installs the recorder on first use and returns the sidecar's metrics; `None` when another
/// recorder was installed first (an embedding program's own).
pub fn prometheus() -> Option<&'static Metrics> {
    METRICS
        .get_or_init(|| {
            let prometheus = PrometheusBuilder::new().build_recorder();
            let handle = prometheus.handle();
            let fixed = Arc::new(FixedHistograms::new(vec![
                (
                    "istio_request_duration_milliseconds",
                    &DURATION_BUCKETS_MS[..],
                ),
                ("istio_request_bytes", &BYTES_BUCKETS[..]),
                ("istio_response_bytes", &BYTES_BUCKETS[..]),
            ]));
            let recorder = SidecarRecorder {
                prometheus,
                fixed: fixed.clone(),
            };
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    describe();
                    spawn_upkeep(handle.clone());
                    Some(Metrics {
                        prometheus: handle,
                        fixed,
                    })
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
    describe_histogram!(
        "istio_request_bytes",
        Unit::Bytes,
        "Request sizes: headers and body."
    );
    describe_histogram!(
        "istio_response_bytes",
        Unit::Bytes,
        "Response sizes: headers and body."
    );
    describe_counter!(
        "istio_request_messages_total",
        "gRPC messages the clients sent."
    );
    describe_counter!(
        "istio_response_messages_total",
        "gRPC messages the servers sent."
    );
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
