#!/usr/bin/env python3
"""Seed inputs for the fuzz targets: what real clients send (scripts/fuzz.sh writes them into
target/fuzz-seeds/<target>/ before fuzzing)."""
import os
import struct
import sys

out = sys.argv[1]


def write(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def dhcp(kind, mac, opts=b"", ciaddr=b"\0" * 4, giaddr=b"\0" * 4):
    head = struct.pack("!BBBBIHH", 1, 1, 6, 0, 0x1234, 0, 0x8000)
    body = head + ciaddr + b"\0" * 8 + giaddr + mac + b"\0" * 10 + b"\0" * 192
    options = bytes([53, 1, kind]) + opts + b"\xff"
    return body + b"\x63\x82\x53\x63" + options


mac = bytes([0x52, 0x54, 0, 0, 0, 1])
pxe = bytes([60, 32]) + b"PXEClient:Arch:00007:UNDI:003016" + bytes([93, 2, 0, 7, 97, 17]) + b"\0" * 17
ipxe = bytes([77, 4]) + b"iPXE" + bytes([175, 3, 19, 1, 1])
write("dhcp", "discover-uefi", dhcp(1, mac, pxe))
write("dhcp", "discover-ipxe", dhcp(1, mac, pxe + ipxe))
write("dhcp", "request", dhcp(3, mac, bytes([54, 4, 10, 0, 0, 2, 50, 4, 10, 0, 0, 100, 61, 7, 1]) + mac + bytes([12, 4]) + b"node"))
write("dhcp", "release", dhcp(7, mac, bytes([54, 4, 10, 0, 0, 2]), ciaddr=bytes([10, 0, 0, 100])))
write("dhcp", "decline", dhcp(4, mac, bytes([50, 4, 10, 0, 0, 100])))
write("dhcp", "inform", dhcp(8, mac, b"", ciaddr=bytes([10, 0, 0, 9])))
write("dhcp", "relayed-82", dhcp(1, mac, pxe + bytes([82, 8, 1, 6]) + b"rack-a", giaddr=bytes([10, 0, 0, 1])))

write("tftp", "rrq-ovmf", b"\0\x01ipxe.efi\0octet\0tsize\x000\0blksize\x001468\0windowsize\x004\0")
write("tftp", "rrq-plain", b"\0\x01undionly.kpxe\0octet\0")
write("tftp", "ack", b"\0\x04\0\x01")
write("tftp", "error", b"\0\x05\0\x08aborted\0")
write("tftp", "wrq", b"\0\x02x\0octet\0")

q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
def name(n):
    return b"".join(bytes([len(p)]) + p for p in n.split(b".")) + b"\0"
write("dns", "a", q + name(b"n1.lab.example") + struct.pack("!HH", 1, 1))
write("dns", "ptr", q + name(b"50.0.0.10.in-addr.arpa") + struct.pack("!HH", 12, 1))
write("dns", "outside", q + name(b"example.org") + struct.pack("!HH", 1, 1))
write("dns", "axfr", q + name(b"lab.example") + struct.pack("!HH", 252, 1))

write("http", "boot", b"\x00/boot.ipxe\n")
write("http", "ipxe", b"\x80/ipxe?mac=52:54:00:00:00:01&uuid=03000200-0400-0500-0006-000700080009&arch=x86_64&platform=efi&serial=S1\n")
write("http", "ignition", b"\x00/ignition?mac=52-54-00-00-00-01&token=00112233445566778899aabbccddeeff\n")
write("http", "metadata", b"\x80/metadata?mac=52:54:00:00:00:01\n")
write("http", "report", b"\x01/api/v1/report?mac=52:54:00:00:00:01\nstate=provisioned&hostname=n1")
write("http", "machines", b"\x00/api/v1/machines?state=unknown\n")
write("http", "adopt", b"\x01/api/v1/machines/52:54:00:00:00:09/adopt\n{\"profile\": \"node\"}")
write("http", "asset", b"\x00/assets/os/vmlinuz\n")

write("profiles", "node", b"ignition = \"t.j2\"\n[boot]\nkernel = \"k\"\nargs = [\"x={{ mac }}\"]\n[[machine]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"a\"\nip = \"10.0.0.5\"\n[[select]]\narch = [\"x86_64\"]\n\0{\"ignition\": {\"version\": \"3.4.0\"}, \"x\": {{ hostname | tojson }}}")
write("profiles", "generic", b"default = true\n[generic]\nud = \"t.j2\"\n[boot]\nlocal = true\n[vars]\na = { b = [1, 2] }\n\0{% for i in range(3) %}{{ a.b }}{% endfor %}")
