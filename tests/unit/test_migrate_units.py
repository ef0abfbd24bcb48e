"""Pieces of container migration that need no daemon (the whole of it: tests/host/test_cluster_migrate.py)."""

from __future__ import annotations

import io

import pytest

from ctd.cluster.migrate import _answer, _Counting
from ctd.cluster.migrate_receive import _with_macs, require_peer
from ctd.cluster.peer import PeerReply
from ctd.errors import Forbidden, InvalidRequest, OperationFailed
from ctd.network.nics import NicRequest
from ctd.state import NicMode


def test_only_a_member_node_sends_migrations() -> None:
    assert require_peer("node:node-a") == "node-a"
    for who in ("admin", "token:ops", "", "nodes:x"):
        with pytest.raises(Forbidden, match="only another node of the cluster sends migrations"):
            require_peer(who)


def test_a_refusal_of_the_target_says_its_reason() -> None:
    with pytest.raises(OperationFailed, match="node node-b refused the migration: no space"):
        _answer("node-b", PeerReply(400, b'{"error": "no space"}', "application/json"))
    with pytest.raises(OperationFailed, match="refused the migration: 502"):
        _answer("node-b", PeerReply(502, b"<html>", "text/html"))
    assert _answer("node-b", PeerReply(200, b'{"round": 2}', "application/json")) == {"round": 2}


def test_a_round_counts_what_it_sent() -> None:
    body = _Counting(io.BytesIO(b"x" * 5000))
    while body.read(1024):
        pass
    assert body.count == 5000


class _Db:
    def used_macs(self) -> set[str]:
        return {"02:00:00:00:00:01"}


class _Ctx:
    db = _Db()


def _nic() -> NicRequest:
    return NicRequest(network="lan", mode=NicMode.BRIDGED, addresses=[], filter=True, rate=None)


def test_a_migrated_nic_keeps_its_mac_and_a_hostile_one_is_refused() -> None:
    nics = _with_macs(_Ctx(), [_nic()], ["02:aa:bb:cc:dd:ee"])  # type: ignore[arg-type]
    assert nics[0].mac == "02:aa:bb:cc:dd:ee"
    assert _with_macs(_Ctx(), [_nic()], None)[0].mac is None  # type: ignore[arg-type]
    for bad in (["ff:ff:ff:ff:ff:ff"], ["02:00:00:00:00:01"], ["02:AA:BB:CC:DD:EE\n"], [7], "02:aa:bb:cc:dd:ee",
                ["02:aa:bb:cc:dd:ee", "02:aa:bb:cc:dd:ef"]):
        with pytest.raises(InvalidRequest, match="migration: MAC|one MAC per NIC"):
            _with_macs(_Ctx(), [_nic()], bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="not a ctd MAC"):   # the same MAC twice
        _with_macs(_Ctx(), [_nic(), _nic()], ["02:aa:bb:cc:dd:ee"] * 2)  # type: ignore[arg-type]
