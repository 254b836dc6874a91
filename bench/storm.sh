#!/usr/bin/env bash
# Boot-storm benchmark: N simulated machines (bench/storm.rs) power on together and boot through
# DHCP, TFTP, DHCP again as iPXE, and HTTP (script, kernel, initrd, Ignition, report), against
# Kindling and against the reference stack in the same run: dnsmasq (DHCP + TFTP) plus nginx
# serving every machine's boot script and Ignition config pre-rendered as static files.
#
#   bench/storm.sh [rounds]                    (default: 3 rounds of 1,000 machines)
#   STORM_MACHINES=10000 bench/storm.sh 1      (long mode: 10,000 machines)
#   STORM_RAMP_MS=10000 STORM_KERNEL_MIB=10 STORM_INITRD_MIB=60 STORM_BIOS_PERCENT=20
#   BENCH_SERVERS="kindling reference"        (a subset)
#   STORM_LOGS=DIR                            (keep each server's log there)
#
# Two network namespaces created here and deleted on exit: the server side (10.97.0.1/16 on a
# veth) and the machines' side (10.97.0.2/16, the relay). The simulator is the rack's DHCP
# relay (giaddr 10.97.0.2); the pool 10.97.64.0/18 is a local route on the machines' side, so
# each simulated machine binds its TFTP and HTTP sockets to its own leased address, and the
# server routes it back through the relay. Servers are pinned to core 0, the simulator to
# core 1. Each row is the median over the rounds; "all" is the time from the first power-on
# until the last machine reported `provisioned`. CPU is the servers' user+system time during
# the storm, RSS their peak (dnsmasq + nginx summed for the reference); retx counts DHCP and TFTP
# retransmits and HTTP retries, naks the DHCP exchanges started over after a NAK; sim_cpu_s is
# the simulator's own CPU (near the wall time: the simulator, not the server, sets the pace).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
machines=${STORM_MACHINES:-1000}
ramp=${STORM_RAMP_MS:-10000}
kernel_mib=${STORM_KERNEL_MIB:-10}
initrd_mib=${STORM_INITRD_MIB:-60}
bios=${STORM_BIOS_PERCENT:-20}

source bench/lib.sh
bench_prepare bench/storm.sh
cargo build --locked --release -q --example storm
storm=$PWD/target/release/examples/storm
dnsmasq=$(command -v dnsmasq || echo /usr/sbin/dnsmasq)

work=$(mktemp -d)
chmod 755 "$work" # nginx workers run as nobody
tag="kst$$"
srv="${tag}s"
cli="${tag}c"
extra_pids=()
stop_all() {
  stop_server
  for p in "${extra_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  extra_pids=()
}
cleanup() {
  stop_all
  ip netns del "$srv" 2>/dev/null || true
  ip netns del "$cli" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
[ -n "${BENCH_DEBUG:-}" ] && set -x
# One or two descriptors per machine at the peak (its UDP or TCP socket), in the simulator
# and in the server: root with CAP_SYS_RESOURCE may go above the hard limit; else the hard
# limit (20,000 on the CI machine, which 10,000 machines fit since the simulator discards
# bodies with MSG_TRUNC instead of splicing them through a pipe).
ulimit -n 262144 2>/dev/null || ulimit -n "$(ulimit -Hn)"

ip netns add "$srv"
ip netns add "$cli"
ip -n "$srv" link add s0 type veth peer name c0 netns "$cli"
ip -n "$srv" addr add 10.97.0.1/16 dev s0
ip -n "$cli" addr add 10.97.0.2/16 dev c0
for ns in "$srv" "$cli"; do ip -n "$ns" link set lo up; done
ip -n "$srv" link set s0 up
ip -n "$cli" link set c0 up
ip -n "$cli" route add local 10.97.64.0/18 dev lo
ip -n "$srv" route add 10.97.64.0/18 via 10.97.0.2

# The files every machine fetches: iPXE binaries over TFTP, kernel and initrd over HTTP.
root=$work/root
mkdir -p "$root/tftp" "$root/assets" "$work/profiles/templates"
# Each written in one go (cp), as a downloaded or copied file is: written in head's 8 KiB
# pieces, a file sits in the page cache in small folios, and sendfile costs either server a
# third more CPU (bench/http.sh found it). Both stacks serve these same files.
random_file() { # $1: path, $2: bytes
  head -c "$2" /dev/urandom > "$1.tmp" && cp "$1.tmp" "$1" && rm "$1.tmp"
}
random_file "$root/tftp/ipxe.efi" 1048576
random_file "$root/tftp/undionly.kpxe" 71680
random_file "$root/assets/kernel" $((kernel_mib * 1048576))
random_file "$root/assets/initrd" $((initrd_mib * 1048576))
chmod -R a+rX "$root"
cat > "$work/profiles/node.toml" <<'TOML'
default = true
ignition = "templates/node.ign.j2"
[boot]
kernel = "kernel"
initrd = ["initrd"]
args = ["ignition.config.url={{ ignition_url }}", "console=ttyS0,115200n8"]
TOML
cat > "$work/profiles/templates/node.ign.j2" <<'J2'
{ "ignition": { "version": "3.3.0" },
  "storage": { "files": [ { "path": "/etc/hostname", "mode": 420, "overwrite": true,
    "contents": { "source": {{ ("data:," ~ (mac | replace(":", "-"))) | tojson }} } } ] } }
J2

kindling_conf() { # $1: state directory, $2: config_access
  cat <<CONF
[server]
base_url = "http://10.97.0.1:8080"
[http]
listen = "10.97.0.1:8080"
config_access = "$2"
max_connections = 16384 # as nginx's worker_connections below; the default is 1024
[paths]
profiles = "$work/profiles"
ipxe_scripts = "$PWD/ipxe"
ipxe_binaries = "$root/tftp"
assets = "$root/assets"
state = "$1"
[log]
level = "warn"
[dhcp]
mode = "full"
interfaces = ["s0"]
lease_time = "1h"
[[dhcp.subnet]]
network = "10.97.0.0/16"
range = ["10.97.64.1", "10.97.127.254"]
server_ip = "10.97.0.1"
[tftp]
enabled = true
listen = "10.97.0.1:69"
max_transfers = 16384 # as dnsmasq's --tftp-max below (20,000); the default is 1024
CONF
}

wait_listen() { # $1: ss filter, $2: what
  for _ in $(seq 100); do
    ip netns exec "$srv" ss -Hlntu "$1" | grep -q . && return 0
    sleep 0.1
  done
  echo "bench/storm.sh: $2 did not start" >&2
  exit 1
}

start_kindling() { # $1: state directory, $2: config_access (default: token-or-source)
  rm -rf "$1"
  mkdir -p "$1"
  kindling_conf "$1" "${2:-token-or-source}" > "$1/kindling.toml"
  taskset -c 0 ip netns exec "$srv" "$bin" serve --config "$1/kindling.toml" 2>"$1/log" &
  pid=$!
  wait_listen 'sport = :8080' Kindling
  wait_listen 'sport = :67' "Kindling's DHCP"
}

# The reference stack's documents: every machine's chain walked once against a throwaway
# Kindling (open to the relay's address), the answers written as files nginx serves by the
# mac= argument. The reference pins every machine's address with a dhcp-host line, as a known
# fleet is set up for dnsmasq: from a dynamic range, dnsmasq offers the same free address to
# every client that asks in the same moment and NAKs all but one at REQUEST time; in a storm
# of 1,000 machines with consecutive MACs, about a fifth got no address after 8 rounds.
start_kindling "$work/prerender" open
ip netns exec "$cli" "$storm" prerender --boot-url http://10.97.0.1:8080/boot.ipxe \
  --machines "$machines" --bios-percent "$bios" --out "$work/static" >&2
stop_server
nginx_conf "$work" 10.97.0.1:8080 "$work/static" 16384 "\
    location = /ipxe { try_files /ipxe/\$arg_mac =404; }
    location = /ignition { try_files /ignition/\$arg_mac =404; }
    location = /api/v1/report { return 200 '{}'; }
    location /assets/ { alias $root/assets/; }"
chmod -R a+rX "$work/static"

start_reference() { # $1: state directory
  rm -rf "$1"
  mkdir -p "$1"
  taskset -c 0 ip netns exec "$srv" "$dnsmasq" --keep-in-foreground --conf-file=/dev/null --port=0 \
    --user=root --interface=s0 --bind-interfaces --no-ping --dhcp-authoritative \
    --dhcp-range=10.97.64.1,10.97.127.254,255.255.0.0,1h --dhcp-lease-max=70000 \
    --dhcp-userclass=set:ipxe,iPXE --dhcp-match=set:efi64,option:client-arch,7 \
    --dhcp-boot=tag:ipxe,http://10.97.0.1:8080/boot.ipxe \
    --dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi,,10.97.0.1 \
    --dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe,,10.97.0.1 \
    --dhcp-hostsfile="$work/static/dhcp-hosts" \
    --enable-tftp --tftp-root="$root/tftp" --tftp-max=20000 \
    --dhcp-leasefile="$1/leases" --pid-file --log-facility="$1/log" ${STORM_LOGS:+--log-dhcp} 2>>"$1/log" &
  pid=$!
  taskset -c 0 ip netns exec "$srv" nginx -c "$work/nginx.conf" -g 'daemon off;' 2>>"$1/log" &
  extra_pids+=($!)
  wait_listen 'sport = :8080' nginx
  wait_listen 'sport = :67' dnsmasq
}

# user+system seconds and peak RSS (KiB) of the given processes and their children, summed.
cpu_rss() {
  local ticks=0 rss=0 p
  local all=("$@")
  for p in "$@"; do all+=($(cat /proc/"$p"/task/*/children 2>/dev/null)); done
  for p in "${all[@]}"; do
    [ -r "/proc/$p/stat" ] || continue
    ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    rss=$((rss + $(awk '/^VmHWM:/ {print $2}' "/proc/$p/status")))
  done
  awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" -v r="$rss" 'BEGIN {printf "%.1f %d\n", t / hz, r}'
}

# user+system seconds per thread name (Kindling's kindling-tftp, kindling-dhcp and
# tokio-rt-worker; dnsmasq; nginx) of the given processes and their children: "name=s ...".
cpu_split() {
  local all=("$@") p
  for p in "$@"; do all+=($(cat /proc/"$p"/task/*/children 2>/dev/null)); done
  for p in "${all[@]}"; do cat /proc/"$p"/task/*/stat 2>/dev/null; done |
    awk -v hz="$(getconf CLK_TCK)" '{
        rest = $0; sub(/^[^(]*\(/, "", rest); name = rest; sub(/\).*/, "", name); sub(/^.*\) /, "", rest)
        split(rest, f, " "); t[name] += f[12] + f[13]
      } END {for (n in t) printf "%s=%.1f ", n, t[n] / hz}'
}

read -r -a servers <<<"${BENCH_SERVERS:-kindling reference}"
declare -A res
for r in $(seq "$rounds"); do
  for name in "${servers[@]}"; do
    state="$work/state-$name"
    if [ "$name" = kindling ]; then start_kindling "$state"; else start_reference "$state"; fi
    read -r cpu0 _ < <(cpu_rss "$pid" "${extra_pids[@]}")
    out=$(taskset -c 1 ip netns exec "$cli" "$storm" run --server 10.97.0.1 --relay 10.97.0.2 \
      --machines "$machines" --ramp-ms "$ramp" --bios-percent "$bios" --deadline-s 900 2>&1 || true)
    read -r cpu1 rss < <(cpu_rss "$pid" "${extra_pids[@]}")
    split=$(cpu_split "$pid" "${extra_pids[@]}")
    api=""
    if [ "$name" = kindling ]; then
      api=$(ip netns exec "$srv" curl -fsS http://10.97.0.1:8080/api/v1/machines |
        python3 -c 'import json,sys,collections; m=json.load(sys.stdin); m=m.get("machines", m) if isinstance(m, dict) else m; print(" ".join(f"{k}={v}" for k, v in sorted(collections.Counter(x["state"] for x in m).items())))')
      # Where TFTP transfers ended, and how often HTTP had every connection place in use.
      api+="; $(ip netns exec "$srv" curl -fsS http://10.97.0.1:8080/metrics |
        awk '/^kindling_tftp_transfers_total/ {match($0, /outcome="[a-z_]+"/); o = substr($0, RSTART + 9, RLENGTH - 10); t = t " tftp_" o "=" $2}
             /^kindling_http_connections_full_total/ {t = t " http_full=" $2}
             END {print substr(t, 2)}')"
    fi
    stop_all
    [ -n "${STORM_LOGS:-}" ] && mkdir -p "$STORM_LOGS" && cp "$state/log" "$STORM_LOGS/$name-round$r.log"
    echo "== round $r: $name (API: ${api:-n/a}; CPU s per thread: $split)" >&2
    echo "$out" >&2
    last=$(grep -E '^(ok|fail) machines=' <<<"$out" || echo "fail all_ms=0")
    field() { grep -o "$1=[0-9.]*" <<<"$last" | cut -d= -f2; }
    res[$name,all]+="$(awk -v a="$(field all_ms)" 'BEGIN {printf "%.1f", a / 1000}') "
    res[$name,failed]+="$(field failed) "
    res[$name,retx]+="$(( $(field dhcp_retx) + $(field tftp_retx) + $(field http_retries) )) "
    res[$name,naks]+="$(field dhcp_naks) "
    res[$name,sim]+="$(field sim_cpu_s) "
    res[$name,cpu]+="$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN {printf "%.1f", b - a}') "
    res[$name,rss]+="$((rss / 1024)) "
    for phase in pxe-dhcp firmware ipxe-dhcp script kernel config report total; do
      res[$name,$phase,50]+="$(awk -v p="$phase" '$1 == p {print $2}' <<<"$out") "
      res[$name,$phase,99]+="$(awk -v p="$phase" '$1 == p {print $3}' <<<"$out") "
    done
  done
done

echo
echo "Boot storm: $machines machines ($bios% BIOS), ramp $ramp ms, kernel $kernel_mib MiB + initrd $initrd_mib MiB; medians of $rounds"
printf '%-10s %9s %7s %7s %5s %7s %8s %9s' server all_s failed retx naks cpu_s rss_MiB sim_cpu_s
for phase in pxe-dhcp firmware ipxe-dhcp script kernel config report total; do printf ' %17s' "$phase p50/p99"; done
echo
declare -A all
for name in "${servers[@]}"; do
  all[$name]=$(median <<<"${res[$name,all]}")
  printf '%-10s %9s %7s %7s %5s %7s %8s %9s' "$name" "${all[$name]}" "$(median <<<"${res[$name,failed]}")" \
    "$(median <<<"${res[$name,retx]}")" "$(median <<<"${res[$name,naks]}")" "$(median <<<"${res[$name,cpu]}")" \
    "$(median <<<"${res[$name,rss]}")" "$(median <<<"${res[$name,sim]}")"
  for phase in pxe-dhcp firmware ipxe-dhcp script kernel config report total; do
    printf ' %17s' "$(median <<<"${res[$name,$phase,50]}")/$(median <<<"${res[$name,$phase,99]}")"
  done
  echo
done
if [ -n "${all[kindling]:-}" ] && [ -n "${all[reference]:-}" ]; then
  awk -v k="${all[kindling]}" -v r="${all[reference]}" \
    'BEGIN {if (r > 0) printf "time to provision all: Kindling / reference = %.2fx (below 1.00 = Kindling sooner)\n", k / r}'
fi
echo "phase times in ms per machine; all_s from the first power-on to the last report"
