//! Exports spans over OTLP/gRPC (`opentelemetry.proto.collector.trace.v1.TraceService`) in
//! batches, from a bounded queue: a slow or absent collector drops spans, never requests.

use super::spans::{SpanKind, SpanRecord, SpanSink};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::mpsc;

const QUEUE: usize = 4_096;
const BATCH: usize = 512;

/// Counters of the exporter.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans sent to the collector.
    pub exported: AtomicU64,
    /// Spans dropped: queue full or the collector unreachable.
    pub dropped: AtomicU64,
}

fn string_attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The OTLP form of a span.
pub fn to_proto(record: &SpanRecord) -> Span {
    Span {
        trace_id: record.trace_id.to_be_bytes().to_vec(),
        span_id: record.span_id.to_be_bytes().to_vec(),
        parent_span_id: record
            .parent_span_id
            .map(|p| p.to_be_bytes().to_vec())
            .unwrap_or_default(),
        name: record.name.clone(),
        kind: match record.kind {
            SpanKind::Server => span::SpanKind::Server as i32,
            SpanKind::Client => span::SpanKind::Client as i32,
        },
        start_time_unix_nano: nanos(record.start),
        end_time_unix_nano: nanos(record.end),
        attributes: record
            .attributes
            .iter()
            .map(|(k, v)| string_attr(k, v))
            .collect(),
        status: Some(Status {
            code: if record.error {
                status::StatusCode::Error
            } else {
                status::StatusCode::Ok
            } as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Starts an exporter to `endpoint` (`http://host:4317`) for `service_name`, returning the
/// sink to give [`Telemetry::spans`](super::Telemetry::spans) and the exporter's counters.
/// Spans are sent in batches of up to 512, at least every `interval`.
pub fn exporter(
    endpoint: String,
    service_name: String,
    interval: Duration,
) -> (SpanSink, Arc<ExportStats>) {
    let (tx, mut rx) = mpsc::channel::<SpanRecord>(QUEUE);
    let stats = Arc::new(ExportStats::default());
    let sink_stats = stats.clone();
    let sink: SpanSink = Arc::new(move |record| {
        if tx.try_send(record).is_err() {
            sink_stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    });
    let task_stats = stats.clone();
    tokio::spawn(async move {
        let resource = Resource {
            attributes: vec![string_attr("service.name", &service_name)],
            ..Default::default()
        };
        let mut client = None;
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let deadline = tokio::time::sleep(interval);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    next = rx.recv() => match next {
                        Some(record) => {
                            batch.push(to_proto(&record));
                            if batch.len() >= BATCH { break; }
                        }
                        None => {
                            if batch.is_empty() { return; }
                            break;
                        }
                    },
                    () = &mut deadline => break,
                }
            }
            if batch.is_empty() {
                continue;
            }
            let spans = std::mem::take(&mut batch);
            let count = spans.len() as u64;
            if client.is_none() {
                client = TraceServiceClient::connect(endpoint.clone()).await.ok();
            }
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "mesh".to_owned(),
                            version: env!("CARGO_PKG_VERSION").to_owned(),
                            ..Default::default()
                        }),
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            let sent = match client.as_mut() {
                Some(c) => c.export(request).await.is_ok(),
                None => false,
            };
            if sent {
                task_stats.exported.fetch_add(count, Ordering::Relaxed);
            } else {
                client = None;
                task_stats.dropped.fetch_add(count, Ordering::Relaxed);
                tracing::debug!(%endpoint, count, "OTLP export failed; spans dropped");
            }
        }
    });
    (sink, stats)
}
