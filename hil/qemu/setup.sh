#!/usr/bin/env bash
# Host setup for the QEMU aarch64 HIL runs (hil/qemu, docs/hil.md). Root only; idempotent;
# bootstrap.sh runs it when it runs as root:
#   - adds the arm64 dpkg architecture (build.py downloads the locked arm64 .debs with
#     `apt-get download`; nothing arm64 is installed or run on the host),
#   - installs qemu-system-arm (provides qemu-system-aarch64) without recommends: ipxe-qemu
#     (the option ROMs of PCI NICs) is left out, so the guest gets no NIC (`-nic none`) or the
#     virtio-mmio one, which needs no ROM,
#   - installs lava-common (Debian's package of LAVA's job schema), which the tests use to
#     validate `l4emu hil export lava`,
#   - checks the other build tools: dpkg-deb, readelf (binutils), apt-get.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "hil/qemu/setup.sh: must run as root (it adds a dpkg architecture and installs packages)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive

need_update=0
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    echo "setup: adding the arm64 dpkg architecture"
    dpkg --add-architecture arm64
    need_update=1
fi
# The arm64 package index must be present for `apt-get download <pkg>:arm64`.
if ! apt-cache show busybox-static:arm64 >/dev/null 2>&1; then
    need_update=1
fi

missing=()
command -v qemu-system-aarch64 >/dev/null || missing+=(qemu-system-arm)
command -v readelf >/dev/null || missing+=(binutils)
command -v dpkg-deb >/dev/null || missing+=(dpkg)
dpkg-query -W -f='${Status}' lava-common 2>/dev/null | grep -q "install ok installed" || missing+=(lava-common)

if [ "$need_update" -eq 1 ] || [ ${#missing[@]} -gt 0 ]; then
    echo "setup: apt-get update"
    apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]} (--no-install-recommends)"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

apt-cache show busybox-static:arm64 >/dev/null 2>&1 || {
    echo "setup: the arm64 package index is still missing after apt-get update" >&2
    exit 1
}
echo "setup: ok ($(qemu-system-aarch64 --version | head -1))"
