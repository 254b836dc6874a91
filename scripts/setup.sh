#!/usr/bin/env bash
# Install everything Kindling's tests, example and benchmarks need on a fresh Debian 12 machine.
#
#   scripts/setup.sh [run|test|lab|bench]...   (default: test)
#
# "test" includes "lab": the QEMU PXE lab that scripts/lab.sh then builds under target/lab.
#
# Idempotent: installs only missing Debian packages. Packages must not start their own
# services (nginx, tftpd-hpa, kea...): tests and benchmarks run every peer themselves, inside
# their own namespaces or on loopback, and stop it by PID. A temporary policy-rc.d tells
# Debian's maintainer scripts not to start daemons while we install.
set -euo pipefail

# The QEMU PXE lab (scripts/lab.sh): firmware, NIC ROMs, the libraries of the unpacked QEMU
# (PXE-LAB.md: installing qemu-system-x86 itself would remove the newer qemu-utils), cpio.
lab=(ovmf seabios ipxe-qemu cpio gzip libaio1 libcapstone4 libfdt1 libglib2.0-0 libpixman-1-0
  libslirp0 libseccomp2 liburing2 libzstd1 libnuma1 libpmem1 libgnutls30 libjpeg62-turbo
  libpng16-16 libsasl2-2 libusb-1.0-0 libusbredirparser1 libvdeplug2 libspice-server1 libcacard0
  libbrlapi0.8 libasound2 libsndio7.0 libibverbs1 librdmacm1 libfuse3-3 libgbm1 libepoxy0 libbpf1
  libcap-ng0 libncursesw6 libudev1 libgmp10)
want=()
for purpose in "${@:-test}"; do
  case "$purpose" in
    # protoc and its well-known types: the build of etcd-client compiles etcd's gRPC API.
    run) want+=(ipxe ca-certificates protobuf-compiler libprotobuf-dev) ;;
    # etcd-server/etcd-client: the tests start their own etcd members (never the service).
    test) want+=(ipxe curl ca-certificates protobuf-compiler libprotobuf-dev iproute2 isc-dhcp-client isc-dhcp-relay busybox ndisc6 kea-admin dnsmasq-base tftp-hpa bind9-dnsutils g++ python3 etcd-server etcd-client chromium chromium-driver python3-venv openssl)
          want+=("${lab[@]}") ;;
    lab) want+=("${lab[@]}") ;;
    bench) want+=(ipxe curl gcc libc6-dev protobuf-compiler libprotobuf-dev etcd-server wrk nginx-light python3 iproute2 kea-admin kea-dhcp4-server dnsmasq-base tftpd-hpa dnsperf tcpdump) ;;
    *) echo "setup.sh: unknown purpose '$purpose' (run, test, lab, bench)" >&2; exit 64 ;;
  esac
done

missing=()
for pkg in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
# de-duplicate
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | awk 'NF && !seen[$0]++')

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${sudo[@]}" chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  trap '[ "$created_policy" = 1 ] && "${sudo[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -q
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The Rust toolchain: Debian 12's cargo is too old for this crate (edition 2024, Rust >= 1.90).
if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found. Install Rust >= 1.90 with rustup (https://rustup.rs), then re-run." >&2
  exit 1
fi
rustc_minor=$(rustc --version | awk '{split($2, v, "."); print v[2]}')
if [ "${rustc_minor:-0}" -lt 90 ]; then
  echo "setup: $(rustc --version) is too old; Kindling needs Rust >= 1.90 (rustup update)." >&2
  exit 1
fi
echo "setup: ready ($(rustc --version))"
for purpose in "${@:-test}"; do
  case "$purpose" in
    test) "$(dirname "$0")/lab.sh"; "$(dirname "$0")/sushy.sh" ;;
    lab) "$(dirname "$0")/lab.sh" ;;
  esac
done
