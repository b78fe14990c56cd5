//! Issues the load test's mutual-TLS identities from a fresh test CA.
//!
//! `bench-certs DIR NAME=SPIFFE_ID...` writes `DIR/ca.pem` and, for each identity,
//! `DIR/NAME.cert.pem` and `DIR/NAME.key.pem` (e.g.
//! `bench-certs target/load/certs client=spiffe://cluster.local/ns/default/sa/client`).

use mesh_policy::testing::TestCa;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: bench-certs DIR NAME=SPIFFE_ID...");
        return ExitCode::FAILURE;
    };
    let ca = TestCa::new("mesh load test root");
    let mut files = vec![(dir.join("ca.pem"), ca.bundle_pem().to_owned())];
    for arg in args {
        let Some((name, id)) = arg.split_once('=') else {
            eprintln!("{arg:?} is not NAME=SPIFFE_ID");
            return ExitCode::FAILURE;
        };
        if let Err(e) = mesh_policy::SpiffeId::parse(id) {
            eprintln!("{id:?} is not a SPIFFE ID: {e}");
            return ExitCode::FAILURE;
        }
        let leaf = ca.issue(id);
        files.push((dir.join(format!("{name}.cert.pem")), leaf.cert_pem));
        files.push((dir.join(format!("{name}.key.pem")), leaf.key_pem));
    }
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    for (path, text) in files {
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
