#!/usr/bin/env bash
# Lab benchmark: four UEFI VMs (QEMU, OVMF, TCG) PXE-boot at once, from Kindling and from a
# reference stack serving the same files: dnsmasq (DHCP, TFTP of the same ipxe.efi) and
# Python's standard-library HTTP server (bench/static_http.py) with each VM's boot script and
# Ignition config written out beforehand. Rounds alternate the two; a capture on the lab's
# bridge times every VM's phases the same way for both (see lab_phases_against_a_static_server
# in tests/e2e_qemu.rs): dhcp, firmware (TFTP of iPXE, iPXE's DHCP), script, kernel (kernel
# and initrd downloads, kernel start, until the OS asks DHCP), config, report, total; and
# beside each phase the servers' own part of it (DHCP request → reply, HTTP request → the
# answer's last byte), which the guests' emulated work does not blur.
#
#   bench/lab.sh [rounds]       (default: 5; about 2 minutes a round on 2 cores)
#   LAB_PCAP_DIR=DIR            (keep each round's capture of the bridge there)
#   LAB_ROUTER_SOLICITATIONS=off  (Kindling does not answer iPXE's IPv6 router solicitations)
#
# Needs root (network namespaces, tap devices). Everything runs in a namespace the test makes.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
scripts/setup.sh lab bench >/dev/null
scripts/lab.sh >/dev/null
LAB_ROUNDS=$rounds cargo test --locked --release -q --test e2e_qemu -- \
  --ignored --exact lab_phases_against_a_static_server --nocapture
