#!/usr/bin/env bash
# Load test: the sidecar beside what a user would pick instead, on the same cores, in one run.
#
#   benches/load/run.sh [DURATION_SECONDS=10] [CONNECTIONS=64]
#
# Starts a bare hyper upstream (64-byte body), then each proxy in turn in front of it, drives each
# with wrk (HTTP/1.1 keep-alive) pinned to one core while the proxy is pinned to the other, and
# prints a markdown table: requests/s, latency percentiles, proxy CPU-ms per 1,000 requests and
# RSS. Targets: direct (no proxy), bare hyper-util proxy, mesh-proxy, and nginx / haproxy when
# installed. Only 127.0.0.1 is used; every run is bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-10}
CONNS=${2:-64}
UP_PORT=18080
PROXY_PORT=18090
OUT=${OUT:-target/load}
mkdir -p "$OUT"

command -v wrk >/dev/null || { echo "wrk is required: apt-get install -y wrk" >&2; exit 1; }
cargo build --release -q -p mesh-benches --bin bare-upstream --bin bare-proxy
cargo build --release -q -p mesh-examples --bin mesh-proxy
BIN=target/release
LOAD_CPU=1
PROXY_CPU=0
[ "$(nproc)" -ge 2 ] || { LOAD_CPU=0; PROXY_CPU=0; }

pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 did not open" >&2; return 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

taskset -c "$LOAD_CPU" "$BIN/bare-upstream" "$UP_PORT" 64 2>/dev/null & pids+=($!)
wait_port "$UP_PORT"

# mesh-proxy's config: one service `bench` whose only endpoint is the upstream.
CFG="$OUT/mesh-config"
mkdir -p "$CFG"
cat > "$CFG/bench.yaml" <<YAML
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: bench, namespace: default }
spec:
  hosts: [bench]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{ number: 80, name: http, protocol: HTTP, targetPort: $UP_PORT }]
  endpoints: [{ address: 127.0.0.1, labels: { version: v1 } }]
YAML

results="$OUT/results.md"
printf '| target | req/s | p50 | p99 | p99.9 | proxy CPU-ms / 1k req | proxy RSS (MB) |\n|---|---|---|---|---|---|---|\n' > "$results"

measure() { # name port pid(or -)
  local name=$1 port=$2 pid=$3 before after out rps p50 p99 p999 cpu rss
  [ "$pid" = - ] || before=$(cpu_ticks "$pid")
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H 'Host: bench' \
        -s benches/load/percentiles.lua "http://127.0.0.1:$port/")
  echo "$out" > "$OUT/$name.wrk.txt"
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '/^p50 / {print $2}' <<<"$out"); p99=$(awk '/^p99 / {print $2}' <<<"$out"); p999=$(awk '/^p99.9 / {print $2}' <<<"$out")
  local total; total=$(awk '/^requests / {print $2}' <<<"$out")
  if [ "$pid" = - ]; then cpu=-; rss=-; else
    after=$(cpu_ticks "$pid")
    cpu=$(awk -v t=$((after - before)) -v n="$total" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t * 1000 / hz / (n / 1000) }')
    rss=$(awk -v k="$(rss_kb "$pid")" 'BEGIN { printf "%.1f", k / 1024 }')
  fi
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$name" "$rps" "$p50" "$p99" "$p999" "$cpu" "$rss" >> "$results"
}

measure direct "$UP_PORT" -

taskset -c "$PROXY_CPU" "$BIN/bare-proxy" "$PROXY_PORT" "127.0.0.1:$UP_PORT" 2>/dev/null & p=$!; pids+=($p)
wait_port "$PROXY_PORT"; measure bare-hyper-proxy "$PROXY_PORT" "$p"; kill "$p"; wait "$p" 2>/dev/null || true

taskset -c "$PROXY_CPU" "$BIN/mesh-proxy" run --config "$CFG" --outbound-port "$PROXY_PORT" \
  --inbound-port 0 --admin-port 0 --health-port 0 >"$OUT/mesh-proxy.log" 2>&1 & p=$!; pids+=($p)
wait_port "$PROXY_PORT"; measure mesh-proxy "$PROXY_PORT" "$p"; kill "$p"; wait "$p" 2>/dev/null || true

if command -v nginx >/dev/null; then
  cat > "$OUT/nginx.conf" <<NGINX
worker_processes 1; daemon off; pid $PWD/$OUT/nginx.pid; error_log stderr error;
events { worker_connections 1024; }
http { access_log off;
  upstream up { server 127.0.0.1:$UP_PORT; keepalive 64; }
  server { listen 127.0.0.1:$PROXY_PORT; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGINX
  taskset -c "$PROXY_CPU" nginx -c "$PWD/$OUT/nginx.conf" -p "$PWD/$OUT" & p=$!; pids+=($p)
  wait_port "$PROXY_PORT"; measure nginx "$PROXY_PORT" "$p"; kill "$p"; wait "$p" 2>/dev/null || true
fi

if command -v haproxy >/dev/null; then
  cat > "$OUT/haproxy.cfg" <<HAPROXY
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  bind 127.0.0.1:$PROXY_PORT
  default_backend b
backend b
  server s1 127.0.0.1:$UP_PORT
HAPROXY
  taskset -c "$PROXY_CPU" haproxy -f "$OUT/haproxy.cfg" -db & p=$!; pids+=($p)
  wait_port "$PROXY_PORT"; measure haproxy "$PROXY_PORT" "$p"; kill "$p"; wait "$p" 2>/dev/null || true
fi

echo; echo "load: $CONNS connections, ${DURATION}s each, wrk on cpu $LOAD_CPU, proxy on cpu $PROXY_CPU, $(date -u +%F)"
cat "$results"
