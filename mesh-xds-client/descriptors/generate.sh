#!/usr/bin/env bash
# Regenerates envoy.bin, the descriptor set the `json` feature embeds, from the one
# envoy-types ships (its version is the one in Cargo.lock). See examples/envoy_descriptors.rs
# for what is kept. Run from anywhere; commit the result.
set -euo pipefail
cd "$(dirname "$0")/../.."
manifest=$(cargo metadata --format-version 1 --locked |
  jq -r '.packages[] | select(.name == "envoy-types") | .manifest_path')
types_bin="$(dirname "$manifest")/src/generated/types.bin"
cargo run --locked -q -p mesh-xds-client --features json --example envoy_descriptors -- \
  "$types_bin" mesh-xds-client/descriptors/envoy.bin
