#!/usr/bin/env bash
# Instructions per request of a proxy, counted exactly by callgrind (repeatable on a noisy host).
#
#   benches/profile/callgrind.sh [mesh|bare|nginx|haproxy] [h1|h2c] [REQUESTS=20000]
#
# `nginx` and `haproxy` run the load test's configurations (one worker or thread, keep-alive
# upstream connections; Debian's packages), for the peers' figures on the same host and load.
# CONNS (default 4) connections and, over h2c, STREAMS (default 1) concurrent streams each:
# `CONNS=64 STREAMS=10` is the load test's h2c concurrency.
#
# Starts bare-upstream, then the proxy under `valgrind --tool=callgrind`, warms it with 2,000
# requests over 4 connections (h2load), zeroes the counters, sends REQUESTS more and dumps.
# Prints instructions per request; the dump (for callgrind_annotate) is left in
# target/profile/callgrind.out.*. Uses the release binaries as they are (build them first:
# `cargo build --release -p mesh-examples --bin mesh-proxy -p mesh-benches --bins`).
# `CACHE_SIM=1` also simulates the caches (`--cache-sim=yes`) and prints L1 misses per request.
# Needs valgrind and h2load (Debian's nghttp2-client). Only 127.0.0.1 is used.
set -euo pipefail
cd "$(dirname "$0")/../.."
WHAT=${1:-mesh}
PROTO=${2:-h1}
N=${3:-20000}
# shellcheck source=../load/common.sh
. benches/load/common.sh
profile_env
start_upstream
rm -f "$OUT"/callgrind.out.*
case $WHAT in
  mesh) cmd=("${MESH_PROXY[@]}") ;;
  bare) cmd=("$BIN/bare-proxy" "$PROXY_PORT" "127.0.0.1:$UP_PORT") ;;
  nginx) write_nginx_conf "$OUT" "$PROXY_PORT"
         cmd=(nginx -c "$PWD/$OUT/nginx.conf" -p "$PWD/$OUT") ;;
  haproxy) write_haproxy_cfg "$OUT" "$PROXY_PORT"
           cmd=(haproxy -f "$OUT/haproxy.cfg" -db) ;;
  *) echo "mesh, bare, nginx or haproxy" >&2; exit 2 ;;
esac
vg_args=(--tool=callgrind)
[ -n "${CACHE_SIM:-}" ] && vg_args+=(--cache-sim=yes)
# `DUMP_INSTR=1`: counts per instruction address (for `cgfuncs.py footprint`).
[ -n "${DUMP_INSTR:-}" ] && vg_args+=(--dump-instr=yes)
valgrind "${vg_args[@]}" --callgrind-out-file="$OUT/callgrind.out.%p" "${cmd[@]}" >"$OUT/proxy.log" 2>&1 & vg=$!; pids+=($vg)
wait_port "$PROXY_PORT" 400 # slow under valgrind
load() { # requests
  local args=(-c"${CONNS:-4}" -m"${STREAMS:-1}" -t1 -n"$1" -H ':authority: bench')
  [ "$PROTO" = h1 ] && args+=(--h1)
  timeout 600 h2load "${args[@]}" "http://127.0.0.1:$PROXY_PORT/" | grep -E '^status codes' >&2
}
callgrind_measure "$vg" "$N" load
dump=$(ls -S "$OUT"/callgrind.out.* | head -1)
total=$(callgrind_total)
echo "$WHAT $PROTO: $((total / N)) instructions/request ($N requests; largest dump: $dump)"
if [ -n "${CACHE_SIM:-}" ]; then # events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw
  grep -h '^events:' "$dump" >&2
  grep -h '^summary:' "$dump" | awk -v n="$N" '{printf "per request: I1 misses %d, D1 read misses %d, D1 write misses %d, LL misses %d\n", $5/n, $6/n, $7/n, ($8+$9+$10)/n}'
fi
