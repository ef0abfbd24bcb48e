"""create without --net gives a NIC on the daemon's default network (Incus and Docker users
expect one); --net none gives none. The default network here is the test's own bridge."""

from __future__ import annotations

import ipaddress
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, _start_daemon, _teardown


@pytest.fixture(scope="module")
def dctd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A ctd whose default network is a name of this module's (the bridge is made by a test
    or on first use; destroy_all at teardown deletes it)."""
    name = f"td{uuid.uuid4().hex[:6]}"
    d = _start_daemon(tmp_path_factory.mktemp("dflt"), "dflt", f'default_network = "{name}"\n')
    d.default_network = name  # type: ignore[attr-defined]
    yield d
    _teardown(d)


def inside_ipv4(ctd: Daemon, name: str) -> str:
    return ctd.sh(name, "ip -4 -o addr show").out


def free_subnet(ctd: Daemon, network: str) -> str:
    """Make `network` on a /24 no other network on this host uses (tests of other daemons may
    run at the same time); its prefix, e.g. '10.231.7.'."""
    for third in random.sample(range(256), 256):
        r = ctd.ctl("network", "create", network, "--subnet", f"10.231.{third}.0/24")
        if r.code == 0:
            return f"10.231.{third}."
        assert "overlaps" in r.err, r.err
    raise AssertionError("no free /24 in 10.231.0.0/16")


def test_create_without_net_gets_a_nic_on_the_default_network(dctd: Daemon) -> None:
    prefix = free_subnet(dctd, dctd.default_network)
    name = dctd.unique("dn")
    dctd.ok("create", name, "--template", "busybox")
    try:
        nics = dctd.instance(name)["nics"]
        assert len(nics) == 1 and nics[0]["network"] == dctd.default_network and nics[0]["mode"] == "bridged"
        address = nics[0]["addresses"][0]
        assert address.startswith(prefix) and address != prefix + "1"
        dctd.ok("start", name)
        assert f"inet {address}/24" in inside_ipv4(dctd, name)
        assert dctd.sh(name, f"ping -c1 -W2 {prefix}1").code == 0  # the host's end of the bridge
        assert address in dctd.ok("list")
    finally:
        dctd.ctl("destroy", "--force", name)


def test_net_none_gives_no_nic(dctd: Daemon) -> None:
    name = dctd.unique("nn")
    dctd.ok("create", name, "--template", "busybox", "--net", "none")
    try:
        assert dctd.instance(name)["nics"] == []
        dctd.ok("start", name)
        assert "eth0" not in dctd.sh(name, "ls /sys/class/net").out
    finally:
        dctd.ctl("destroy", "--force", name)
    r = dctd.ctl("create", dctd.unique("nn"), "--template", "busybox", "--net", "none", "--ipadd", "10.1.2.3")
    assert r.code != 0 and "--net none" in r.err
    r = dctd.ctl("network", "create", "none")
    assert r.code != 0 and "no NIC" in r.err


def test_the_default_network_is_made_on_first_use_without_nat(dctd: Daemon) -> None:
    dctd.ctl("network", "delete", dctd.default_network)  # the first test may have made it
    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    name = dctd.unique("fu")
    dctd.ok("create", name, "--template", "busybox")
    try:
        net = dctd.client.get(f"/1.0/networks/{dctd.default_network}")["network"]
        assert net["nat"] is False and net["used_by"] == [name]
        assert Path(f"/sys/class/net/{dctd.default_network}").exists()
        address = ipaddress.ip_address(dctd.instance(name)["nics"][0]["addresses"][0])
        assert address in ipaddress.ip_network(net["subnet"])
    finally:
        dctd.ctl("destroy", "--force", name)
        dctd.ctl("network", "delete", dctd.default_network)
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == forward
    assert not Path(f"/sys/class/net/{dctd.default_network}").exists()


def test_a_daemon_without_default_network_creates_no_nic(ctd: Daemon) -> None:
    """The suite's daemons run with default_network = "" (as a host that wants none)."""
    name = ctd.unique("nd")
    ctd.ok("create", name, "--template", "busybox")
    try:
        assert ctd.instance(name)["nics"] == []
        r = ctd.ctl("create", ctd.unique("nd"), "--template", "busybox", "--rate", "10mbit")
        assert r.code != 0 and "no default network" in r.err
    finally:
        ctd.ctl("destroy", "--force", name)
