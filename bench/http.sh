#!/usr/bin/env bash
# HTTP benchmark: Kindling next to nginx, same machine, same run, loopback only.
#
#   bench/http.sh [rounds] [seconds-per-test]      (default: 5 rounds of 5 s)
#
# Measures with wrk (2 threads):
#   - /ipxe and /ignition rendered per request by Kindling, against nginx serving the very
#     same bytes as static files (the cost of choosing a profile and rendering templates),
#     32 connections;
#   - a 30 MiB asset from Kindling's /assets/ and from nginx (both with sendfile), at 10 and
#     at 100 connections.
# Each test runs once per round, alternating servers; the table shows medians and the
# ratio Kindling/nginx (1.00 = as fast as nginx). Both servers and wrk share the machine's
# cores, so absolute numbers depend on the machine; compare the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
secs=${2:-5}
source bench/lib.sh # nginx_conf

scripts/setup.sh bench >/dev/null
if [ -n "${KINDLING_BIN:-}" ]; then
  bin=$KINDLING_BIN # another build, for a before/after comparison
else
  cargo build --locked --release -q
  bin=$PWD/target/release/kindling
fi

work=$(mktemp -d)
chmod 755 "$work"  # nginx workers run as nobody
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
[ -n "${BENCH_DEBUG:-}" ] && set -x

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kport=$(free_port)
nport=$(free_port)
mac=52:54:00:10:00:21

# Kindling on the shipped example profiles, plus a 30 MiB asset.
mkdir -p "$work/assets/flatcar" "$work/static"
# Written in one go by cp, like a downloaded or copied asset: a file written in small pieces
# (head's 8 KiB writes) sits in the page cache in small folios, which cost sendfile a third
# more CPU (filemap_get_read_batch) for either server.
head -c $((30 * 1024 * 1024)) /dev/urandom > "$work/big.tmp"
cp "$work/big.tmp" "$work/assets/flatcar/big.img"
rm "$work/big.tmp"
cat > "$work/kindling.toml" <<CONF
[server]
base_url = "http://127.0.0.1:$kport"
[http]
listen = "127.0.0.1:$kport"
# wrk is one address standing for many machines; the default cap of 32 connections per
# client would close 68 of the 100-connection test's connections at once, over and over.
max_connections_per_client = 1024
[paths]
profiles = "$PWD/profiles"
ipxe_scripts = "$PWD/ipxe"
assets = "$work/assets"
[log]
level = "warn"
CONF
"$bin" serve --config "$work/kindling.toml" 2>"$work/kindling.log" &
pids+=($!)
kpid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$kport/healthz" >/dev/null && break; sleep 0.1; done

# nginx serving the same bytes: the rendered documents as static files, and the asset.
curl -fs "http://127.0.0.1:$kport/ipxe?mac=$mac" > "$work/static/ipxe"
curl -fs "http://127.0.0.1:$kport/ignition?mac=$mac" > "$work/static/ignition"
ln "$work/assets/flatcar/big.img" "$work/static/big.img" # the same file: the same page cache
nginx_conf "$work" "127.0.0.1:$nport" "$work/static" 1024 ""
nginx -c "$work/nginx.conf" -g 'daemon off;' &
pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$nport/ipxe" >/dev/null && break; sleep 0.1; done
cmp -s <(curl -fs "http://127.0.0.1:$nport/ignition") <(curl -fs "http://127.0.0.1:$kport/ignition?mac=$mac") \
  || { echo "nginx and Kindling do not serve the same bytes" >&2; exit 1; }

# wrk → requests/s and MB/s
run_wrk() { # $1: URL, $2: connections
  local out
  out=$(wrk -t2 -c"$2" -d"${secs}s" --latency "$1" 2>&1)
  local rps mbps
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  mbps=$(awk '/^Transfer\/sec:/ {v=$2; if (v ~ /GB/) {sub("GB","",v); v*=1024} else if (v ~ /MB/) {sub("MB","",v)} else if (v ~ /KB/) {sub("KB","",v); v/=1024} else {sub("B","",v); v/=1048576}; print v}' <<<"$out")
  echo "$rps $mbps"
}

declare -A results
tests=(ipxe ignition asset10 asset100)
kurl() { case $1 in ipxe) echo "http://127.0.0.1:$kport/ipxe?mac=$mac";; ignition) echo "http://127.0.0.1:$kport/ignition?mac=$mac";; asset*) echo "http://127.0.0.1:$kport/assets/flatcar/big.img";; esac; }
nurl() { case $1 in ipxe) echo "http://127.0.0.1:$nport/ipxe";; ignition) echo "http://127.0.0.1:$nport/ignition";; asset*) echo "http://127.0.0.1:$nport/big.img";; esac; }
conns() { case $1 in asset10) echo 10;; asset100) echo 100;; *) echo 32;; esac; }

echo "HTTP benchmark: $rounds rounds x ${secs}s per test, wrk -t2, $(nproc) cores"
for r in $(seq "$rounds"); do
  line="  round $r:"
  for t in "${tests[@]}"; do
    k=$(run_wrk "$(kurl "$t")" "$(conns "$t")")
    n=$(run_wrk "$(nurl "$t")" "$(conns "$t")")
    results[k,$t]+="$k;"
    results[n,$t]+="$n;"
    if [[ $t == asset* ]]; then f=2; else f=1; fi
    line+=" $t $(cut -d' ' -f$f <<<"$k")/$(cut -d' ' -f$f <<<"$n")"
  done
  echo "$line (kindling/nginx)"
done
krss=$(awk '/VmHWM/ {print $2}' "/proc/$kpid/status")

# The median of field $1 of the ';'-separated results on stdin.
median_field() { tr ';' '\n' | awk -v f="$1" 'NF {print $f}' | median; }

printf '\n%-34s %14s %14s %8s\n' "test (median of $rounds)" "kindling" "nginx" "ratio"
for t in "${tests[@]}"; do
  if [[ $t == asset* ]]; then field=2; unit="MB/s"; else field=1; unit="req/s"; fi
  k=$(median_field $field <<<"${results[k,$t]}")
  n=$(median_field $field <<<"${results[n,$t]}")
  label="$t ($(conns "$t") connections)"; [[ $t == asset* ]] && label="30 MiB asset, $(conns "$t") connections"
  [ "$t" = ipxe ] && label="/ipxe (rendered vs static)"
  [ "$t" = ignition ] && label="/ignition (rendered vs static)"
  printf '%-34s %10.0f %-4s %10.0f %-4s %7.2fx\n' "$label" "$k" "$unit" "$n" "$unit" "$(awk -v a="$k" -v b="$n" 'BEGIN {print (b > 0 ? a / b : 0)}')"
done
echo
echo "kindling peak RSS during the run: $((krss / 1024)) MiB"
