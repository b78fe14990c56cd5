//! Istio's path normalization: what Envoy's HTTP connection manager does to a request path
//! before authorization and before the request goes on to the app, in each of Istio's
//! [`PathNormalization`] modes ([`normalize_path_with`]); [`normalize_path`] is the default,
//! `BASE`.
//!
//! Envoy (`ConnectionManagerUtility::maybeNormalizePath`) works on the path without its query
//! in three steps, each on when the mode says so:
//!
//! 1. `DECODE_AND_MERGE_SLASHES` (`path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD`):
//!    `%2F` and `%5C`, in either case, become `/` and `\` (`PathUtil::unescapeSlashes`: one
//!    left-to-right pass, so `%252F` stays as it is and `%%2F` becomes `%/`). No other escape is
//!    decoded here.
//! 2. Every mode but `NONE` (`normalize_path: true`): the canonicalization below, which turns
//!    the backslashes of step 1 into slashes and resolves the dot segments they make.
//! 3. `MERGE_SLASHES` and `DECODE_AND_MERGE_SLASHES` (`merge_slashes: true`): runs of slashes
//!    become one (`PathUtil::mergeSlashes`: the path's non-empty segments joined with `/`, with
//!    a leading and a trailing slash when the path had them; so `//` alone stays `//`).
//!
//! A path the canonicalization refuses (`%00`) is refused in every mode but `NONE`, which
//! leaves the path as it came.
//!
//! # `BASE`: the canonicalization
//!
//! Envoy canonicalizes the path with its snapshot of Chromium's URL path canonicalizer
//! (`PathUtil::canonicalPath`), on the path only (the query is left as it is):
//!
//! - `.` and `..` segments are resolved as RFC 3986 says (`/a/./b` → `/a/b`,
//!   `/public/../admin` → `/admin`); a `..` above the root stays at the root (`/../a` → `/a`);
//!   `%2e` counts as a dot.
//! - A backslash becomes a slash (`/\admin` → `//admin`: BASE does not merge slashes).
//! - A percent-encoded unreserved character (`%41`-`%5A`, `%61`-`%7A`, `%30`-`%39`, `%2D`,
//!   `%2E`, `%5F`, `%7E`, either case) is decoded (`/%61dmin` → `/admin`); every other escape
//!   is kept as written (`%2F`, `%5C`, `%25`). An escape that nested escapes would make valid
//!   (`%%30%30`) has its `%` escaped, so that decoding once more cannot produce it.
//! - Characters a URL path cannot hold (controls, space, `"`, `#`, `<`, `>`, `` ` ``, `{`,
//!   `|`, `}`, `^`, DEL, non-ASCII bytes) are percent-encoded.
//! - `%00` (or a NUL byte) cannot be normalized: Envoy answers 400.
//!
//! A path with none of `.`, `\`, `%` and those characters is already normal and is returned
//! borrowed, without allocating.

use mesh_core::model::PathNormalization;
use std::borrow::Cow;

/// Why a path cannot be normalized (Envoy answers such a request with 400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("path {path:?} cannot be normalized: it contains a NUL character (%00)")]
pub struct InvalidPath {
    /// The path as received.
    pub path: String,
}

/// How the canonicalizer treats one byte; Chromium's `kPathCharLookup`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Copied as is, and kept escaped when it comes escaped.
    Pass,
    /// Copied as is, and decoded when it comes escaped (the unreserved characters).
    Unescape,
    /// Percent-encoded in the output.
    Escape,
    /// Needs handling of its own: `.`, `%`, `\`.
    Special,
    /// Cannot be in a path: NUL.
    Invalid,
}

fn class(b: u8) -> Class {
    match b {
        0 => Class::Invalid,
        b'.' | b'%' | b'\\' => Class::Special,
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => Class::Unescape,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'/' | b':' | b';'
        | b'=' | b'@' | b'[' | b']' => Class::Pass,
        // Controls, space, `"`, `#`, `<`, `>`, `?`, `^`, `` ` ``, `{`, `|`, `}`, DEL, >= 0x80.
        _ => Class::Escape,
    }
}

/// Whether `b` is copied unchanged wherever it is.
fn is_plain(b: u8) -> bool {
    matches!(class(b), Class::Pass | Class::Unescape)
}

/// The path (without its query) as Istio's BASE normalization leaves it; see the module docs.
///
/// ```
/// # use mesh_policy::authz::normalize_path;
/// assert_eq!(normalize_path("/public/../admin").unwrap(), "/admin");
/// assert_eq!(normalize_path("/%61dmin").unwrap(), "/admin");
/// assert_eq!(normalize_path("/a%2Fb").unwrap(), "/a%2Fb");
/// assert!(normalize_path("/a%00").is_err());
/// ```
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, InvalidPath> {
    let bytes = path.as_bytes();
    if bytes.first() == Some(&b'/') && bytes.iter().all(|&b| is_plain(b)) {
        return Ok(Cow::Borrowed(path));
    }
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len() + 1);
    if !bytes.first().is_some_and(|&b| is_slash(b)) {
        out.push(b'/');
    }
    let mut ok = true;
    // Where in `out` a '%' that began no valid escape was written (see `check_nested`).
    let mut bad_percent: Option<usize> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if is_plain(b) {
            out.push(b);
            i += 1;
            continue;
        }
        if let Some(dot) = dot_len(bytes, i) {
            if out.last() == Some(&b'/') {
                match after_dot(bytes, i + dot) {
                    AfterDot::Name => out.push(b'.'),
                    AfterDot::Current(consumed) => i += consumed,
                    AfterDot::Up(consumed) => {
                        up_one(&mut out);
                        // A stray `%` in the segment just removed is gone with it.
                        bad_percent = bad_percent.filter(|&at| at < out.len());
                        i += consumed;
                    }
                }
            } else {
                out.push(b'.');
            }
            i += dot;
            continue;
        }
        match b {
            b'\\' => out.push(b'/'),
            b'%' => match decode(bytes, i) {
                Some(value) => {
                    match class(value) {
                        Class::Unescape => {
                            out.push(value);
                            if let Some(at) = bad_percent
                                && at + 3 >= out.len()
                            {
                                check_nested(bytes, i + 3, at, &mut out);
                            }
                        }
                        class => {
                            // Kept as written (hex digits' case included): the app may care.
                            out.extend_from_slice(&bytes[i..i + 3]);
                            ok &= class != Class::Invalid;
                        }
                    }
                    i += 2;
                }
                None => {
                    bad_percent = Some(out.len());
                    out.push(b'%');
                }
            },
            _ => {
                ok &= class(b) != Class::Invalid;
                escape(b, &mut out);
            }
        }
        i += 1;
    }
    if !ok {
        return Err(InvalidPath {
            path: path.to_owned(),
        });
    }
    // Only ASCII was written (every other byte was escaped), so this never replaces anything.
    Ok(Cow::Owned(String::from_utf8_lossy(&out).into_owned()))
}

/// The path (without its query) as Istio's path normalization `mode` leaves it; see the module
/// docs. `BASE` is [`normalize_path`]. A path the mode leaves as it is comes back borrowed.
///
/// ```
/// # use mesh_policy::authz::{PathNormalization, normalize_path_with};
/// use PathNormalization::*;
/// assert_eq!(normalize_path_with("//admin//x", None).unwrap(), "//admin//x");
/// assert_eq!(normalize_path_with("//admin//x", Base).unwrap(), "//admin//x");
/// assert_eq!(normalize_path_with("//admin//x", MergeSlashes).unwrap(), "/admin/x");
/// assert_eq!(normalize_path_with("/admin%2Fx", MergeSlashes).unwrap(), "/admin%2Fx");
/// assert_eq!(normalize_path_with("/admin%2Fx", DecodeAndMergeSlashes).unwrap(), "/admin/x");
/// assert!(normalize_path_with("/a%00", DecodeAndMergeSlashes).is_err());
/// ```
pub fn normalize_path_with(
    path: &str,
    mode: PathNormalization,
) -> Result<Cow<'_, str>, InvalidPath> {
    match mode {
        PathNormalization::None => Ok(Cow::Borrowed(path)),
        PathNormalization::Base => normalize_path(path),
        PathNormalization::MergeSlashes => Ok(merge_slashes(normalize_path(path)?)),
        PathNormalization::DecodeAndMergeSlashes => {
            let normalized = match unescape_slashes(path) {
                Cow::Borrowed(p) => normalize_path(p)?,
                Cow::Owned(decoded) => {
                    let changed = match normalize_path(&decoded) {
                        Ok(Cow::Borrowed(_)) => None,
                        Ok(Cow::Owned(p)) => Some(p),
                        // Named as it came, not as decoded.
                        Err(_) => {
                            return Err(InvalidPath {
                                path: path.to_owned(),
                            });
                        }
                    };
                    Cow::Owned(changed.unwrap_or(decoded))
                }
            };
            Ok(merge_slashes(normalized))
        }
    }
}

/// Envoy's `PathUtil::unescapeSlashes`: `%2F`/`%2f` become `/` and `%5C`/`%5c` become `\`,
/// in one left-to-right pass.
fn unescape_slashes(path: &str) -> Cow<'_, str> {
    let bytes = path.as_bytes();
    let mut out = String::new();
    // `path[copied..]` is not in `out` yet.
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = path[from..].find('%') {
        let at = from + found;
        let decoded = match bytes.get(at + 1..at + 3) {
            Some(b"2F" | b"2f") => Some('/'),
            Some(b"5C" | b"5c") => Some('\\'),
            _ => None,
        };
        // Every index here follows an ASCII byte, so it is a character boundary.
        from = at + 1;
        if let Some(c) = decoded {
            out.push_str(&path[copied..at]);
            out.push(c);
            copied = at + 3;
            from = copied;
        }
    }
    if copied == 0 {
        return Cow::Borrowed(path);
    }
    out.push_str(&path[copied..]);
    Cow::Owned(out)
}

/// Envoy's `PathUtil::mergeSlashes` on a path that starts with a slash: unchanged without
/// `//`; else its non-empty segments joined with `/`, between a leading slash and, when the
/// path ends with one, a trailing slash.
fn merge_slashes(path: Cow<'_, str>) -> Cow<'_, str> {
    if !path.contains("//") {
        return path;
    }
    let mut out = String::with_capacity(path.len());
    out.push('/');
    for (i, segment) in path.split('/').filter(|s| !s.is_empty()).enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(segment);
    }
    if path.ends_with('/') {
        out.push('/');
    }
    Cow::Owned(out)
}

fn is_slash(b: u8) -> bool {
    b == b'/' || b == b'\\'
}

/// The length of a dot at `i`: 1 for `.`, 3 for `%2e`/`%2E`, `None` for no dot.
fn dot_len(bytes: &[u8], i: usize) -> Option<usize> {
    match bytes.get(i..)? {
        [b'.', ..] => Some(1),
        [b'%', b'2', b'e' | b'E', ..] => Some(3),
        _ => None,
    }
}

/// What a dot after a slash is, by what follows it at `at`.
enum AfterDot {
    /// Part of a name (`.hidden`, `..x`).
    Name,
    /// `.`: the current directory; the number of input bytes after the dot it takes.
    Current(usize),
    /// `..`: the parent directory; the number of input bytes after the first dot it takes.
    Up(usize),
}

fn after_dot(bytes: &[u8], at: usize) -> AfterDot {
    match bytes.get(at) {
        None => return AfterDot::Current(0),
        Some(&b) if is_slash(b) => return AfterDot::Current(1),
        Some(_) => {}
    }
    if let Some(second) = dot_len(bytes, at) {
        match bytes.get(at + second) {
            None => return AfterDot::Up(second),
            Some(&b) if is_slash(b) => return AfterDot::Up(second + 1),
            Some(_) => {}
        }
    }
    AfterDot::Name
}

/// Removes the last segment of `out`, which ends with a slash; never above the root.
fn up_one(out: &mut Vec<u8>) {
    let last = out.len() - 1;
    let cut = out[..last].iter().rposition(|&b| b == b'/').unwrap_or(0);
    out.truncate(cut + 1);
}

/// The byte a valid escape `%HH` at `i` stands for.
fn decode(bytes: &[u8], i: usize) -> Option<u8> {
    let hex = |b: u8| char::from(b).to_digit(16);
    match bytes.get(i + 1..i + 3)? {
        [h, l] => {
            let v = hex(*h)? * 16 + hex(*l)?;
            u8::try_from(v).ok()
        }
        _ => None,
    }
}

fn escape(b: u8, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
}

/// After a decoded character landed within two bytes of a `%` at `at` that began no valid
/// escape: if `out` now ends with a valid escape made of that `%`, escape the `%` as `%25`
/// (`%%30%30` → `%%300` would otherwise read as `%00` when decoded again). `next` is the
/// input index after the escape just decoded.
fn check_nested(bytes: &[u8], next: usize, at: usize, out: &mut Vec<u8>) {
    let len = out.len();
    let last = out[len - 1];
    // `%c`: the escape would be completed by the next input byte.
    let append_next = at + 2 == len;
    if append_next {
        match bytes.get(next) {
            Some(&b) if b < 0x80 => out.push(b),
            _ => return,
        }
    }
    if decode(out, at).is_some() {
        if !append_next {
            out.push(out[at + 1]);
        }
        out[at + 1] = b'2';
        out[at + 2] = b'5';
        out.push(last);
    } else if append_next {
        out.truncate(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> String {
        normalize_path(p).unwrap().into_owned()
    }

    #[test]
    fn a_stray_percent_in_a_removed_segment_is_forgotten() {
        // Found by the path_normalization fuzz target: the `%` of `%%32` was remembered
        // after `..` removed its segment, and a later decoded `0` rewrote bytes of the
        // escapes written since (`%7C` became `%72`, which a second pass reads as `r`).
        let path = "//%%32.%%33.%%/./.1ssss/%5c/../../././../|||%30.%.%%42F%2F";
        let once = norm(path);
        assert_eq!(once, "//%7C%7C%7C0.%.%25BF%2F");
        assert_eq!(norm(&once), once, "normalized in one pass");
        assert_eq!(norm("/%%3/../%30"), "/0");
    }

    #[test]
    fn dot_segments_are_resolved() {
        assert_eq!(norm("/public/../admin"), "/admin");
        assert_eq!(norm("/a/./b"), "/a/b");
        assert_eq!(norm("/a/b/.."), "/a/");
        assert_eq!(norm("/a/b/."), "/a/b/");
        assert_eq!(norm("/a/b/../../c"), "/c");
        // `..` above the root stays at the root.
        assert_eq!(norm("/../admin"), "/admin");
        assert_eq!(norm("/../../../etc/passwd"), "/etc/passwd");
        assert_eq!(norm("/.."), "/");
        // Dots that are part of a name are kept.
        assert_eq!(norm("/a/.hidden/..x/x..//x."), "/a/.hidden/..x/x..//x.");
        assert_eq!(norm("/a/.../b"), "/a/.../b");
    }

    #[test]
    fn encoded_dots_count_as_dots() {
        assert_eq!(norm("/public/%2e%2e/admin"), "/admin");
        assert_eq!(norm("/public/%2E./admin"), "/admin");
        assert_eq!(norm("/a/%2e/b"), "/a/b");
        assert_eq!(norm("/file%2ejson"), "/file.json");
    }

    #[test]
    fn backslashes_become_slashes_and_slashes_are_not_merged() {
        assert_eq!(norm("/\\admin"), "//admin");
        assert_eq!(norm("/a\\b"), "/a/b");
        assert_eq!(norm("/public\\..\\admin"), "/admin");
        assert_eq!(norm("\\da"), "/da");
        assert_eq!(norm("/a//b"), "/a//b");
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_kept() {
        assert_eq!(norm("/%61dmin"), "/admin");
        assert_eq!(norm("/%41%5a%30%39%2d%5f%7e%7A"), "/AZ09-_~z");
        // BASE keeps an encoded slash or backslash encoded (DECODE_AND_MERGE_SLASHES would not).
        assert_eq!(norm("/a%2Fb"), "/a%2Fb");
        assert_eq!(norm("/a%2fb"), "/a%2fb");
        assert_eq!(norm("/a%5Cb"), "/a%5Cb");
        // Decoded once only: `%2561` is `%61` literally, not `a`.
        assert_eq!(norm("/%2561"), "/%2561");
        // Not an escape: copied.
        assert_eq!(norm("/100%"), "/100%");
        assert_eq!(norm("/%zz"), "/%zz");
    }

    #[test]
    fn nested_escapes_cannot_become_valid() {
        assert_eq!(norm("/%%30%30"), "/%2500");
        assert_eq!(norm("/%%300"), "/%2500");
        assert_eq!(norm("/%3%30"), "/%2530");
    }

    #[test]
    fn characters_a_path_cannot_hold_are_escaped() {
        assert_eq!(norm("/a b\"<>`{|}^"), "/a%20b%22%3C%3E%60%7B%7C%7D%5E");
        assert_eq!(norm("/caf\u{e9}"), "/caf%C3%A9");
    }

    #[test]
    fn nul_cannot_be_normalized() {
        assert_eq!(
            normalize_path("/a%00b"),
            Err(InvalidPath {
                path: "/a%00b".into()
            })
        );
        assert!(normalize_path("/a\0b").is_err());
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/api/v1/items", "/a//b", "/x:y@z;w=1,2+3!$&'()*[]"] {
            assert!(
                matches!(normalize_path(p), Ok(Cow::Borrowed(b)) if b == p),
                "{p}"
            );
        }
        // Normalizing twice changes nothing more.
        for p in [
            "/public/../admin",
            "/%61dmin",
            "/\\admin",
            "/a b",
            "/%%30%30",
            "/a%2Fb",
        ] {
            let once = norm(p);
            assert_eq!(norm(&once), once, "{p}");
        }
    }

    /// Every path of up to 5 characters over the characters that matter: the result starts
    /// with '/', has no `.` or `..` segment left, and normalizing it again changes nothing.
    #[test]
    fn every_short_path_normalizes_to_a_fixed_point_without_dot_segments() {
        let mut checked = 0;
        every_short_path(b"/.%2eE\\a016", |p| {
            let Ok(once) = normalize_path(p) else {
                assert!(p.contains("%00"), "{p:?}");
                return;
            };
            assert!(once.starts_with('/'), "{p:?} -> {once:?}");
            assert!(
                once.split('/').all(|seg| seg != "." && seg != ".."),
                "{p:?} -> {once:?}"
            );
            assert_eq!(norm(&once), once, "{p:?}");
            checked += 1;
        });
        assert!(checked > 150_000, "{checked}");
    }

    /// Calls `check` with every path of up to 5 characters from `alphabet`.
    fn every_short_path(alphabet: &[u8], mut check: impl FnMut(&str)) {
        let mut path = Vec::new();
        for len in 0..=5u32 {
            for mut n in 0..alphabet.len().pow(len) {
                path.clear();
                for _ in 0..len {
                    path.push(alphabet[n % alphabet.len()]);
                    n /= alphabet.len();
                }
                check(std::str::from_utf8(&path).unwrap());
            }
        }
    }

    fn with(p: &str, mode: PathNormalization) -> String {
        normalize_path_with(p, mode).unwrap().into_owned()
    }

    const MODES: [PathNormalization; 4] = [
        PathNormalization::None,
        PathNormalization::Base,
        PathNormalization::MergeSlashes,
        PathNormalization::DecodeAndMergeSlashes,
    ];

    /// Istio's own expectations (its `security.normalization` integration test, one column
    /// per mode: NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES), and the tricky paths.
    #[test]
    fn each_mode_normalizes_as_istio_and_envoy_do() {
        let table: &[(&str, [&str; 4])] = &[
            ("/", ["/", "/", "/", "/"]),
            ("/app/", ["/app/", "/app/", "/app/", "/app/"]),
            (
                "/app/../admin",
                ["/app/../admin", "/admin", "/admin", "/admin"],
            ),
            ("/app//", ["/app//", "/app//", "/app/", "/app/"]),
            ("/app/%2f", ["/app/%2f", "/app/%2f", "/app/%2f", "/app/"]),
            ("/app%2f/", ["/app%2f/", "/app%2f/", "/app%2f/", "/app/"]),
            (
                "/xyz%30..//abc",
                [
                    "/xyz%30..//abc",
                    "/xyz0..//abc",
                    "/xyz0../abc",
                    "/xyz0../abc",
                ],
            ),
            (
                "/app/%2E./admin",
                ["/app/%2E./admin", "/admin", "/admin", "/admin"],
            ),
            (
                r"/app\admin",
                [r"/app\admin", "/app/admin", "/app/admin", "/app/admin"],
            ),
            (
                r"/app/\/\/\admin",
                [
                    r"/app/\/\/\admin",
                    "/app//////admin",
                    "/app/admin",
                    "/app/admin",
                ],
            ),
            (
                r"/%2Fapp%5cadmin%5Cabc",
                [
                    r"/%2Fapp%5cadmin%5Cabc",
                    r"/%2Fapp%5cadmin%5Cabc",
                    r"/%2Fapp%5cadmin%5Cabc",
                    "/app/admin/abc",
                ],
            ),
            (
                r"/%5Capp%2f%5c%2F%2e%2e%2fadmin%5c\abc",
                [
                    r"/%5Capp%2f%5c%2F%2e%2e%2fadmin%5c\abc",
                    "/%5Capp%2f%5c%2F..%2fadmin%5c/abc",
                    "/%5Capp%2f%5c%2F..%2fadmin%5c/abc",
                    "/app/admin/abc",
                ],
            ),
            (
                "/app//../admin",
                ["/app//../admin", "/app/admin", "/app/admin", "/app/admin"],
            ),
            (
                "/app//../../admin",
                ["/app//../../admin", "/admin", "/admin", "/admin"],
            ),
            (
                "/%c0%2e%c0%2e/admin",
                [
                    "/%c0%2e%c0%2e/admin",
                    "/%c0.%c0./admin",
                    "/%c0.%c0./admin",
                    "/%c0.%c0./admin",
                ],
            ),
            (
                "/%c0%2fadmin",
                ["/%c0%2fadmin", "/%c0%2fadmin", "/%c0%2fadmin", "/%c0/admin"],
            ),
            // Slashes, encoded slashes and backslashes, dot segments.
            ("//a//b", ["//a//b", "//a//b", "/a/b", "/a/b"]),
            (
                "//admin//x",
                ["//admin//x", "//admin//x", "/admin/x", "/admin/x"],
            ),
            ("/a/%2F/b", ["/a/%2F/b", "/a/%2F/b", "/a/%2F/b", "/a/b"]),
            ("/a%2fb", ["/a%2fb", "/a%2fb", "/a%2fb", "/a/b"]),
            ("/a/../b", ["/a/../b", "/b", "/b", "/b"]),
            ("/a%5Cb", ["/a%5Cb", "/a%5Cb", "/a%5Cb", "/a/b"]),
            (
                "/a%5c..%5cb",
                ["/a%5c..%5cb", "/a%5c..%5cb", "/a%5c..%5cb", "/b"],
            ),
            // Mixed-case escapes: decoded whatever their case, kept as written otherwise.
            (
                "/%41%2f%2F%5c%5C%7e%7E%3f%3F",
                [
                    "/%41%2f%2F%5c%5C%7e%7E%3f%3F",
                    "/A%2f%2F%5c%5C~~%3f%3F",
                    "/A%2f%2F%5c%5C~~%3f%3F",
                    "/A/~~%3f%3F",
                ],
            ),
            // Decoded once: `%252F` is `%2F` literally; `%%2F` is `%` and a slash.
            ("/a%252Fb", ["/a%252Fb", "/a%252Fb", "/a%252Fb", "/a%252Fb"]),
            ("/a%%2Fb", ["/a%%2Fb", "/a%%2Fb", "/a%%2Fb", "/a%/b"]),
            // Envoy's mergeSlashes keeps a leading and a trailing slash of a path of slashes.
            ("//", ["//", "//", "//", "//"]),
            ("///", ["///", "///", "//", "//"]),
            // Istio's paths that no mode changes.
            ("/..;/admin", ["/..;/admin"; 4]),
            ("/admin;a=b/xyz", ["/admin;a=b/xyz"; 4]),
            ("/%252e%252e%252fadmin", ["/%252e%252e%252fadmin"; 4]),
            ("/.../admin", ["/.../admin"; 4]),
        ];
        for (path, expected) in table {
            for (mode, want) in MODES.into_iter().zip(expected) {
                assert_eq!(with(path, mode), *want, "{path:?} under {mode}");
            }
        }
    }

    /// Istio's percent-encoded cases under DECODE_AND_MERGE_SLASHES: `%01`..`%ff` after
    /// `/admin`; unreserved characters, `/` and `\` decoded (a backslash then a slash), every
    /// other escape kept as written.
    #[test]
    fn decode_and_merge_slashes_decodes_only_unreserved_characters_and_slashes() {
        for byte in 1..=0xffu8 {
            let path = format!("/admin%{byte:02x}");
            let decoded = match byte {
                b'/' | b'\\' => Some('/'),
                b'-' | b'.' | b'_' | b'~' => Some(char::from(byte)),
                _ if byte.is_ascii_alphanumeric() => Some(char::from(byte)),
                _ => None,
            };
            let want = decoded.map_or_else(|| path.clone(), |c| format!("/admin{c}"));
            assert_eq!(
                with(&path, PathNormalization::DecodeAndMergeSlashes),
                want,
                "{path}"
            );
        }
    }

    #[test]
    fn a_path_that_cannot_be_normalized_is_refused_in_every_mode_but_none() {
        for mode in MODES {
            let result = normalize_path_with("/admin%2f%00", mode);
            if mode == PathNormalization::None {
                assert_eq!(result.unwrap(), "/admin%2f%00");
            } else {
                // Named as it came, not as decoded.
                assert_eq!(
                    result,
                    Err(InvalidPath {
                        path: "/admin%2f%00".into()
                    }),
                    "{mode}"
                );
            }
        }
    }

    #[test]
    fn a_path_a_mode_leaves_alone_is_borrowed() {
        for (path, mode) in [
            ("/a//b", PathNormalization::None),
            ("/a/../b", PathNormalization::None),
            ("/a//b", PathNormalization::Base),
            ("/a/b/", PathNormalization::MergeSlashes),
            ("/a/b:c", PathNormalization::DecodeAndMergeSlashes),
        ] {
            assert!(
                matches!(normalize_path_with(path, mode), Ok(Cow::Borrowed(b)) if b == path),
                "{path} under {mode}"
            );
        }
    }

    /// Every path of up to 5 characters over the characters that matter, in every mode that
    /// normalizes: normalizing the result again changes nothing, and the merging modes leave no
    /// `//` (but Envoy's `//` for a path of slashes only) and the decoding one no `%2F`/`%5C`.
    #[test]
    fn every_short_path_normalizes_to_a_fixed_point_in_every_mode() {
        for mode in &MODES[1..] {
            every_short_path(b"/.%2fF5C\\a", |p| {
                let once = with(p, *mode);
                assert_eq!(with(&once, *mode), once, "{p:?} under {mode}");
                if *mode != PathNormalization::Base {
                    assert!(once == "//" || !once.contains("//"), "{p:?} -> {once:?}");
                }
                if *mode == PathNormalization::DecodeAndMergeSlashes {
                    let upper = once.to_ascii_uppercase();
                    assert!(
                        !upper.contains("%2F") && !upper.contains("%5C"),
                        "{p:?} -> {once:?}"
                    );
                }
            });
        }
    }

    #[test]
    fn empty_path_is_the_root() {
        assert_eq!(norm(""), "/");
        assert_eq!(norm("a/../b"), "/b");
    }
}
