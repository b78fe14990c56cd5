//! Replays the `istio_yaml` fuzz corpus (`fuzz/corpus/istio_yaml`) and its crash regressions
//! (`fuzz/regressions/istio_yaml`, when present) on stable Rust: parsing and building must
//! never panic, whatever the input.

use mesh_core::istio::{build, parse};
use mesh_core::model::Workload;
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

/// What the fuzz target does with one input; returns whether a config was built.
fn run(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let parsed = parse("fuzz.yaml", text);
    let built = build(&parsed.resources, &Workload::default());
    built.config.is_some() && !parsed.resources.is_empty()
}

#[test]
fn istio_yaml_corpus_replays_without_panic() {
    let files = inputs("fuzz/corpus/istio_yaml");
    assert!(!files.is_empty(), "the istio_yaml corpus is missing");
    let mut built = Vec::new();
    for file in &files {
        let data = std::fs::read(file).expect("a readable corpus file");
        if run(&data) {
            built.push(file.file_name().expect("a file name").to_owned());
        }
    }
    // The seeds are copies of the examples: the complete ones build a config (the delay
    // example alone names a host no file declares, so it is rejected, as it should be).
    for seed in ["quickstart-mesh.yaml", "security.yaml"] {
        assert!(
            built.iter().any(|b| b == seed),
            "seed {seed} did not build; built: {built:?}"
        );
    }
}

#[test]
fn istio_yaml_regressions_replay_without_panic() {
    for file in inputs("fuzz/regressions/istio_yaml") {
        let data = std::fs::read(&file).expect("a readable regression file");
        run(&data);
    }
}
