//! The path_normalization fuzz target's runner, shared with the corpus replay test
//! (`mesh-policy/tests/fuzz_corpus.rs` includes this file by path).
//!
//! The input is a request target's path (what `http::Uri` accepts: the target is parsed as a
//! path and query, and its path taken; other inputs are skipped), normalized in each of Istio's four modes
//! by `mesh_policy::authz::normalize_path_with`, as the inbound side does before
//! authorization. Nothing may panic, and what a mode promises must hold: `NONE` changes
//! nothing; the others leave no `.` or `..` segment and keep a leading `/`;
//! `MERGE_SLASHES` and `DECODE_AND_MERGE_SLASHES` leave no `//`; and a normalized path
//! normalizes to itself, so policies and the app agree on it whichever sees it first.

use mesh_policy::authz::{PathNormalization, normalize_path_with};

/// Every mode.
pub const MODES: [PathNormalization; 4] = [
    PathNormalization::None,
    PathNormalization::Base,
    PathNormalization::MergeSlashes,
    PathNormalization::DecodeAndMergeSlashes,
];

/// Normalizes `data` in every mode; the outcome per mode (`None` when refused: Envoy's 400).
///
/// # Panics
/// When a mode breaks its promise: a bug the fuzzer reports.
pub fn run(data: &[u8]) -> Vec<Option<String>> {
    let Ok(target) = http::uri::PathAndQuery::try_from(data) else {
        return Vec::new();
    };
    let path = target.path();
    MODES
        .iter()
        .map(|&mode| {
            let normalized = normalize_path_with(path, mode).ok()?.into_owned();
            check(path, mode, &normalized);
            Some(normalized)
        })
        .collect()
}

fn check(path: &str, mode: PathNormalization, normalized: &str) {
    if mode == PathNormalization::None {
        assert_eq!(normalized, path, "NONE changed the path");
        return;
    }
    if path.starts_with('/') {
        assert!(
            normalized.starts_with('/'),
            "{mode:?}: {path:?} -> {normalized:?}"
        );
        for segment in normalized.split('/') {
            assert!(
                segment != "." && segment != "..",
                "{mode:?}: {path:?} -> {normalized:?} keeps a dot segment"
            );
        }
    }
    if mode != PathNormalization::Base && normalized.len() > 2 {
        // Envoy merges a path of only slashes into `//`; any other keeps no `//`.
        assert!(
            !normalized.contains("//"),
            "{mode:?}: {path:?} -> {normalized:?}"
        );
    }
    let again = normalize_path_with(normalized, mode)
        .unwrap_or_else(|e| panic!("{mode:?}: {path:?} -> {normalized:?} refused again: {e}"));
    assert_eq!(
        again, normalized,
        "{mode:?}: {path:?} is not normalized in one pass"
    );
}
