#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script):
# set-up, formatting, lints, unit and integration tests, a short run of every fuzz target.
#
#   scripts/test.sh
#
# Tests that need root or network namespaces print "SKIP <test>: <reason>" when those are
# missing; CI runs as root and runs them all.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh test
echo "== cargo fmt --check"
cargo fmt --check
cargo fmt --check --manifest-path fuzz/Cargo.toml
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked --all-targets
echo "== fuzz (5 s per target; long mode: scripts/fuzz.sh 600)"
scripts/fuzz.sh 5
