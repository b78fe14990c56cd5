#!/usr/bin/env bash
# Exact instructions per request of in-process services (criterion benches' services), by
# callgrind: each NAME serves 1,000 then 11,000 requests (`MESH_BENCH_COUNT`, see
# `mesh_benches::compare`); the difference over 10,000 is the cost of one request.
#
#   benches/profile/count.sh BENCH NAME...
#   benches/profile/count.sh layers bare "outbound stack" "outbound stack + telemetry (sampling 0%)"
#   benches/profile/count.sh inbound "inbound stack (10 policies)"
#
# BENCH is a bench target of mesh-benches (layers, inbound, routing, ...); it is built first.
set -euo pipefail
cd "$(dirname "$0")/../.."
BENCH=$1; shift
exe=$(cargo bench -q -p mesh-benches --bench "$BENCH" --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$BENCH" | tail -1)
[ -n "$exe" ] || { echo "no bench executable for $BENCH" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
total() { # name requests -> instructions
  MESH_BENCH_COUNT="$1:$2" valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$exe" --bench >/dev/null 2>&1
  awk '/^(summary|totals):/ {print $2; exit}' "$out/cg"
}
for name in "$@"; do
  small=$(total "$name" 1000)
  large=$(total "$name" 11000)
  echo "$name: $(( (large - small) / 10000 )) instructions/request"
done
