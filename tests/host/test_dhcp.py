"""DHCP and DNS on ctd's networks: one dnsmasq per network, answering with ctd's own addresses
and instance names, on the bridge only, restarted when it dies, gone with the network.

DHCP clients are busybox udhcpc inside containers the test made, on bridges ctd made for it.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


from tests.helpers.net import own_network

# udhcpc calls its script with the lease in the environment; ours prints it
LEASE_SCRIPT = "printf '#!/bin/sh\\necho \"$1 ip=$ip router=$router dns=$dns\"\\n' > /tmp/lease.sh; chmod +x /tmp/lease.sh"


def udhcpc(ctd, name: str, timeout: int = 3):  # type: ignore[no-untyped-def]
    """One DHCP exchange on eth0 (the container keeps the address ctd gave it)."""
    return ctd.sh(name, f"{LEASE_SCRIPT}; udhcpc -i eth0 -n -q -f -t 3 -T {timeout} -s /tmp/lease.sh", timeout=60)


def dnsmasq_log(ctd, net: str) -> str:  # type: ignore[no-untyped-def]
    try:
        return next(Path("/run/ctd-dnsmasq").glob(f"*/{net}/log")).read_text()[-2000:]
    except (OSError, StopIteration) as exc:
        return str(exc)


def dnsmasq_pid(ctd, net: str) -> int | None:
    server = ctd.client.get(f"/1.0/networks/{net}")["network"]["dhcp_server"]
    return server["pid"] if server and server["running"] else None


def listening(pid: int) -> set[str]:
    out = subprocess.run(["ss", "-Hlnup", "-t"], capture_output=True, text=True).stdout + \
        subprocess.run(["ss", "-Hlnp"], capture_output=True, text=True).stdout
    return {line.split()[4] for line in out.splitlines() if f"pid={pid}," in line}


def test_dhcp_gives_ctds_address_and_dns_answers_instance_names(ctd, make_container):
    with own_network(ctd, "td") as net:
        assert net["dhcp"] is True and net["dhcp_server"]["running"]
        a = make_container(net=net["name"])
        b = make_container(net=net["name"])
        ip_a = ctd.instance(a)["nics"][0]["addresses"][0]
        ip_b = ctd.instance(b)["nics"][0]["addresses"][0]
        r = udhcpc(ctd, b)
        assert r.code == 0, r.err + r.out + dnsmasq_log(ctd, net["name"])
        assert f"bound ip={ip_b} router={net['gateway']} dns={net['gateway']}" in r.out
        looked_up = ctd.sh(b, f"nslookup {a} {net['gateway']}")
        assert looked_up.code == 0 and ip_a in looked_up.out, looked_up.out + looked_up.err
        assert ctd.sh(b, f"nslookup no-such-instance {net['gateway']}").code != 0
        # a NIC added later is known to dnsmasq at once
        c = make_container(net="none", start=True)
        ctd.ok("nic", "add", c, f"network={net['name']}")
        ip_c = ctd.instance(c)["nics"][0]["addresses"][0]
        assert f"ip={ip_c}" in udhcpc(ctd, c).out
        assert ip_c in ctd.sh(a, f"nslookup {c} {net['gateway']}").out


def test_dnsmasq_listens_on_the_bridge_only_and_is_restarted(ctd, make_container):
    with own_network(ctd, "td", "--ipv6", "fd42:7d:1:2::/64") as net:
        pid = dnsmasq_pid(ctd, net["name"])
        assert pid is not None
        addresses = listening(pid)
        # DNS on the gateway addresses (and the bridge's own link-local one, scoped to it);
        # DHCP's socket bound to the bridge (SO_BINDTODEVICE): nothing on lo or any other link
        assert {f"{net['gateway']}:53", f"[{net['gateway6']}]:53"} <= addresses, addresses
        bridge = f"%{net['bridge']}:"
        for address in addresses:
            assert address in (f"{net['gateway']}:53", f"[{net['gateway6']}]:53") or bridge in address, addresses
        os.kill(pid, 9)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and dnsmasq_pid(ctd, net["name"]) in (None, pid):
            time.sleep(0.5)
        new = dnsmasq_pid(ctd, net["name"])
        assert new not in (None, pid)
        assert ctd.client.get(f"/1.0/networks/{net['name']}")["network"]["dhcp_server"]["restarts"] == 1
        a = make_container(net=net["name"])
        assert f"ip={ctd.instance(a)['nics'][0]['addresses'][0]}" in udhcpc(ctd, a).out
    assert not os.path.exists(f"/proc/{new}")  # gone with the network


def test_no_dhcp_network_runs_no_dnsmasq_and_answers_nothing(ctd, make_container):
    with own_network(ctd, "td", "--no-dhcp") as net:
        assert net["dhcp"] is False and net["dhcp_server"] is None
        a = make_container(net=net["name"])
        r = udhcpc(ctd, a, timeout=1)
        assert r.code != 0 and "bound" not in r.out


def test_dnsmasq_stops_with_ctd_and_a_leftover_of_a_killed_ctd_is_replaced(fresh_ctd):
    ctd = fresh_ctd
    with own_network(ctd, "td") as net:
        first = dnsmasq_pid(ctd, net["name"])
        ctd.stop()   # an orderly stop takes its dnsmasq along
        assert first is not None and not os.path.exists(f"/proc/{first}")
        ctd.start()
        second = dnsmasq_pid(ctd, net["name"])
        assert second is not None and second != first
        ctd.kill9()  # a ctd that died leaves its dnsmasq (its own session) behind
        assert os.path.exists(f"/proc/{second}")
        ctd.start()  # ... which the next ctd ends (found by pid file and command line) and replaces
        third = dnsmasq_pid(ctd, net["name"])
        assert third not in (None, second)
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{second}") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not os.path.exists(f"/proc/{second}") or \
            Path(f"/proc/{second}/stat").read_text().split()[2] == "Z"
        assert ctd.client.get(f"/1.0/networks/{net['name']}")["network"]["dhcp_server"]["running"]
