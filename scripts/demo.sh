#!/usr/bin/env bash
# The main job: ctd on its embedded defaults, the busybox template, one container's life.
set -euo pipefail

run() { echo; echo "\$ $*"; "$@"; }

if ! ctctl list >/dev/null 2>&1; then
    if [ -d /run/systemd/system ]; then
        install -m 0644 "$(dirname "$0")/../ctd.service" /etc/systemd/system/ctd.service
        systemctl daemon-reload
        systemctl enable --now ctd
    else
        echo "==> starting ctd in the background (log: /var/log/ctd.log)"
        nohup ctd >>/var/log/ctd.log 2>&1 &
    fi
    for _ in $(seq 50); do ctctl list >/dev/null 2>&1 && break; sleep 0.2; done
fi

run ctctl template build busybox
ctctl destroy --force demo >/dev/null 2>&1 || true
run ctctl create demo --template busybox --ram 256M --numproc 200
run ctctl start demo
run ctctl exec demo -- ps
run ctctl exec demo -- ip -4 addr show eth0   # a NIC on the default network ctbr0 (made on first use)
run ctctl exec demo -- sh -c 'echo "inside: uid $(id -u) on $(hostname)"; cat /proc/self/uid_map'
run ctctl list
run ctctl stop demo
run ctctl destroy demo
echo
echo "ctd keeps running; try: ctctl create web --template busybox && ctctl start web && ctctl enter web"
