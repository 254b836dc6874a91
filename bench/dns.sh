#!/usr/bin/env bash
# DNS benchmark: Kindling next to dnsmasq serving the same zone, same run, same load
# generator (dnsperf).
#
#   bench/dns.sh [rounds] [seconds]     (default: 3 rounds, 10 s per run)
#
# Both servers listen on 127.0.0.1:5399 inside a network namespace created here (its own
# loopback; deleted on exit), one at a time. The zone: 1,000 machines (`nodeN.lab.example`,
# A and PTR), from Kindling's profiles and from a dnsmasq hosts file. dnsperf sends a shuffled
# mix of A (80%) and PTR (20%) queries for those names, 20 clients, unlimited rate, for the
# given seconds. The table shows the median queries/s, average latency and RSS, and the
# ratio of Kindling's rate to dnsmasq's (above 1.00 = Kindling faster). dnsperf shares the 2
# cores with the server.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-10}
source bench/lib.sh
bench_prepare bench/dns.sh
dnsmasq=$(command -v dnsmasq || echo /usr/sbin/dnsmasq)

work=$(mktemp -d)
chmod 755 "$work"
ns="kdn$$"
cleanup() {
  stop_server
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up

mkdir -p "$work/profiles"
{
  printf '[boot]\nkernel = "k"\n'
  for i in $(seq 1 1000); do
    printf '[[machine]]\nmac = "52:54:00:50:%02x:%02x"\nhostname = "node%d"\nip = "10.50.%d.%d"\n' \
      $((i / 256)) $((i % 256)) "$i" $((i / 250)) $((i % 250 + 1))
  done
} > "$work/profiles/nodes.toml"
for i in $(seq 1 1000); do
  printf '10.50.%d.%d node%d.lab.example\n' $((i / 250)) $((i % 250 + 1)) "$i"
done > "$work/hosts"
cat > "$work/kindling.toml" <<CONF
[http]
listen = "127.0.0.1:8080"
[paths]
profiles = "$work/profiles"
ipxe_scripts = "$PWD/ipxe"
state = "$work/state"
[log]
level = "warn"
[dns]
enabled = true
listen = "127.0.0.1:5399"
domain = "lab.example"
reverse_networks = ["10.50.0.0/16"]
CONF
python3 - "$work/queries" <<'PY'
import random, sys
random.seed(7)
lines = []
for _ in range(20000):
    i = random.randint(1, 1000)
    if random.random() < 0.8:
        lines.append(f"node{i}.lab.example A")
    else:
        lines.append(f"{i % 250 + 1}.{i // 250}.50.10.in-addr.arpa PTR")
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY

start() {
  case "$1" in
    kindling)
      ip netns exec "$ns" "$bin" serve --config "$work/kindling.toml" 2>"$work/kindling.log" &
      ;;
    dnsmasq)
      ip netns exec "$ns" "$dnsmasq" --keep-in-foreground --conf-file=/dev/null --no-resolv \
        --no-hosts --addn-hosts="$work/hosts" --listen-address=127.0.0.1 --bind-interfaces \
        --port=5399 --user=root --pid-file --cache-size=10000 --local=/lab.example/ \
        --local=/50.10.in-addr.arpa/ 2>"$work/dnsmasq.log" &
      ;;
  esac
  pid=$!
  for _ in $(seq 1 100); do
    if ip netns exec "$ns" dig @127.0.0.1 -p 5399 +time=1 +tries=1 +short node1.lab.example | grep -q 10.50; then
      return
    fi
    sleep 0.1
  done
  echo "bench/dns.sh: $1 did not answer" >&2
  cat "$work/$1.log" >&2
  exit 1
}

# One dnsperf run; prints "qps latency_ms lost".
run() {
  local out
  out=$(ip netns exec "$ns" timeout $((secs + 20)) dnsperf -s 127.0.0.1 -p 5399 -d "$work/queries" \
    -l "$secs" -c 20 -q 200 2>&1)
  local qps lat lost
  qps=$(awk '/Queries per second:/ {print $4}' <<<"$out")
  lat=$(awk '/Average Latency/ {print $4 * 1000}' <<<"$out")
  lost=$(awk '/Queries lost:/ {print $3}' <<<"$out")
  echo "${qps:-0} ${lat:-0} ${lost:-?}"
}

rss_kib() { awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0; }


declare -A qps lat rss
for server in kindling dnsmasq; do
  for r in $(seq 1 "$rounds"); do
    start "$server"
    read -r q l lost < <(run)
    m=$(rss_kib)
    stop_server
    echo "round $r $server  ${q} queries/s  avg ${l} ms  lost ${lost}  RSS ${m} KiB"
    qps[$server]+="$q "
    lat[$server]+="$l "
    rss[$server]+="$m "
  done
done

k=$(tr ' ' '\n' <<<"${qps[kindling]}" | grep . | median)
echo
printf '%-10s %12s %12s %10s %12s\n' server "queries/s" "avg ms" "RSS MiB" "kindling/x"
for server in kindling dnsmasq; do
  q=$(tr ' ' '\n' <<<"${qps[$server]}" | grep . | median)
  l=$(tr ' ' '\n' <<<"${lat[$server]}" | grep . | median)
  m=$(tr ' ' '\n' <<<"${rss[$server]}" | grep . | median)
  printf '%-10s %12.0f %12.3f %10.0f %11.2fx\n' "$server" "$q" "$l" "$((${m%.*} / 1024))" "$(awk -v a="$k" -v b="$q" 'BEGIN {print (b > 0 ? a / b : 0)}')"
done
echo
echo "medians of $rounds rounds; dnsperf -c 20 -q 200 -l $secs, 1,000 names (80% A, 20% PTR), loopback in a namespace"
