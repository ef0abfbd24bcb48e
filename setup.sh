#!/usr/bin/env bash
# ctd set-up, as root on Debian 12:
#   ./setup.sh demo   install everything, start ctd on its embedded defaults, build the
#                     busybox template, then create, start, use, stop and destroy a container
#   ./setup.sh test   install everything (test tools too) and run the whole test suite
#   ./setup.sh install  only install (used by the Vagrant box and by the two above)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
REPO=$PWD
MODE=${1:-demo}
VENV=$REPO/.venv

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root (sudo ./setup.sh $MODE)" >&2
    exit 1
fi

# Debian packages: the runtime's own needs, then what the tests and benchmarks compare against.
RUNTIME_PKGS="python3 python3-venv python3-dev gcc libc6-dev libcap-dev busybox-static iproute2 util-linux procps
              btrfs-progs libbtrfsutil-dev nftables lxcfs dnsmasq-base"
# The test suite also checks the host-readiness report for every optional tool, and the Vagrantfile.
# etcd-server is a runtime dependency of cluster mode only (docs/cluster.md; etcd usually runs on
# machines of its own): optional for a standalone ctd, installed here for tests/host/test_cluster.py.
TEST_PKGS="ruby vagrant vagrant-libvirt qemu-system-x86 qemu-utils ovmf swtpm swtpm-tools genisoimage mmdebstrap
           openssh-client linux-image-amd64 kmod e2fsprogs prometheus chromium chromium-driver etcd-server"

install_debs() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

install_web() {
    # The web console's xterm.js and noVNC come from the npm registry (web/package-lock.json).
    command -v npm >/dev/null || install_debs nodejs npm
    echo "==> scripts/build-web.sh"
    # Without these files the console page still works, but has no terminal or display.
    "$REPO/scripts/build-web.sh" >/dev/null || echo "setup.sh: warning: the web console has no terminal or display" >&2
}

install_python() {
    # Debian's own interpreter, so the result is the same on every fresh Debian 12 machine.
    if [ ! -x "$VENV/bin/python" ]; then
        echo "==> creating $VENV"
        /usr/bin/python3 -m venv "$VENV"
    fi
    local log
    log=$(mktemp)
    echo "==> pip install -e .[test]"
    if ! { "$VENV/bin/pip" install -q --upgrade pip && "$VENV/bin/pip" install -q -e ".[test]"; } >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "setup.sh: pip install failed (above)" >&2
        exit 1
    fi
    rm -f "$log"
    ln -sf "$VENV/bin/ctd" /usr/local/bin/ctd
    ln -sf "$VENV/bin/ctctl" /usr/local/bin/ctctl
    getent group ctd >/dev/null || groupadd --system ctd
    install_web
}

case "$MODE" in
    install)
        install_debs $RUNTIME_PKGS
        install_python
        ;;
    demo)
        install_debs $RUNTIME_PKGS
        install_python
        exec "$REPO/scripts/demo.sh"
        ;;
    test)
        install_debs $RUNTIME_PKGS $TEST_PKGS
        # The tests start their own Prometheus on loopback; the package's service is not wanted.
        if [ -d /run/systemd/system ] && systemctl is-enabled -q prometheus 2>/dev/null; then
            systemctl disable --now prometheus >/dev/null 2>&1 || true
        fi
        install_python
        "$REPO/scripts/vm-deps.sh"
        exec "$REPO/scripts/run-tests.sh" "${@:2}"
        ;;
    *)
        echo "usage: ./setup.sh demo|test|install" >&2
        exit 2
        ;;
esac
