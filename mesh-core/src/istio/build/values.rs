//! Checks and conversions of single values, shared by every kind. Each returns the reason as
//! a `String` so that the caller can attach the field path.

use crate::istio::{api, parse_duration};
use crate::model::{Pattern, Percentage, Protocol, StringMatch};
use std::time::Duration;

/// A port number in `1..=65535`.
pub(super) fn port(number: u32) -> Result<u16, String> {
    match u16::try_from(number) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("port {number} is out of range 1..=65535")),
    }
}

/// A duration in Istio's (Go's) syntax; zero allowed only when `allow_zero`.
pub(super) fn duration(text: &str, allow_zero: bool) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d.is_zero() && !allow_zero {
        return Err(format!("duration {text:?} must be greater than zero"));
    }
    Ok(d)
}

/// An optional duration field.
pub(super) fn opt_duration(text: Option<&String>) -> Result<Option<Duration>, String> {
    text.map(|t| duration(t, false)).transpose()
}

/// A count where 0 means "unset" (proto3 semantics) and negative values are errors.
pub(super) fn count(value: Option<i64>) -> Result<Option<u32>, String> {
    match value {
        None | Some(0) => Ok(None),
        Some(v) if v < 0 => Err(format!("{v} must not be negative")),
        Some(v) => u32::try_from(v)
            .map(Some)
            .map_err(|_| format!("{v} is too large (at most {})", u32::MAX)),
    }
}

/// Istio's `Percent` (`0.0..=100.0`).
pub(super) fn percent(p: &api::Percent) -> Result<Percentage, String> {
    Percentage::from_percent_f64(p.value)
        .ok_or_else(|| format!("percentage {} is out of range 0..=100", p.value))
}

/// A deprecated integer percentage (`0..=100`).
pub(super) fn int_percent(value: i64) -> Result<Percentage, String> {
    match u32::try_from(value) {
        Ok(v) if v <= 100 => Ok(Percentage::from_ppm(v * 10_000).unwrap_or(Percentage::ALL)),
        _ => Err(format!("percent {value} is out of range 0..=100")),
    }
}

/// An integer in `0..=100`.
pub(super) fn percent_u32(value: i64) -> Result<u32, String> {
    u32::try_from(value)
        .ok()
        .filter(|v| *v <= 100)
        .ok_or_else(|| format!("{value} is out of range 0..=100"))
}

/// An Istio `StringMatch`; `Ok(None)` for an empty one (which matches presence only, where
/// that is allowed). The error names the sub-field when the regex is bad.
pub(super) fn string_match(m: &api::StringMatch) -> Result<Option<StringMatch>, (String, String)> {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
        .iter()
        .filter(|s| **s)
        .count();
    if set > 1 {
        return Err((
            String::new(),
            "set only one of exact, prefix, regex".to_owned(),
        ));
    }
    if let Some(exact) = &m.exact {
        return Ok(Some(StringMatch::Exact(exact.clone())));
    }
    if let Some(prefix) = &m.prefix {
        return Ok(Some(StringMatch::Prefix(prefix.clone())));
    }
    if let Some(regex) = &m.regex {
        return Pattern::new(regex)
            .map(|p| Some(StringMatch::Regex(p)))
            .map_err(|e| {
                (
                    ".regex".to_owned(),
                    format!("invalid regex {regex:?}: {}", first_line(&e.to_string())),
                )
            });
    }
    Ok(None)
}

/// An unanchored regex pattern (for rewrites), with a one-line reason on failure.
pub(super) fn rewrite_pattern(source: &str) -> Result<Pattern, String> {
    Pattern::unanchored(source)
        .map_err(|e| format!("invalid regex {source:?}: {}", first_line(&e.to_string())))
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// An HTTP header name as Istio accepts it in matches and header operations: a non-empty
/// lowercase token.
pub(super) fn header_name(name: &str) -> Result<String, String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let pseudo = name.strip_prefix(':').unwrap_or(name);
    if pseudo.is_empty() || !pseudo.bytes().all(token) {
        return Err(format!("invalid header name {name:?}"));
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("header name {name:?} must be lowercase"));
    }
    Ok(name.to_owned())
}

/// A header value: no control characters other than tab.
pub(super) fn header_value(value: &str) -> Result<String, String> {
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(format!(
            "header value {value:?} contains control characters"
        ));
    }
    Ok(value.to_owned())
}

/// An HTTP status code in `200..=599`.
pub(super) fn status(code: i64) -> Result<u16, String> {
    u16::try_from(code)
        .ok()
        .filter(|c| (200..=599).contains(c))
        .ok_or_else(|| format!("status {code} is out of range 200..=599"))
}

/// A port's protocol: the explicit `protocol`, else the name's prefix (`http-web`), else HTTP
/// (what protocol sniffing would find for the traffic this proxy carries).
pub(super) fn protocol(explicit: Option<&str>, name: &str) -> Result<Protocol, String> {
    let from = |p: &str| -> Option<Protocol> {
        Some(match p.to_ascii_uppercase().as_str() {
            "HTTP" | "HTTP_PROXY" => Protocol::Http,
            "HTTP2" => Protocol::Http2,
            "GRPC" | "GRPC-WEB" => Protocol::Grpc,
            "HTTPS" => Protocol::Https,
            "TLS" => Protocol::Tls,
            "TCP" | "MONGO" | "MYSQL" | "REDIS" | "UDP" => Protocol::Tcp,
            _ => return None,
        })
    };
    match explicit {
        Some(p) => from(p).ok_or_else(|| {
            format!("unknown protocol {p:?}: expected HTTP, HTTP2, GRPC, HTTPS, TLS or TCP")
        }),
        None => Ok(from(name.split('-').next().unwrap_or_default()).unwrap_or_default()),
    }
}

/// Decodes standard base64 (Istio's `bytes` fields).
pub(super) fn base64(text: &str) -> Result<Vec<u8>, String> {
    let bad = || "invalid base64".to_owned();
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let trimmed = digits
        .strip_suffix(b"==")
        .or_else(|| digits.strip_suffix(b"="))
        .unwrap_or(&digits);
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in trimmed {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(bad()),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            // Masked to one byte.
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bits >= 6 {
        return Err(bad());
    }
    Ok(out)
}

/// A DNS name (optionally with one leading `*.` wildcard label).
pub(super) fn hostname(host: &str, allow_wildcard: bool) -> Result<(), String> {
    let name = match host.strip_prefix("*.") {
        Some(rest) if allow_wildcard => rest,
        _ if host == "*" && allow_wildcard => return Ok(()),
        _ => host,
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if host.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!("invalid host name {host:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_padding_forms() {
        assert_eq!(base64("aGVsbG8="), Ok(b"hello".to_vec()));
        assert_eq!(base64("aGk="), Ok(b"hi".to_vec()));
        assert_eq!(base64("aGV5"), Ok(b"hey".to_vec()));
        assert!(base64("a").is_err());
        assert!(base64("a$==").is_err());
    }

    #[test]
    fn protocol_from_name_prefix() {
        assert_eq!(protocol(None, "grpc-api"), Ok(Protocol::Grpc));
        assert_eq!(protocol(None, "tcp"), Ok(Protocol::Tcp));
        assert_eq!(protocol(None, "web"), Ok(Protocol::Http));
        assert!(protocol(Some("SCTP"), "x").is_err());
    }

    #[test]
    fn header_names_must_be_lowercase_tokens() {
        assert!(header_name("end-user").is_ok());
        assert!(header_name("End-User").is_err());
        assert!(header_name("bad header").is_err());
        assert!(header_name("").is_err());
    }
}
