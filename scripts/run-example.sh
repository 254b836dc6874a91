#!/usr/bin/env bash
# Set up, validate and run Kindling on its shipped example config (kindling.toml): the HTTP
# profile service on http://127.0.0.1:8080, no DHCP/TFTP/DNS, no privileges needed.
#
#   scripts/run-example.sh
#
# Then, from another shell:
#   curl http://127.0.0.1:8080/boot.ipxe
#   curl 'http://127.0.0.1:8080/ipxe?mac=52:54:00:10:00:21'
#   curl 'http://127.0.0.1:8080/ignition?mac=52:54:00:10:00:21'
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh run
cargo build --locked --release
./target/release/kindling check --config kindling.toml
exec ./target/release/kindling serve --config kindling.toml
