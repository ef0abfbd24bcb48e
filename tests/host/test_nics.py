"""Several NICs per instance (`create --nic`), NICs added to and removed from a running
container (`ctctl nic add/remove`), MTU per NIC, VLAN per NIC, and the bad input of each.

Traffic flows only between bridges ctd made for the test and containers in namespaces the
test made.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from ctctl.client import ApiError
from ctd.network import netlink
from tests.helpers.net import own_network


@pytest.fixture
def nets(ctd):
    with own_network(ctd, "tna") as one, own_network(ctd, "tnb", "--mtu", "9000") as two:
        yield one, two


def nic(ctd, name, idx):
    return next(n for n in ctd.instance(name)["nics"] if n["name"] == f"eth{idx}")


def inside_addresses(ctd, name, ifname):
    r = ctd.sh(name, f"ip -o -4 addr show dev {ifname}")
    return r.code, r.out


def test_two_nics_on_two_networks_both_reachable_with_their_own_mtu(ctd, make_container, nets):
    one, two = nets
    a = make_container(nic=[f"network={one['name']}", f"network={two['name']},mtu=1400"])
    b = make_container(net=two["name"])
    eth0, eth1 = nic(ctd, a, 0), nic(ctd, a, 1)
    assert (eth0["network"], eth1["network"]) == (one["name"], two["name"])
    assert eth1["mtu"] == 1400 and eth0["mtu"] is None
    assert f"{eth1['mac']} {eth1['addresses'][0]} (host {eth1['host_name']}, filtered, mtu 1400)" in ctd.ok("status", a)
    assert ctd.sh(a, "cat /sys/class/net/eth1/mtu").out.strip() == "1400"
    assert ctd.sh(a, "cat /sys/class/net/eth0/mtu").out.strip() == "1500"
    assert open(f"/sys/class/net/{eth1['host_name']}/mtu").read().strip() == "1400"
    assert eth1["addresses"][0] in inside_addresses(ctd, a, "eth1")[1]
    assert ctd.sh(a, f"ping -c1 -W2 {one['gateway']}").code == 0
    assert ctd.sh(a, f"ping -c1 -W2 {nic(ctd, b, 0)['addresses'][0]}").code == 0
    assert ctd.sh(a, f"ping -c1 -W2 {two['gateway']}").code == 0


def test_nic_hot_add_then_remove_on_a_running_container(ctd, make_container, nets):
    one, two = nets
    a = make_container(net=one["name"])
    b = make_container(net=two["name"])
    ip_b = nic(ctd, b, 0)["addresses"][0]
    assert ctd.sh(a, f"ping -c1 -W1 {ip_b}").code != 0   # no way to b yet
    used_before = ctd.client.get(f"/1.0/networks/{two['name']}")["network"]["addresses_used"]

    out = ctd.ok("nic", "add", a, f"network={two['name']}")
    added = nic(ctd, a, 1)
    assert f"Added eth1 to {a} on {two['name']}" in out and added["addresses"][0] in out
    assert added["addresses"][0] in inside_addresses(ctd, a, "eth1")[1]
    assert ctd.sh(a, f"ping -c1 -W2 {ip_b}").code == 0
    assert os.path.exists(f"/sys/class/net/{added['host_name']}")

    # kept across a restart
    ctd.ok("restart", a)
    assert added["addresses"][0] in inside_addresses(ctd, a, "eth1")[1]
    assert ctd.sh(a, f"ping -c1 -W2 {ip_b}").code == 0

    assert f"Removed eth1 from {a}" in ctd.ok("nic", "remove", a, "eth1")
    assert [n["name"] for n in ctd.instance(a)["nics"]] == ["eth0"]
    assert ctd.sh(a, "test -e /sys/class/net/eth1").code != 0
    assert not os.path.exists(f"/sys/class/net/{added['host_name']}")
    assert ctd.sh(a, f"ping -c1 -W1 {ip_b}").code != 0
    assert added["host_name"] not in netlink.link_names()
    # the address went back to the pool, and the anti-spoofing rules of the NIC with it
    assert ctd.client.get(f"/1.0/networks/{two['name']}")["network"]["addresses_used"] == used_before
    rules = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    assert added["host_name"] not in rules
    assert ctd.sh(a, f"ping -c1 -W2 {one['gateway']}").code == 0  # eth0 untouched


def test_nic_added_to_a_stopped_container_comes_up_at_start(ctd, make_container, nets):
    one, two = nets
    a = make_container(net=one["name"], start=False)
    ctd.ok("nic", "add", a, f"network={two['name']},mtu=2000")
    assert nic(ctd, a, 1)["mtu"] == 2000
    # a clone gets NICs on the same networks with the same MTUs (new MACs and addresses)
    clone = ctd.unique()
    ctd.ok("clone", a, clone)
    try:
        assert [(n["network"], n["mtu"]) for n in ctd.instance(clone)["nics"]] == \
            [(one["name"], None), (two["name"], 2000)]
    finally:
        ctd.ctl("destroy", "--force", clone)
    ctd.ok("start", a)
    assert ctd.sh(a, "cat /sys/class/net/eth1/mtu").out.strip() == "2000"
    assert ctd.sh(a, f"ping -c1 -W2 {two['gateway']}").code == 0
    # the lowest free number is taken again after a removal
    ctd.ok("nic", "remove", a, "eth0")
    ctd.ok("nic", "add", a, f"network={one['name']}")
    assert sorted(n["name"] for n in ctd.instance(a)["nics"]) == ["eth0", "eth1"]
    assert ctd.sh(a, f"ping -c1 -W2 {one['gateway']}").code == 0


@pytest.mark.parametrize("body, status, words", [
    ({"vlan": 0}, 400, "invalid vlan 0"),
    ({"vlan": 4095}, 400, "invalid vlan 4095"),
    ({"vlan": "10"}, 400, "invalid vlan '10'"),
    ({"mtu": 9001}, 400, "from 576 to 9000"),
    ({"mtu": 100}, 400, "invalid mtu 100"),
    ({"network": "nosuchnet"}, 404, "no network named"),
    ({"bogus": 1}, 400, "bogus"),
])
def test_bad_nic_is_refused_and_nothing_changes(ctd, make_container, nets, body, status, words):
    _, two = nets
    a = make_container(net=two["name"])
    before = [(n["name"], n["addresses"]) for n in ctd.instance(a)["nics"]]
    with pytest.raises(ApiError) as err:
        ctd.client.request("POST", f"/1.0/instances/{a}/nics", {"network": two["name"], **body})
    assert err.value.status == status and words in err.value.message
    assert [(n["name"], n["addresses"]) for n in ctd.instance(a)["nics"]] == before
    assert ctd.sh(a, "test -e /sys/class/net/eth1").code != 0


def test_bad_nic_names_and_specs(ctd, make_container, nets):
    one, _ = nets
    a = make_container(net=one["name"])
    r = ctd.ctl("nic", "remove", a, "eth7")
    assert r.code == 1 and "has no NIC eth7" in r.err
    r = ctd.ctl("nic", "remove", a, "wlan0")
    assert r.code == 1 and "invalid NIC 'wlan0'" in r.err
    r = ctd.ctl("nic", "add", a, "network=x,colour=blue")
    assert r.code != 0 and "unknown part 'colour=blue'" in r.err
    r = ctd.ctl("create", ctd.unique(), "--template", "busybox", "--nic", f"network={one['name']}",
                "--net", one["name"])
    assert r.code != 0 and "--nic describes each NIC whole" in r.err
    r = ctd.ctl("create", ctd.unique(), "--template", "busybox", "--nic", f"network={one['name']},mtu=1500",
                "--nic", f"network={one['name']},mtu=99999")
    assert r.code == 1 and "invalid mtu 99999" in r.err
    assert ctd.instance(a)["nics"][0]["name"] == "eth0" and len(ctd.instance(a)["nics"]) == 1


@pytest.mark.skipif(netlink.vlan_filtering_supported(), reason="this kernel filters by VLAN: the test below runs")
def test_vlan_without_kernel_support_is_refused_naming_the_option(ctd, nets):
    one, _ = nets
    r = ctd.ctl("create", ctd.unique(), "--template", "busybox", "--nic", f"network={one['name']},vlan=10")
    assert r.code == 1 and "CONFIG_BRIDGE_VLAN_FILTERING" in r.err


@pytest.mark.skipif(not netlink.vlan_filtering_supported(),
                    reason="the host kernel has no CONFIG_BRIDGE_VLAN_FILTERING (the test above runs)")
def test_vlan_separates_containers_on_one_bridge(ctd, make_container, nets):
    one, _ = nets
    a10 = make_container(nic=f"network={one['name']},vlan=10")
    b10 = make_container(nic=f"network={one['name']},vlan=10")
    c20 = make_container(nic=f"network={one['name']},vlan=20")
    plain = make_container(net=one["name"])
    assert nic(ctd, a10, 0)["vlan"] == 10
    ip = {n: nic(ctd, n, 0)["addresses"][0] for n in (b10, c20, plain)}
    assert ctd.sh(a10, f"ping -c1 -W2 {ip[b10]}").code == 0
    assert ctd.sh(a10, f"ping -c1 -W1 {ip[c20]}").code != 0
    assert ctd.sh(a10, f"ping -c1 -W1 {ip[plain]}").code != 0
    shown = subprocess.run(["bridge", "vlan", "show", "dev", nic(ctd, a10, 0)["host_name"]],
                           capture_output=True, text=True).stdout
    assert "10 PVID Egress Untagged" in shown
