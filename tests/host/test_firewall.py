"""The firewall per instance: real nft rules on the host end of real veths, real TCP between the
host side of a bridge the test made and containers on it (no traffic leaves for the outside)."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import subprocess
import threading
import time

import pytest

from ctctl.client import ApiError
from tests.helpers.net import own_network, unique_ipv6_prefix

PORT = 8000


@pytest.fixture
def net(ctd):
    with own_network(ctd, "fw", "--ipv6", unique_ipv6_prefix()) as network:
        yield network


def addresses(d, name):
    return d.instance(name)["nics"][0]["addresses"]


def serve(d, name):
    """A persistent TCP server in name on PORT that answers "hello" (in an exec of its own: it
    lasts until the container stops)."""
    threading.Thread(target=lambda: d.sh(name, f"nc -ll -p {PORT} -e echo hello", timeout=600),
                     daemon=True).start()


def reaches(address: str, timeout: float = 2.0) -> bool:
    """Whether the host gets "hello" from address:PORT."""
    try:
        with socket.create_connection((address, PORT), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(16).startswith(b"hello")
    except OSError:
        return False


def wait_reaches(address: str) -> None:
    deadline = time.monotonic() + 20  # the listener may take a moment on a busy host
    while not reaches(address):
        assert time.monotonic() < deadline, f"nothing answers on {address}:{PORT}"
        time.sleep(0.2)


def rules(d, name):
    return d.client.get(f"/1.0/instances/{name}/firewall")["firewall"]


def test_drop_rule_stops_tcp_and_counts(ctd, make_container, net):
    name = make_container(net=net["name"])
    ip4 = addresses(ctd, name)[0]
    serve(ctd, name)
    wait_reaches(ip4)

    assert "Added rule" in ctd.ok("firewall", name, "add", "in", "tcp", str(PORT), "drop", "--comment", "no web")
    assert reaches(ip4)  # added, but the firewall is not enabled yet
    ctd.ok("firewall", name, "enable")
    assert not reaches(ip4)
    fw = rules(ctd, name)
    assert fw["enabled"] and fw["active"]
    [rule] = fw["rules"]
    assert rule["packets"] >= 1 and rule["bytes"] > 0 and rule["comment"] == "no web"
    assert ctd.sh(name, f"ping -c1 -W2 {net['gateway']}").code == 0  # the rest still passes
    listed = ctd.ok("firewall", name, "list")
    assert "no web" in listed and "drop" in listed

    ctd.ok("firewall", name, "delete", str(rule["id"]))
    assert reaches(ip4)
    ctd.ok("firewall", name, "disable")
    assert rules(ctd, name)["rules"] == []


def test_accept_from_one_cidr_only_with_policy_drop(ctd, make_container, net):
    name = make_container(net=net["name"])
    other = make_container(net=net["name"])
    ip4, ip6 = addresses(ctd, name)
    serve(ctd, name)
    wait_reaches(ip4)
    ctd.ok("firewall", name, "add", "in", "tcp", str(PORT), "--from", f"{net['gateway']}/32", "accept")
    ctd.ok("firewall", name, "policy", "in", "drop")
    ctd.ok("firewall", name, "enable")

    assert reaches(ip4)                         # from the host's address on the bridge: allowed
    assert not reaches(ip6)                     # IPv6 from the host: no rule, policy drop
    assert ctd.sh(other, f"nc -w 2 {ip4} {PORT}").out.strip() != "hello"   # from a neighbour: dropped
    # replies of the container's own connections pass (the firewall remembers its flows)
    assert ctd.sh(name, f"ping -c1 -W2 {net['gateway']}").code == 0
    assert ctd.sh(other, f"ping -c1 -W2 {ip4}").code != 0   # a neighbour's echo request is dropped
    fw = rules(ctd, name)
    assert fw["rules"][0]["packets"] >= 1 and fw["policy_counters"]["in"]["packets"] >= 1

    ctd.ok("firewall", name, "add", "in", "tcp", str(PORT), "--from", net["ipv6"], "accept")
    assert reaches(ip6)


def test_rules_survive_a_ctd_restart_and_an_instance_restart(fresh_ctd):
    d = fresh_ctd
    with own_network(d, "fw") as network:
        d.ok("create", "fwkeep", "--template", "busybox", "--net", network["name"])
        d.ok("start", "fwkeep")
        ip4 = addresses(d, "fwkeep")[0]
        serve(d, "fwkeep")
        wait_reaches(ip4)
        d.ok("firewall", "fwkeep", "add", "in", "tcp", str(PORT), "reject")
        d.ok("firewall", "fwkeep", "enable")
        assert not reaches(ip4)
        d.kill9()
        d.start()
        assert not reaches(ip4)
        assert rules(d, "fwkeep")["active"]
        d.ok("restart", "fwkeep")
        serve(d, "fwkeep")
        time.sleep(1)
        assert not reaches(ip4)
        d.ok("firewall", "fwkeep", "disable")
        wait_reaches(ip4)
        d.ok("firewall", "fwkeep", "enable")
        d.ok("destroy", "--force", "fwkeep")
    # the rules went with the instance: from the kernel and from ctd's state
    assert "fwr_" not in subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    with contextlib.closing(sqlite3.connect(d.state_dir / "ctd.db")) as db:
        assert db.execute("SELECT COUNT(*) FROM firewall_rules").fetchone()[0] == 0


def test_another_instances_rule_and_bad_input_change_nothing(ctd, make_container, net):
    a = make_container(net=net["name"], start=False)
    b = make_container(net=net["name"], start=False)
    ctd.ok("firewall", b, "add", "in", "tcp", "22", "accept")
    theirs = rules(ctd, b)["rules"][0]["id"]
    r = ctd.ctl("firewall", a, "delete", str(theirs))
    assert r.code != 0 and "no firewall rule" in r.err
    assert [x["id"] for x in rules(ctd, b)["rules"]] == [theirs]

    bad = [
        ({"direction": "in", "proto": "tcp", "port": "70000", "action": "drop"}, "out of range"),
        ({"direction": "in", "proto": "tcp", "port": "90-80", "action": "drop"}, "range"),
        ({"direction": "in", "proto": "icmp", "port": "80", "action": "drop"}, "tcp or udp"),
        ({"direction": "in", "proto": "icmp", "from": "2001:db8::/32", "action": "drop"}, "icmpv6"),
        ({"direction": "in", "proto": "tcp", "from": "10.0.0.0/8", "to": "fd00::/8", "action": "drop"}, "versions"),
        ({"direction": "in", "proto": "tcp", "from": "10.0.0.300/8", "action": "drop"}, "invalid from"),
        ({"direction": "sideways", "proto": "tcp", "action": "drop"}, "direction"),
        ({"direction": "in", "proto": "tcp", "action": "maybe"}, "action"),
        ({"direction": "in", "proto": "tcp", "action": "drop", "comment": "x\n}; flush ruleset"}, "comment"),
        ({"direction": "in", "proto": "tcp", "action": "drop", "priority": 1}, "priority"),
    ]
    for body, said in bad:
        with pytest.raises(ApiError) as caught:
            ctd.client.request("POST", f"/1.0/instances/{a}/firewall/rules", body)
        assert caught.value.status == 400 and said in caught.value.message, (body, caught.value.message)
    with pytest.raises(ApiError) as caught:
        ctd.client.request("PATCH", f"/1.0/instances/{a}/firewall", {"policy_in": "reject"})
    assert caught.value.status == 400
    assert rules(ctd, a) == {**rules(ctd, a), "enabled": False, "policy_in": "accept", "rules": []}
    r = ctd.ctl("firewall", a, "add", "in", "tcp", "22", "80", "accept")
    assert r.code != 0


def test_an_accept_rule_never_lets_a_forged_source_out(ctd, make_container, net):
    name = make_container(net=net["name"])
    ip4 = addresses(ctd, name)[0]
    forged = ip4.rsplit(".", 1)[0] + (".201" if not ip4.endswith(".201") else ".202")
    # icmp, not any: the guest's own IPv6 router solicitations and MLD reports would count too
    ctd.ok("firewall", name, "add", "out", "icmp", "accept", "--comment", "every ping")
    ctd.ok("firewall", name, "policy", "out", "drop")
    ctd.ok("firewall", name, "enable")
    assert ctd.sh(name, f"ping -c1 -W2 {net['gateway']}").code == 0
    counted = rules(ctd, name)["rules"][0]["packets"]
    assert counted >= 1
    ctd.sh(name, f"ip addr add {forged}/24 dev eth0")
    assert ctd.sh(name, f"ping -c2 -W1 -I {forged} {net['gateway']}").code != 0
    # anti-spoofing dropped them before the firewall saw them: the accept rule counted none
    assert rules(ctd, name)["rules"][0]["packets"] == counted
