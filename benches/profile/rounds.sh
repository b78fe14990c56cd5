#!/usr/bin/env bash
# The bare hyper proxy and mesh-proxy in alternating rounds, so that both see the same host
# load: req/s of each and their ratio, per round and protocol, then the median ratio and its
# quartiles.
#
#   benches/profile/rounds.sh [SECONDS=6] [ROUNDS=5] [CONNECTIONS=64]
#
# Both proxies run side by side for the whole run (mesh-proxy on PROXY_PORT, the other on the
# next port), pinned to CPU 0; wrk / h2load (-m10) and the upstream are pinned to CPU 1, as in
# benches/load/run.sh. The load alternates between them: bare then mesh in odd rounds, mesh
# then bare in even ones, so that a drift in the host's speed falls on both alike. With no
# restart between rounds, short rounds (`rounds.sh 2 30`) sample the host's noise finely.
# Uses the release binaries as they are (`BIN=DIR` for others, e.g. target/pgo/...). Only
# 127.0.0.1 is used. `BASELINE=PATH` puts another mesh-proxy binary (an earlier build) in the
# bare proxy's place, to compare two builds of the sidecar.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-6}; ROUNDS=${2:-5}; CONNS=${3:-64}
# shellcheck source=../load/common.sh
. benches/load/common.sh
profile_env
start_upstream 1
BASE_PORT=$((PROXY_PORT + 1))
if [ -n "${BASELINE:-}" ]; then
  baseline=("$BASELINE" "${MESH_PROXY[@]:1}")
  for i in "${!baseline[@]}"; do
    [ "${baseline[$i]}" = "$PROXY_PORT" ] && baseline[i]=$BASE_PORT
  done
  taskset -c 0 "${baseline[@]}" >"$OUT/baseline.log" 2>&1 &
else
  taskset -c 0 "$BIN/bare-proxy" "$BASE_PORT" "127.0.0.1:$UP_PORT" >/dev/null 2>&1 &
fi
pids+=($!)
taskset -c 0 "${MESH_PROXY[@]}" >"$OUT/mesh-proxy.log" 2>&1 &
pids+=($!)
wait_port "$BASE_PORT"; wait_port "$PROXY_PORT"
port() { if [ "$1" = mesh ]; then echo "$PROXY_PORT"; else echo "$BASE_PORT"; fi; }
h1() { timeout $((SECS + 20)) taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECS}s" -H 'Host: bench' "http://127.0.0.1:$(port "$1")/" | awk '/Requests\/sec/ {printf "%d", $2}'; }
h2() { timeout $((SECS + 20)) taskset -c 1 h2load -t1 -c"$CONNS" -m10 -D"$SECS" -H ':authority: bench' "http://127.0.0.1:$(port "$1")/" | awk '/^finished in/ {printf "%d", $4}'; }
# Warm both (connections to the upstream, allocator pages) before the first measured round.
for what in bare mesh; do SECS=1 h1 "$what" >/dev/null; done
base=bare; [ -n "${BASELINE:-}" ] && base=baseline
echo "| round | HTTP/1.1 $base | mesh | ratio | h2c $base | mesh | ratio |"
echo "|---|---|---|---|---|---|---|"
ratios=$(mktemp)
for r in $(seq 1 "$ROUNDS"); do
  declare -A rps
  order=(bare mesh); [ $((r % 2)) -eq 0 ] && order=(mesh bare)
  for proto in h1 h2; do
    for what in "${order[@]}"; do rps[$what.$proto]=$("$proto" "$what"); done
  done
  awk -v r="$r" -v a="${rps[bare.h1]}" -v b="${rps[mesh.h1]}" -v c="${rps[bare.h2]}" -v d="${rps[mesh.h2]}" \
    'BEGIN { printf "| %d | %d | %d | %.2f | %d | %d | %.2f |\n", r, a, b, b / a, c, d, d / c }'
  awk -v a="${rps[bare.h1]}" -v b="${rps[mesh.h1]}" -v c="${rps[bare.h2]}" -v d="${rps[mesh.h2]}" \
    'BEGIN { printf "%.4f %.4f\n", b / a, d / c }' >>"$ratios"
done
# Median and quartiles of each column of ratios (nearest rank).
for col in 1 2; do
  sort -n -k"$col","$col" "$ratios" | awk -v col="$col" '{ v[NR] = $col }
    END { n = NR
          printf "%s: median ratio %.2f (quartiles %.2f-%.2f, %d rounds)\n",
            (col == 1 ? "HTTP/1.1" : "h2c"), v[int((n + 1) / 2)], v[int((n + 3) / 4)], v[int((3 * n + 3) / 4)], n }'
done
rm -f "$ratios"
