#!/usr/bin/env bash
# TFTP benchmark: Kindling next to tftpd-hpa and dnsmasq, same namespace, same run, same
# load client (bench/tftp_load.rs).
#
#   bench/tftp.sh [rounds]      (default: 3)      BENCH_QUICK=1 for a short matrix,
#                                                 BENCH_CELLS="FILE N BLKSIZE WINDOW;..." for chosen cells
#
# Every server listens on 127.0.0.1:69 inside a network namespace created here (its own
# loopback; deleted on exit), one server at a time. The client starts N concurrent downloads
# of a ~1 MiB file (iPXE-sized: 1, 10, 50, 200 clients) and of a 30 MiB file (1, 10 clients),
# at blksize 512 and 1468, without and with windowsize 8. A server that does not support
# windowsize (tftpd-hpa) answers without it and the client ACKs every block. Each cell
# shows the median over the rounds of the aggregate MB/s, the per-transfer p50/p99 in ms, and
# the ratio of Kindling's aggregate to the peer's (above 1.00 = Kindling faster).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
source bench/lib.sh
bench_prepare bench/tftp.sh
cargo build --locked --release -q --example tftp_load
load=$PWD/target/release/examples/tftp_load
dnsmasq=$(command -v dnsmasq || echo /usr/sbin/dnsmasq)
tftpd=$(command -v in.tftpd || echo /usr/sbin/in.tftpd)

work=$(mktemp -d)
chmod 755 "$work"
ns="ktb$$"
cleanup() {
  stop_server
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
# tftpd-hpa resolves its listen address with AI_ADDRCONFIG, which fails when loopback is the
# namespace's only IPv4 address: give it a veth pair (both ends inside) with one.
ip -n "$ns" link add v0 type veth peer name v1
ip -n "$ns" addr add 10.98.0.1/24 dev v0
ip -n "$ns" link set v0 up

root=$work/root
mkdir -p "$root" "$work/profiles"
head -c 1000000 /dev/urandom > "$root/ipxe.efi"
head -c $((30 * 1024 * 1024)) /dev/urandom > "$root/big.img"
chmod -R a+rX "$root"
printf 'default = true\n[boot]\nkernel = "k"\n' > "$work/profiles/p.toml"
cat > "$work/kindling.toml" <<CONF
[http]
listen = "127.0.0.1:8080"
[paths]
profiles = "$work/profiles"
ipxe_scripts = "$PWD/ipxe"
ipxe_binaries = "$root"
assets = "$root"
state = "$work/state"
[log]
level = "warn"
[tftp]
enabled = true
listen = "127.0.0.1:69"
# The load client is one address standing for up to 200 machines; the default cap of 8
# transfers per address would refuse the rest (dnsmasq and tftpd-hpa have no such cap).
max_transfers_per_client = 1024
CONF

start_server() {
  case "$1" in
    kindling) ip netns exec "$ns" "$bin" serve --config "$work/kindling.toml" 2>>"$work/kindling.log" & ;;
    tftpd-hpa) ip netns exec "$ns" "$tftpd" --foreground --secure --address 127.0.0.1:69 "$root" 2>>"$work/tftpd.log" & ;;
    dnsmasq) ip netns exec "$ns" "$dnsmasq" --keep-in-foreground --conf-file=/dev/null --port=0 --user=root \
      --listen-address=127.0.0.1 --bind-interfaces --enable-tftp --tftp-root="$root" --tftp-max=1000 \
      --pid-file --log-facility=/dev/null 2>>"$work/dnsmasq.log" & ;;
  esac
  pid=$!
  for _ in $(seq 100); do
    ip netns exec "$ns" ss -Hlun 'sport = :69' | grep -q . && return 0
    sleep 0.05
  done
  echo "bench/tftp.sh: $1 did not start" >&2
  exit 1
}

if [ -n "${BENCH_CELLS:-}" ]; then
  IFS=';' read -r -a cells <<<"$BENCH_CELLS"   # e.g. "big.img 10 1468 0;ipxe.efi 1 512 8"
elif [ -n "${BENCH_QUICK:-}" ]; then
  cells=("ipxe.efi 10 1468 0" "ipxe.efi 10 1468 8" "big.img 1 1468 8")
else
  cells=()
  for n in 1 10 50 200; do for b in 512 1468; do for w in 0 8; do cells+=("ipxe.efi $n $b $w"); done; done; done
  for n in 1 10; do for b in 512 1468; do for w in 0 8; do cells+=("big.img $n $b $w"); done; done; done
fi
servers=(kindling tftpd-hpa dnsmasq)
declare -A mbs p50s p99s
for r in $(seq "$rounds"); do
  for name in "${servers[@]}"; do
    start_server "$name"
    for cell in "${cells[@]}"; do
      read -r file n b w <<<"$cell"
      out=$(timeout 300 ip netns exec "$ns" "$load" 127.0.0.1:69 "$file" "$n" "$b" "$w" 2>&1 || true)
      line=$(grep -E '^(ok|fail) ' <<<"$out" || echo "fail bytes=0 wall_ms=1 p50_ms=0 p99_ms=0")
      bytes=$(grep -o 'bytes=[0-9]*' <<<"$line" | cut -d= -f2)
      wall=$(grep -o 'wall_ms=[0-9.]*' <<<"$line" | cut -d= -f2)
      key="$name|$cell"
      if [[ $line == ok* ]]; then
        mbs[$key]+="$(awk -v b="$bytes" -v w="$wall" 'BEGIN {printf "%.1f", b / 1e6 / (w / 1000)}') "
      else
        mbs[$key]+="0 "
        echo "round $r $name $cell: $out" >&2
      fi
      p50s[$key]+="$(grep -o 'p50_ms=[0-9.]*' <<<"$line" | cut -d= -f2) "
      p99s[$key]+="$(grep -o 'p99_ms=[0-9.]*' <<<"$line" | cut -d= -f2) "
    done
    stop_server
    echo "round $r: $name done" >&2
  done
done

printf '%-9s %4s %5s %3s | %-27s | %-27s | %-27s | %7s %7s\n' file N blk win \
  "kindling MB/s p50/p99 ms" "tftpd-hpa MB/s p50/p99 ms" "dnsmasq MB/s p50/p99 ms" "k/hpa" "k/dnsm"
for cell in "${cells[@]}"; do
  read -r file n b w <<<"$cell"
  row=$(printf '%-9s %4s %5s %3s' "$file" "$n" "$b" "$([ "$w" = 0 ] && echo - || echo "$w")")
  declare -A m=()
  for name in "${servers[@]}"; do
    key="$name|$cell"
    m[$name]=$(median <<<"${mbs[$key]}")
    row+=$(printf ' | %8.1f %8.1f/%-9.1f' "${m[$name]}" "$(median <<<"${p50s[$key]}")" "$(median <<<"${p99s[$key]}")")
  done
  ratio() { awk -v a="${m[kindling]}" -v b="$1" 'BEGIN {if (b > 0) printf "%.2fx", a / b; else print "-"}'; }
  row+=$(printf ' | %7s %7s' "$(ratio "${m[tftpd-hpa]}")" "$(ratio "${m[dnsmasq]}")")
  echo "$row"
done
echo
echo "medians of $rounds rounds on loopback in a namespace; MB/s = all bytes / wall time of the batch"
