"""A network's MTU (--mtu): the bridge, the veths on it and the container's eth0 all carry it."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from ctctl.client import ApiError
from tests.helpers.net import own_network


def mtu_of(ifname: str) -> int:
    return int(Path(f"/sys/class/net/{ifname}/mtu").read_text())


def test_jumbo_network_carries_its_mtu_to_every_nic(ctd, make_container):
    name = f"tm{uuid.uuid4().hex[:6]}"
    ctd.ok("network", "create", name, "--mtu", "65535")
    try:
        net = ctd.client.get(f"/1.0/networks/{name}")["network"]
        assert net["mtu"] == 65535
        assert "65535" in ctd.ok("network", "show", name)
        c = make_container(net=name)
        nic = ctd.instance(c)["nics"][0]
        assert mtu_of(net["bridge"]) == 65535 and mtu_of(nic["host_name"]) == 65535
        assert ctd.sh(c, "cat /sys/class/net/eth0/mtu").out.strip() == "65535"
        # one 60000-byte datagram each way, unfragmented
        assert ctd.sh(c, f"ping -c1 -W2 -s 60000 {net['gateway']}").code == 0
        ctd.ctl("destroy", "--force", c)
    finally:
        ctd.ctl("network", "delete", name)


@pytest.mark.parametrize("body, words", [
    ({"mtu": 100}, "invalid mtu 100"),
    ({"mtu": 70000}, "invalid mtu 70000"),
    ({"mtu": "9000"}, "invalid mtu '9000'"),
    ({"mtu": 1000, "ipv6": "fd00:1:2:3::/64"}, "from 1280"),
])
def test_bad_mtu_is_refused(ctd, body, words):
    name = f"tm{uuid.uuid4().hex[:6]}"
    with pytest.raises(ApiError) as err:
        ctd.client.request("POST", "/1.0/networks", {"name": name, **body})
    assert err.value.status == 400 and words in err.value.message
    assert name not in [n["name"] for n in ctd.client.get("/1.0/networks")["networks"]]


def test_small_mtu_network_has_no_ipv6_and_still_works(ctd, make_container):
    """Below 1280 bytes (IPv6's minimum) the kernel gives a link no IPv6 at all: ctd must not
    trip over the missing IPv6 settings of the bridge (schemathesis found a 500 here)."""
    with own_network(ctd, "tm", "--mtu", "576") as net:
        assert mtu_of(net["bridge"]) == 576
        assert not Path(f"/proc/sys/net/ipv6/conf/{net['bridge']}").exists()
        c = make_container(net=net["name"])
        assert ctd.sh(c, "cat /sys/class/net/eth0/mtu").out.strip() == "576"
        assert ctd.sh(c, f"ping -c1 -W2 {net['gateway']}").code == 0
        ctd.ctl("destroy", "--force", c)
