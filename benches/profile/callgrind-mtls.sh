#!/usr/bin/env bash
# Instructions per request of the server-side sidecar of two in a row over mutual TLS (the load
# test's `mesh-proxy-x2-mtls` row): client sidecar (ISTIO_MUTUAL out) -> server sidecar's
# inbound listener (STRICT) -> bare-upstream, with the server sidecar under callgrind.
#
#   benches/profile/callgrind-mtls.sh [REQUESTS=20000]
#
# The inbound side is where a mesh differs most from a plain proxy: the TLS handshake's
# identity on every request, the caller's trace headers to parse, authorization. Requests are
# HTTP/1.1 over 4 connections (h2load); certificates come from `bench-certs` (a test CA made
# here). Prints instructions per request; the dump stays in target/profile/callgrind.out.*.
# Uses the release binaries as they are. Only 127.0.0.1 is used.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-20000}
# shellcheck source=../load/common.sh
. benches/load/common.sh
profile_env
IN_PORT=18091
dir=$OUT/mtls
rm -rf "$dir"
write_two_hop_configs "$dir" "$IN_PORT" 1
start_upstream
rm -f "$OUT"/callgrind.out.*
valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out.%p" "$BIN/mesh-proxy" \
  --concurrency 1 run --config "$dir/server" --outbound-port 0 --inbound-port "$IN_PORT" \
  --admin-port 0 --health-port 0 --listen-address 127.0.0.1 --app-port "$UP_PORT" \
  --service-account bench --cert "$dir/certs/server.cert.pem" --key "$dir/certs/server.key.pem" \
  --ca "$dir/certs/ca.pem" >"$OUT/server.log" 2>&1 & vg=$!; pids+=($vg)
"$BIN/mesh-proxy" --concurrency 1 run --config "$dir/client" --outbound-port "$PROXY_PORT" \
  --inbound-port 0 --admin-port 0 --health-port 0 --listen-address 127.0.0.1 \
  --service-account client --cert "$dir/certs/client.cert.pem" --key "$dir/certs/client.key.pem" \
  --ca "$dir/certs/ca.pem" >"$OUT/client.log" 2>&1 & pids+=($!)
wait_port "$IN_PORT" 400 # slow under valgrind
wait_port "$PROXY_PORT"
load() { # requests
  timeout 600 h2load -c4 -t1 -n"$1" --h1 -H ':authority: bench' "http://127.0.0.1:$PROXY_PORT/" \
    | grep -E '^status codes' >&2
}
callgrind_measure "$vg" "$N" load
total=$(callgrind_total)
echo "server sidecar (inbound, mTLS): $((total / N)) instructions/request ($N requests; dumps in $OUT)"
