//! The loader never panics: arbitrary text, and valid configs with bytes mangled.

use mesh_core::istio;
use mesh_core::model::Workload;
use proptest::prelude::*;

const VALID: &str = include_str!("../../examples/config/quickstart/mesh.yaml");

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text(text in "\\PC{0,400}") {
        let _ = istio::load(&[("fuzz.yaml", &text)], &Workload::default());
    }

    #[test]
    fn mangled_valid_config(edits in proptest::collection::vec((0usize..4096, any::<u8>()), 1..8)) {
        let mut bytes = VALID.as_bytes().to_vec();
        for (at, byte) in edits {
            let i = at % bytes.len();
            bytes[i] = byte;
        }
        let text = String::from_utf8_lossy(&bytes);
        let outcome = istio::load(&[("fuzz.yaml", &text)], &Workload::default());
        // Either a config or at least one error, never both.
        prop_assert_eq!(outcome.config.is_some(), !outcome.has_errors());
    }

    #[test]
    fn mangled_numbers(n in any::<i64>(), f in any::<f64>()) {
        let text = VALID
            .replace("weight: 90", &format!("weight: {n}"))
            .replace("weight: 10", &format!("weight: {f}"));
        let _ = istio::load(&[("fuzz.yaml", &text)], &Workload::default());
    }
}
