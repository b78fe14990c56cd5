//! Replays the `route_match` fuzz corpus (and, below, `sniff`, `trace_context` and
//! `peer_exchange`) (`fuzz/corpus/route_match`) and its crash regressions
//! (`fuzz/regressions/route_match`, when present) on stable Rust, through the fuzz target's own
//! decoder and runner, and pins what the seed requests route to.

#[path = "../../fuzz/common/peer_exchange.rs"]
mod peer_exchange;
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

/// The seed `name` of `target`'s corpus.
fn seed_of(target: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("seed {}: {e}", path.display()))
}

fn seed(name: &str) -> Vec<u8> {
    seed_of("route_match", name)
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

#[path = "../../fuzz/common/sniff.rs"]
mod sniff;

/// The `sniff` seeds: an HTTP/1 request, the HTTP/2 preface, and TLS ClientHellos as rustls
/// sends them (with SNI and ALPN as an Istio client does, and a second one without).
fn write_sniff_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/sniff");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("seed-http1"),
        "GET /reviews/1 HTTP/1.1\r\nHost: reviews:9080\r\n\r\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("seed-h2c-preface"),
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    )
    .unwrap();
    for (file, sni, alpn) in [
        (
            "seed-client-hello-istio",
            "outbound_.9080_._.reviews.default.svc.cluster.local",
            vec![
                b"istio-peer-exchange".to_vec(),
                b"h2".to_vec(),
                b"http/1.1".to_vec(),
            ],
        ),
        ("seed-client-hello-plain", "reviews", Vec::new()),
    ] {
        let mut config =
            rustls::ClientConfig::builder_with_provider(mesh_policy::credentials::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
        config.alpn_protocols = alpn;
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut hello = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut hello).unwrap();
        }
        std::fs::write(dir.join(file), hello).unwrap();
    }
}

#[test]
fn sniff_corpus_replays_without_panic() {
    if std::env::var_os("MESH_FUZZ_WRITE_SEEDS").is_some() {
        write_sniff_seeds();
    }
    let files = inputs("fuzz/corpus/sniff");
    assert!(files.len() >= 4, "the sniff corpus is missing");
    for file in &files {
        let data = std::fs::read(file).expect("a readable corpus file");
        let _ = sniff::run(&data);
    }
}

#[test]
fn sniff_regressions_replay_without_panic() {
    for file in inputs("fuzz/regressions/sniff") {
        let data = std::fs::read(&file).expect("a readable regression file");
        let _ = sniff::run(&data);
    }
}

#[test]
fn sniff_seeds_are_told_apart() {
    let sniffed = |name: &str| {
        sniff::run(
            &std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../fuzz/corpus/sniff")
                    .join(name),
            )
            .unwrap(),
        )
    };
    assert_eq!(sniffed("seed-http1"), sniff::Sniffed::Plaintext);
    assert_eq!(sniffed("seed-h2c-preface"), sniff::Sniffed::Plaintext);
    assert_eq!(
        sniffed("seed-client-hello-istio"),
        sniff::Sniffed::ClientHello {
            sni: Some("outbound_.9080_._.reviews.default.svc.cluster.local".to_owned()),
            alpn: vec![
                b"istio-peer-exchange".to_vec(),
                b"h2".to_vec(),
                b"http/1.1".to_vec()
            ],
        }
    );
    assert_eq!(
        sniffed("seed-client-hello-plain"),
        sniff::Sniffed::ClientHello {
            sni: Some("reviews".to_owned()),
            alpn: Vec::new()
        }
    );
    // Cut short, the hello is incomplete, not refused; one byte is TLS but nothing yet.
    let hello = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/sniff/seed-client-hello-plain"),
    )
    .unwrap();
    assert_eq!(
        sniff::run(&hello[..hello.len() / 2]),
        sniff::Sniffed::Incomplete
    );
    assert_eq!(sniff::run(&[0x16]), sniff::Sniffed::Incomplete);
    assert_eq!(sniff::run(b""), sniff::Sniffed::Plaintext);
}

#[path = "../../fuzz/common/trace.rs"]
mod trace;

fn trace_seed(name: &str) -> trace::Outcome {
    trace::run(&seed_of("trace_context", name))
}

#[test]
fn trace_context_corpus_replays_without_panic() {
    let files = inputs("fuzz/corpus/trace_context");
    assert!(files.len() >= 8, "the trace_context corpus is missing");
    for file in &files {
        let data = std::fs::read(file).expect("a readable corpus file");
        let _ = trace::run(&data);
    }
}

#[test]
fn trace_context_regressions_replay_without_panic() {
    for file in inputs("fuzz/regressions/trace_context") {
        let data = std::fs::read(&file).expect("a readable regression file");
        let _ = trace::run(&data);
    }
}

#[test]
fn trace_context_seeds_write_the_chosen_formats() {
    let written =
        |names: &[&str]| trace::Outcome::Written(names.iter().map(|n| n.to_string()).collect());
    assert_eq!(
        trace_seed("seed-w3c"),
        written(&[
            "traceparent",
            "x-b3-parentspanid",
            "x-b3-sampled",
            "x-b3-spanid",
            "x-b3-traceid"
        ])
    );
    assert_eq!(
        trace_seed("seed-b3multi"),
        written(&[
            "x-b3-parentspanid",
            "x-b3-sampled",
            "x-b3-spanid",
            "x-b3-traceid"
        ])
    );
    assert_eq!(trace_seed("seed-b3-single"), written(&["b3"]));
    assert_eq!(
        trace_seed("seed-all"),
        written(&[
            "b3",
            "traceparent",
            "x-b3-parentspanid",
            "x-b3-sampled",
            "x-b3-spanid",
            "x-b3-traceid"
        ])
    );
    // `none`: the caller's traceparent passes through, nothing is written.
    assert_eq!(trace_seed("seed-none"), written(&["traceparent"]));
    // A 64-bit B3 trace id continues as the low half; the debug flag passes through.
    assert_eq!(
        trace_seed("seed-default-64bit"),
        written(&[
            "traceparent",
            "x-b3-flags",
            "x-b3-parentspanid",
            "x-b3-sampled",
            "x-b3-spanid",
            "x-b3-traceid"
        ])
    );
    assert_eq!(trace_seed("seed-future-version"), written(&["traceparent"]));
    assert!(matches!(
        trace_seed("seed-unknown"),
        trace::Outcome::Refused(m) if m.contains("`jaeger`")
    ));
}

/// Writes the peer_exchange seeds: an Istio preamble followed by payload, the same cut short,
/// a peer without the exchange, and a preamble claiming more than the reader takes.
fn write_peer_exchange_seeds() {
    use mesh_core::model::Workload;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/peer_exchange");
    std::fs::create_dir_all(&dir).unwrap();
    let workload = Workload {
        workload_name: "ratings-v1".to_owned(),
        namespace: "shop".to_owned(),
        ..Workload::default()
    };
    // Our own preamble is Istio's format (checked against istio/proxy's in the unit tests).
    let exchange = mesh_tower::telemetry::TcpPeerExchange::with_id(
        &workload,
        Some("sidecar~10.1.2.3~ratings-v1.shop~shop.svc.cluster.local"),
    );
    let mut stream = tokio::io::join(tokio::io::empty(), Vec::new());
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(exchange.run(&mut stream))
        .unwrap();
    let (_, preamble) = stream.into_inner();
    let mut with_payload = preamble.clone();
    with_payload.extend_from_slice(b"SELECT 1;");
    std::fs::write(dir.join("seed-istio-preamble"), &with_payload).unwrap();
    std::fs::write(dir.join("seed-cut-short"), &preamble[..preamble.len() / 2]).unwrap();
    std::fs::write(
        dir.join("seed-no-exchange"),
        "GET / HTTP/1.1\r\nHost: db\r\n\r\n",
    )
    .unwrap();
    let mut oversize = 0x3D23_0467u32.to_be_bytes().to_vec();
    oversize.extend_from_slice(&0x0001_0001u32.to_be_bytes());
    std::fs::write(dir.join("seed-oversize"), oversize).unwrap();
}

#[test]
fn peer_exchange_corpus_replays_without_panic() {
    if std::env::var_os("MESH_FUZZ_WRITE_SEEDS").is_some() {
        write_peer_exchange_seeds();
    }
    let files = inputs("fuzz/corpus/peer_exchange");
    assert!(files.len() >= 4, "the peer_exchange corpus is missing");
    for file in &files {
        let data = std::fs::read(file).expect("a readable corpus file");
        let _ = peer_exchange::run(&data);
    }
}

#[test]
fn peer_exchange_regressions_replay_without_panic() {
    for file in inputs("fuzz/regressions/peer_exchange") {
        let data = std::fs::read(&file).expect("a readable regression file");
        let _ = peer_exchange::run(&data);
    }
}

#[test]
fn peer_exchange_seeds_read_as_istio_s_filter_reads_them() {
    let run = |name: &str| peer_exchange::run(&seed_of("peer_exchange", name));
    let istio = run("seed-istio-preamble").expect("a whole preamble");
    assert_eq!(istio.peer.expect("the peer").workload, "ratings-v1");
    assert_eq!(
        istio.peer_id.as_deref(),
        Some("sidecar~10.1.2.3~ratings-v1.shop~shop.svc.cluster.local")
    );
    assert!(istio.unread.is_empty(), "the payload stays in the stream");
    // A peer without the exchange: its first eight bytes come back as payload.
    let plain = run("seed-no-exchange").expect("payload");
    assert!(plain.peer.is_none());
    assert_eq!(plain.unread.as_ref(), b"GET / HT");
    // A length over the limit is payload too; a preamble cut short is an unknown peer.
    assert_eq!(run("seed-oversize").expect("payload").unread.len(), 8);
    assert!(
        run("seed-cut-short").is_none(),
        "a peer that closes mid-preamble ends the connection"
    );
}
