#!/usr/bin/env bash
# The dashboard under a fleet's load: 5,000 declared machines and a burst of 200 boot-state
# transitions a second for 10 s, in a headless Chromium (loopback only).
#
#   bench/dashboard.sh [rounds] [machines] [rate] [seconds]     (default: 3 5000 200 10)
#
# Prints per round and as medians: the page's time to first render, how long after the
# burst the page showed its last transition, the browser's main-thread time over the burst
# (and as % of it), and the daemon's CPU for the burst with the page subscribed and with no
# subscriber (the difference is the event stream's fan-out). See bench/dashboard.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
machines=${2:-5000}
rate=${3:-200}
secs=${4:-10}
scripts/setup.sh test >/dev/null # chromium, chromium-driver
if [ -n "${KINDLING_BIN:-}" ]; then
  bin=$KINDLING_BIN
else
  cargo build --locked --release -q
  bin=$PWD/target/release/kindling
fi
# The driver itself is light (a few hundred requests a second): a debug build will do.
cargo build --locked -q --example dashboard
exec target/debug/examples/dashboard --kindling "$bin" --machines "$machines" \
  --rate "$rate" --secs "$secs" --rounds "$rounds"
