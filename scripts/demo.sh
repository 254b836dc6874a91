#!/usr/bin/env bash
# Watch one machine PXE-boot from Kindling, step by step (needs root; about a minute).
#
#   scripts/demo.sh [uefi|bios]      (default: uefi, which shows the TFTP step)
#
# Builds the lab if needed (scripts/setup.sh lab). Then it creates a network namespace with a
# bridge and a tap device (nothing touches the host's interfaces) and starts Kindling there in
# full DHCP mode. It boots a QEMU VM from it and prints each step of the boot path as
# Kindling's log and the VM's console show it. Everything is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
fw=${1:-uefi}
case "$fw" in uefi | bios) ;; *) echo "usage: scripts/demo.sh [uefi|bios]" >&2; exit 64 ;; esac
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/demo.sh needs root (network namespace, tap device)" >&2
  exit 1
fi
scripts/setup.sh lab >/dev/null
cargo build --locked --release -q
bin=$PWD/target/release/kindling
lab=$PWD/target/lab
work=$(mktemp -d)
ns="kdemo$$"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" link add br0 type bridge
ip -n "$ns" addr add 10.99.0.2/24 dev br0
ip -n "$ns" link set br0 up
ip -n "$ns" tuntap add dev tap0 mode tap
ip -n "$ns" link set tap0 master br0
ip -n "$ns" link set tap0 up

mkdir -p "$work/assets" "$work/profiles/templates"
ln -s "$lab/os/vmlinuz" "$work/assets/vmlinuz"
ln -s "$lab/os/initrd.img" "$work/assets/initrd.img"
cat > "$work/kindling.toml" <<CONF
[server]
base_url = "http://10.99.0.2:8080"
[http]
listen = "10.99.0.2:8080"
[paths]
ipxe_scripts = "$PWD/ipxe"
state = "state"
[dhcp]
mode = "full"
interfaces = ["br0"]
[[dhcp.subnet]]
network = "10.99.0.0/24"
range = ["10.99.0.100", "10.99.0.150"]
server_ip = "10.99.0.2"
[tftp]
enabled = true
CONF
cat > "$work/profiles/templates/node.ign.j2" <<'IGN'
{"ignition": {"version": "3.3.0"},
 "storage": {"files": [{"path": "/etc/hostname", "mode": 420,
   "contents": {"source": "data:,{{ hostname }}"}}]}}
IGN
cat > "$work/profiles/demo.toml" <<'PROFILE'
description = "The demo machine"
ignition = "templates/node.ign.j2"
[boot]
kernel = "vmlinuz"
initrd = ["initrd.img"]
args = ["console=ttyS0", "ignition.config.url={{ ignition_url }}",
        "kindling.report={{ report_url }}"]
[[machine]]
mac = "52:54:00:de:00:01"
hostname = "demo-1"
PROFILE

echo "== Kindling: $("$bin" check --config "$work/kindling.toml")"
ip netns exec "$ns" "$bin" serve --config "$work/kindling.toml" 2>"$work/kindling.log" &
pids+=($!)
for _ in $(seq 50); do grep -q "listening for HTTP" "$work/kindling.log" && break; sleep 0.1; done

q=$lab/qemu
args=(-L "$q/usr/share/qemu" -L /usr/share/seabios -L /usr/lib/ipxe/qemu -machine q35 -accel tcg
  -m 384 -nographic -monitor none -no-reboot -boot n -serial "file:$work/console.log"
  -netdev tap,id=n0,ifname=tap0,script=no,downscript=no)
if [ "$fw" = uefi ]; then
  cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"
  args+=(-drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd
    -drive "if=pflash,format=raw,file=$work/vars.fd"
    -device virtio-net-pci,netdev=n0,mac=52:54:00:de:00:01,romfile=)
else
  args+=(-device virtio-net-pci,netdev=n0,mac=52:54:00:de:00:01)
fi
echo "== booting a $fw VM (QEMU, no KVM: give it a minute)"
start=$(date +%s)
ip netns exec "$ns" "$q/usr/bin/qemu-system-x86_64" "${args[@]}" >/dev/null 2>&1 &
pids+=($!)
qpid=$!

# Translate Kindling's log and the console into the steps of the boot path.
step() { printf '[%3ss] %s\n' "$(( $(date +%s) - start ))" "$*"; }
seen_k=0 seen_c=0
show_new() {
  mapfile -t klines < <(tail -n +$((seen_k + 1)) "$work/kindling.log")
  seen_k=$((seen_k + ${#klines[@]}))
  for l in "${klines[@]}"; do
    case "$l" in
      *"DHCP offer"*) step "DHCP    offer $(grep -o 'ip=[^ ]*' <<<"$l"), boot file $(grep -o 'boot=[^ ]*' <<<"$l" | cut -d= -f2-)" ;;
      *"DHCP ack"*) step "DHCP    ack   $(grep -o 'ip=[^ ]*' <<<"$l"), boot file $(grep -o 'boot=[^ ]*' <<<"$l" | cut -d= -f2-)" ;;
      *"TFTP sent"*) step "TFTP    $(grep -o 'file=[^ ]*' <<<"$l" | cut -d= -f2) sent ($(grep -o 'bytes=[^ ]*' <<<"$l" | cut -d= -f2) bytes, $(grep -o 'ms=[^ ]*' <<<"$l" | cut -d= -f2) ms)" ;;
      *"path=/boot.ipxe"*) step "HTTP    /boot.ipxe: iPXE asks for its chain script" ;;
      *"path=/ipxe "*) step "HTTP    /ipxe: the boot script of profile $(grep -o 'profile=[^ ]*' <<<"$l" | cut -d= -f2)" ;;
      *"path=/assets/"*) step "HTTP    $(grep -o 'path=[^ ]*' <<<"$l" | cut -d= -f2) ($(grep -o 'bytes=[^ ]*' <<<"$l" | cut -d= -f2) bytes)" ;;
      *"path=/ignition"*) step "HTTP    /ignition: the OS fetched its Ignition config" ;;
      *"machine reported"*) step "REPORT  $(grep -o 'state=[^ ]*' <<<"$l" | cut -d= -f2) as $(grep -o 'hostname=[^ ]*' <<<"$l" | cut -d= -f2)" ;;
    esac
  done
  if [ -f "$work/console.log" ]; then
    mapfile -t clines < <(grep -a 'KINDLING-LAB:' "$work/console.log" || true)
    for l in "${clines[@]:$seen_c}"; do step "VM      ${l#*KINDLING-LAB: }"; done
    seen_c=${#clines[@]}
  fi
}
while kill -0 "$qpid" 2>/dev/null && [ $(( $(date +%s) - start )) -lt 300 ]; do
  show_new
  sleep 0.3
done
sleep 0.3
show_new
echo
echo "== the machine's record (GET /api/v1/machines/52:54:00:de:00:01):"
ip netns exec "$ns" curl -s http://10.99.0.2:8080/api/v1/machines/52:54:00:de:00:01
echo
if grep -aq 'KINDLING-LAB: DONE' "$work/console.log" 2>/dev/null; then
  echo "== done in $(( $(date +%s) - start )) s"
else
  echo "== the VM did not finish; Kindling's log:" >&2
  tail -20 "$work/kindling.log" >&2
  exit 1
fi
