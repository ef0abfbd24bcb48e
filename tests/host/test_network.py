"""Bridged and routed NICs, address management, anti-spoofing, rate limits and counters.

Traffic flows only between the host bridge and containers in namespaces the test made.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import uuid

import pytest

from tests.helpers.net import own_network

from ctctl.client import ApiError


@pytest.fixture
def net(ctd):
    with own_network(ctd, "tn") as network:
        yield network


def address(ctd, name, idx=0):
    return ctd.instance(name)["nics"][idx]["addresses"][0]


def test_two_bridged_containers_talk_to_each_other_and_the_gateway(ctd, make_container, net):
    a = make_container(net=net["name"])
    b = make_container(net=net["name"])
    ip_a, ip_b = address(ctd, a), address(ctd, b)
    assert ip_a != ip_b
    assert ctd.sh(a, f"ping -c1 -W2 {ip_b}").code == 0
    assert ctd.sh(b, f"ping -c1 -W2 {net['gateway']}").code == 0
    assert ctd.sh(a, "cat /sys/class/net/eth0/address").out.strip() == ctd.instance(a)["nics"][0]["mac"]
    # TCP: b listens (in an exec of its own that lasts until the transfer: a listener left in
    # the background by an exec that returned was seen to vanish now and then), a sends
    got: list = []
    listener = threading.Thread(target=lambda: got.append(ctd.sh(b, "nc -l -p 5555", timeout=30)))
    listener.start()
    try:
        # the listener may take a moment on a busy host: retry until it accepts
        # the message from a file, not a pipe: busybox nc quits on the listener's early half-close
        # (its stdin is empty) if that arrives before a piped echo has written (CI saw it)
        sent = ctd.sh(a, f"echo hello-over-tcp > /tmp/msg; "
            f"for i in $(seq 50); do nc -w 2 {ip_b} 5555 < /tmp/msg && exit 0; sleep 0.1; done; exit 1")
        assert sent.code == 0
    finally:
        listener.join(35)
    assert got and got[0].out.strip() == "hello-over-tcp"


def test_routed_container_reaches_the_host_but_no_neighbour_by_arp(ctd, make_container, net):
    neighbour = make_container(net=net["name"])
    routed_ip = "10.255.77.9" if not net["subnet"].startswith("10.255.77.") else "10.255.78.9"
    r = make_container(ipadd=routed_ip)
    nic = ctd.instance(r)["nics"][0]
    assert nic["mode"] == "routed" and nic["addresses"] == [routed_ip]
    assert ctd.sh(r, "ping -c1 -W2 169.254.0.1").code == 0
    assert subprocess.run(["busybox", "ping", "-c1", "-W2", routed_ip], capture_output=True).returncode == 0
    # no layer 2 beyond the host end: nobody answers ARP for the neighbour's address
    arp = ctd.sh(r, f"arping -c 2 -w 3 -I eth0 {address(ctd, neighbour)}")
    assert arp.code != 0 and "Received 0 resp" in arp.out


def test_spoofed_ip_mac_or_arp_gets_nowhere_and_the_neighbour_is_fine(ctd, make_container, net):
    attacker = make_container(net=net["name"])
    victim = make_container(net=net["name"])
    ip_a, ip_v = address(ctd, attacker), address(ctd, victim)
    gw = net["gateway"]
    assert ctd.sh(attacker, f"ping -c1 -W2 {gw}").code == 0
    # forged ARP claiming the victim's address: the host must not learn the attacker's MAC for it
    ctd.sh(attacker, f"arping -U -c 2 -s {ip_v} -I eth0 {gw}")
    neigh = subprocess.run(["ip", "neigh", "show", ip_v], capture_output=True, text=True).stdout
    assert ctd.instance(attacker)["nics"][0]["mac"] not in neigh
    # take the victim's IP
    ctd.sh(attacker, f"ip addr del {ip_a}/24 dev eth0; ip addr add {ip_v}/24 dev eth0")
    assert ctd.sh(attacker, f"ping -c2 -W1 {gw}").code != 0
    assert ctd.sh(victim, f"ping -c1 -W2 {gw}").code == 0
    # back to its own IP but a forged MAC
    ctd.sh(attacker, f"ip addr flush dev eth0; ip addr add {ip_a}/24 dev eth0; ip link set eth0 down; "
                     "ip link set eth0 address 02:de:ad:be:ef:01; ip link set eth0 up; ip route add default via " + gw)
    assert ctd.sh(attacker, f"ping -c2 -W1 {gw}").code != 0
    assert ctd.sh(victim, f"ping -c1 -W2 {gw}").code == 0


def test_no_filter_lets_a_nic_change_its_address(ctd, make_container, net):
    free = make_container(net=net["name"], **{"no-filter": True})
    ip = address(ctd, free)
    other = ip.rsplit(".", 1)[0] + ".200"
    ctd.sh(free, f"ip addr add {other}/24 dev eth0")
    assert ctd.sh(free, f"ping -c1 -W2 -I {other} {net['gateway']}").code == 0


def _sink(host: str) -> tuple[socket.socket, dict]:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, 0))
    srv.listen(1)
    stats = {"bytes": 0, "samples": []}

    def run() -> None:
        conn, _ = srv.accept()
        start = time.monotonic()
        while True:
            data = conn.recv(65536)
            if not data:
                break
            stats["bytes"] += len(data)
            stats["samples"].append((time.monotonic() - start, stats["bytes"]))
        conn.close()

    threading.Thread(target=run, daemon=True).start()
    return srv, stats


def test_rate_limit_holds_a_bulk_transfer_and_counters_rise(ctd, make_container, net):
    name = make_container(net=net["name"], rate="10mbit")
    before = ctd.instance(name)["nics"][0]
    srv, stats = _sink(net["gateway"])
    try:
        port = srv.getsockname()[1]
        # 8 MB at 10 Mbit/s takes ~6.7 s; measure the rate between 1 s and 5 s
        ctd.sh(name, f"dd if=/dev/zero bs=64k count=128 2>/dev/null | nc -w 10 {net['gateway']} {port}", timeout=60)
        time.sleep(0.3)
        samples = stats["samples"]
        window = [(t, b) for t, b in samples if 1.0 <= t <= 5.0]
        assert len(window) > 2
        rate = (window[-1][1] - window[0][1]) * 8 / (window[-1][0] - window[0][0])
        assert rate <= 11e6, f"{rate / 1e6:.1f} Mbit/s"
        assert rate >= 5e6, f"{rate / 1e6:.1f} Mbit/s: the limit is 10"
        assert stats["bytes"] == 8 * 1024 * 1024
    finally:
        srv.close()
    after = ctd.instance(name)["nics"][0]
    assert after["tx_bytes"] - before["tx_bytes"] >= 8 * 1024 * 1024
    assert after["tx_packets"] > before["tx_packets"]
    ctd.ok("set", name, "--rate", "unlimited")
    assert ctd.instance(name)["nics"][0]["rate"] is None


def test_live_ipadd_and_ipdel(ctd, make_container, net):
    name = make_container(net=net["name"])
    first = address(ctd, name)
    extra = first.rsplit(".", 1)[0] + ".201"
    ctd.ok("set", name, "--ipadd", extra)
    assert extra in ctd.sh(name, "ip addr show eth0").out
    assert ctd.sh(name, f"ping -c1 -W2 -I {extra} {net['gateway']}").code == 0
    ctd.ok("set", name, "--ipdel", extra)
    assert extra not in ctd.sh(name, "ip addr show eth0").out
    assert extra not in ctd.instance(name)["nics"][0]["addresses"]


def test_restart_of_ctd_keeps_connectivity_and_counters(fresh_ctd):
    d = fresh_ctd
    netname = f"tn{uuid.uuid4().hex[:6]}"
    d.ok("network", "create", netname)
    gw = d.client.get(f"/1.0/networks/{netname}")["network"]["gateway"]
    d.ok("create", "netkeep", "--template", "busybox", "--net", netname)
    d.ok("start", "netkeep")
    d.sh("netkeep", f"ping -c3 -W2 {gw}")
    tx = d.instance("netkeep")["nics"][0]["tx_packets"]
    assert tx >= 3
    d.kill9()
    d.start()
    assert d.sh("netkeep", f"ping -c1 -W2 {gw}").code == 0
    assert d.instance("netkeep")["nics"][0]["tx_packets"] > tx
    d.ok("stop", "netkeep")
    stopped = d.instance("netkeep")["nics"][0]["tx_packets"]
    assert stopped > tx  # kept after stop, for billing
    d.ok("start", "netkeep")
    assert d.instance("netkeep")["nics"][0]["tx_packets"] >= stopped


def test_destroy_removes_every_trace(ctd, make_container, net):
    name = make_container(net=net["name"], rate="20mbit")
    inst = ctd.instance(name)
    host = inst["nics"][0]["host_name"]
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert host in links
    ctd.ok("destroy", "--force", name)
    deadline = time.monotonic() + 3  # the kernel frees a dead namespace's veths asynchronously
    while time.monotonic() < deadline:
        links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
        if host not in links:
            break
        time.sleep(0.05)
    assert host not in links and host[:2] + "i" + host[2:] not in links
    rules = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    assert host not in rules
    assert ctd.client.get(f"/1.0/networks/{net['name']}")["network"]["addresses_used"] == 0


def test_bad_network_input(ctd, make_container, net):
    def refused(status, method, path, body):
        with pytest.raises(ApiError) as err:
            ctd.client.request(method, path, body)
        assert err.value.status == status, (body, err.value.message)
        return err.value.message

    assert "overlaps" in refused(409, "POST", "/1.0/networks", {"name": "tnx1", "subnet": net["subnet"]})
    assert "CIDR" in refused(400, "POST", "/1.0/networks", {"name": "tnx1", "subnet": "10.1.2.300/24"})
    assert "interface" in refused(409, "POST", "/1.0/networks", {"name": "lo"})
    assert "invalid network name" in refused(400, "POST", "/1.0/networks", {"name": "Bad_Name"})
    a = make_container(net=net["name"], start=False)
    used = address(ctd, a)
    outside = "192.0.2.10"
    r = ctd.ctl("create", "tnbad1", "--template", "busybox", "--net", net["name"], "--ipadd", outside)
    assert r.code == 1 and "not a usable host address" in r.err
    r = ctd.ctl("create", "tnbad2", "--template", "busybox", "--net", net["name"], "--ipadd", used)
    assert r.code == 1 and "already used" in r.err
    r = ctd.ctl("create", "tnbad3", "--template", "busybox", "--ipadd", "10.1.2")
    assert r.code == 1 and "invalid address" in r.err
    r = ctd.ctl("create", "tnbad4", "--template", "busybox", "--net", net["name"], "--rate", "fast")
    assert r.code == 1 and "invalid rate" in r.err
    assert all(ctd.ctl("status", n).code == 1 for n in ("tnbad1", "tnbad2", "tnbad3", "tnbad4"))
    assert "used by" in refused(409, "DELETE", f"/1.0/networks/{net['name']}", None)
