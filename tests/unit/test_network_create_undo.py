"""A network whose bring-up fails part-way leaves no bridge and no row behind (a failure after
the bridge was made once left it on the host)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctd.network import networks as networks_mod
from ctd.network import sysctl
from ctd.network.manager import NetworkManager
from ctd.state import StateDB


def test_a_failed_bring_up_removes_the_bridge_and_records_nothing(tmp_path: Path, monkeypatch) -> None:
    db = StateDB(tmp_path / "ctd.db")
    net = NetworkManager(db, "ctd_unit", "zz")
    made, deleted = [], []
    monkeypatch.setattr(networks_mod.netlink, "ensure_bridge", lambda name, addresses, mtu: made.append(name))
    monkeypatch.setattr(networks_mod.netlink, "delete_link", deleted.append)

    def refuse(key: str, value: str) -> None:
        raise OSError(13, "Permission denied", key)

    monkeypatch.setattr(sysctl, "write", refuse)
    monkeypatch.setattr(networks_mod.os.path, "isdir", lambda path: True)  # the bridge "has" IPv6
    checked = networks_mod.NetworkRequest(name="brx", subnet4="10.99.1.0/24", subnet6=None, nat=False, mtu=1500)
    with pytest.raises(OSError):
        net.create_network(checked)
    assert made == ["brx"] and deleted == ["brx"]
    assert db.get_network("brx") is None
    db.close()
