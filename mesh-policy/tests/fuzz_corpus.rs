//! Replays the `authz`, `spiffe`, `path_normalization` and `jwt` fuzz corpora
//! (`fuzz/corpus/{authz,spiffe,path_normalization,jwt}`) and their crash
//! regressions (`fuzz/regressions/<target>`, when present) on stable Rust, through the fuzz
//! targets' own runners (`fuzz/common/authz.rs`, `fuzz/common/spiffe.rs`), and pins what the
//! seeds decide. `MESH_FUZZ_WRITE_SEEDS=1` rewrites the certificate seeds of `spiffe`.

#[path = "../../fuzz/common/authz.rs"]
mod authz;
#[path = "../../fuzz/common/jwt.rs"]
mod jwt;
#[path = "../../fuzz/common/path_normalization.rs"]
mod path_normalization;
#[path = "../../fuzz/common/spiffe.rs"]
mod spiffe;

use mesh_policy::authz::Decision;
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

fn seed(target: &str, name: &str) -> Vec<u8> {
    let path = dir("fuzz/corpus").join(target).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("seed {}: {e}", path.display()))
}

#[test]
fn authz_corpus_replays_without_panic() {
    let files = inputs("fuzz/corpus/authz");
    assert!(files.len() >= 2, "the authz corpus is missing");
    for file in &files {
        let data = std::fs::read(file).expect("a readable corpus file");
        let _ = authz::run(&data);
    }
}

#[test]
fn authz_regressions_replay_without_panic() {
    for file in inputs("fuzz/regressions/authz") {
        let data = std::fs::read(&file).expect("a readable regression file");
        let _ = authz::run(&data);
    }
}

#[test]
fn authz_seeds_decide_as_the_policies_say() {
    let decisions = |name: &str| -> Vec<Decision> {
        authz::run(&seed("authz", name))
            .unwrap_or_else(|e| panic!("seed {name}: {e}"))
            .iter()
            .map(|v| v.decision)
            .collect()
    };
    // bookinfo: only productpage may GET /reviews*.
    assert_eq!(
        decisions("seed-bookinfo-security"),
        [
            Decision::Allow,
            Decision::Deny,
            Decision::Deny,
            Decision::Deny
        ]
    );
    let verdicts = authz::run(&seed("authz", "seed-deny-audit")).expect("policies compile");
    let got: Vec<Decision> = verdicts.iter().map(|v| v.decision).collect();
    assert_eq!(
        got,
        [
            Decision::Deny,  // DENY: POST /admin from 10/8 with a wrong token
            Decision::Deny,  // not denied (GET), but no ALLOW rule matches
            Decision::Allow, // ALLOW rules[1]: GET /health
            Decision::Allow, // ALLOW rules[0]: frontend from 10/8 and 203.0.113/24
            Decision::Deny,  // the untrusted principal is excluded
            Decision::Allow, // ALLOW rules[1]: */status, query ignored
        ]
    );
    // AUDIT matches everything; the dry-run DENY would deny every request with a peer.
    assert!(verdicts.iter().all(|v| v.audit.is_some()));
    assert!(verdicts.iter().all(|v| v.shadow.is_some()));
    assert_eq!(
        verdicts[3].shadow.as_ref().map(|s| s.decision),
        Some(Decision::Deny)
    );
}

#[test]
fn spiffe_corpus_replays_without_panic() {
    if std::env::var_os("MESH_FUZZ_WRITE_SEEDS").is_some() {
        write_certificate_seeds();
    }
    let files = inputs("fuzz/corpus/spiffe");
    assert!(files.len() >= 4, "the spiffe corpus is missing");
    let (mut ids, mut certs) = (0, 0);
    for file in &files {
        let data = std::fs::read(file).expect("a readable corpus file");
        let (id, cert) = spiffe::run(&data);
        ids += usize::from(id.is_some());
        certs += usize::from(cert.is_some());
    }
    assert!(ids >= 4, "only {ids} seed IDs parsed");
    assert!(certs >= 1, "no seed certificate gave an ID");
}

#[test]
fn spiffe_regressions_replay_without_panic() {
    for file in inputs("fuzz/regressions/spiffe") {
        let data = std::fs::read(&file).expect("a readable regression file");
        let _ = spiffe::run(&data);
    }
}

/// DER certificates with one, two and no URI SAN (the last two are refused).
fn write_certificate_seeds() {
    for (name, uris) in [
        (
            "seed-cert-productpage.der",
            &["spiffe://cluster.local/ns/default/sa/bookinfo-productpage"][..],
        ),
        (
            "seed-cert-two-uris.der",
            &["spiffe://cluster.local/ns/a/sa/b", "spiffe://example.org/x"][..],
        ),
        ("seed-cert-no-uri.der", &[][..]),
    ] {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        for uri in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI((*uri).try_into().unwrap()));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir("fuzz/corpus/spiffe").join(name), cert.der()).unwrap();
    }
}

#[test]
fn path_normalization_corpus_replays_without_panic() {
    let files = inputs("fuzz/corpus/path_normalization");
    assert!(files.len() >= 6, "the path_normalization corpus is missing");
    for file in &files {
        let data = std::fs::read(file).expect("a readable corpus file");
        let _ = path_normalization::run(&data);
    }
}

#[test]
fn path_normalization_regressions_replay_without_panic() {
    for file in inputs("fuzz/regressions/path_normalization") {
        let data = std::fs::read(&file).expect("a readable regression file");
        let _ = path_normalization::run(&data);
    }
}

#[test]
fn path_normalization_seeds_normalize_as_each_mode_says() {
    // NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES.
    let modes = |name: &str| path_normalization::run(&seed("path_normalization", name));
    let some = |p: &str| Some(p.to_owned());
    assert_eq!(
        modes("seed-double-slashes"),
        [
            some("//admin//x"),
            some("//admin//x"),
            some("/admin/x"),
            some("/admin/x")
        ]
    );
    assert_eq!(modes("seed-dot-segments")[1], some("/admin"));
    assert_eq!(
        modes("seed-escaped-slashes")[3],
        some("/a/admin"),
        "%2F and %5C decoded, then the dot segment resolved"
    );
    assert_eq!(
        modes("seed-nul"),
        [some("/a%00b"), None, None, None],
        "refused (400) in every mode but NONE"
    );
}

#[test]
fn jwt_corpus_replays_without_panic_or_a_forged_token_accepted() {
    let files = inputs("fuzz/corpus/jwt");
    assert!(files.len() >= 8, "the jwt corpus is missing");
    for file in &files {
        let data = std::fs::read(file).expect("a readable corpus file");
        assert!(!jwt::run(&data), "{}", file.display());
    }
    for file in inputs("fuzz/regressions/jwt") {
        let data = std::fs::read(&file).expect("a readable regression file");
        let _ = jwt::run(&data);
    }
}
