#!/usr/bin/env bash
# The Redfish emulator sushy-tools (PyPI) in a virtualenv under target/sushy, for
# tests/redfish.rs. Idempotent; scripts/setup.sh test runs it. Its fake driver needs no
# libvirt: the tests start it on loopback themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
version=2.2.0
venv=target/sushy/venv
if [ -x "$venv/bin/sushy-emulator" ] && [ "$(cat target/sushy/version 2>/dev/null)" = "$version" ]; then
  exit 0
fi
rm -rf target/sushy
mkdir -p target/sushy
# Debian's python3 (python3-venv), not whichever python3 comes first on the PATH.
py=/usr/bin/python3
[ -x "$py" ] || py=python3
"$py" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "sushy-tools==$version"
echo "$version" > target/sushy/version
echo "sushy: sushy-tools $version in $venv"
