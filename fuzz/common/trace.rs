//! The trace_context fuzz target's runner, shared with the corpus replay test
//! (`mesh-tower/tests/fuzz_corpus.rs` includes this file by path).
//!
//! The input's first line is an `OTEL_PROPAGATORS` list, the rest `name: value` header lines
//! of a request (lines that are not a valid header are skipped). The list is parsed as the
//! sidecar parses the variable; a list it accepts configures telemetry, which then reads the
//! caller's trace context from the headers and writes this proxy's, as on every request.
//! Nothing may panic, and what is written must agree with what was read:
//! - a written `traceparent` parses; it continues the caller's W3C trace when `tracecontext`
//!   is on and the caller's `traceparent` parses (same trace id and sampled flag);
//! - written B3 headers name the same trace and span as the written `traceparent`;
//! - `x-request-id` is always present.

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use mesh_core::model::Percentage;
use mesh_tower::rng::Rng;
use mesh_tower::telemetry::{Propagators, Reporter, Telemetry, parse_b3, parse_traceparent};

/// What one input did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The input is not UTF-8 or has no first line.
    Undecodable,
    /// The propagator list was refused (its error message).
    Refused(String),
    /// The trace headers written, by name.
    Written(Vec<String>),
}

/// The request's headers from the input's header lines.
pub fn headers(lines: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in lines.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.trim()),
            HeaderValue::try_from(value.trim()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    headers
}

/// Runs one input; panics when what was written disagrees with what was read.
pub fn run(data: &[u8]) -> Outcome {
    let Ok(text) = std::str::from_utf8(data) else {
        return Outcome::Undecodable;
    };
    let Some((list, lines)) = text.split_once('\n') else {
        return Outcome::Undecodable;
    };
    let propagators: Propagators = match list.parse() {
        Ok(p) => p,
        Err(e) => {
            // The error names the entry it refused.
            let message = e.to_string();
            assert!(message.contains(&format!("`{}`", e.name)), "{message}");
            return Outcome::Refused(message);
        }
    };
    // The list the parser accepted reads back as the same choice.
    assert_eq!(
        propagators.to_string().parse::<Propagators>().ok(),
        Some(propagators)
    );
    let mut req = Request::new(());
    *req.headers_mut() = headers(lines);
    let incoming_w3c = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent);
    let telemetry = Telemetry::new(Reporter::Source, Default::default())
        .rng(Rng::with_seed(1))
        .sampling(Percentage::NONE)
        .propagators(propagators);
    let observation = telemetry.start(&mut req);
    drop(observation);
    let out = req.headers();
    assert!(
        out.contains_key("x-request-id"),
        "x-request-id is always set"
    );
    let written = out
        .get("traceparent")
        .filter(|_| propagators.tracecontext())
        .map(|v| {
            parse_traceparent(v.to_str().expect("written as text"))
                .expect("a written traceparent parses")
        });
    if let (Some((trace, _, sampled)), Some(incoming)) = (written, incoming_w3c) {
        assert_eq!(
            (trace, sampled),
            (incoming.0, incoming.2),
            "the caller's W3C trace continues"
        );
    }
    if let Some((trace, span, sampled)) = written {
        if propagators.b3_multi() {
            let mut multi = HeaderMap::new();
            for name in ["x-b3-traceid", "x-b3-spanid", "x-b3-sampled"] {
                multi.insert(name, out[name].clone());
            }
            assert_eq!(parse_b3(&multi), Some((trace, span, Some(sampled))));
        }
        if propagators.b3_single() {
            let mut single = HeaderMap::new();
            single.insert("b3", out["b3"].clone());
            assert_eq!(parse_b3(&single), Some((trace, span, Some(sampled))));
        }
    }
    let mut names: Vec<String> = out
        .keys()
        .map(|n| n.as_str())
        .filter(|n| *n == "traceparent" || *n == "b3" || n.starts_with("x-b3-"))
        .map(str::to_owned)
        .collect();
    names.sort();
    Outcome::Written(names)
}
