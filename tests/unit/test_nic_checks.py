"""NIC requests (create --nic, nic add) and the dnsmasq files: pure checks on a real StateDB."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from ctctl.nic import parse_spec
from ctd.errors import InvalidRequest, NotFound
from ctd.network import dhcp, netlink, nics
from ctd.network.dhcp import DhcpServers
from ctd.state import InstanceRecord, InstanceType, NetworkRecord, NicMode, NicRecord, StateDB

LAN = NetworkRecord(name="lan0", bridge="lan0", subnet4="10.20.0.0/24", subnet6=None, nat=False,
                    created_at="2026-01-01T00:00:00+00:00", mtu=9000, dhcp=True)


def network(name: str) -> NetworkRecord:
    if name != "lan0":
        raise NotFound(f"no network named {name!r}")
    return LAN


def test_spec_parses_every_part() -> None:
    assert parse_spec("network=lan0,ip=10.20.0.5,ip=fd00::5,mtu=1400,vlan=10,rate=10mbit,no-filter") == {
        "network": "lan0", "addresses": ["10.20.0.5", "fd00::5"], "mtu": 1400, "vlan": 10, "rate": "10mbit",
        "filter": False}
    assert parse_spec("") == {"addresses": []}
    assert parse_spec("ip=192.0.2.4") == {"addresses": ["192.0.2.4"], "mode": "routed"}
    assert parse_spec("routed,network=lan0")["mode"] == "routed"


@pytest.mark.parametrize("spec, words", [("colour=red", "unknown part 'colour=red'"), ("mtu=big", "mtu must be a number"),
                                         ("routed=1", "unknown part")])
def test_bad_spec_is_refused(spec: str, words: str) -> None:
    with pytest.raises(click.BadParameter, match=words):
        parse_spec(spec)


@pytest.mark.parametrize("item, words", [
    ({"network": "lan0", "mtu": 9001}, "from 576 to 9000 (network lan0's MTU)"),
    ({"network": "lan0", "mtu": 575}, "invalid mtu 575"),
    ({"network": "lan0", "mtu": True}, "invalid mtu True"),
    ({"network": "lan0", "vlan": 0}, "invalid vlan 0"),
    ({"network": "lan0", "vlan": 4095}, "invalid vlan 4095"),
    ({"network": "lan0", "mode": "routed", "vlan": 5}, "vlan is for bridged NICs"),
    ({"network": "lan0", "speed": 1}, "speed"),
])
def test_bad_nic_is_refused(item: dict, words: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netlink, "vlan_filtering_supported", lambda: True)
    with pytest.raises(InvalidRequest) as err:
        nics.check_nic(item, "ctbr0", network)
    assert words in err.value.message


def test_good_nic_and_the_kernel_without_vlan_filtering(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netlink, "vlan_filtering_supported", lambda: True)
    req = nics.check_nic({"network": "lan0", "mtu": 9000, "vlan": 4094}, "ctbr0", network)
    assert (req.network, req.mtu, req.vlan, req.mode) == ("lan0", 9000, 4094, NicMode.BRIDGED)
    monkeypatch.setattr(netlink, "vlan_filtering_supported", lambda: False)
    with pytest.raises(InvalidRequest, match="CONFIG_BRIDGE_VLAN_FILTERING"):
        nics.check_nic({"network": "lan0", "vlan": 10}, "ctbr0", network)
    with pytest.raises(NotFound):
        nics.check_nic({"network": "wan9"}, "ctbr0", network)


def test_free_idx_takes_the_lowest_gap() -> None:
    def rec(idx: int) -> NicRecord:
        return NicRecord(instance_id=1, idx=idx, network=None, mode=NicMode.ROUTED, mac=f"02:00:00:00:00:0{idx}")
    assert nics.free_idx([]) == 0
    assert nics.free_idx([rec(0), rec(2)]) == 1
    assert nics.free_idx([rec(0), rec(1)]) == 2


def test_dnsmasq_files_come_from_ctds_allocation_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dhcp, "FILES_ROOT", tmp_path / "files")
    db = StateDB(tmp_path / "ctd.db")
    db.add_network(LAN)
    for iid, name in ((100, "web"), (101, "db")):
        db.add_instance(InstanceRecord(id=iid, name=name, type=InstanceType.CONTAINER, template="busybox",
                                       hostname=name, privileged=False, idmap_base=None, created_at="2026-01-01"))
    db.add_nic(NicRecord(instance_id=100, idx=0, network="lan0", mode=NicMode.BRIDGED, mac="02:00:00:00:00:01",
                         addresses=["10.20.0.2"]))
    db.add_nic(NicRecord(instance_id=101, idx=0, network="lan0", mode=NicMode.BRIDGED, mac="02:00:00:00:00:02",
                         addresses=["10.20.0.3"], vlan=7))   # tagged: no DHCP (it cannot reach dnsmasq)
    servers = DhcpServers(db, tmp_path / "run")
    hosts, dhcp_hosts = servers._files(LAN)
    assert hosts == "10.20.0.3 db\n10.20.0.2 web\n"
    assert dhcp_hosts == "02:00:00:00:00:01,10.20.0.2\n"
    argv = servers.argv(LAN)
    assert "--dhcp-range=10.20.0.0,static,255.255.255.0,1h" in argv
    assert {"--bind-interfaces", "--interface=lan0", "--except-interface=lo", "--listen-address=10.20.0.1",
            "--dhcp-ignore-names", "--dhcp-option=option:mtu,9000", "--conf-file=/dev/null"} <= set(argv)
    db.close()
