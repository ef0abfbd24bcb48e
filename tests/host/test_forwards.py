"""Port forwards of NAT networks: DNAT from a host port to a container's listener, tried from a
"client" network namespace the test made, wired to a ctd that runs in a namespace of the test's
own (so the NAT network's forwarding is switched on there, never on the host)."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid

import pytest

from ctctl.client import ApiError
from tests.host.test_network_nat import in_netns, netns, netns_ctd  # noqa: F401 (fixtures)

HOST_SIDE, CLIENT_SIDE = "10.96.7.1", "10.96.7.2"


@pytest.fixture
def ctd_ns(netns_ctd):  # noqa: F811
    """netns_ctd with the busybox template built."""
    netns_ctd[0].client.run("POST", "/1.0/templates", {"name": "busybox"})
    return netns_ctd


@pytest.fixture
def client_ns(ctd_ns):
    """A namespace with a veth into ctd's: the client at .2, ctd's namespace at .1."""
    _, ns = ctd_ns
    name = f"ctdcli-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    outer, inner = f"fwo{uuid.uuid4().hex[:6]}", f"fwi{uuid.uuid4().hex[:6]}"
    try:
        for argv in (["ip", "link", "add", outer, "netns", ns, "type", "veth", "peer", "name", inner,
                      "netns", name],
                     ["ip", "-n", ns, "addr", "add", f"{HOST_SIDE}/30", "dev", outer],
                     ["ip", "-n", ns, "link", "set", outer, "up"],
                     ["ip", "-n", name, "addr", "add", f"{CLIENT_SIDE}/30", "dev", inner],
                     ["ip", "-n", name, "link", "set", inner, "up"],
                     ["ip", "-n", name, "link", "set", "lo", "up"],
                     ["ip", "-n", name, "route", "add", "default", "via", HOST_SIDE]):
            subprocess.run(argv, check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)  # its veth end goes, and the pair


def fetch(ns: str, address: str, port: int) -> str:
    r = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "busybox", "nc", "-w", "2", address, str(port)],
                       capture_output=True, text=True, timeout=20)
    return r.stdout.strip()


def test_forward_reaches_a_container_from_a_client_namespace_and_goes_with_delete(ctd_ns, client_ns):
    d, ns = ctd_ns
    d.ok("network", "create", "natfw", "--nat", "--subnet", "10.95.3.0/24")
    d.ok("create", "web", "--template", "busybox", "--net", "natfw")
    d.ok("start", "web")
    threading.Thread(target=lambda: d.sh("web", "nc -ll -p 80 -e echo hello", timeout=600), daemon=True).start()
    assert fetch(client_ns, HOST_SIDE, 8080) != "hello"  # no forward yet

    said = d.ok("network", "forward", "add", "natfw", f"{HOST_SIDE}:8080", "web:80")
    assert "Added forward" in said
    deadline = time.monotonic() + 20
    while fetch(client_ns, HOST_SIDE, 8080) != "hello":
        assert time.monotonic() < deadline, "the forward never reached the container's listener"
        time.sleep(0.3)
    [fwd] = d.client.get("/1.0/networks/natfw/forwards")["forwards"]
    assert fwd["instance"] == "web" and fwd["target"].startswith("10.95.3.")
    assert "web" in d.ok("network", "forward", "list", "natfw")

    # the same host port again, or one a host program listens on: 409, nothing added
    for body in ({"host_port": 8080, "instance": "web", "port": 81},
                 {"host_port": 8080, "instance": "web", "port": 80, "host_address": HOST_SIDE}):
        with pytest.raises(ApiError) as caught:
            d.client.request("POST", "/1.0/networks/natfw/forwards", body)
        assert caught.value.status == 409
    listener = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", "busybox", "nc", "-l", "-p", "8181"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while ":1FF5 " not in in_netns(ns, "cat", "/proc/net/tcp", "/proc/net/tcp6").stdout:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        r = d.ctl("network", "forward", "add", "natfw", "8181", "web:80")
        assert r.code != 0 and "listens" in r.err
    finally:
        listener.kill()
        listener.wait()
    for bad, said in ((["natfw", "70000", "web:80"], "port"), (["natfw", "8082", "web:0"], "port"),
                      (["natfw", "192.0.2.77:8082", "web:80"], "not an address of this host"),
                      (["natfw", "8082", "nosuch:80"], "no instance")):
        r = d.ctl("network", "forward", "add", *bad)
        assert r.code != 0 and said in r.err, (bad, r.err)
    assert len(d.client.get("/1.0/networks/natfw/forwards")["forwards"]) == 1

    # kept across a ctd restart
    d.kill9()
    d.start()
    assert fetch(client_ns, HOST_SIDE, 8080) == "hello"

    d.ok("network", "forward", "delete", "natfw", str(fwd["id"]))
    assert fetch(client_ns, HOST_SIDE, 8080) != "hello"
    assert "dnat" not in in_netns(ns, "nft", "list", "ruleset").stdout


def test_forwards_go_with_the_instance_and_need_nat(ctd_ns):
    d, ns = ctd_ns
    d.ok("network", "create", "plainfw", "--subnet", "10.95.4.0/24")
    d.ok("network", "create", "natfw2", "--nat", "--subnet", "10.95.5.0/24")
    d.ok("create", "p", "--template", "busybox", "--net", "plainfw")
    d.ok("create", "q", "--template", "busybox", "--net", "natfw2")
    r = d.ctl("network", "forward", "add", "plainfw", "8080", "p:80")
    assert r.code != 0 and "no NAT" in r.err
    r = d.ctl("network", "forward", "add", "natfw2", "8080", "p:80")   # p is not on natfw2
    assert r.code != 0 and "no IPv4 address on network natfw2" in r.err
    d.ok("network", "forward", "add", "natfw2", "8080", "q:80", "--proto", "udp")
    assert "dnat" in in_netns(ns, "nft", "list", "ruleset").stdout
    d.ok("destroy", "q")
    assert "dnat" not in in_netns(ns, "nft", "list", "ruleset").stdout
    assert d.client.get("/1.0/networks/natfw2/forwards")["forwards"] == []
