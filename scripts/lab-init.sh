#!/bin/busybox sh
# /init of the lab's test OS (built into an initramfs by scripts/lab.sh).
#
# Brings up the NIC, gets an address by DHCP, fetches the Ignition config named by
# ignition.config.url on the kernel command line, checks that it parses as JSON, reports to
# Kindling (kindling.report=URL) with the hostname the config sets, and powers off.
# Every step prints a "KINDLING-LAB:" line on the console; the tests look for them.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null

say() { echo "KINDLING-LAB: $*" > /dev/console; }
fail() { say "FAILED: $*"; poweroff -f; }

for m in failover net_failover virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_net; do
  insmod "/lib/modules/$m.ko" 2>/dev/null
done

# Dotted kernel arguments are not passed to /init: read the command line. URLs hold '?'.
set -f
url=""
report=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    ignition.config.url=*) url=${arg#ignition.config.url=} ;;
    kindling.report=*) report=${arg#kindling.report=} ;;
  esac
done
set +f
[ -n "$url" ] || fail "no ignition.config.url on the command line"

ip link set lo up
nic=""
for i in 1 2 3 4 5 6 7 8 9 10; do
  for d in /sys/class/net/*; do
    n=${d##*/}
    [ "$n" = lo ] || nic=$n
  done
  [ -n "$nic" ] && break
  sleep 0.5
done
[ -n "$nic" ] || fail "no network interface"
mac=$(cat "/sys/class/net/$nic/address")
say "booted, $nic $mac"

cat > /tmp/udhcpc.sh <<'EOF'
#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    ;;
esac
exit 0
EOF
chmod +x /tmp/udhcpc.sh
ip link set "$nic" up
udhcpc -i "$nic" -n -q -t 10 -T 2 -s /tmp/udhcpc.sh >/dev/null 2>&1 || fail "no DHCP lease"
say "address $(ip -4 -o addr show dev "$nic" | awk '{print $4}')"

# Fetch with a few retries (the link may still be settling); keep wget's reason. Not wget -T:
# busybox-static 1.35's wget crashes with it when the environment is empty, as in /init.
fetch() { # url file [post-data]
  for try in 1 2 3 4 5; do
    if [ -n "${3:-}" ]; then
      timeout 10 wget -q -O "$2" --post-data "$3" "$1" 2>/tmp/wget.err && return 0
    else
      timeout 10 wget -q -O "$2" "$1" 2>/tmp/wget.err && return 0
    fi
    sleep 1
  done
  return 1
}
fetch "$url" /tmp/ignition.json || fail "cannot fetch $url: $(cat /tmp/wget.err)"
say "fetched ignition ($(wc -c < /tmp/ignition.json) bytes)"

# A JSON syntax check in awk (busybox has no JSON parser): tokens, then a stack machine.
awk '
function fail(m) { print "invalid JSON: " m > "/dev/stderr"; bad = 1; exit 1 }
BEGIN { RS = "\001" }
{
  s = $0; n = length(s); i = 1; depth = 0; expect = "value"
  while (i <= n) {
    c = substr(s, i, 1)
    if (c ~ /[ \t\r\n]/) { i++; continue }
    if (c == "\"") {
      j = i + 1
      while (j <= n && substr(s, j, 1) != "\"") { if (substr(s, j, 1) == "\\") j++; j++ }
      if (j > n) fail("unterminated string")
      tok = "str"; i = j + 1
    } else if (c ~ /[-0-9]/) {
      if (!match(substr(s, i), /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?/)) fail("bad number")
      tok = "num"; i += RLENGTH
    } else if (substr(s, i, 4) == "true" || substr(s, i, 4) == "null") { tok = "lit"; i += 4 }
    else if (substr(s, i, 5) == "false") { tok = "lit"; i += 5 }
    else if (index("{}[]:,", c) > 0) { tok = c; i++ }
    else fail("unexpected " c)
    # expect: value | key | colon | after (comma or close) ; stack holds { or [
    if (expect == "value" || expect == "value_or_close") {
      if (tok == "{") { stack[++depth] = "{"; expect = "key_or_close"; continue }
      if (tok == "[") { stack[++depth] = "["; expect = "value_or_close"; continue }
      if (tok == "]" && expect == "value_or_close") { depth--; expect = "after"; continue }
      if (tok == "str" || tok == "num" || tok == "lit") { expect = "after"; continue }
      fail("expected a value")
    }
    if (expect == "key" || expect == "key_or_close") {
      if (tok == "str") { expect = "colon"; continue }
      if (tok == "}" && expect == "key_or_close") { depth--; expect = "after"; continue }
      fail("expected a key")
    }
    if (expect == "colon") { if (tok != ":") fail("expected :"); expect = "value"; continue }
    if (expect == "after") {
      if (depth == 0) fail("trailing data")
      if (tok == ",") { expect = (stack[depth] == "{") ? "key" : "value"; continue }
      if (tok == "}" && stack[depth] == "{") { depth--; continue }
      if (tok == "]" && stack[depth] == "[") { depth--; continue }
      fail("expected , or close")
    }
  }
  if (expect != "after" || depth != 0) fail("truncated")
}
END { exit bad }' /tmp/ignition.json || fail "the Ignition config is not valid JSON"
grep -q '"ignition"' /tmp/ignition.json || fail "no ignition section"
say "ignition parses as JSON"

# The hostname the config sets: /etc/hostname's data: URL.
host=$(sed -n 's/.*"data:,\([A-Za-z0-9.-]*\)".*/\1/p' /tmp/ignition.json | head -1)
if [ -n "$report" ]; then
  # Kindling's report_url already names the machine (and carries its boot secret).
  case "$report" in
    *\?*) ;;
    *) report="$report?mac=$mac" ;;
  esac
  fetch "$report" /tmp/report.out "state=provisioned&hostname=$host" ||
    fail "cannot report to $report: $(cat /tmp/wget.err)"
  say "reported as ${host:-?}"
fi
# What the kernel says about Secure Boot ("secureboot: Secure boot enabled" under shim+GRUB).
sb=$(dmesg | sed -n 's/.*secureboot: Secure boot \([a-z]*\).*/\1/p' | head -1)
say "DONE mac=$mac hostname=$host secureboot=${sb:-unknown}"
poweroff -f
