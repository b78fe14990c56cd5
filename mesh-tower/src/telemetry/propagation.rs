//! Trace context: W3C `traceparent`/`tracestate` and B3 (multi-header and single `b3`), read
//! from the incoming request and written for the next hop with this proxy's span as the
//! parent, in the formats [`Propagators`] chooses (`OTEL_PROPAGATORS`).

use crate::rng::Rng;
use http::{HeaderMap, HeaderName, HeaderValue};
use mesh_core::model::Percentage;

/// The trace-context formats read from a request and written for the next hop, named as
/// OpenTelemetry's `OTEL_PROPAGATORS` names them: `tracecontext` (W3C `traceparent`; its
/// `tracestate` passes through), `b3` (the single `b3` header), `b3multi` (`x-b3-traceid`,
/// `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`), `baggage` (accepted: `baggage` passes
/// through untouched) and `none`.
///
/// The default is `tracecontext,b3multi`: Istio's sidecars and the apps written for them
/// (Envoy's Zipkin tracer, bookinfo) forward B3, OpenTelemetry's SDKs `traceparent`, and a
/// mesh between the two keeps both traces whole. One format alone writes fewer headers on
/// every request. As OpenTelemetry's B3 propagator does, `b3` and `b3multi` each read B3 in
/// either encoding (the single header first) and write their own. Formats not listed are
/// neither read nor written: their headers pass through as the caller sent them, as Envoy
/// leaves the formats its tracer does not speak.
///
/// ```
/// use mesh_tower::telemetry::Propagators;
///
/// let w3c: Propagators = "tracecontext, baggage".parse().unwrap();
/// assert!(w3c.tracecontext() && !w3c.b3_multi());
/// assert_eq!("".parse::<Propagators>().unwrap(), Propagators::default());
/// let err = "tracecontext,jaeger".parse::<Propagators>().unwrap_err();
/// assert!(err.to_string().contains("`jaeger`"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Propagators {
    tracecontext: bool,
    b3_single: bool,
    b3_multi: bool,
}

impl Default for Propagators {
    fn default() -> Self {
        Self {
            tracecontext: true,
            b3_single: false,
            b3_multi: true,
        }
    }
}

impl Propagators {
    /// No trace context read or written (`none`): each request starts a trace of its own.
    pub const NONE: Self = Self {
        tracecontext: false,
        b3_single: false,
        b3_multi: false,
    };

    /// Whether W3C `traceparent` is read and written.
    pub fn tracecontext(self) -> bool {
        self.tracecontext
    }

    /// Whether the single `b3` header is written.
    pub fn b3_single(self) -> bool {
        self.b3_single
    }

    /// Whether the `x-b3-*` headers are written.
    pub fn b3_multi(self) -> bool {
        self.b3_multi
    }

    /// Whether B3 is read (in either encoding).
    fn b3(self) -> bool {
        self.b3_single || self.b3_multi
    }
}

/// An `OTEL_PROPAGATORS` entry this proxy does not speak.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unsupported trace propagator `{name}`: supported are tracecontext, baggage, b3, b3multi \
     and none"
)]
pub struct UnknownPropagator {
    /// The entry as given.
    pub name: String,
}

impl std::str::FromStr for Propagators {
    type Err = UnknownPropagator;

    /// A comma-separated list as `OTEL_PROPAGATORS` holds it; empty means the default.
    fn from_str(list: &str) -> Result<Self, UnknownPropagator> {
        if list.trim().is_empty() {
            return Ok(Self::default());
        }
        let mut chosen = Self::NONE;
        for name in list.split(',').map(str::trim) {
            match name.to_ascii_lowercase().as_str() {
                "tracecontext" => chosen.tracecontext = true,
                "b3" => chosen.b3_single = true,
                "b3multi" => chosen.b3_multi = true,
                "baggage" | "none" => {}
                _ => {
                    return Err(UnknownPropagator {
                        name: name.to_owned(),
                    });
                }
            }
        }
        Ok(chosen)
    }
}

impl std::fmt::Display for Propagators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [
            (self.tracecontext, "tracecontext"),
            (self.b3_single, "b3"),
            (self.b3_multi, "b3multi"),
        ];
        let mut chosen = names.iter().filter(|(on, _)| *on).map(|(_, name)| *name);
        match chosen.next() {
            None => f.write_str("none"),
            Some(first) => {
                f.write_str(first)?;
                chosen.try_for_each(|name| write!(f, ",{name}"))
            }
        }
    }
}

/// The trace this request belongs to and this proxy's span in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The 128-bit trace id.
    pub trace_id: u128,
    /// This proxy's span id.
    pub span_id: u64,
    /// The caller's span id, when the request came with one.
    pub parent_span_id: Option<u64>,
    /// Whether the trace is sampled.
    pub sampled: bool,
}

impl TraceContext {
    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex_string(&hex::<32>(self.trace_id))
    }

    /// The span id as 16 lowercase hex digits.
    pub fn span_id_hex(&self) -> String {
        hex_string(&hex::<16>(u128::from(self.span_id)))
    }

    /// Writes `traceparent` and the B3 headers for the next hop (this span as its parent);
    /// `tracestate` passes through untouched. [`TraceContext::inject_as`] chooses the formats.
    pub fn inject(&self, headers: &mut HeaderMap) {
        self.inject_as(headers, Propagators::default());
    }

    /// Writes the trace headers of the formats `propagators` names for the next hop.
    pub fn inject_as(&self, headers: &mut HeaderMap, propagators: Propagators) {
        // Room for the headers at once: a map parsed to fit its headers grows once, not once
        // per header.
        headers.reserve(5);
        self.write(headers, propagators, true, None);
    }

    /// As [`TraceContext::inject_as`], without reserving room; `stale_b3` says whether the
    /// map may hold a `b3` or `x-b3-parentspanid` header that this span does not overwrite
    /// (each removal hashes a name, so a caller that scanned the headers can skip them).
    ///
    /// With `request_id`, also sets `x-request-id` to it: every value set here shares one
    /// buffer, so one allocation.
    pub(super) fn write(
        &self,
        headers: &mut HeaderMap,
        propagators: Propagators,
        stale_b3: bool,
        request_id: Option<&[u8; 36]>,
    ) {
        let trace = hex::<32>(self.trace_id);
        let span = hex::<16>(u128::from(self.span_id));
        // The values share one buffer (one allocation): `traceparent`
        // (`00-{trace}-{span}-{flags}`, whose ids B3 multi reuses), the B3 parent, then the
        // request id.
        let mut buffer = [0u8; 55 + 16 + 36];
        buffer[..3].copy_from_slice(b"00-");
        buffer[3..35].copy_from_slice(&trace);
        buffer[35] = b'-';
        buffer[36..52].copy_from_slice(&span);
        buffer[52..55].copy_from_slice(if self.sampled { b"-01" } else { b"-00" });
        if let Some(parent) = self.parent_span_id {
            buffer[55..71].copy_from_slice(&hex::<16>(u128::from(parent)));
        }
        if let Some(id) = request_id {
            buffer[71..].copy_from_slice(id);
        }
        let buffer = bytes::Bytes::from_owner(buffer);
        let set = |headers: &mut HeaderMap, name: HeaderName, range: std::ops::Range<usize>| {
            if let Ok(v) = HeaderValue::from_maybe_shared(buffer.slice(range)) {
                headers.insert(name, unique(v));
            }
        };
        if propagators.tracecontext {
            set(headers, TRACEPARENT, 0..55);
        }
        if request_id.is_some() {
            set(headers, X_REQUEST_ID, 71..107);
        }
        if propagators.b3_multi {
            set(headers, X_B3_TRACEID, 3..35);
            set(headers, X_B3_SPANID, 36..52);
            headers.insert(
                X_B3_SAMPLED,
                HeaderValue::from_static(if self.sampled { "1" } else { "0" }),
            );
            if self.parent_span_id.is_some() {
                set(headers, X_B3_PARENTSPANID, 55..71);
            } else if stale_b3 {
                headers.remove(X_B3_PARENTSPANID);
            }
        }
        if propagators.b3_single {
            // `{trace}-{span}-{sampled}`, in a buffer of its own: the default formats do not
            // write it, and need not carry its room.
            let mut single = [0u8; 51];
            single[..32].copy_from_slice(&trace);
            single[32] = b'-';
            single[33..49].copy_from_slice(&span);
            single[49..].copy_from_slice(if self.sampled { b"-1" } else { b"-0" });
            if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(single)) {
                headers.insert(B3, unique(v));
            }
        } else if propagators.b3_multi && stale_b3 {
            // The caller's single header names the caller's span, not this one.
            headers.remove(B3);
        }
    }
}

/// `value`, marked as one no other request carries (a trace or request id): HTTP/2's HPACK
/// then sends it as a literal that is never indexed (`set_sensitive`), instead of adding to
/// the connection's header table an entry that no later request can use, which would push
/// out the entries that later requests do repeat (`:authority`, `user-agent`, ...). HTTP/1.1
/// ignores the mark; `{:?}` prints such a value as `Sensitive` (read it with `to_str`).
/// Measured with an HTTP/2 upstream: 5% fewer instructions per request (`benches/RESULTS.md`,
/// session 14).
fn unique(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

/// The tracing headers a request came with (and `x-request-id`), found in one pass over its
/// headers: a lookup by name hashes the name, and most requests carry none of these.
/// As [`HeaderMap::get`], the first value of a repeated header counts.
#[derive(Debug, Default)]
pub(super) struct TraceHeaders<'a> {
    traceparent: Option<&'a HeaderValue>,
    b3: Option<&'a HeaderValue>,
    b3_trace_id: Option<&'a HeaderValue>,
    b3_span_id: Option<&'a HeaderValue>,
    b3_parent_span_id: Option<&'a HeaderValue>,
    b3_sampled: Option<&'a HeaderValue>,
    b3_flags: Option<&'a HeaderValue>,
    pub(super) request_id: Option<&'a HeaderValue>,
    /// Read in the same pass for the metrics: the request's size and whether it is gRPC.
    pub(super) content_length: Option<&'a HeaderValue>,
    pub(super) content_type: Option<&'a HeaderValue>,
    /// And for the request's size (see `size::request_header_bytes`): every header's name and
    /// value lengths, summed, and the `Host` header, which counts as the `:authority`.
    pub(super) header_bytes: u64,
    pub(super) host: Option<&'a HeaderValue>,
}

impl<'a> TraceHeaders<'a> {
    /// Finds the headers in `headers`.
    pub(super) fn scan(headers: &'a HeaderMap) -> Self {
        let mut found = Self::default();
        for (name, value) in headers {
            let name = name.as_str();
            found.header_bytes += (name.len() + value.len()) as u64;
            let slot = match name {
                "traceparent" => &mut found.traceparent,
                "b3" => &mut found.b3,
                "x-b3-traceid" => &mut found.b3_trace_id,
                "x-b3-spanid" => &mut found.b3_span_id,
                "x-b3-parentspanid" => &mut found.b3_parent_span_id,
                "x-b3-sampled" => &mut found.b3_sampled,
                "x-b3-flags" => &mut found.b3_flags,
                "x-request-id" => &mut found.request_id,
                "content-length" => &mut found.content_length,
                "content-type" => &mut found.content_type,
                "host" => &mut found.host,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        found
    }

    /// The request body's declared size (0 without a valid `content-length`).
    pub(super) fn body_size(&self) -> u64 {
        self.content_length
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Whether the request is gRPC, as [`crate::timeout::is_grpc`].
    pub(super) fn is_grpc(&self) -> bool {
        self.content_type
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
    }

    /// Whether the request carries a B3 header that a new span does not always overwrite.
    pub(super) fn stale_b3(&self) -> bool {
        self.b3.is_some() || self.b3_parent_span_id.is_some()
    }

    /// The caller's trace from W3C `traceparent`: `(trace id, span id, sampled)`.
    fn w3c(&self) -> Option<(u128, u64, Option<bool>)> {
        let (trace, span, sampled) = parse_traceparent(self.traceparent?.to_str().ok()?)?;
        Some((trace, span, Some(sampled)))
    }

    /// A B3 sampling decision sent without a trace: the single header as `0`, `1` or `d`
    /// alone, else `x-b3-sampled` (or the debug flag) without `x-b3-traceid`.
    fn b3_decision_only(&self) -> Option<bool> {
        if let Some(single) = text(self.b3) {
            return b3_single_decision(single.trim());
        }
        if self.b3_trace_id.is_some() {
            return None;
        }
        self.b3_multi_decision()
    }

    /// The caller's trace from B3; see [`parse_b3`].
    fn b3(&self) -> Option<(u128, u64, Option<bool>)> {
        if let Some(single) = text(self.b3) {
            let mut parts = single.split('-');
            let trace = hex_u128(parts.next()?)?;
            let span = hex_u64(parts.next()?)?;
            let sampled = parts.next().and_then(b3_single_decision);
            return Some((trace, span, sampled));
        }
        let trace = hex_u128(text(self.b3_trace_id)?)?;
        let span = hex_u64(text(self.b3_span_id)?)?;
        Some((trace, span, self.b3_multi_decision()))
    }

    /// The sampling decision of the `x-b3-sampled` and `x-b3-flags` headers (debug samples).
    fn b3_multi_decision(&self) -> Option<bool> {
        match (text(self.b3_sampled), text(self.b3_flags)) {
            (_, Some("1")) | (Some("1" | "true"), _) => Some(true),
            (Some("0" | "false"), _) => Some(false),
            _ => None,
        }
    }
}

/// A header's value as text, when it is.
fn text(value: Option<&HeaderValue>) -> Option<&str> {
    value.and_then(|v| v.to_str().ok())
}

/// The sampling state of the single `b3` header: `1`, `d` (debug) or `0`.
fn b3_single_decision(state: &str) -> Option<bool> {
    match state {
        "1" | "d" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
const X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
const X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3: HeaderName = HeaderName::from_static("b3");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The low `N * 4` bits of `value` as `N` lowercase hex digits, `N` even and at most 32 (no
/// formatting machinery: this runs several times per request).
fn hex<const N: usize>(value: u128) -> [u8; N] {
    const { assert!(N.is_multiple_of(2) && N <= 32) };
    let bytes = value.to_be_bytes();
    let mut out = [0u8; N];
    for (pair, byte) in out.chunks_exact_mut(2).zip(&bytes[16 - N / 2..]) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*byte)]);
    }
    out
}

/// The two hex digits of every byte: one load per byte instead of two shifts and two loads.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0xf]];
        byte += 1;
    }
    table
};

fn hex_string(digits: &[u8]) -> String {
    digits.iter().map(|&d| char::from(d)).collect()
}

/// A 128- or 64-bit trace id in hex (a 64-bit one as the low half), not all zeros.
fn hex_u128(s: &str) -> Option<u128> {
    (s.len() == 32 || s.len() == 16)
        .then(|| hex_value(s.as_bytes()))
        .flatten()
        .filter(|v| *v != 0)
}

/// A 64-bit span id in hex, not all zeros.
fn hex_u64(s: &str) -> Option<u64> {
    (s.len() == 16)
        .then(|| hex_value(s.as_bytes()))
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v != 0)
}

/// The value of at most 32 hex digits (either case); `None` on any other byte. This runs for
/// every request that carries a trace (every request between sidecars): a table lookup per
/// digit into 64-bit halves, one validity check per half, no overflow checks
/// (`from_str_radix` cost twice as much: 838 instructions for a trace and a span id, against
/// 406).
fn hex_value(digits: &[u8]) -> Option<u128> {
    if digits.len() > 32 {
        return None;
    }
    let (high, low) = digits.split_at(digits.len().saturating_sub(16));
    Some(u128::from(hex_u64_value(high)?) << 64 | u128::from(hex_u64_value(low)?))
}

/// [`hex_value`] of at most 16 digits.
fn hex_u64_value(digits: &[u8]) -> Option<u64> {
    let (mut value, mut seen) = (0u64, 0u8);
    for &digit in digits {
        let nibble = HEX_DIGIT_VALUES[usize::from(digit)];
        seen |= nibble;
        value = value << 4 | u64::from(nibble & 0xf);
    }
    (seen < 16).then_some(value)
}

/// Each byte's value as a hex digit (either case), 0xff for a byte that is not one.
static HEX_DIGIT_VALUES: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut digit = 0;
    while digit < 16 {
        table[b"0123456789abcdef"[digit] as usize] = digit as u8;
        table[b"0123456789ABCDEF"[digit] as usize] = digit as u8;
        digit += 1;
    }
    table
};

/// Parses a W3C `traceparent` (version 00): `(trace id, parent span id, sampled)`.
///
/// ```
/// use mesh_tower::telemetry::parse_traceparent;
/// let (trace, span, sampled) =
///     parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
/// assert_eq!(format!("{trace:032x}"), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(span, 0x00f067aa0ba902b7);
/// assert!(sampled);
/// assert!(parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
/// // Lowercase hex only.
/// assert!(parse_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01").is_none());
/// assert!(parse_traceparent("zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_none());
/// ```
pub fn parse_traceparent(value: &str) -> Option<(u128, u64, bool)> {
    // `{version}-{trace id}-{parent id}-{flags}` at fixed places (2, 32, 16 and 2 characters),
    // then, from a later version only, more fields after another `-`.
    let value = value.trim();
    let bytes = value.as_bytes();
    if bytes.len() < 55 || [bytes[2], bytes[35], bytes[52]] != [b'-'; 3] {
        return None;
    }
    // The dashes are ASCII, so each part below starts and ends on a character boundary.
    let version = &value[..2];
    let more = &bytes[55..];
    let ends_right = if version == "00" {
        more.is_empty()
    } else {
        more.first().is_none_or(|b| *b == b'-')
    };
    // Every field is lowercase hex (the spec's `HEXDIGLC`): an uppercase digit or a version
    // that is not hex makes the header invalid, and the trace restarts.
    if version == "ff"
        || !ends_right
        || hex_value(&bytes[..2]).is_none()
        || bytes[..55].iter().any(u8::is_ascii_uppercase)
    {
        return None;
    }
    let flags = hex_value(&bytes[53..55])?;
    Some((
        hex_u128(&value[3..35])?,
        hex_u64(&value[36..52])?,
        flags & 1 == 1,
    ))
}

/// Parses B3 from the single `b3` header or the `x-b3-*` headers: `(trace id, span id,
/// sampled)`; a 64-bit trace id is kept as the low half.
pub fn parse_b3(headers: &HeaderMap) -> Option<(u128, u64, Option<bool>)> {
    TraceHeaders::scan(headers).b3()
}

fn nonzero_u64(rng: &Rng) -> u64 {
    loop {
        let v = rng.next_u64();
        if v != 0 {
            return v;
        }
    }
}

/// Continues the caller's trace, in the first format of `propagators` the request carries
/// (W3C, then B3 in either encoding), with a new span for this proxy, or starts a trace sampled at `sampling`.
pub(super) fn continue_trace(
    headers: &TraceHeaders<'_>,
    propagators: Propagators,
    rng: &Rng,
    sampling: Percentage,
) -> TraceContext {
    let incoming = headers
        .w3c()
        .filter(|_| propagators.tracecontext)
        .or_else(|| headers.b3().filter(|_| propagators.b3()));
    match incoming {
        Some((trace_id, parent, sampled)) => TraceContext {
            trace_id,
            span_id: nonzero_u64(rng),
            parent_span_id: Some(parent),
            sampled: sampled.unwrap_or_else(|| sampling.admits(rng.ppm())),
        },
        None => TraceContext {
            trace_id: (u128::from(nonzero_u64(rng)) << 64) | u128::from(rng.next_u64()),
            span_id: nonzero_u64(rng),
            parent_span_id: None,
            // B3 may carry a sampling decision without a trace (`b3: 0`, or `x-b3-sampled`
            // alone): the new trace keeps it, as Envoy's B3 reader does.
            sampled: headers
                .b3_decision_only()
                .filter(|_| propagators.b3())
                .unwrap_or_else(|| sampling.admits(rng.ppm())),
        },
    }
}

/// A random (version 4) UUID, for `x-request-id`.
#[cfg(test)]
pub(super) fn uuid_v4(rng: &Rng) -> String {
    hex_string(&uuid_v4_bytes(rng))
}

/// A random (version 4) UUID in its 36-character text form.
pub(super) fn uuid_v4_bytes(rng: &Rng) -> [u8; 36] {
    let hi = rng.next_u64();
    let lo = rng.next_u64();
    let hi = (hi & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    let lo = (lo & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    let digits = hex::<32>((u128::from(hi) << 64) | u128::from(lo));
    let mut out = [b'-'; 36];
    out[..8].copy_from_slice(&digits[..8]);
    out[9..13].copy_from_slice(&digits[8..12]);
    out[14..18].copy_from_slice(&digits[12..16]);
    out[19..23].copy_from_slice(&digits[16..20]);
    out[24..].copy_from_slice(&digits[20..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `parse_traceparent` as it was before its fixed-position rewrite (split on `-`,
    /// `from_str_radix`), with the spec's lowercase-hex rule: the reference for the rewrite.
    fn parse_traceparent_by_split(value: &str) -> Option<(u128, u64, bool)> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || trace.len() != 32 || flags.len() != 2 {
            return None;
        }
        let lowercase_hex =
            |part: &str| part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !lowercase_hex(version)
            || [trace, span, flags]
                .iter()
                .any(|p| p.bytes().any(|b| b.is_ascii_uppercase()))
        {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        let trace = (trace.len() == 32)
            .then(|| u128::from_str_radix(trace, 16).ok())
            .flatten()
            .filter(|v| *v != 0)?;
        let span = (span.len() == 16)
            .then(|| u64::from_str_radix(span, 16).ok())
            .flatten()
            .filter(|v| *v != 0)?;
        Some((trace, span, flags & 1 == 1))
    }

    #[test]
    fn traceparent_parses_as_the_split_parser_did() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut inputs: Vec<String> = vec![
            valid.into(),
            valid.to_uppercase(),
            format!("  {valid}  "),
            format!("{valid}-"),
            format!("{valid}-extra"),
            valid.replacen("00-", "01-", 1) + "-extra",
            valid.replacen("00-", "01-", 1) + "x",
            valid.replacen("00-", "ff-", 1),
            valid.replacen("00-", "FF-", 1),
            valid.replacen("00-", "é-", 1),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7".into(),
            String::new(),
        ];
        // Every one-byte change, and every cut, of a valid header and of a later version's.
        let later = valid.replacen("00-", "cc-", 1) + "-what-comes-next";
        for base in [valid, later.as_str()] {
            for at in 0..base.len() {
                for byte in ["-", "0", "f", "F", "g", " ", "é"] {
                    let mut changed = base.to_owned();
                    changed.replace_range(at..at + 1, byte);
                    inputs.push(changed);
                }
                inputs.push(base[..at].to_owned());
            }
        }
        for input in &inputs {
            assert_eq!(
                parse_traceparent(input),
                parse_traceparent_by_split(input),
                "{input:?}"
            );
        }
        // The one difference: `from_str_radix` took a leading `+` as a sign.
        let signed = valid.replacen("-4b", "-+b", 1);
        assert!(parse_traceparent_by_split(&signed).is_some());
        assert_eq!(parse_traceparent(&signed), None);
    }

    #[test]
    fn hex_writes_the_low_digits_with_leading_zeros() {
        assert_eq!(&hex::<16>(0xab), b"00000000000000ab");
        assert_eq!(&hex::<16>(u128::MAX), b"ffffffffffffffff");
        assert_eq!(
            &hex::<32>(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210),
            b"0123456789abcdeffedcba9876543210"
        );
    }

    #[test]
    fn b3_in_w3c_out_keeps_the_trace_id() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-b3-traceid",
            HeaderValue::from_static("463ac35c9f6413ad48485a3953bb6124"),
        );
        headers.insert("x-b3-spanid", HeaderValue::from_static("a2fb4a1d1a96d312"));
        headers.insert("x-b3-sampled", HeaderValue::from_static("1"));
        let ctx = continue_trace(
            &TraceHeaders::scan(&headers),
            Propagators::default(),
            &Rng::with_seed(1),
            Percentage::NONE,
        );
        assert_eq!(ctx.trace_id_hex(), "463ac35c9f6413ad48485a3953bb6124");
        assert_eq!(ctx.parent_span_id, Some(0xa2fb4a1d1a96d312));
        assert!(
            ctx.sampled,
            "the caller's decision wins over the 0% sampling"
        );
        let mut out = HeaderMap::new();
        ctx.inject(&mut out);
        let (trace, parent, sampled) =
            parse_traceparent(out["traceparent"].to_str().unwrap()).unwrap();
        assert_eq!((trace, parent, sampled), (ctx.trace_id, ctx.span_id, true));
        assert_eq!(out["x-b3-parentspanid"], "a2fb4a1d1a96d312");

        let mut single = HeaderMap::new();
        single.insert(
            "b3",
            HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        );
        assert_eq!(
            parse_b3(&single).unwrap().0,
            0x80f198ee56343ba864fe8b2a57d3eff7
        );
    }

    #[test]
    fn a_new_trace_is_sampled_at_the_configured_rate() {
        let rng = Rng::with_seed(4);
        let one_percent = Percentage::from_percent_f64(1.0).unwrap();
        let sampled = (0..100_000)
            .filter(|_| {
                continue_trace(
                    &TraceHeaders::default(),
                    Propagators::default(),
                    &rng,
                    one_percent,
                )
                .sampled
            })
            .count();
        assert!((800..=1_200).contains(&sampled), "{sampled}");
        let id = uuid_v4(&rng);
        assert_eq!((id.len(), &id[14..15]), (36, "4"));
        let seeded = uuid_v4(&Rng::with_seed(9));
        let (hi, lo) = {
            let rng = Rng::with_seed(9);
            (rng.next_u64(), rng.next_u64())
        };
        let hi = (hi & 0xffff_ffff_ffff_0fff) | 0x4000;
        let lo = (lo & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
        let formatted = format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            hi >> 32,
            (hi >> 16) & 0xffff,
            hi & 0xffff,
            lo >> 48,
            lo & 0xffff_ffff_ffff
        );
        assert_eq!(seeded, formatted, "the same text as the formatted UUID");
        let ctx = TraceContext {
            trace_id: 0x0af7651916cd43dd8448eb211c80319c,
            span_id: 0x00f067aa0ba902b7,
            parent_span_id: Some(0x1),
            sampled: false,
        };
        let mut out = HeaderMap::new();
        ctx.inject(&mut out);
        assert_eq!(
            out["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-00"
        );
        assert_eq!(out["x-b3-parentspanid"], "0000000000000001");
        assert_eq!(out["x-b3-sampled"], "0");
    }

    #[test]
    fn a_continued_trace_replaces_the_callers_single_b3_header() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "b3",
            HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        );
        headers.insert("user-agent", HeaderValue::from_static("test"));
        let found = TraceHeaders::scan(&headers);
        assert!(found.stale_b3());
        let ctx = continue_trace(
            &found,
            Propagators::default(),
            &Rng::with_seed(2),
            Percentage::NONE,
        );
        assert_eq!(ctx.trace_id, 0x80f198ee56343ba864fe8b2a57d3eff7);
        assert_eq!(ctx.parent_span_id, Some(0xe457b5a2e4d86bd1));
        assert!(ctx.sampled);
        ctx.write(&mut headers, Propagators::default(), true, None);
        assert!(
            headers.get("b3").is_none(),
            "the caller's span is not the next hop's parent"
        );
        assert_eq!(headers["x-b3-parentspanid"], "e457b5a2e4d86bd1");
        assert_eq!(headers["user-agent"], "test");
    }

    #[test]
    fn the_first_of_repeated_trace_headers_counts_as_a_lookup_would() {
        let mut headers = HeaderMap::new();
        headers.append(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        headers.append(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
        );
        headers.insert("x-request-id", HeaderValue::from_static("abc"));
        let found = TraceHeaders::scan(&headers);
        assert!(!found.stale_b3());
        assert_eq!(found.request_id, Some(&HeaderValue::from_static("abc")));
        let ctx = continue_trace(
            &found,
            Propagators::default(),
            &Rng::with_seed(3),
            Percentage::NONE,
        );
        assert_eq!(ctx.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(ctx.parent_span_id, Some(0x00f067aa0ba902b7));
    }

    #[test]
    fn a_generated_request_id_is_written_beside_the_trace_headers() {
        // (Its UUID text is checked in `a_new_trace_is_sampled_at_the_configured_rate`.)
        let id = uuid_v4_bytes(&Rng::with_seed(7));
        let text = std::str::from_utf8(&id).unwrap();
        let ctx = TraceContext {
            trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            span_id: 0x00f0_67aa_0ba9_02b7,
            parent_span_id: Some(0xa2fb_4a1d_1a96_d312),
            sampled: true,
        };
        let mut headers = HeaderMap::new();
        ctx.write(&mut headers, Propagators::default(), false, Some(&id));
        assert_eq!(headers["x-request-id"], text);
        assert_eq!(
            headers["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(headers["x-b3-parentspanid"], "a2fb4a1d1a96d312");
        assert_eq!(headers["x-b3-sampled"], "1");
        // The ids are never indexed by HPACK; the sampling flag, which repeats, is.
        for unique in ["x-request-id", "traceparent", "x-b3-traceid", "x-b3-spanid"] {
            assert!(headers[unique].is_sensitive(), "{unique}");
        }
        assert!(!headers["x-b3-sampled"].is_sensitive());
        // Without one, no x-request-id is written.
        let mut headers = HeaderMap::new();
        ctx.write(&mut headers, Propagators::default(), false, None);
        assert!(!headers.contains_key("x-request-id"));
    }

    fn names(headers: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn each_propagator_writes_its_own_headers_only() {
        let ctx = TraceContext {
            trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            span_id: 0x00f0_67aa_0ba9_02b7,
            parent_span_id: Some(0xa2fb_4a1d_1a96_d312),
            sampled: false,
        };
        let written = |list: &str| {
            let mut headers = HeaderMap::new();
            ctx.inject_as(&mut headers, list.parse().unwrap());
            headers
        };
        let w3c = written("tracecontext");
        assert_eq!(names(&w3c), ["traceparent"]);
        let single = written("b3");
        assert_eq!(names(&single), ["b3"]);
        assert_eq!(
            single["b3"],
            "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0"
        );
        assert_eq!(
            parse_b3(&single),
            Some((ctx.trace_id, ctx.span_id, Some(false)))
        );
        let multi = written("b3multi");
        assert_eq!(
            names(&multi),
            [
                "x-b3-parentspanid",
                "x-b3-sampled",
                "x-b3-spanid",
                "x-b3-traceid"
            ]
        );
        assert!(written("none").is_empty());
        assert!(written("baggage").is_empty());
        let all = written(" TraceContext , b3, b3multi ");
        assert_eq!(names(&all).len(), 6);
        assert_eq!(written(""), written("tracecontext,b3multi"));
    }

    #[test]
    fn only_the_configured_formats_are_read() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        headers.insert(
            "b3",
            HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        );
        headers.insert(
            "x-b3-traceid",
            HeaderValue::from_static("463ac35c9f6413ad48485a3953bb6124"),
        );
        headers.insert("x-b3-spanid", HeaderValue::from_static("a2fb4a1d1a96d312"));
        let found = TraceHeaders::scan(&headers);
        let trace_of = |list: &str| {
            continue_trace(
                &found,
                list.parse().unwrap(),
                &Rng::with_seed(5),
                Percentage::NONE,
            )
            .trace_id
        };
        assert_eq!(
            trace_of(""),
            0x4bf92f3577b34da6a3ce929d0e0e4736,
            "W3C first"
        );
        // Either B3 propagator reads either encoding, the single header first.
        assert_eq!(trace_of("b3multi"), 0x80f198ee56343ba864fe8b2a57d3eff7);
        assert_eq!(trace_of("b3"), 0x80f198ee56343ba864fe8b2a57d3eff7);
        let fresh = trace_of("none");
        assert!(
            ![
                0x4bf92f3577b34da6a3ce929d0e0e4736,
                0x80f198ee56343ba864fe8b2a57d3eff7,
                0x463ac35c9f6413ad48485a3953bb6124
            ]
            .contains(&fresh),
            "with no propagator the request starts a trace of its own"
        );
        headers.remove("b3");
        let found = TraceHeaders::scan(&headers);
        let b3_single: Propagators = "b3".parse().unwrap();
        let ctx = continue_trace(&found, b3_single, &Rng::with_seed(5), Percentage::NONE);
        assert_eq!(ctx.trace_id, 0x463ac35c9f6413ad48485a3953bb6124);
        assert_eq!(ctx.parent_span_id, Some(0xa2fb4a1d1a96d312));
    }

    #[test]
    fn a_b3_sampling_decision_without_a_trace_is_kept() {
        let decided = |name: &str, value: &'static str, list: &str, sampling: Percentage| {
            let mut headers = HeaderMap::new();
            headers.insert(
                HeaderName::try_from(name).unwrap(),
                HeaderValue::from_static(value),
            );
            let found = TraceHeaders::scan(&headers);
            let ctx = continue_trace(&found, list.parse().unwrap(), &Rng::with_seed(8), sampling);
            assert_eq!(ctx.parent_span_id, None, "a new trace");
            ctx.sampled
        };
        assert!(!decided("b3", "0", "", Percentage::ALL));
        assert!(decided("b3", "d", "b3", Percentage::NONE));
        assert!(decided("x-b3-sampled", "1", "", Percentage::NONE));
        assert!(!decided("x-b3-sampled", "0", "b3multi", Percentage::ALL));
        assert!(decided("x-b3-flags", "1", "", Percentage::NONE));
        // Not read when B3 is not a configured format, nor when the header is no decision.
        assert!(decided("b3", "0", "tracecontext", Percentage::ALL));
        assert!(decided("b3", "maybe", "", Percentage::ALL));
    }

    #[test]
    fn formats_not_configured_pass_through_untouched() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "b3",
            HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        );
        headers.insert(
            "x-b3-parentspanid",
            HeaderValue::from_static("a2fb4a1d1a96d312"),
        );
        let found = TraceHeaders::scan(&headers);
        let w3c: Propagators = "tracecontext".parse().unwrap();
        let ctx = continue_trace(&found, w3c, &Rng::with_seed(6), Percentage::NONE);
        let stale_b3 = found.stale_b3();
        ctx.write(&mut headers, w3c, stale_b3, None);
        assert_eq!(
            headers["b3"],
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"
        );
        assert_eq!(headers["x-b3-parentspanid"], "a2fb4a1d1a96d312");
        assert_eq!(names(&headers), ["b3", "traceparent", "x-b3-parentspanid"]);
    }

    #[test]
    fn an_unknown_propagator_is_named_in_the_error() {
        let err = "tracecontext, xray".parse::<Propagators>().unwrap_err();
        assert_eq!(err.name, "xray");
        assert_eq!(
            err.to_string(),
            "unsupported trace propagator `xray`: supported are tracecontext, baggage, b3, \
             b3multi and none"
        );
        for list in [
            "tracecontext,b3multi",
            "b3",
            "none",
            "tracecontext,b3,b3multi",
        ] {
            let parsed: Propagators = list.parse().unwrap();
            assert_eq!(parsed.to_string(), list);
            assert_eq!(parsed.to_string().parse::<Propagators>().unwrap(), parsed);
        }
    }
}
