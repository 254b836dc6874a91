#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer) of every parser that sees the network or the operator's
# files: DHCP, TFTP, HTTP, DNS requests and profile TOML + templates (fuzz/fuzz_targets/).
#
#   scripts/fuzz.sh [seconds-per-target] [target...]     (default: 5 s, all targets)
#   scripts/fuzz.sh 600 dhcp                             (a long run of one target)
#
# Seeds are what real clients send (fuzz/make-seeds.py); the corpus grows in
# target/fuzz-corpus/<target>/ and is kept between runs. A crash, a panic, a leak of more than
# 2 GiB or an input taking more than 10 s fails the run: the input is saved under
# target/fuzz-artifacts/<target>/ — add it to fuzz/regressions/<target>/, which every run
# replays first. Prints executions per target.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-5}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(dhcp tftp http dns profiles)

host=$(rustc -vV | sed -n 's/^host: //p')
# Coverage instrumentation as cargo-fuzz sets it up, without debug assertions: libFuzzer
# treats any panic as a crash, even one the code catches on purpose.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
echo "== fuzz: building targets"
cargo build --locked --quiet --manifest-path fuzz/Cargo.toml --release --target "$host" \
  --target-dir target/fuzz

seeds=target/fuzz-seeds
rm -rf "$seeds"
python3 fuzz/make-seeds.py "$seeds"

# The targets' scratch files (fuzz/fuzz_targets/common.rs: std::env::temp_dir()) and the logs
# go to a directory of this run, removed at its end.
scratch=$(mktemp -d -t kindling-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

failed=0
for t in "${targets[@]}"; do
  bin=target/fuzz/$host/release/$t
  [ -x "$bin" ] || { echo "fuzz.sh: no target '$t'" >&2; exit 64; }
  corpus=target/fuzz-corpus/$t
  artifacts=target/fuzz-artifacts/$t
  mkdir -p "$corpus" "$artifacts" "$seeds/$t"
  log=$scratch/$t.log
  dirs=("$corpus" "$seeds/$t")
  [ -d "fuzz/regressions/$t" ] && dirs+=("fuzz/regressions/$t")
  if TMPDIR=$scratch "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$artifacts/" "${dirs[@]}" >"$log" 2>&1; then
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
    printf '%-9s %12s executions in %ss, %s, corpus %s inputs\n' "$t" "$execs" "$secs" \
      "${cov:-cov: ?}" "$(find "$corpus" -type f | wc -l)"
  else
    echo "== fuzz: target '$t' FAILED; the last lines of its log:"
    tail -40 "$log"
    failed=1
  fi
  rm -f "$log"
done
exit $failed
