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
# bare proxy's place, to compare two builds of the sidecar. `PEERS=1` adds nginx and haproxy
# (configured as in the load test, on the next two ports) to the HTTP/1.1 rounds, with the
# sidecar's ratio to each.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-6}; ROUNDS=${2:-5}; CONNS=${3:-64}
# shellcheck source=../load/common.sh
. benches/load/common.sh
profile_env
start_upstream 1
declare -A port=([mesh]=$PROXY_PORT [bare]=$((PROXY_PORT + 1)) [nginx]=$((PROXY_PORT + 2)) [haproxy]=$((PROXY_PORT + 3)))
if [ -n "${BASELINE:-}" ]; then
  baseline=("$BASELINE" "${MESH_PROXY[@]:1}")
  for i in "${!baseline[@]}"; do
    [ "${baseline[$i]}" = "$PROXY_PORT" ] && baseline[i]=${port[bare]}
  done
  taskset -c 0 "${baseline[@]}" >"$OUT/baseline.log" 2>&1 &
else
  taskset -c 0 "$BIN/bare-proxy" "${port[bare]}" "127.0.0.1:$UP_PORT" >/dev/null 2>&1 &
fi
pids+=($!)
taskset -c 0 "${MESH_PROXY[@]}" >"$OUT/mesh-proxy.log" 2>&1 &
pids+=($!)
h1_targets=(bare mesh)
peers=${PEERS:+1}
if [ -n "$peers" ]; then
  for peer in nginx haproxy; do
    command -v "$peer" >/dev/null || { echo "PEERS=1: $peer is not installed" >&2; exit 1; }
  done
  write_nginx_conf "$OUT" "${port[nginx]}"
  taskset -c 0 nginx -c "$PWD/$OUT/nginx.conf" -p "$PWD/$OUT" & pids+=($!)
  write_haproxy_cfg "$OUT" "${port[haproxy]}"
  taskset -c 0 haproxy -f "$OUT/haproxy.cfg" -db >/dev/null 2>&1 & pids+=($!)
  h1_targets+=(nginx haproxy)
fi
for what in "${h1_targets[@]}"; do wait_port "${port[$what]}"; done
h1() { timeout $((SECS + 20)) taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECS}s" -H 'Host: bench' "http://127.0.0.1:${port[$1]}/" | awk '/Requests\/sec/ {printf "%d", $2}'; }
h2() { timeout $((SECS + 20)) taskset -c 1 h2load -t1 -c"$CONNS" -m10 -D"$SECS" -H ':authority: bench' "http://127.0.0.1:${port[$1]}/" | awk '/^finished in/ {printf "%d", $4}'; }
# Warm each (connections to the upstream, allocator pages) before the first measured round.
for what in "${h1_targets[@]}"; do SECS=1 h1 "$what" >/dev/null; done
base=bare; [ -n "${BASELINE:-}" ] && base=baseline
# Columns: mesh's ratio to the bare proxy over HTTP/1.1 and h2c, then to each peer (HTTP/1.1).
columns=("HTTP/1.1 mesh / $base" "h2c mesh / $base")
[ -n "$peers" ] && columns+=("HTTP/1.1 mesh / nginx" "HTTP/1.1 mesh / haproxy")
cells=("round" "HTTP/1.1 $base" "mesh")
[ -n "$peers" ] && cells+=("nginx" "haproxy")
cells+=("h2c $base" "mesh" "${columns[@]}")
printf '|'; printf ' %s |' "${cells[@]}"; echo
printf '|'; printf -- '---|%.0s' "${cells[@]}"; echo
ratios=$OUT/rounds-ratios
: >"$ratios"
declare -A rps
for r in $(seq 1 "$ROUNDS"); do
  order=("${h1_targets[@]}")
  if [ $((r % 2)) -eq 0 ]; then
    order=(); for ((i = ${#h1_targets[@]} - 1; i >= 0; i--)); do order+=("${h1_targets[$i]}"); done
  fi
  for what in "${order[@]}"; do rps[$what.h1]=$(h1 "$what"); done
  for what in "${order[@]}"; do
    case $what in bare|mesh) rps[$what.h2]=$(h2 "$what") ;; esac
  done
  row="| $r | ${rps[bare.h1]} | ${rps[mesh.h1]} |"
  [ -n "$peers" ] && row+=" ${rps[nginx.h1]} | ${rps[haproxy.h1]} |"
  line=$(awk -v m1="${rps[mesh.h1]}" -v b1="${rps[bare.h1]}" -v m2="${rps[mesh.h2]}" -v b2="${rps[bare.h2]}" \
    -v n="${rps[nginx.h1]:-0}" -v h="${rps[haproxy.h1]:-0}" -v peers="$peers" \
    'BEGIN { printf "%.4f %.4f", m1 / b1, m2 / b2; if (peers != "") printf " %.4f %.4f", m1 / n, m1 / h; print "" }')
  echo "$line" >>"$ratios"
  echo "$row ${rps[bare.h2]} | ${rps[mesh.h2]} |$(echo "$line" | awk '{ for (i = 1; i <= NF; i++) printf " %.2f |", $i }')"
done
# Median and quartiles of each column of ratios (nearest rank).
for col in $(seq 1 "${#columns[@]}"); do
  sort -n -k"$col","$col" "$ratios" | awk -v col="$col" -v name="${columns[$((col - 1))]}" '{ v[NR] = $col }
    END { n = NR
          printf "%s: median ratio %.2f (quartiles %.2f-%.2f, %d rounds)\n",
            name, v[int((n + 1) / 2)], v[int((n + 3) / 4)], v[int((3 * n + 3) / 4)], n }'
done
