# Helpers shared by benches/load/run.sh and benches/profile/*.sh (sourced, not run).

# wait_port PORT [TRIES=100]: waits until 127.0.0.1:PORT accepts, 50 ms between tries.
wait_port() {
  local tries=${2:-100}
  for _ in $(seq 1 "$tries"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 did not open" >&2
  return 1
}

# write_bench_config DIR UPSTREAM_PORT [SERVICE_ACCOUNT] [MORE_YAML]: mesh-proxy's config for
# the load tests, one service `bench` (port 80) whose only endpoint is 127.0.0.1:UPSTREAM_PORT
# (running as SERVICE_ACCOUNT when given), then MORE_YAML (further resources, `---` first).
write_bench_config() {
  mkdir -p "$1"
  cat > "$1/bench.yaml" <<YAML
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: bench, namespace: default }
spec:
  hosts: [bench]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{ number: 80, name: http, protocol: HTTP, targetPort: $2 }]
  endpoints: [{ address: 127.0.0.1, labels: { version: v1 }${3:+, serviceAccount: $3} }]
${4:-}
YAML
}

# write_two_hop_configs DIR IN_PORT TLS(0|1): the configs of two sidecars in a row, client
# sidecar -> server sidecar's inbound listener on IN_PORT: DIR/server (PeerAuthentication
# STRICT with TLS=1, else PERMISSIVE) and DIR/client (the bench service at IN_PORT; with TLS=1 a
# DestinationRule for ISTIO_MUTUAL, and certificates for both in DIR/certs from `bench-certs`,
# a test CA made here). Uses BIN.
write_two_hop_configs() {
  local dir=$1 in_port=$2 tls=$3 dr="" pa=PERMISSIVE
  mkdir -p "$dir/server" "$dir/client"
  if [ "$tls" = 1 ]; then
    "$BIN/bench-certs" "$dir/certs" server=spiffe://cluster.local/ns/default/sa/bench \
      client=spiffe://cluster.local/ns/default/sa/client
    dr=$'---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: { name: bench, namespace: default }\nspec: { host: bench, trafficPolicy: { tls: { mode: ISTIO_MUTUAL } } }'
    pa=STRICT
  fi
  cat > "$dir/server/pa.yaml" <<YAML
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: default }
spec: { mtls: { mode: $pa } }
YAML
  write_bench_config "$dir/client" "$in_port" bench "$dr"
}

# profile_env: what the profiling scripts share: BIN (target/release unless set), UP_PORT and
# PROXY_PORT, OUT (target/profile) with the bench config in OUT/cfg, MESH_PROXY (mesh-proxy's
# command line on one thread, outbound on PROXY_PORT), and a `pids` array killed on exit.
profile_env() {
  BIN=${BIN:-target/release}
  UP_PORT=18080; PROXY_PORT=18090; OUT=target/profile
  write_bench_config "$OUT/cfg" "$UP_PORT"
  MESH_PROXY=("$BIN/mesh-proxy" --concurrency 1 run --config "$OUT/cfg" --outbound-port "$PROXY_PORT"
              --inbound-port 0 --admin-port 0 --health-port 0 --listen-address 127.0.0.1)
  pids=()
  trap 'for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done' EXIT
}

# start_upstream [CPU]: bare-upstream on UP_PORT (pinned to CPU when given), once it accepts.
start_upstream() {
  local pin=()
  [ -n "${1:-}" ] && pin=(taskset -c "$1")
  "${pin[@]}" "$BIN/bare-upstream" "$UP_PORT" 64 2>/dev/null &
  pids+=($!)
  wait_port "$UP_PORT"
}

# callgrind_measure PID REQUESTS LOAD: for a process under `valgrind --tool=callgrind` (PID):
# warms it with `LOAD 2000`, zeroes its counters, runs `LOAD REQUESTS`, dumps the counters and
# stops it (LOAD is a function taking a request count).
callgrind_measure() {
  local vg=$1 n=$2 load=$3
  "$load" 2000
  callgrind_control -z "$vg" >/dev/null 2>&1
  "$load" "$n"
  callgrind_control -d "$vg" >/dev/null 2>&1
  sleep 1
  kill "$vg"; wait "$vg" 2>/dev/null || true
}

# callgrind_total: the instructions of the measured requests: the largest total of the dumps in
# OUT (the one `callgrind_measure` asked for; the one valgrind writes at exit holds only the
# shutdown).
callgrind_total() {
  for f in "$OUT"/callgrind.out.*; do grep -h '^summary:' "$f" | awk '{print $2}'; done | sort -n | tail -1
}

# write_nginx_conf DIR PORT: DIR/nginx.conf, nginx as a reverse proxy on 127.0.0.1:PORT to the
# upstream on UP_PORT (one worker, keep-alive upstream connections, no access log); run it with
# `nginx -c "$PWD/DIR/nginx.conf" -p "$PWD/DIR"`.
write_nginx_conf() {
  cat > "$1/nginx.conf" <<NGINX
worker_processes 1; master_process off; daemon off; pid $PWD/$1/nginx.pid; error_log stderr error;
events { worker_connections 1024; }
http { access_log off;
  upstream up { server 127.0.0.1:$UP_PORT; keepalive 64; }
  server { listen 127.0.0.1:$2; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGINX
}

# write_haproxy_cfg DIR PORT: DIR/haproxy.cfg, haproxy the same way (one thread, connections to
# the upstream reused); run it with `haproxy -f DIR/haproxy.cfg -db`.
write_haproxy_cfg() {
  cat > "$1/haproxy.cfg" <<HAPROXY
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  bind 127.0.0.1:$2
  default_backend b
backend b
  server s1 127.0.0.1:$UP_PORT
HAPROXY
}
