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
