"""IPv6 on bridged and routed NICs: addresses usable at once (no DAD wait), the gateway, routes,
proxy NDP for routed addresses, live --ipadd/--ipdel.

Traffic flows only between the host and containers in namespaces the test made.
"""

from __future__ import annotations

import subprocess
import threading

import pytest

from tests.helpers.net import own_network, unique_ipv6_prefix as unique_prefix


@pytest.fixture
def net6(ctd):
    with own_network(ctd, "t6", "--ipv6", unique_prefix()) as net:
        yield net


def addresses(ctd, name: str, version: int) -> list[str]:
    return [a for a in ctd.instance(name)["nics"][0]["addresses"] if (":" in a) == (version == 6)]


def host(*args: str) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, check=True).stdout


def test_bridged_containers_talk_over_ipv6_at_once(ctd, make_container, net6):
    a, b = make_container(net=net6["name"]), make_container(net=net6["name"])
    (ip_a,), (ip_b,) = addresses(ctd, a, 6), addresses(ctd, b, 6)
    assert ip_a != ip_b and ip_a.startswith(net6["ipv6"].split("::")[0])
    # no duplicate address detection to wait for: usable the moment start returns
    shown = ctd.sh(a, "ip -6 addr show dev eth0").out
    assert f"{ip_a}/64" in shown and "tentative" not in shown
    assert ctd.sh(a, f"ping -6 -c1 -W2 {ip_b}").code == 0
    assert ctd.sh(b, f"ping -6 -c1 -W2 {net6['gateway6']}").code == 0
    assert f"default via {net6['gateway6']}" in ctd.sh(a, "ip -6 route").out
    # the guest's own record of it (the busybox template's rcS sources this file)
    script = ctd.sh(a, "cat /etc/ctd/network.sh").out
    assert f"ip -6 addr add {ip_a}/64 dev eth0" in script
    assert f"ip -6 route replace default via {net6['gateway6']} dev eth0" in script
    assert subprocess.run(["busybox", "ping", "-6", "-c1", "-W2", ip_b], capture_output=True).returncode == 0
    # TCP over IPv6: b listens (in an exec of its own that lasts until the transfer), a sends
    listener = threading.Thread(target=lambda: got.append(ctd.sh(b, "nc -l -p 5556", timeout=30)))
    got: list = []
    listener.start()
    try:
        # the message from a file, not a pipe: busybox nc quits on the listener's early half-close
        # (its stdin is empty) if that arrives before a piped echo has written (CI saw it)
        sent = ctd.sh(a, f"echo hello-over-v6 > /tmp/msg; "
            f"for i in $(seq 50); do nc -w 2 {ip_b} 5556 < /tmp/msg && exit 0; sleep 0.1; done; exit 1")
        assert sent.code == 0
    finally:
        listener.join(35)
    assert got and got[0].out.strip() == "hello-over-v6"


def test_routed_ipv6_gets_a_host_route_a_link_local_gateway_and_proxy_ndp(ctd, make_container, net6):
    neighbour = make_container(net=net6["name"])
    r = make_container(net=net6["name"], routed=True)
    nic = ctd.instance(r)["nics"][0]
    (ip6,) = addresses(ctd, r, 6)
    assert nic["mode"] == "routed"
    # the host: a /128 to the host end, fe80::1 on it, a proxy entry on the network's bridge
    assert host("ip", "-6", "route", "show", ip6).startswith(f"{ip6} dev {nic['host_name']} ")
    assert "fe80::1/64" in host("ip", "-6", "addr", "show", "dev", nic["host_name"])
    assert ip6 in host("ip", "-6", "neigh", "show", "proxy", "dev", net6["bridge"])
    # a tenant's router advertisement never configures the host
    for ifname in (net6["bridge"], nic["host_name"]):
        assert open(f"/proc/sys/net/ipv6/conf/{ifname}/accept_ra").read().strip() == "0"
    # the container: its address alone (/128), the default route via the host end's link-local
    inside = ctd.sh(r, "ip -6 addr show dev eth0; ip -6 route").out
    assert f"{ip6}/128" in inside and "tentative" not in inside
    assert "default via fe80::1 dev eth0" in inside
    script = ctd.sh(r, "cat /etc/ctd/network.sh").out
    assert f"ip -6 addr add {ip6}/128 dev eth0" in script and "ip -6 route add fe80::1 dev eth0" in script
    assert ctd.sh(r, "ping -6 -c1 -W2 fe80::1%eth0").code == 0
    assert subprocess.run(["busybox", "ping", "-6", "-c1", "-W2", ip6], capture_output=True).returncode == 0
    # on the LAN the host answers NDP for the routed address, with the bridge's MAC
    bridge_mac = open(f"/sys/class/net/{net6['bridge']}/address").read().strip()
    # (the kernel delays a proxy's answer by up to proxy_delay, 0.8 s: ask again until it came)
    resolved = ctd.sh(neighbour, f"for i in $(seq 10); do ping -6 -c1 -W1 {ip6} >/dev/null; "
                                 f"ip -6 neigh show {ip6} | grep -q lladdr && break; done; ip -6 neigh show {ip6}")
    assert bridge_mac in resolved.out
    ctd.ok("destroy", "--force", r)
    assert ip6 not in host("ip", "-6", "neigh", "show", "proxy", "dev", net6["bridge"])


def test_live_ipv6_ipadd_and_ipdel(ctd, make_container, net6):
    name = make_container(net=net6["name"])
    extra = net6["ipv6"].split("::")[0] + "::77"
    ctd.ok("set", name, "--ipadd", extra)
    shown = ctd.sh(name, "ip -6 addr show dev eth0").out
    assert f"{extra}/64" in shown and "tentative" not in shown
    assert ctd.sh(name, f"ping -6 -c1 -W2 -I {extra} {net6['gateway6']}").code == 0
    assert f"ip -6 addr add {extra}/64 dev eth0" in ctd.sh(name, "cat /etc/ctd/network.sh").out
    ctd.ok("set", name, "--ipdel", extra)
    assert extra not in ctd.sh(name, "ip -6 addr show dev eth0").out
    assert extra not in ctd.instance(name)["nics"][0]["addresses"]


def test_live_ipv6_on_a_routed_nic(ctd, make_container):
    first, extra = unique_prefix().replace("::/64", "::5"), unique_prefix().replace("::/64", "::6")
    name = make_container(ipadd=first)
    host_end = ctd.instance(name)["nics"][0]["host_name"]
    ctd.ok("set", name, "--ipadd", extra)
    assert extra in host("ip", "-6", "route", "show", "dev", host_end)
    assert f"{extra}/128" in ctd.sh(name, "ip -6 addr show dev eth0").out
    assert subprocess.run(["busybox", "ping", "-6", "-c1", "-W2", extra], capture_output=True).returncode == 0
    ctd.ok("set", name, "--ipdel", extra)
    assert extra not in host("ip", "-6", "route", "show", "dev", host_end)
    assert subprocess.run(["busybox", "ping", "-6", "-c1", "-W2", first], capture_output=True).returncode == 0
