"""Escape attempts that need the network or the storage pool (see also tests/host/own_network.py).

Traffic stays between the test's own bridge and containers in namespaces ctd made.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.helpers.net import own_network


@pytest.fixture
def lan(ctd):
    with own_network(ctd, "ts") as net:
        yield net


def _ip(ctd, name: str) -> str:
    return ctd.instance(name)["nics"][0]["addresses"][0]


def test_raw_socket_arp_spoofing_is_dropped_at_the_host_end(ctd, make_container, lan):
    """Root inside has CAP_NET_RAW in its namespace: it crafts ARP replies on a raw packet socket
    that claim the neighbour's address. The host must never map the victim's IP to the
    attacker's MAC."""
    attacker, victim = make_container(net=lan["name"]), make_container(net=lan["name"])
    victim_ip = _ip(ctd, victim)
    attacker_mac = ctd.instance(attacker)["nics"][0]["mac"]
    # the host learns the victim's real MAC first: a spoofed reply would overwrite that entry
    assert ctd.sh(victim, f"ping -c1 -W2 {lan['gateway']}").code == 0
    time.sleep(1.5)  # past the neighbour entry's locktime: an unfiltered forgery would now replace it
    sent = ctd.sh(attacker, f"probe arpspoof eth0 {victim_ip} {lan['gateway']}")
    assert sent.out.strip() == "sent", sent  # the forged frames did leave the container's raw socket
    neigh = subprocess.run(["ip", "neigh", "show", victim_ip], capture_output=True, text=True).stdout
    assert attacker_mac not in neigh
    assert ctd.sh(victim, f"ping -c1 -W2 {lan['gateway']}").code == 0


def test_forged_source_address_gets_nowhere(ctd, make_container, lan):
    attacker, victim = make_container(net=lan["name"]), make_container(net=lan["name"])
    victim_ip = _ip(ctd, victim)
    ctd.sh(attacker, f"ip addr add {victim_ip}/32 dev eth0")
    r = ctd.sh(attacker, f"ping -c2 -W1 -I {victim_ip} {lan['gateway']}")
    assert r.code != 0 and "0 packets received" in r.out
    assert ctd.sh(victim, f"ping -c1 -W2 {lan['gateway']}").code == 0


def test_filling_the_pool_past_the_quota_fails_with_edquot_and_spares_the_neighbour(ctd, make_container):
    if ctd.client.get("/1.0/storage")["storage"]["driver"] != "btrfs":
        pytest.fail("the test daemon should run on ctd's btrfs pool")
    greedy, neighbour = make_container(diskspace="16M"), make_container()
    r = ctd.sh(greedy, "dd if=/dev/urandom of=/root/fill bs=1M count=64 2>&1; sync; echo rc=$?")
    assert "Disk quota exceeded" in r.out
    assert ctd.sh(neighbour, "dd if=/dev/zero of=/root/f bs=1M count=24 2>/dev/null && sync && echo ok").out.strip() == "ok"
