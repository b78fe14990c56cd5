#!/usr/bin/env bash
# Runs each fuzz target for N minutes (default 10), in parallel, one core each, with libFuzzer.
#
#   fuzz/run.sh [MINUTES=10] [TARGET...]
#
# Uses `cargo fuzz` when installed; otherwise builds the targets itself with the nightly
# toolchain (or stable with RUSTC_BOOTSTRAP=1) and the SanitizerCoverage flags `cargo fuzz`
# passes (no AddressSanitizer: the crates forbid unsafe code). New corpus entries go to
# fuzz/corpus/TARGET, crashes to fuzz/artifacts/TARGET; copy a crash into
# fuzz/regressions/TARGET so the stable replay tests keep it fixed.
set -euo pipefail
cd "$(dirname "$0")"
MINUTES=${1:-10}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(istio_yaml route_match xds authz spiffe sniff trace_context peer_exchange path_normalization jwt)
TRIPLE=$(rustc -vV | awk '/^host:/ {print $2}')

if command -v cargo-fuzz >/dev/null; then
  cargo +nightly fuzz build -O "${TARGETS[@]/#/--bin=}" >/dev/null
  BIN=target/$TRIPLE/release
else
  TOOLCHAIN=+nightly
  rustup run nightly rustc --version >/dev/null 2>&1 || { TOOLCHAIN=; export RUSTC_BOOTSTRAP=1; }
  export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
  # --target keeps the flags off build scripts and proc macros.
  # shellcheck disable=SC2086
  cargo $TOOLCHAIN build --release --target "$TRIPLE" "${TARGETS[@]/#/--bin=}"
  BIN=target/$TRIPLE/release
fi

pids=()
cpu=0
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  taskset -c "$cpu" timeout $((MINUTES * 60 + 60)) "$BIN/$t" "corpus/$t" \
    -max_total_time=$((MINUTES * 60)) -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 > "artifacts/$t.log" 2>&1 &
  pids+=($!)
  cpu=$(( (cpu + 1) % $(nproc) ))
done
status=0
for i in "${!pids[@]}"; do
  if wait "${pids[$i]}"; then echo "${TARGETS[$i]}: no crash in $MINUTES min: $(grep -E '^stat::number_of_executed_units' "artifacts/${TARGETS[$i]}.log" | tail -1)"
  else status=1; echo "${TARGETS[$i]}: FAILED, see fuzz/artifacts/${TARGETS[$i]}.log"; fi
done
exit $status
