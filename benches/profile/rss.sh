#!/usr/bin/env bash
# mesh-proxy's resident memory under sustained load with nobody scraping its metrics: it
# should level off (a steady climb is a leak; session 9 found one in the histograms).
#
#   benches/profile/rss.sh [REQUESTS=500000] [ROUNDS=3]
#
# Warms the sidecar with 50,000 h2c requests, then sends REQUESTS more ROUNDS times (16
# connections, 10 streams each), printing RSS after each round and a pause longer than the
# metrics upkeep (5 s). Uses the release binaries as they are. Only 127.0.0.1 is used.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-500000}; ROUNDS=${2:-3}
# shellcheck source=../load/common.sh
. benches/load/common.sh
profile_env
start_upstream 1
taskset -c 0 "${MESH_PROXY[@]}" >"$OUT/mesh-proxy.log" 2>&1 &
proxy=$!; pids+=($proxy)
wait_port "$PROXY_PORT"
rss() { awk '/VmRSS/ {print $2}' "/proc/$proxy/status"; }
load() { timeout 300 taskset -c 1 h2load -t1 -c16 -m10 -n"$1" -H ':authority: bench' "http://127.0.0.1:$PROXY_PORT/" | grep -E '^status codes' >&2; }
load 50000
echo "after 50,000 warm-up requests: $(rss) kB"
for r in $(seq 1 "$ROUNDS"); do
  load "$N"
  sleep 6
  echo "after round $r (+$N requests): $(rss) kB"
done
