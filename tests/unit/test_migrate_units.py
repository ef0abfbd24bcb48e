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
    from ctd.errors import Conflict   # a refusal before copying (limits, room) stays a 409 for the caller
    with pytest.raises(Conflict, match="node node-b refused the migration: project p: 0 instances of 0"):
        _answer("node-b", PeerReply(409, b'{"error": "project p: 0 instances of 0"}', "application/json"))


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


def test_snapshot_names_of_a_migration_are_checked_as_hostile() -> None:
    from ctd.cluster.migrate_receive import MAX_SNAPSHOTS, _snapshot_names
    assert _snapshot_names(None) == [] and _snapshot_names(["old", "new-2"]) == ["old", "new-2"]
    for bad in ("old", [".."], ["a/b"], ["../../etc"], [".new-x"], ["UP"], [7], ["x" * 64], ["123"],
                ["a", "a"], ["s"] * (MAX_SNAPSHOTS + 1), [None]):
        with pytest.raises(InvalidRequest, match="snapshot|migration"):
            _snapshot_names(bad)


def test_placement_gives_an_evacuating_node_no_room() -> None:
    from ctd.cluster.placement import Needs, choose, room_of
    stats = {"ram_total": 8 << 30, "ram_free": 8 << 30, "cpus": 4, "disk_total": 100 << 30, "disk_free": 90 << 30}
    rooms = [room_of("node-a", stats, [], evacuating=True), room_of("node-b", stats, [{"limits": {}}] * 5)]
    assert choose(Needs(ram=1 << 30), rooms, None) == "node-b"   # though a has fewer instances
    assert "evacuating" in rooms[0].lacks(Needs())
    from ctd.errors import Conflict
    with pytest.raises(Conflict, match="node-a has no room.*evacuating"):
        choose(Needs(), rooms, "node-a")
