#!/usr/bin/env bash
# What tests/vm needs, as root on Debian 12; idempotent (installs only what is missing).
#   - linux-image-amd64: Debian's kernel in /boot, booted as the guest, cgroup v2 only
#     (its modules in /lib/modules give the guest 9p; kmod's modprobe/depmod find them)
#   - qemu-system-x86: the machine (TCG is enough); busybox-static: virtme-ng's initramfs
#   - virtme-ng from PyPI, in the repo's virtualenv: vng boots the host's filesystem shared
#     read-only over 9p, with tmpfs/overlays for /tmp, /etc, /var and its own /sys/fs/cgroup
# Usage: scripts/vm-deps.sh   (after ./setup.sh install, which makes .venv)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
VENV=${VENV:-$PWD/.venv}
VNG_SPEC=${VNG_SPEC:-virtme-ng==1.42}   # the version seen working with Debian 12's kernel
DEBS="linux-image-amd64 qemu-system-x86 busybox-static kmod"

if [ "$(id -u)" != 0 ]; then
    echo "vm-deps.sh: run as root" >&2
    exit 1
fi

missing=()
for pkg in $DEBS; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! ls /boot/vmlinuz-* >/dev/null 2>&1; then
    echo "vm-deps.sh: linux-image-amd64 is installed but /boot has no vmlinuz-*" >&2
    exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "vm-deps.sh: no virtualenv at $VENV (run ./setup.sh install first)" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/vng" ] || ! "$VENV/bin/python" -m pip show -q virtme-ng >/dev/null 2>&1; then
    echo "==> pip install $VNG_SPEC"
    "$VENV/bin/python" -m pip install -q "$VNG_SPEC"
fi
echo "vm-deps: $("$VENV/bin/vng" --version), kernel(s): $(cd /boot && echo vmlinuz-*)"
