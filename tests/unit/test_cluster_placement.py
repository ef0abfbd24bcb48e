"""Placement's rule (ctd/cluster/placement.py) on made-up nodes: room, spread, tie-break, pinning."""

from __future__ import annotations

import pytest

from ctd.cluster.placement import Needs, choose, promised, room_of
from ctd.errors import Conflict, NotFound, Unavailable

G = 1 << 30


def stats(ram_free: int, ram_total: int = 16 * G, cpus: int = 4, disk_free: int = 100 * G) -> dict[str, int]:
    return {"ram_free": ram_free, "ram_total": ram_total, "cpus": cpus, "disk_free": disk_free, "disk_total": 200 * G}


def test_spread_to_the_most_unpromised_ram_then_fewest_instances_then_name() -> None:
    half = [{"limits": {"ram": "8G"}}]
    rooms = [room_of("n1", stats(12 * G), half), room_of("n2", stats(12 * G + 5), []), room_of("n3", stats(12 * G), [])]
    assert choose(Needs(ram=G), rooms, None) == "n2"   # n2, n3 have 16G unpromised; same GiB: fewer, then name
    rooms[2] = room_of("n3", stats(12 * G), [{"limits": {}}])
    assert choose(Needs(ram=G), rooms, None) == "n2"
    rooms[1] = room_of("n2", stats(12 * G), [{"limits": {}}] * 2)
    assert choose(Needs(ram=G), rooms, None) == "n3"


def test_room_counts_promised_limits_cpus_and_disk() -> None:
    assert promised([{"limits": {"ram": "256M:1G", "diskspace": "unlimited"}}, {"limits": {"diskspace": "5G"}}]) \
        == (G, 5 * G)
    full = room_of("n1", stats(15 * G), [{"limits": {"ram": "15G"}}])
    assert full.lacks(Needs(ram=2 * G)) == "1G RAM free"
    assert room_of("n1", stats(8 * G, cpus=2), []).lacks(Needs(cpus=4)) == "2 CPU(s)"
    with pytest.raises(Conflict, match=r"no node of the cluster has room .*\(ram 2G\): n1: 1G RAM free; n2: offline"):
        choose(Needs(ram=2 * G), [full, room_of("n2", None, [])], None)


def test_pinning() -> None:
    rooms = [room_of("n1", stats(G), []), room_of("n2", None, [])]
    assert choose(Needs(), rooms, "n1") == "n1"
    with pytest.raises(Conflict, match="node n1 has no room for this instance"):
        choose(Needs(ram=2 * G), rooms, "n1")
    with pytest.raises(Unavailable, match="node n2 is offline"):
        choose(Needs(), rooms, "n2")
    with pytest.raises(NotFound, match="no node 'n9'"):
        choose(Needs(), rooms, "n9")
