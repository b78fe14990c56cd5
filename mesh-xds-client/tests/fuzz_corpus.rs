//! Replays the `xds` fuzz corpus (`fuzz/corpus/xds`) and its crash regressions
//! (`fuzz/regressions/xds`, when present) on stable Rust, through the fuzz target's own
//! runner (`fuzz/common/xds.rs`): decoding and translating arbitrary resource bytes must never
//! panic. The seeds are this crate's Istio-shaped fixtures; `MESH_FUZZ_WRITE_SEEDS=1` rewrites
//! them.

#[path = "../../fuzz/common/xds.rs"]
mod xds;

use mesh_xds_client::resource::ResourceType;
use mesh_xds_client::test_util::fixtures;
use prost::Message;
use std::path::{Path, PathBuf};

fn dir(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn inputs(rel: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir(rel)) else {
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

/// The seeds: one valid resource of each type, in istiod's shapes, and every resource of the
/// Envoy JSON fixtures.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = fixture_seeds()
        .into_iter()
        .map(|(n, d)| (n.to_owned(), d))
        .collect();
    for file in [
        "config_dump.json",
        "bootstrap.json",
        "inbound_listener.json",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let doc = mesh_xds_client::json::load_config_dump(&text).unwrap();
        for (i, r) in doc.resources.iter().enumerate() {
            let stem = file.trim_end_matches(".json").replace('_', "-");
            out.push((
                format!("seed-{stem}-{i}"),
                xds::encode(r.kind, &r.any.value),
            ));
        }
    }
    out
}

fn fixture_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let addrs = [
        "10.0.0.1:8080".parse().unwrap(),
        "10.0.0.2:8080".parse().unwrap(),
    ];
    let cluster = "outbound|9080||reviews.default.svc.cluster.local";
    vec![
        (
            "seed-listener",
            xds::encode(
                ResourceType::Listener,
                &fixtures::listener(9080, "9080").encode_to_vec(),
            ),
        ),
        (
            "seed-route",
            xds::encode(
                ResourceType::RouteConfiguration,
                &fixtures::route_config(
                    "9080",
                    &["reviews.default.svc.cluster.local", "reviews"],
                    &[
                        (cluster, 90),
                        ("outbound|9080|v2|reviews.default.svc.cluster.local", 10),
                    ],
                )
                .encode_to_vec(),
            ),
        ),
        (
            "seed-cluster",
            xds::encode(
                ResourceType::Cluster,
                &fixtures::eds_cluster(cluster).encode_to_vec(),
            ),
        ),
        (
            "seed-endpoints",
            xds::encode(
                ResourceType::ClusterLoadAssignment,
                &fixtures::endpoints(cluster, &addrs).encode_to_vec(),
            ),
        ),
    ]
}

#[test]
fn xds_seeds_translate() {
    let write = std::env::var_os("MESH_FUZZ_WRITE_SEEDS").is_some();
    for (name, data) in seeds() {
        let name = name.as_str();
        if write {
            std::fs::create_dir_all(dir("fuzz/corpus/xds")).unwrap();
            std::fs::write(dir("fuzz/corpus/xds").join(name), &data).unwrap();
        }
        let outcome = xds::run(&data).expect("a non-empty input");
        let config = outcome.unwrap_or_else(|e| panic!("seed {name} rejected: {e}"));
        if name == "seed-cluster" {
            assert_eq!(config.clusters.len(), 1);
            assert_eq!(config.services.len(), 1, "the Istio name gives a service");
        }
    }
}

#[test]
fn xds_corpus_replays_without_panic() {
    let files = inputs("fuzz/corpus/xds");
    assert!(files.len() >= 4, "the xds corpus is missing");
    let mut accepted = 0;
    for file in &files {
        let data = std::fs::read(file).expect("a readable corpus file");
        if matches!(xds::run(&data), Some(Ok(_))) {
            accepted += 1;
        }
    }
    assert!(accepted >= 4, "only {accepted} corpus inputs were accepted");
}

#[test]
fn xds_regressions_replay_without_panic() {
    for file in inputs("fuzz/regressions/xds") {
        let data = std::fs::read(&file).expect("a readable regression file");
        let _ = xds::run(&data);
    }
}
