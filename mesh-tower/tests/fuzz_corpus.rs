//! Replays the `route_match` fuzz corpus (`fuzz/corpus/route_match`) and its crash regressions
//! (`fuzz/regressions/route_match`, when present) on stable Rust, through the fuzz target's own
//! decoder and runner, and pins what the seed requests route to.

#[path = "../../fuzz/common/route.rs"]
mod route;

use http::StatusCode;
use std::path::{Path, PathBuf};

fn inputs(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn seed(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus/route_match")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("seed {}: {e}", path.display()))
}

#[test]
fn route_match_corpus_replays_without_panic() {
    let files = inputs("fuzz/corpus/route_match");
    assert!(files.len() >= 10, "the route_match corpus is missing");
    for file in &files {
        let data = std::fs::read(file).expect("a readable corpus file");
        let _ = route::run(&data);
    }
}

#[test]
fn route_match_regressions_replay_without_panic() {
    for file in inputs("fuzz/regressions/route_match") {
        let data = std::fs::read(&file).expect("a readable regression file");
        let _ = route::run(&data);
    }
}

#[test]
fn route_match_seeds_route_as_configured() {
    // Forwarded requests reach the inner service, which answers 200.
    for name in [
        "exact-header",
        "regex",
        "cookie",
        "query",
        "rewrite",
        "regex-rewrite",
        "without",
        "absolute",
    ] {
        assert_eq!(route::run(&seed(name)), Some(StatusCode::OK), "seed {name}");
    }
    assert_eq!(
        route::run(&seed("redirect")),
        Some(StatusCode::PERMANENT_REDIRECT)
    );
    assert_eq!(route::run(&seed("direct")), Some(StatusCode::OK));
    // No virtual host for the authority, or no authority at all: an error, not a panic.
    assert_eq!(route::run(&seed("no-route")), None);
    assert_eq!(route::run(&seed("no-host")), None);
}

#[test]
fn route_match_decoder_rejects_garbage_without_panic() {
    assert!(route::request(b"").is_none());
    assert!(route::request(b"GE T\n/\nhost\n").is_none());
    assert!(route::request(b"GET\n\xff\xfe\nhost\n").is_none());
    // Bad header lines are skipped, not fatal.
    let req = route::request(b"GET\n/x\nh\nbad header\n: empty\nx-ok: 1\n").expect("a request");
    assert_eq!(req.headers()["x-ok"], "1");
}
