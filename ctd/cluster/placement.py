"""Placement of a new instance in a cluster: `create --node auto` (the default) or `--node NAME`.

The rule (docs/cluster.md, "Placement"), from what each node published at its last lease
renewal (`/ctd/alive/NAME`, at most a third of the lease TTL old, and at once after a create):

- a node is a candidate when it is online, not being evacuated (`cluster evacuate`), and has
  **room** for the instance's limits:
  - RAM: `ram` (the limit, not the barrier) <= min(MemAvailable, RAM total - the RAM limits its
    instances were promised); an instance without a RAM limit needs nothing here;
  - CPUs: `cpus` (a cpuset of that many CPUs) <= the node's CPU count;
  - disk: `diskspace` <= min(pool's free space, pool size - the diskspace limits promised);
- **spread, not pack**: of the candidates, the one with the most RAM left unpromised (total -
  promised, in whole GiB so that small differences do not outweigh the next rule), then the one
  with the fewest instances, then the first by name. So new instances go where the most room is
  left, and equal nodes take turns by name and count: the choice is deterministic.

`--node NAME` pins: that node, if it is a member, online, and has room; otherwise a clear error.
No node with room: a 409 listing each node's room. Nothing is claimed before the choice: the
chosen node claims the name and id itself when it takes the create.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cgroups import parse_size
from ctd.errors import Conflict, InvalidRequest, NotFound, Unavailable
from ctd.limits import UNLIMITED, human_size

GIB = 1 << 30


@dataclass(frozen=True)
class Needs:
    """What a new instance's limits ask of a node (0: nothing asked)."""

    ram: int = 0
    cpus: int = 0
    disk: int = 0

    def text(self) -> str:
        parts = [f"ram {human_size(self.ram)}" if self.ram else "",
                 f"cpus {self.cpus}" if self.cpus else "",
                 f"diskspace {human_size(self.disk)}" if self.disk else ""]
        return ", ".join(p for p in parts if p) or "no limits"


@dataclass(frozen=True)
class Room:
    """One member as placement sees it."""

    name: str
    online: bool
    ram: int = 0          # RAM an instance may still be promised
    ram_unpromised: int = 0
    cpus: int = 0
    disk: int = 0
    instances: int = 0
    evacuating: bool = False   # `cluster evacuate`: no room until `cluster restore`

    def lacks(self, needs: Needs) -> str:
        """Why the instance does not fit here ('' when it does)."""
        if not self.online:
            return "offline"
        if self.evacuating:
            return "evacuating ('ctctl cluster restore' ends that)"
        short = []
        if needs.ram > self.ram:
            short.append(f"{human_size(_floor_mib(self.ram))} RAM free")
        if needs.cpus > self.cpus:
            short.append(f"{self.cpus} CPU(s)")
        if needs.disk > self.disk:
            short.append(f"{human_size(_floor_mib(self.disk))} disk free")
        return ", ".join(short)


def _floor_mib(n: int) -> int:
    return max(0, n) // (1 << 20) * (1 << 20)


def _limit(value: Any) -> int:
    """A published (shown) size limit in bytes: '512M', '256M:512M' (barrier:limit), 'unlimited'."""
    if value is None:
        return 0
    text = str(value).rpartition(":")[2]
    if text in ("unlimited", "-", ""):
        return 0
    try:
        n = parse_size(text)
    except ValueError:
        return 0
    return 0 if n == UNLIMITED else n


def needs_of(limits: dict[str, int]) -> Needs:
    """From a create's normalised limits (ctd/limits.py normalise)."""
    def get(key: str) -> int:
        value = limits.get(key, 0)
        return 0 if value == UNLIMITED else int(value)
    return Needs(get("ram"), get("cpus"), get("diskspace"))


def promised(summaries: list[dict[str, Any]]) -> tuple[int, int]:
    """(RAM, disk) limits a node's instances were given, from their published summaries."""
    ram = disk = 0
    for s in summaries:
        limits = s.get("limits") or {}
        ram += _limit(limits.get("ram"))
        disk += _limit(limits.get("diskspace"))
    return ram, disk


def room_of(name: str, stats: dict[str, Any] | None, summaries: list[dict[str, Any]],
            evacuating: bool = False) -> Room:
    if stats is None:
        return Room(name, online=False, instances=len(summaries), evacuating=evacuating)
    ram_promised, disk_promised = promised(summaries)
    ram_unpromised = int(stats.get("ram_total") or 0) - ram_promised
    disk_total = int(stats.get("disk_total") or 0) or int(stats.get("disk_free") or 0)
    return Room(name, True,
                ram=min(int(stats.get("ram_free") or 0), ram_unpromised),
                ram_unpromised=ram_unpromised,
                cpus=int(stats.get("cpus") or 0),
                disk=min(int(stats.get("disk_free") or 0), disk_total - disk_promised),
                instances=len(summaries), evacuating=evacuating)


def choose(needs: Needs, rooms: list[Room], pinned: str | None) -> str:
    """The node to make the instance on (module docstring), or a 4xx/503 saying why none."""
    if pinned is not None:
        room = next((r for r in rooms if r.name == pinned), None)
        if room is None:
            raise NotFound(f"no node {pinned!r} in the cluster; 'ctctl cluster list' shows them, or use --node auto")
        if not room.online:
            raise Unavailable(f"node {pinned} is offline; choose another node or --node auto")
        lacks = room.lacks(needs)
        if lacks:
            raise Conflict(f"node {pinned} has no room for this instance ({needs.text()}): it has {lacks}; "
                           "choose another node, --node auto, or smaller limits")
        return pinned
    fits = [r for r in rooms if not r.lacks(needs)]
    if not fits:
        why = "; ".join(f"{r.name}: {r.lacks(needs)}" for r in sorted(rooms, key=lambda r: r.name)) or "no members"
        raise Conflict(f"no node of the cluster has room for this instance ({needs.text()}): {why}; "
                       "ask for smaller limits, or free room on a node")
    return min(fits, key=lambda r: (-(r.ram_unpromised // GIB), r.instances, r.name)).name


def node_choice(body: Any) -> str | None:
    """The create's "node": None for auto, else a node name (checked later against the members)."""
    value = body.get("node") if isinstance(body, dict) else None
    if value is None or value == "auto":
        return None
    if not isinstance(value, str) or not value:
        raise InvalidRequest("node must be a node's name or \"auto\"")
    return value
