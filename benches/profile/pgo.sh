#!/usr/bin/env bash
# Profile-guided builds (PGO) of the load test's binaries: mesh-proxy, the bare hyper proxy and
# upstream, each laid out by the profile of the load test itself.
#
#   benches/profile/pgo.sh [TRAIN_SECONDS=3]
#   BIN=target/pgo/<host triple>/release benches/load/run.sh 8 64     # then measure
#
# 1. builds the binaries instrumented (`-Cprofile-generate`) in target/pgo-gen;
# 2. trains them: benches/load/run.sh with TRAIN_SECONDS per row (every row the load test
#    measures: HTTP/1.1, h2c, two sidecars in plaintext and over mutual TLS), each process
#    writing its profile when it exits;
# 3. merges the profiles (`llvm-profdata`, from `rustup component add llvm-tools`);
# 4. builds the binaries again with `-Cprofile-use` in target/pgo (prints that directory).
#
# Both proxies are built the same way from the same run, so a ratio between them compares
# like with like. Two release builds from scratch: about 12 minutes on 2 cores. Only
# 127.0.0.1 is used.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-3}
host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
[ -x "$profdata" ] || { echo "llvm-profdata is missing: rustup component add llvm-tools" >&2; exit 1; }
data=$PWD/target/pgo-data
rm -rf "$data"
mkdir -p "$data"

build() { # TARGET_DIR RUSTFLAGS
  # `--target`: the flags then reach only the binaries' crates, not build scripts.
  RUSTFLAGS=$2 cargo build --release -q --locked --target "$host" --target-dir "$1" \
    -p mesh-benches --bin bare-upstream --bin bare-proxy --bin bench-certs --bin load-chart \
    -p mesh-examples --bin mesh-proxy
}

echo "pgo: instrumented build (target/pgo-gen)" >&2
build target/pgo-gen "-Cprofile-generate=$data"
echo "pgo: training (benches/load/run.sh $SECS 64)" >&2
BIN=target/pgo-gen/$host/release OUT=target/pgo-train benches/load/run.sh "$SECS" 64 >/dev/null
# The upstream gets its SIGTERM as the script exits: wait until every instrumented process
# has written its profile.
while pgrep -f "target/pgo-gen/$host/release/" >/dev/null; do sleep 0.1; done
"$profdata" merge -o "$data/merged.profdata" "$data"/*.profraw
echo "pgo: optimized build (target/pgo)" >&2
build target/pgo "-Cprofile-use=$data/merged.profdata"
echo "target/pgo/$host/release"
