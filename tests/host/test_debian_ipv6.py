"""IPv6 in a systemd guest: the Debian 12 template's systemd-networkd takes over the addresses
ctd wrote into its files and keeps them usable (no DAD wait), bridged and routed.

The template is built once per run (about a minute, from the host's apt sources).
"""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers.net import own_network, unique_ipv6_prefix


@pytest.fixture(scope="module")
def lan6(ctd):
    with own_network(ctd, "t6", "--ipv6", unique_ipv6_prefix()) as net:
        yield net


@pytest.mark.parametrize("routed", [False, True], ids=["bridged", "routed"])
def test_networkd_keeps_ipv6_usable(ctd, debian, lan6, routed):
    name = ctd.unique("deb6")
    ctd.ok("create", name, "--template", debian, "--net", lan6["name"], "--ram", "512M",
           *(["--routed"] if routed else []))
    try:
        ctd.ok("start", name)
        state = ctd.ctl("exec", name, "--", "systemctl", "is-system-running", "--wait", timeout=120).out.strip()
        assert state in ("running", "degraded"), state
        ip6 = next(a for a in ctd.instance(name)["nics"][0]["addresses"] if ":" in a)
        prefix = 128 if routed else 64
        shown = ctd.ctl("exec", name, "--", "ip", "-6", "addr", "show", "dev", "eth0").out
        line = next(x for x in shown.splitlines() if f"{ip6}/{prefix}" in x)
        assert "tentative" not in line and "dadfailed" not in line, shown
        gateway = "fe80::1" if routed else lan6["gateway6"]
        assert f"default via {gateway} dev eth0" in ctd.ctl("exec", name, "--", "ip", "-6", "route").out
        # networkd took the link over without failing it (it waits for its link-local address)
        networkd = ctd.ctl("exec", name, "--", "sh", "-c", "for i in $(seq 50); do networkctl status eth0 --no-pager "
                           "| grep -q '(configured)' && break; sleep 0.2; done; networkctl status eth0 --no-pager").out
        assert "(configured)" in networkd, networkd
        assert subprocess.run(["busybox", "ping", "-6", "-c1", "-W2", ip6], capture_output=True).returncode == 0
    finally:
        ctd.ctl("destroy", "--force", name)
