#!/usr/bin/env bash
# Build the PXE lab used by the QEMU end-to-end tests and scripts/demo.sh, under target/lab:
#
#   target/lab/qemu/usr/bin/qemu-system-x86_64   QEMU, unpacked (never installed: installing
#                                                qemu-system-x86 would remove the machine's
#                                                newer qemu-utils; see PXE-LAB.md)
#   target/lab/secureboot/shimx64.efi, grubx64.efi, grubx64-2.12.efi
#                                                Debian's signed shim and network GRUB
#                                                (Debian 12's 2.06 and Debian 13's 2.12)
#   target/lab/os/vmlinuz, target/lab/os/initrd.img
#                                                the OS under test: Debian's kernel and a busybox
#                                                initramfs whose /init fetches its Ignition
#                                                config, checks it is JSON and reports in
#
# Idempotent: skips what exists (delete target/lab to rebuild). Needs the packages
# scripts/setup.sh installs for "test" (ovmf, seabios, ipxe-qemu and QEMU's libraries).
set -euo pipefail
cd "$(dirname "$0")/.."
lab=$PWD/target/lab
mkdir -p "$lab/debs"

download() { # package...
  (cd "$lab/debs" && apt-get download "$@" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
}

if [ ! -x "$lab/qemu/usr/bin/qemu-system-x86_64" ]; then
  echo "lab: unpacking QEMU"
  rm -f "$lab"/debs/qemu-system-*.deb
  download qemu-system-x86 qemu-system-common qemu-system-data
  for d in "$lab"/debs/qemu-system-*.deb; do dpkg-deb -x "$d" "$lab/qemu"; done
fi
if ldd "$lab/qemu/usr/bin/qemu-system-x86_64" | grep -q 'not found'; then
  echo "lab: QEMU misses libraries (scripts/setup.sh test installs them):" >&2
  ldd "$lab/qemu/usr/bin/qemu-system-x86_64" | grep 'not found' >&2
  exit 1
fi

if [ ! -s "$lab/os/initrd.img" ] || [ ! -s "$lab/os/vmlinuz" ] || [ scripts/lab-init.sh -nt "$lab/os/initrd.img" ]; then
  echo "lab: building the test OS (kernel + busybox initramfs)"
  kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
  rm -rf "$lab/os" "$lab/unpack"
  mkdir -p "$lab/os" "$lab/unpack"
  ls "$lab"/debs/"$kpkg"_*.deb >/dev/null 2>&1 || download "$kpkg"
  ls "$lab"/debs/busybox-static_*.deb >/dev/null 2>&1 || download busybox-static
  dpkg-deb -x "$(ls "$lab"/debs/"$kpkg"_*.deb | head -1)" "$lab/unpack/kernel"
  dpkg-deb -x "$(ls "$lab"/debs/busybox-static_*.deb | head -1)" "$lab/unpack/busybox"
  cp "$lab"/unpack/kernel/boot/vmlinuz-* "$lab/os/vmlinuz"
  root=$lab/unpack/initramfs
  mkdir -p "$root"/{bin,proc,sys,dev,tmp,lib/modules,etc}
  cp "$lab/unpack/busybox/bin/busybox" "$root/bin/busybox"
  mods=$(ls -d "$lab"/unpack/kernel/lib/modules/*)
  for m in failover net_failover virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_net; do
    cp "$(find "$mods" -name "$m.ko" | head -1)" "$root/lib/modules/"
  done
  install -m 755 scripts/lab-init.sh "$root/init"
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) > "$lab/os/initrd.img"
  rm -rf "$lab/unpack"
fi
# Secure Boot: Debian's signed shim and network GRUB, unpacked (never installed: their
# maintainer scripts act on the host's boot setup).
if [ ! -s "$lab/secureboot/shimx64.efi" ] || [ ! -s "$lab/secureboot/grubx64.efi" ]; then
  echo "lab: unpacking shim-signed and grub-efi-amd64-signed"
  rm -rf "$lab/unpack-sb" "$lab/secureboot"
  mkdir -p "$lab/unpack-sb" "$lab/secureboot"
  ls "$lab"/debs/shim-signed_*.deb >/dev/null 2>&1 || download shim-signed
  ls "$lab"/debs/grub-efi-amd64-signed_*.deb >/dev/null 2>&1 || download grub-efi-amd64-signed
  dpkg-deb -x "$(ls "$lab"/debs/shim-signed_*.deb | head -1)" "$lab/unpack-sb"
  dpkg-deb -x "$(ls "$lab"/debs/grub-efi-amd64-signed_*.deb | head -1)" "$lab/unpack-sb"
  cp "$lab/unpack-sb/usr/lib/shim/shimx64.efi.signed" "$lab/secureboot/shimx64.efi"
  cp "$lab/unpack-sb/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed" "$lab/secureboot/grubx64.efi"
  rm -rf "$lab/unpack-sb"
fi
# Debian 13's signed GRUB 2.12 for Secure Boot over UEFI HTTP boot (Debian 12's 2.06 starts no
# network after HTTP boot): trixie's package through a private apt configuration, so apt
# checks the archive's signatures and the host's sources stay as they are.
if [ ! -s "$lab/secureboot/grubx64-2.12.efi" ]; then
  echo "lab: unpacking Debian 13's grub-efi-amd64-signed (GRUB 2.12)"
  apt=$lab/apt-trixie
  rm -rf "$apt" "$lab/unpack-sb13"
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs" "$lab/unpack-sb13"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" > "$apt/sources.list"
  opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o Dir::State::Status=/dev/null
        -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false)
  apt-get "${opts[@]}" update >/dev/null
  (cd "$apt/debs" && apt-get "${opts[@]}" download grub-efi-amd64-signed 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  dpkg-deb -x "$(ls "$apt"/debs/grub-efi-amd64-signed_*.deb | head -1)" "$lab/unpack-sb13"
  cp "$lab/unpack-sb13/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed" "$lab/secureboot/grubx64-2.12.efi"
  rm -rf "$lab/unpack-sb13" "$apt/lists" "$apt/cache"
fi
echo "lab: ready in $lab ($(du -sh "$lab/os/initrd.img" | cut -f1) initramfs)"
