"""Storage replication of containers to a peer node (docs/cluster.md, "Replication"): the
owner's side. The receiving side is ctd/cluster/replica_store.py, failover ctd/cluster/ha.py.

An instance's replication is a key in etcd, `/ctd/replication/NAME` ({"target", "every", "ha"}),
not a column of the owner's database: the node that fails an HA instance over reads it while the
owner is dead. `ctctl set NAME --replicate-to NODE --every 5m` writes it (on the owner: the
request is forwarded there); `--replicate-to ""` deletes it (the target then drops its replica).

Every node runs one Replicator. For each of its own instances with a replication key that is
due, it takes a read-only snapshot of the container's root (STORAGE/.replicate/NAME/r-GEN) and
sends it with the migration's stream code (migrate.Target.stream: `btrfs send` into a chunked
PUT over mutual TLS) to the target, incrementally (`send -p`) against the generation the target
says it holds when this node still has that snapshot, else in full. The target checks the stream
as a migration's and keeps it (replica_store.py). Both sides keep the last KEEP generations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctd import validate
from ctd.cluster import keys
from ctd.cluster.migrate import Target, header_of, target_of
from ctd.errors import Conflict, CtdError, InvalidRequest, NotFound, NotSupported
from ctd.state import InstanceRecord, InstanceType
from ctd.storage.backup.btrfs_io import btrfs_of

if TYPE_CHECKING:
    from ctd.api.context import ApiContext
    from ctd.cluster.node import ClusterNode
    from ctd.storage.btrfs import BtrfsStorage

log = logging.getLogger("ctd.cluster.replicate")

KEEP = 2                       # generations kept on each side
MIN_EVERY, MAX_EVERY = 10, 7 * 86400
SOURCE_DIR = ".replicate"      # STORAGE/.replicate/NAME/r-GEN: this node's snapshots of its instances
BASE = "/1.0/cluster/replicas"
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
GEN = re.compile(r"r-([0-9]{1,9})")


@dataclass(frozen=True)
class Replication:
    """An instance's replication, as /ctd/replication/NAME holds it."""

    target: str       # the node that keeps the replica
    every: int        # seconds between two replications
    ha: bool = False  # started on the target when the owner goes offline (ha.py)

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "every": self.every, "ha": self.ha}

    @classmethod
    def from_json(cls, raw: Any) -> Replication | None:
        """None for a value that is not one (a hand-written key): it is ignored, never trusted."""
        if not isinstance(raw, dict):
            return None
        target, every, ha = raw.get("target"), raw.get("every"), raw.get("ha", False)
        if not isinstance(target, str) or not isinstance(every, int) or isinstance(every, bool) \
                or not isinstance(ha, bool) or not MIN_EVERY <= every <= MAX_EVERY:
            return None
        return cls(target, every, ha)


def parse_every(raw: Any) -> int:
    """`5m`, `30s`, `2h`, `1d` or a number of seconds; MIN_EVERY to MAX_EVERY."""
    text = str(raw).strip().lower() if isinstance(raw, (str, int)) and not isinstance(raw, bool) else ""
    match = re.fullmatch(r"([0-9]{1,7})([smhd]?)", text)
    seconds = int(match.group(1)) * UNITS[match.group(2) or "s"] if match else 0
    if not MIN_EVERY <= seconds <= MAX_EVERY:
        raise InvalidRequest(f"every must be an interval from {MIN_EVERY}s to 7d, e.g. 5m, 30s, 2h "
                             f"(not {str(raw)[:40]!r})")
    return seconds


def duration_text(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _btrfs(c: ApiContext) -> BtrfsStorage:
    bt = btrfs_of(c.instances.storage)
    if bt is None:
        raise NotSupported(f"this node's storage is {c.instances.storage.name}: containers replicate between nodes "
                           "with btrfs storage only (btrfs send/receive)")
    return bt


def _cluster(c: ApiContext) -> ClusterNode:
    if c.cluster is None or not c.cluster.member:
        raise Conflict("this node is no member of a cluster: there is no node to replicate to")
    return c.cluster


async def configure(c: ApiContext, rec: InstanceRecord, body: Any) -> dict[str, Any]:
    """PUT /1.0/instances/{ref}/replication: {"to": NODE or "", "every": "5m", "ha": bool}."""
    cluster = _cluster(c)
    body = validate.body_fields(body, {"to", "every", "ha"})
    current = await get_settings(cluster, rec.name)
    to = body.get("to", current.target if current else None)
    if to is None:
        raise InvalidRequest("name the node to replicate to: to (ctctl set NAME --replicate-to NODE)")
    if not isinstance(to, str):
        raise InvalidRequest("to must be a node's name ('ctctl cluster list' shows them), or \"\" to stop")
    if to == "":
        if set(body) - {"to"}:
            raise InvalidRequest("replication stopped (to \"\"): every and ha mean nothing without it")
        await cluster.etcd.delete(keys.replication(rec.name))
        log.info("replication of %s stopped", rec.name)
        return {"instance": rec.name, "replication": None}
    if rec.type is not InstanceType.CONTAINER:
        raise NotSupported("VMs do not replicate yet; containers do (btrfs send)")
    _btrfs(c)
    if to == cluster.name:
        raise InvalidRequest(f"{rec.name} is on {to}: replicate it to another node")
    if await cluster.etcd.get(keys.node(to)) is None:
        raise NotFound(f"no node {to[:60]!r} in the cluster; 'ctctl cluster list' shows them")
    every = parse_every(body["every"]) if "every" in body else (current.every if current else 300)
    ha = validate.boolean(body, "ha", current.ha if current else False)
    settings = Replication(to, every, ha)
    from ctd.cluster.etcd import put_json  # a standalone ctd never loads the etcd client
    await cluster.etcd.txn([], [put_json(keys.replication(rec.name), settings.to_json())])
    if current is not None and current.target != to:
        await cluster.etcd.delete(keys.replica(rec.name))   # the old target's replica is dropped by it
    log.info("replication of %s: to %s every %s%s", rec.name, to, duration_text(every), ", HA" if ha else "")
    return {"instance": rec.name, "replication": settings.to_json()}


async def get_settings(cluster: ClusterNode, name: str) -> Replication | None:
    kv = await cluster.etcd.get(keys.replication(name))
    return Replication.from_json(kv.json()) if kv is not None else None


async def listing(cluster: ClusterNode) -> list[dict[str, Any]]:
    """Every replication of the cluster with its replica's state: last replicated, lag."""
    settings = {keys.tail(kv.key, keys.REPLICATION): Replication.from_json(kv.json())
                for kv in await cluster.etcd.get_prefix(keys.REPLICATION)}
    replicas = {keys.tail(kv.key, keys.REPLICAS): kv.json() for kv in await cluster.etcd.get_prefix(keys.REPLICAS)}
    owners = {keys.tail(kv.key, keys.INSTANCES): kv.json().get("node")
              for kv in await cluster.etcd.get_prefix(keys.INSTANCES)}
    now = time.time()
    out = []
    for name, s in sorted(settings.items()):
        if s is None:
            continue
        held = replicas.get(name) or {}
        at = held.get("at") if held.get("node") == s.target else None
        out.append({"name": name, "node": owners.get(name), "target": s.target, "every": s.every, "ha": s.ha,
                    "generation": held.get("gen") if at else None,
                    "last_replicated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)) if at else None,
                    "lag": round(now - at, 1) if isinstance(at, (int, float)) else None,
                    "last_error": FAILURES.get(name)})
    return out


FAILURES: dict[str, str] = {}   # this node's last failed replication of each instance (shown in the list)


# ------------------------------------------------------------------ the owner's side


class SourceSnapshots:
    """This node's read-only snapshots of one instance, STORAGE/.replicate/NAME/r-GEN."""

    def __init__(self, bt: BtrfsStorage, name: str) -> None:
        self.bt, self.dir = bt, bt.root / SOURCE_DIR / name

    def gens(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.dir.iterdir() if (m := GEN.fullmatch(p.name)))

    def path(self, gen: int) -> Path:
        return self.dir / f"r-{gen}"

    def take(self, gen: int) -> Path:
        from ctd.storage.btrfs.lib import btrfsutil, errors
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.path(gen)
        with errors(f"snapshotting {self.dir.name} to replicate it"):
            btrfsutil.create_snapshot(self.bt.rootfs(self.dir.name), path, read_only=True)
        return path

    def keep(self, gens: set[int]) -> None:
        for gen in self.gens():
            if gen not in gens:
                self.drop(gen)

    def drop(self, gen: int) -> None:
        try:
            self.bt._remove_root(self.path(gen))
        except CtdError as exc:
            log.error("could not remove replication snapshot %s: %s", self.path(gen), exc.message)

    def drop_all(self) -> None:
        self.keep(set())
        with contextlib.suppress(OSError):
            self.dir.rmdir()


LOCKS: dict[str, asyncio.Lock] = {}   # one round of an instance at a time (a sync waits for the running one)


# Monotonic time each instance's last round began, whoever asked for it (the scheduler or a
# `replica sync`): the interval counts from the last round, as Proxmox's schedule does.
STARTED: dict[str, float] = {}


def busy(name: str) -> bool:
    lock = LOCKS.get(name)
    return lock is not None and lock.locked()


async def replicate(c: ApiContext, rec: InstanceRecord, unless_run_since: float | None = None) -> dict[str, Any] | None:
    """One round now: a snapshot sent to the target (incremental when it holds our parent).
    The scheduler's rounds pass `unless_run_since` (when it found the round due): a round begun
    since then (a `replica sync`) makes this one needless, and None is returned."""
    async with LOCKS.setdefault(rec.name, asyncio.Lock()):
        if unless_run_since is not None and STARTED.get(rec.name, 0.0) >= unless_run_since:
            return None
        STARTED[rec.name] = time.monotonic()
        try:
            result = await _replicate(c, c.instances.get(rec.id))
        except CtdError as exc:
            FAILURES[rec.name] = exc.message
            raise
    FAILURES.pop(rec.name, None)
    return result


async def _replicate(c: ApiContext, rec: InstanceRecord) -> dict[str, Any]:
    cluster, bt = _cluster(c), _btrfs(c)
    settings = await get_settings(cluster, rec.name)
    if settings is None:
        raise Conflict(f"{rec.name} has no replication; ctctl set {rec.name} --replicate-to NODE first")
    owner = await cluster.etcd.get(keys.instance(rec.name))
    if owner is None or owner.json().get("node") != cluster.name:
        raise Conflict(f"the cluster does not record {rec.name} as this node's: it is not replicated from here")
    target = await target_of(cluster, settings.target)
    with _worded():
        return await _send(c, bt, rec, target)


@contextlib.contextmanager
def _worded() -> Iterator[None]:
    """The migration's peer calls word their errors for a migration: said here for a replica."""
    try:
        yield
    except CtdError as exc:
        exc.message = exc.message.replace("the migration", "the replica")
        raise


async def _send(c: ApiContext, bt: BtrfsStorage, rec: InstanceRecord, target: Target) -> dict[str, Any]:
    held = await target.json("GET", f"{BASE}/{rec.name}")
    peer_gen = held.get("generation")
    snaps = SourceSnapshots(bt, rec.name)
    mine = snaps.gens()
    parent = peer_gen if isinstance(peer_gen, int) and peer_gen in mine else None
    gen = max([*mine, peer_gen if isinstance(peer_gen, int) else 0, 0]) + 1
    t0 = time.monotonic()
    path = await asyncio.to_thread(snaps.take, gen)
    try:
        header = header_of(c, rec)
        query = f"gen={gen}" + (f"&parent={parent}" if parent is not None else "")
        await target.json("POST", f"{BASE}/{rec.name}?{query}",
                          {"header": header, "id": rec.id, "project": rec.project,
                           "macs": [n.mac for n in c.db.nics_of(rec.id)]})
        argv = ["btrfs", "send", "-q", *(["-p", str(snaps.path(parent))] if parent is not None else []), str(path)]
        answer, sent = await target.stream(f"{BASE}/{rec.name}/stream", argv)
    except BaseException:
        await asyncio.to_thread(snaps.drop, gen)
        raise
    await asyncio.to_thread(snaps.keep, {gen, *([parent] if parent is not None else [])} if KEEP > 1 else {gen})
    took = time.monotonic() - t0
    log.info("replicated %s to %s: generation %d, %s, %d bytes in %.2f s", rec.name, target.node, gen,
             "incremental" if parent is not None else "full", sent, took)
    return {"instance": rec.name, "target": target.node, "generation": answer.get("generation", gen),
            "incremental": parent is not None, "bytes": sent, "seconds": round(took, 3)}


class Replicator:
    """The node's loop: each of its own instances with a due replication gets a round."""

    def __init__(self, c: ApiContext, tick: float = 2.0) -> None:
        self.c, self.tick = c, tick
        self.last: dict[str, float] = {}   # monotonic time of each instance's last round (tried)
        self._task: asyncio.Task[None] | None = None
        self._rounds: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        for task in [self._task, *self._rounds]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_due()
            except CtdError as exc:
                log.debug("replicator: %s", exc.message)
            except Exception:   # noqa: BLE001 - the loop outlives one bad key
                log.exception("replicator")
            await asyncio.sleep(self.tick)

    async def run_due(self) -> None:
        c = self.c
        cluster = c.cluster
        if cluster is None or not cluster.member or btrfs_of(c.instances.storage) is None:
            return
        configured = {keys.tail(kv.key, keys.REPLICATION): Replication.from_json(kv.json())
                      for kv in await cluster.etcd.get_prefix(keys.REPLICATION)}
        local = {r.name: r for r in c.db.list_instances()}
        now = time.monotonic()
        for name, settings in configured.items():
            rec = local.get(name)
            if settings is None or rec is None or busy(name) or settings.target == cluster.name:
                continue
            if now - max(self.last.get(name, 0.0), STARTED.get(name, 0.0)) < settings.every:
                continue
            self.last[name] = now
            task = asyncio.get_running_loop().create_task(self._round(rec, now))
            self._rounds.add(task)
            task.add_done_callback(self._rounds.discard)
        # this node's snapshots of instances it no longer replicates (stopped, destroyed, moved)
        bt = btrfs_of(c.instances.storage)
        base = bt.root / SOURCE_DIR if bt is not None else None
        if bt is not None and base is not None and base.is_dir():
            for path in base.iterdir():
                wanted = configured.get(path.name)
                if (wanted is None or path.name not in local) and not busy(path.name):
                    await asyncio.to_thread(SourceSnapshots(bt, path.name).drop_all)

    async def _round(self, rec: InstanceRecord, due_at: float) -> None:
        try:
            await replicate(self.c, rec, unless_run_since=due_at)
        except CtdError as exc:
            log.warning("replication of %s failed: %s (tried again in its interval)", rec.name, exc.message)
