//! The access log: one line per request, in Envoy's default text format or as JSON.

use super::{Details, Observation, Outcome};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The access log's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// Envoy's default format:
    /// `[START] "METHOD PATH PROTOCOL" CODE FLAGS RX TX DURATION - "XFF" "UA" "ID" "AUTHORITY" "UPSTREAM"`.
    Text,
    /// One JSON object per line, with the same fields and the trace id and attempt count.
    Json,
}

/// An RFC 3339 UTC timestamp with milliseconds, without a date library.
fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The line for one request. As Envoy's `%BYTES_RECEIVED%` and `%BYTES_SENT%`, its byte
/// counts are the bodies' (`response_bytes`), without headers.
pub(super) fn line(
    format: AccessLogFormat,
    o: &Observation,
    d: &Details,
    outcome: &Outcome,
    response_bytes: u64,
    elapsed: Duration,
) -> String {
    let start = rfc3339(SystemTime::now() - elapsed);
    let upstream = outcome
        .upstream
        .as_ref()
        .map_or("-", |u| u.authority.as_str());
    let millis = elapsed.as_millis();
    match format {
        AccessLogFormat::Text => format!(
            "[{start}] \"{} {} {}\" {} {} {} {} {millis} - \"{}\" \"{}\" \"{}\" \"{}\" \"{upstream}\"",
            d.method,
            d.path,
            d.protocol,
            outcome.status,
            outcome.flags,
            o.request_bytes.body(),
            response_bytes,
            d.forwarded_for,
            d.user_agent,
            d.request_id,
            d.authority,
        ),
        AccessLogFormat::Json => serde_json::json!({
            "start_time": start,
            "method": d.method,
            "path": d.path,
            "protocol": d.protocol,
            "response_code": outcome.status,
            "response_flags": outcome.flags.to_string(),
            "bytes_received": o.request_bytes.body(),
            "bytes_sent": response_bytes,
            "duration": millis as u64,
            "x_forwarded_for": d.forwarded_for,
            "user_agent": d.user_agent,
            "request_id": d.request_id,
            "authority": d.authority,
            "upstream_host": upstream,
            "upstream_service": outcome.upstream.as_ref().map(|u| u.service.as_str()),
            "attempts": outcome.attempts,
            "trace_id": d.trace.trace_id_hex(),
            "peer_identity": o.peer_principal(),
        })
        .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_764_028_800_123)),
            "2025-11-25T00:00:00.123Z"
        );
    }

    use super::super::{Reporter, Telemetry};
    use mesh_core::model::{MeshConfig, PathNormalization};
    use mesh_core::store::ConfigStore;
    use std::sync::{Arc, Mutex};

    /// The path of the access log line of a request for `path`, on a stack whose live config
    /// is `config` (none: no store).
    fn logged_path(reporter: Reporter, config: Option<MeshConfig>, path: &str) -> String {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let mut telemetry = Telemetry::new(reporter, Default::default()).access_log(
            AccessLogFormat::Json,
            Arc::new(move |line: &str| sink.lock().unwrap().push(line.to_owned())),
        );
        if let Some(config) = config {
            telemetry = telemetry.local_service(Arc::new(ConfigStore::new(config)));
        }
        let mut req = http::Request::get(path).body(()).unwrap();
        let observation = telemetry.start(&mut req);
        drop(observation.finish(http::Response::new(crate::body::empty())));
        let line = lines.lock().unwrap().pop().expect("one line");
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        json["path"].as_str().unwrap().to_owned()
    }

    #[test]
    fn the_inbound_side_logs_the_path_normalized_and_the_outbound_side_as_it_came() {
        let logged = |reporter: Reporter, path: &str| logged_path(reporter, None, path);
        assert_eq!(
            logged(Reporter::Destination, "/public/../%61dmin?x=1"),
            "/admin?x=1"
        );
        assert_eq!(logged(Reporter::Destination, "/a/b"), "/a/b");
        // Refused by normalization (a 400 before the app): logged as it came.
        assert_eq!(logged(Reporter::Destination, "/a%00"), "/a%00");
        assert_eq!(
            logged(Reporter::Source, "/public/../admin?x=1"),
            "/public/../admin?x=1"
        );
    }

    #[test]
    fn the_inbound_side_logs_the_path_as_the_live_configs_normalization_leaves_it() {
        let with_mode = |mode| {
            Some(MeshConfig {
                path_normalization: mode,
                ..MeshConfig::default()
            })
        };
        let path = "//a/%2F/./b?x=//";
        for (mode, want) in [
            (PathNormalization::None, path),
            (PathNormalization::Base, "//a/%2F/b?x=//"),
            (PathNormalization::MergeSlashes, "/a/%2F/b?x=//"),
            (PathNormalization::DecodeAndMergeSlashes, "/a/b?x=//"),
        ] {
            assert_eq!(
                logged_path(Reporter::Destination, with_mode(mode), path),
                want,
                "{mode}"
            );
            // The outbound side logs what it sent.
            assert_eq!(logged_path(Reporter::Source, with_mode(mode), path), path);
        }
    }
}
