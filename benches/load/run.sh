#!/usr/bin/env bash
# Load test: the sidecar beside what a user would pick instead, on the same cores, in one run.
#
#   benches/load/run.sh [DURATION_SECONDS=10] [CONNECTIONS=64]
#   BIN=DIR benches/load/run.sh ...   # the binaries in DIR, e.g. benches/profile/pgo.sh's
#
# Starts a bare hyper upstream (64-byte body), then each proxy in turn in front of it, drives each
# with wrk (HTTP/1.1 keep-alive) and, when installed, h2load (h2c, prior knowledge) pinned to one
# core while the proxy is pinned to the other, and prints a markdown table: requests/s, latency
# percentiles, the p50 added over direct, proxy CPU-ms per 1,000 requests and RSS. Targets:
# direct (no proxy), bare hyper-util proxy, mesh-proxy, and nginx / haproxy when installed
# (HTTP/1.1 only: their h2c listeners would refuse HTTP/1.1 on the same port). Only 127.0.0.1 is
# used; every run is bounded by DURATION (and `timeout`).
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-10}
CONNS=${2:-64}
UP_PORT=18080
PROXY_PORT=18090
OUT=${OUT:-target/load}
mkdir -p "$OUT"

command -v wrk >/dev/null || { echo "wrk is required: apt-get install -y wrk" >&2; exit 1; }
# NO_BUILD=1: use the release binaries as they are; BIN=DIR: use the binaries in DIR (e.g. the
# profile-guided build of benches/profile/pgo.sh), built by whoever made them.
if [ -z "${NO_BUILD:-}" ] && [ -z "${BIN:-}" ]; then
  cargo build --release -q -p mesh-benches --bin bare-upstream --bin bare-proxy --bin bench-certs --bin load-chart
  cargo build --release -q -p mesh-examples --bin mesh-proxy
fi
BIN=${BIN:-target/release}
LOAD_CPU=1
PROXY_CPU=0
[ "$(nproc)" -ge 2 ] || { LOAD_CPU=0; PROXY_CPU=0; }

pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# shellcheck source=common.sh
. benches/load/common.sh
# A pid, or several joined with commas (two sidecars): CPU ticks and RSS are summed.
cpu_ticks() { local t=0; for p in ${1//,/ }; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
rss_kb() { local k=0; for p in ${1//,/ }; do k=$((k + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done; echo "$k"; }

taskset -c "$LOAD_CPU" "$BIN/bare-upstream" "$UP_PORT" 64 2>/dev/null & pids+=($!)
wait_port "$UP_PORT"

# mesh-proxy's config: one service `bench` whose only endpoint is the upstream.
CFG="$OUT/mesh-config"
write_bench_config "$CFG" "$UP_PORT"

results="$OUT/results.md"
printf '| target | protocol | req/s | p50 | p99 | p99.9 | p50 added over direct | proxy CPU-ms / 1k req | proxy RSS (MB) |\n|---|---|---|---|---|---|---|---|---|\n' > "$results"
DIRECT_P50=
DIRECT_H2_MEAN=

usage() { # pid before-ticks total-requests -> "cpu rss"
  local pid=$1 before=$2 total=$3 after
  if [ "$pid" = - ]; then echo "- -"; return; fi
  after=$(cpu_ticks "$pid")
  awk -v t=$((after - before)) -v n="$total" -v hz="$(getconf CLK_TCK)" -v k="$(rss_kb "$pid")" \
    'BEGIN { printf "%.2f %.1f", (n > 0 ? t * 1000 / hz / (n / 1000) : 0), k / 1024 }'
}

to_ms() { # 1.234ms | 567us | 1.2s -> milliseconds, 3 decimals
  awk -v x="$1" 'BEGIN { if (x ~ /us$/) v = x / 1000; else if (x ~ /ms$/) v = x + 0; else v = x * 1000; printf "%.3fms", v }'
}

added() { # value base (both like 1.234ms) -> "+0.123ms"
  awk -v v="${1%ms}" -v b="${2%ms}" 'BEGIN { if (b == "") print "-"; else printf "%+.3fms", v - b }'
}

measure() { # name port pid(or -)
  local name=$1 port=$2 pid=$3 before=0 out rps p50 p99 p999 total cpu rss
  [ "$pid" = - ] || before=$(cpu_ticks "$pid")
  out=$(timeout $((DURATION + 30)) taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency \
        -H 'Host: bench' -s benches/load/percentiles.lua "http://127.0.0.1:$port/")
  echo "$out" > "$OUT/$name.wrk.txt"
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '/^p50 / {print $2}' <<<"$out"); p99=$(awk '/^p99 / {print $2}' <<<"$out"); p999=$(awk '/^p99.9 / {print $2}' <<<"$out")
  total=$(awk '/^requests / {print $2}' <<<"$out")
  if grep -q 'Non-2xx' <<<"$out"; then echo "warning: $name answered non-2xx: $(grep Non-2xx <<<"$out")" >&2; fi
  [ "$name" = direct ] && DIRECT_P50=$p50
  read -r cpu rss <<<"$(usage "$pid" "$before" "$total")"
  printf '| %s | HTTP/1.1 | %s | %s | %s | %s | %s | %s | %s |\n' "$name" "$rps" "$p50" "$p99" "$p999" \
    "$(added "$p50" "$DIRECT_P50")" "$cpu" "$rss" >> "$results"
}

measure_h2() { # name port pid(or -): h2c with 10 streams per connection; h2load reports the mean
  command -v h2load >/dev/null || return 0
  local name=$1 port=$2 pid=$3 before=0 out rps mean total cpu rss
  [ "$pid" = - ] || before=$(cpu_ticks "$pid")
  out=$(timeout $((DURATION + 30)) taskset -c "$LOAD_CPU" h2load -t1 -c"$CONNS" -m10 -D"$DURATION" \
        -H ':authority: bench' "http://127.0.0.1:$port/")
  echo "$out" > "$OUT/$name.h2load.txt"
  rps=$(awk '/^finished in/ {print $4}' <<<"$out")
  mean=$(to_ms "$(awk '/^time for request:/ {print $6}' <<<"$out")")
  total=$(awk '/^requests:/ {print $8}' <<<"$out")
  if ! grep -q '^status codes: [0-9]* 2xx, 0 3xx, 0 4xx, 0 5xx' <<<"$out"; then echo "warning: $name h2c: $(grep '^status codes' <<<"$out")" >&2; fi
  [ "$name" = direct ] && DIRECT_H2_MEAN=$mean
  read -r cpu rss <<<"$(usage "$pid" "$before" "$total")"
  printf '| %s | h2c (mean) | %s | %s | - | - | %s | %s | %s |\n' "$name" "$rps" "$mean" \
    "$(added "$mean" "$DIRECT_H2_MEAN")" "$cpu" "$rss" >> "$results"
}

measure direct "$UP_PORT" -
measure_h2 direct "$UP_PORT" -

taskset -c "$PROXY_CPU" "$BIN/bare-proxy" "$PROXY_PORT" "127.0.0.1:$UP_PORT" 2>/dev/null & p=$!; pids+=($p)
wait_port "$PROXY_PORT"; measure bare-hyper-proxy "$PROXY_PORT" "$p"; measure_h2 bare-hyper-proxy "$PROXY_PORT" "$p"; kill "$p"; wait "$p" 2>/dev/null || true

taskset -c "$PROXY_CPU" "$BIN/mesh-proxy" --concurrency 1 run --config "$CFG" --outbound-port "$PROXY_PORT" \
  --inbound-port 0 --admin-port 0 --health-port 0 --listen-address 127.0.0.1 >"$OUT/mesh-proxy.log" 2>&1 & p=$!; pids+=($p)
wait_port "$PROXY_PORT"; measure mesh-proxy "$PROXY_PORT" "$p"; measure_h2 mesh-proxy "$PROXY_PORT" "$p"; kill "$p"; wait "$p" 2>/dev/null || true

# Two sidecars in a row (client sidecar -> server sidecar's inbound -> upstream), as a mesh
# deploys them: plaintext between them, then mutual TLS (ISTIO_MUTUAL out, STRICT in) with
# identities from a test CA made here. Both sidecars share the proxy core; their CPU and RSS
# are summed.
IN_PORT=18091
two_hop() { # name tls(0|1)
  local name=$1 tls=$2 dir="$OUT/$1" server client certs=()
  write_two_hop_configs "$dir" "$IN_PORT" "$tls"
  [ "$tls" = 1 ] && certs=(--cert "$dir/certs/server.cert.pem" --key "$dir/certs/server.key.pem" --ca "$dir/certs/ca.pem")
  taskset -c "$PROXY_CPU" "$BIN/mesh-proxy" --concurrency 1 run --config "$dir/server" --outbound-port 0 \
    --inbound-port "$IN_PORT" --admin-port 0 --health-port 0 --listen-address 127.0.0.1 --app-port "$UP_PORT" \
    --service-account bench "${certs[@]}" >"$dir/server.log" 2>&1 & server=$!; pids+=($server)
  [ "$tls" = 1 ] && certs=(--cert "$dir/certs/client.cert.pem" --key "$dir/certs/client.key.pem" --ca "$dir/certs/ca.pem")
  taskset -c "$PROXY_CPU" "$BIN/mesh-proxy" --concurrency 1 run --config "$dir/client" --outbound-port "$PROXY_PORT" \
    --inbound-port 0 --admin-port 0 --health-port 0 --listen-address 127.0.0.1 \
    --service-account client "${certs[@]}" >"$dir/client.log" 2>&1 & client=$!; pids+=($client)
  wait_port "$IN_PORT"; wait_port "$PROXY_PORT"
  measure "$name" "$PROXY_PORT" "$client,$server"; measure_h2 "$name" "$PROXY_PORT" "$client,$server"
  kill "$client" "$server"; wait "$client" "$server" 2>/dev/null || true
}
two_hop mesh-proxy-x2-plaintext 0
two_hop mesh-proxy-x2-mtls 1

if command -v nginx >/dev/null; then
  write_nginx_conf "$OUT" "$PROXY_PORT"
  taskset -c "$PROXY_CPU" nginx -c "$PWD/$OUT/nginx.conf" -p "$PWD/$OUT" & p=$!; pids+=($p)
  wait_port "$PROXY_PORT"; measure nginx "$PROXY_PORT" "$p"; kill "$p"; wait "$p" 2>/dev/null || true
fi

if command -v haproxy >/dev/null; then
  write_haproxy_cfg "$OUT" "$PROXY_PORT"
  taskset -c "$PROXY_CPU" haproxy -f "$OUT/haproxy.cfg" -db & p=$!; pids+=($p)
  wait_port "$PROXY_PORT"; measure haproxy "$PROXY_PORT" "$p"; kill "$p"; wait "$p" 2>/dev/null || true
fi

if "$BIN/load-chart" "$results" "$OUT/results.svg"; then
  # The PNG: rsvg-convert (Debian's librsvg2-bin).
  if command -v rsvg-convert >/dev/null; then
    rsvg-convert "$OUT/results.svg" -o "$OUT/results.png" || echo "warning: no PNG chart" >&2
  else
    echo "warning: rsvg-convert missing (apt-get install -y librsvg2-bin): only $OUT/results.svg" >&2
  fi
else
  echo "warning: no chart" >&2
fi
echo; echo "load: $CONNS connections, ${DURATION}s each, wrk/h2load and the upstream on cpu $LOAD_CPU, proxy on cpu $PROXY_CPU, $(date -u '+%F %H:%M UTC'), $(nproc) cpus: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
cat "$results"
