#!/usr/bin/env bash
# The bare hyper proxy and mesh-proxy in alternating rounds, so that both see the same host
# load: req/s of each and their ratio, per round and protocol.
#
#   benches/profile/rounds.sh [SECONDS=6] [ROUNDS=5] [CONNECTIONS=64]
#
# The proxy is pinned to CPU 0, wrk / h2load (-m10) and the upstream to CPU 1, as in
# benches/load/run.sh. Uses the release binaries as they are. Only 127.0.0.1 is used.
# `BASELINE=PATH` puts another mesh-proxy binary (an earlier build) in the bare proxy's place,
# to compare two builds of the sidecar.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-6}; ROUNDS=${2:-5}; CONNS=${3:-64}
# shellcheck source=../load/common.sh
. benches/load/common.sh
profile_env
start_upstream 1
start() { # bare|mesh -> pid
  case $1 in
    bare) if [ -n "${BASELINE:-}" ]; then
            taskset -c 0 "$BASELINE" "${MESH_PROXY[@]:1}" >"$OUT/baseline.log" 2>&1 &
          else
            taskset -c 0 "$BIN/bare-proxy" "$PROXY_PORT" "127.0.0.1:$UP_PORT" >/dev/null 2>&1 &
          fi ;;
    mesh) taskset -c 0 "${MESH_PROXY[@]}" >"$OUT/mesh-proxy.log" 2>&1 & ;;
  esac
  echo $!
}
h1() { timeout $((SECS + 20)) taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECS}s" -H 'Host: bench' "http://127.0.0.1:$PROXY_PORT/" | awk '/Requests\/sec/ {printf "%d", $2}'; }
h2() { timeout $((SECS + 20)) taskset -c 1 h2load -t1 -c"$CONNS" -m10 -D"$SECS" -H ':authority: bench' "http://127.0.0.1:$PROXY_PORT/" | awk '/^finished in/ {printf "%d", $4}'; }
base=bare; [ -n "${BASELINE:-}" ] && base=baseline
echo "| round | HTTP/1.1 $base | mesh | ratio | h2c $base | mesh | ratio |"
echo "|---|---|---|---|---|---|---|"
for r in $(seq 1 "$ROUNDS"); do
  declare -A rps
  for what in bare mesh; do
    p=$(start "$what"); pids+=("$p"); wait_port "$PROXY_PORT"
    rps[$what.h1]=$(h1); rps[$what.h2]=$(h2)
    # Not this shell's child (started in a command substitution): wait until it is gone,
    # so that the next proxy can bind the port (mesh-proxy drains before it exits).
    kill "$p"; while kill -0 "$p" 2>/dev/null; do sleep 0.05; done
  done
  awk -v r="$r" -v a="${rps[bare.h1]}" -v b="${rps[mesh.h1]}" -v c="${rps[bare.h2]}" -v d="${rps[mesh.h2]}" \
    'BEGIN { printf "| %d | %d | %d | %.2f | %d | %d | %.2f |\n", r, a, b, b / a, c, d, d / c }'
done
