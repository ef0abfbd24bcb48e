"""IPv6 anti-spoofing: forged source addresses and forged neighbour advertisements, crafted on
raw and transparent sockets by root inside a container. Each attack is shown to work through a
NIC made with --no-filter, and to be dropped at the host end by the default filter.

Traffic stays between the test's own bridge and containers in namespaces ctd made.
"""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from tests.helpers.net import own_network, unique_ipv6_prefix


@pytest.fixture
def lan6(ctd):
    with own_network(ctd, "ts", "--ipv6", unique_ipv6_prefix()) as net:
        yield net


def _v6(ctd, name: str) -> str:
    return next(a for a in ctd.instance(name)["nics"][0]["addresses"] if ":" in a)


FILTER = pytest.mark.parametrize("filtered", [True, False], ids=["filtered", "no-filter"])


@FILTER
def test_forged_neighbour_advertisement_never_reaches_the_host(ctd, make_container, lan6, filtered):
    """The attacker claims the victim's address in an unsolicited NA (override flag, its own MAC
    as target link-layer address): unfiltered, the host sends the victim's traffic to it."""
    attacker = make_container(net=lan6["name"], **({} if filtered else {"no-filter": True}))
    victim = make_container(net=lan6["name"])
    victim6 = _v6(ctd, victim)
    attacker_mac, victim_mac = (ctd.instance(n)["nics"][0]["mac"] for n in (attacker, victim))
    assert ctd.sh(victim, f"ping -6 -c1 -W2 {lan6['gateway6']}").code == 0  # the host learns the real MAC
    sent = ctd.sh(attacker, f"probe na6spoof eth0 {victim6}")
    assert sent.out.strip() == "sent", sent
    time.sleep(0.3)
    neigh = subprocess.run(["ip", "-6", "neigh", "show", victim6, "dev", lan6["bridge"]],
                           capture_output=True, text=True).stdout
    if filtered:
        assert attacker_mac not in neigh and victim_mac in neigh, neigh
        assert ctd.sh(victim, f"ping -6 -c1 -W2 {lan6['gateway6']}").code == 0
    else:
        assert attacker_mac in neigh, neigh  # the forgery works where nothing filters it


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.settimeout(1.5)
    return sock


def _received(sock: socket.socket) -> list[tuple[bytes, str]]:
    got = []
    try:
        while True:
            data, peer = sock.recvfrom(100)
            got.append((data, peer[0]))
    except TimeoutError:
        return got


@FILTER
@pytest.mark.parametrize("mode", ["bridged", "routed"])
def test_forged_ipv6_source_address_is_dropped(ctd, make_container, lan6, mode, filtered):
    """Datagrams to the host's gateway address, sent from the neighbour's address through a
    transparent socket (no need to even add the address): only the NIC's own source gets in."""
    options = {"net": lan6["name"], **({"routed": True} if mode == "routed" else {}),
               **({} if filtered else {"no-filter": True})}
    attacker, victim = make_container(**options), make_container(net=lan6["name"])
    own6, victim6 = _v6(ctd, attacker), _v6(ctd, victim)
    sink = _receiver(lan6["gateway6"])
    try:
        port = sink.getsockname()[1]
        assert ctd.sh(attacker, f"probe udpfrom {own6} {lan6['gateway6']} {port} own").out.strip() == "sent"
        assert (b"own", own6) in _received(sink)  # the path works for honest traffic
        assert ctd.sh(attacker, f"probe udpfrom {victim6} {lan6['gateway6']} {port} forged").out.strip() == "sent"
        forged = [peer for data, peer in _received(sink) if data == b"forged"]
    finally:
        sink.close()
    if filtered:
        assert forged == []
    else:
        assert forged and set(forged) == {victim6}
