"""HA failover and fencing, and the cluster's background services beside membership
(docs/cluster.md, "Replication and HA"). One ClusterServices per member ctd:

- **replication** (replicate.Replicator): this node's instances to their targets; replicas kept
  here that nothing names any more are dropped (replica_store.collect).
- **election**: `/ctd/ha/leader` is taken with a create-if-absent transaction on the node's own
  lease, so it goes when the leader's lease lapses and another node takes it (etcd decides: no
  consensus here). Only the leader fails instances over.
- **failover** (leader): an HA instance whose owner node is offline (its `/ctd/alive` key gone,
  i.e. its lease lapsed) and whose replica node is online and holds a replica moves to that node
  in ONE etcd transaction: its name key (node = the replica node), its id key, its NICs' MAC and
  address keys, the replication reversed (to the old owner) and `/ctd/failovers/NAME` (what the
  old owner finds when it comes back) - compared with the owner still offline, the replica node
  online, the leader key unchanged and the name key unchanged. The replica node then makes the
  instance from the last replica and starts it if it ran (takeover, below). The data written
  since that replica is lost: the RPO is the interval.
- **takeover**: an instance etcd says is this node's, which this node has no row of but a replica
  of, is made from the replica (migrate_receive's begin and finish: the header checked as a
  restore's, the root a writable snapshot of the last generation).
- **stale copies**: an instance this node has, which etcd's failover record says moved away from
  it, is killed, its root kept as STORAGE/.failed-over/NAME-TIME (read-only) for the admin, and
  destroyed here; before the boot sequence of a restarted node, so it is never started again.
- **fencing**: this node's HA instances run only while its lease is sure to live. The watchdog
  (fence.py, a separate process) SIGKILLs them past the last renewal + TTL - MARGIN, also when
  ctd is killed or frozen; a live ctd stops them itself at that instant. A ctd stopping cleanly
  stops its HA instances before it revokes its lease (they fail over).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from ctd.cluster import keys, migrate_receive, replica_store
from ctd.cluster.replicate import Replication, Replicator
from ctd.errors import CtdError
from ctd.state import PowerState
from ctd.storage.backup.btrfs_io import btrfs_of

if TYPE_CHECKING:
    from ctd.api.context import ApiContext
    from ctd.cluster.etcd import KeyValue
    from ctd.state import InstanceRecord

log = logging.getLogger("ctd.cluster.ha")

TICK = 1.0          # election, failover and takeover checks
FENCE_TICK = 0.5    # the fence file's refresh
FAILOVERS = keys.ROOT + "failovers/"
STALE_DIR = ".failed-over"


def margin(ttl: int) -> float:
    """How long before the lease could lapse the fence acts (renewals come every TTL/3)."""
    return ttl / 4


class ClusterServices:
    def __init__(self, c: ApiContext) -> None:
        assert c.cluster is not None
        self.c, self.cluster = c, c.cluster
        self.replicator = Replicator(c)
        self.fence_file = c.config.state_dir / "fence.json"
        self.ha_names: set[str] = set()     # HA instances this node owns (as of the last tick)
        self.inherited = 0.0                # a previous ctd's deadline (its lease may still live)
        self.failovers: list[dict[str, Any]] = []   # done as leader: name, from, to, at
        self._tasks: list[asyncio.Task[None]] = []
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._making: set[str] = set()
        self._warned: set[str] = set()      # HA instances that could not fail over (logged once)
        self._written = ""                  # the fence file's last text

    async def start(self) -> None:
        """Before the boot sequence: stale copies of instances that failed over are removed (so
        autostart does not start them), the previous ctd's fence state taken over."""
        previous = replica_store_json(self.fence_file)
        if previous:
            self.ha_names = {str(i.get("name")) for i in previous.get("instances") or [] if isinstance(i, dict)}
            self.ha_names |= {str(n) for n in previous.get("ha") or []}
            deadline = previous.get("deadline")
            self.inherited = float(deadline) if isinstance(deadline, (int, float)) else 0.0
        with contextlib.suppress(CtdError, asyncio.TimeoutError):
            await asyncio.wait_for(self.remove_stale(), 10)
        self.write_fence()
        with (self.c.config.state_dir / "fence.log").open("ab") as errors:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-m", "ctd.cluster.fence", str(self.fence_file), str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors, start_new_session=True)
        self.replicator.start()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._loop()), loop.create_task(self._fence_loop())]

    async def stop(self) -> None:
        """ctd's clean stop: the HA instances stop here first (the lease goes next: they fail over)."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.replicator.stop()
        for rec in self._running_ha():
            log.warning("stopping HA instance %s: ctd stops, so its node goes offline and it fails over", rec.name)
            with contextlib.suppress(CtdError):
                await self.c.instances.stop(rec, None, False)
        self.fence_file.unlink(missing_ok=True)   # the watchdog ends
        if self._watchdog is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(self._watchdog.wait, 5)

    # ------------------------------------------------------------ loops

    async def _loop(self) -> None:
        while True:
            try:
                await self.step()
            except CtdError as exc:
                log.debug("ha: %s", exc.message)
            except Exception:   # noqa: BLE001 - the next tick tries again
                log.exception("ha step")
            await asyncio.sleep(TICK)

    async def step(self) -> None:
        cluster = self.cluster
        if not cluster.member or not cluster.lease:
            return
        await replica_store.collect(self.c)
        # what this node keeps replicas of may become its own (a failover): the renewal keeps their keys
        cluster.hold({str(r["name"]): int(r["id"]) for r in replica_store.local(self.c)})
        settings = await self._settings()
        owners = {keys.tail(kv.key, keys.INSTANCES): kv for kv in await cluster.etcd.get_prefix(keys.INSTANCES)}
        self.ha_names = {name for name, s in settings.items() if s.ha
                         and name in owners and owners[name].json().get("node") == cluster.name}
        if await self._leading() and await self._fail_over(settings, owners):
            owners = {keys.tail(kv.key, keys.INSTANCES): kv for kv in await cluster.etcd.get_prefix(keys.INSTANCES)}
        await self._take_over(owners)
        await self.remove_stale()

    async def _settings(self) -> dict[str, Replication]:
        out = {}
        for kv in await self.cluster.etcd.get_prefix(keys.REPLICATION):
            s = Replication.from_json(kv.json())
            if s is not None:
                out[keys.tail(kv.key, keys.REPLICATION)] = s
        return out

    async def _leading(self) -> bool:
        """Whether this node holds /ctd/ha/leader (taken when free, on this node's lease)."""
        from ctd.cluster.etcd import Compare, Get, put_json
        cluster = self.cluster
        result = await cluster.etcd.txn([Compare.missing(keys.HA_LEADER)],
                                        [put_json(keys.HA_LEADER, {"node": cluster.name}, cluster.lease)],
                                        [Get(keys.HA_LEADER)])
        if result.succeeded:
            log.info("ha: this node (%s) runs failovers now", cluster.name)
            return True
        held = result.ranges[0][0] if result.ranges and result.ranges[0] else None
        return held is not None and held.json().get("node") == cluster.name and held.lease == cluster.lease

    # ------------------------------------------------------------ failover (the leader)

    async def _fail_over(self, settings: dict[str, Replication], owners: dict[str, KeyValue]) -> bool:
        """Whether an instance was moved."""
        etcd, moved = self.cluster.etcd, False
        alive = {keys.tail(kv.key, keys.ALIVE) for kv in await etcd.get_prefix(keys.ALIVE)}
        replicas = {keys.tail(kv.key, keys.REPLICAS): kv.json() for kv in await etcd.get_prefix(keys.REPLICAS)}
        for name, s in sorted(settings.items()):
            kv = owners.get(name)
            owner = kv.json().get("node") if kv is not None else None
            if not s.ha or kv is None or not isinstance(owner, str) or owner in alive or owner == s.target:
                continue
            held = replicas.get(name) or {}
            if s.target not in alive or held.get("node") != s.target or held.get("source") != owner:
                if name in self._warned:
                    continue
                self._warned.add(name)
                log.warning("ha: %s's node %s is offline, but its replica node %s is %s; it cannot fail over",
                            name, owner, s.target, "offline" if s.target not in alive else "without a replica")
                continue
            moved = await self._move(name, kv, owner, s, held) or moved
        return moved

    async def _move(self, name: str, kv: KeyValue, owner: str, s: Replication, held: dict[str, Any]) -> bool:
        from ctd.cluster.etcd import Compare, Op, put_json
        etcd, value = self.cluster.etcd, kv.json()
        leader = await etcd.get(keys.HA_LEADER)
        if leader is None or leader.json().get("node") != self.cluster.name:
            return False
        ops: list[Op] = [
            put_json(kv.key, {**value, "node": s.target, "state": "failover"}),
            put_json(keys.replication(name), Replication(owner, s.every, s.ha).to_json()),
            put_json(FAILOVERS + name, {"from": owner, "to": s.target, "generation": held.get("gen"),
                                        "replicated_at": held.get("at"), "at": time.time(),
                                        "was": value.get("state")}),
        ]
        if isinstance(value.get("id"), int):
            ops.append(put_json(keys.instance_id(value["id"]), {"node": s.target, "name": name}))
        for prefix in (keys.MACS, keys.ADDRESSES, keys.IDMAPS):
            for claim in await etcd.get_prefix(prefix):
                data = claim.json()
                if data.get("node") == owner and data.get("instance") == name:
                    ops.append(put_json(claim.key, {**data, "node": s.target}))
        compare = [Compare.unchanged(kv.key, kv.mod_revision), Compare.missing(keys.alive(owner)),
                   Compare.exists(keys.alive(s.target)), Compare.unchanged(keys.HA_LEADER, leader.mod_revision)]
        result = await etcd.txn(compare, ops[:100])
        if result.succeeded:
            lag = time.time() - float(held.get("at") or 0)
            log.warning("ha: %s failed over from offline node %s to %s (replica generation %s, %.0f s old)",
                        name, owner, s.target, held.get("gen"), lag)
            self.failovers.append({"name": name, "from": owner, "to": s.target, "at": time.time()})
        return result.succeeded

    # ------------------------------------------------------------ takeover (the replica node)

    async def _take_over(self, owners: dict[str, KeyValue]) -> None:
        c, me = self.c, self.cluster.name
        bt = btrfs_of(c.instances.storage)
        if bt is None:
            return
        for name, kv in owners.items():
            if kv.json().get("node") != me or c.db.get_instance(name) is not None or name in self._making:
                continue
            state = replica_store.load(bt, name)
            if state is None or name in replica_store.BUSY:
                continue
            record = await self.cluster.etcd.get(FAILOVERS + name)
            was = record.json().get("was") if record is not None else None
            self._making.add(name)
            replica_store.BUSY.add(name)
            try:
                await self._make(bt, state, start=was in ("running", None))
            except CtdError as exc:
                log.error("ha: %s could not be made from its replica here: %s", name, exc.message)
            finally:
                replica_store.BUSY.discard(name)
                self._making.discard(name)

    async def _make(self, bt: Any, state: replica_store.ReplicaState, start: bool) -> None:
        c = self.c
        t0 = time.monotonic()
        inc = migrate_receive.begin(c, state.source, {"header": state.header, "id": state.instance_id,
                                                      "project": state.project, "macs": state.macs or None})
        inc.received, inc.nonce, inc.dropped = replica_store.snapshot(bt, state), state.nonce.encode(), state.dropped
        inc.rounds = len(inc.snapshots) + 1   # the replica stands for the root's round (a replica has no snapshots)
        try:
            await migrate_receive.finish(c, inc, start)
        except BaseException:
            inc.received = None   # the replica stays: abort removes only what the takeover made
            await migrate_receive.abort(c, inc)
            raise
        migrate_receive.done(inc)
        self.cluster.poke()
        log.warning("ha: %s made from its replica (generation %d, from %s) and %s in %.2f s", state.name, state.gen,
                    state.source, "started" if start else "left stopped", time.monotonic() - t0)

    # ------------------------------------------------------------ stale copies (the old owner)

    async def remove_stale(self) -> list[str]:
        """Instances of this node that failed over elsewhere: killed, root kept aside, destroyed."""
        from ctd.cluster.etcd import Compare, Delete
        cluster, c = self.cluster, self.c
        removed = []
        for kv in await cluster.etcd.get_prefix(FAILOVERS):
            record, name = kv.json(), keys.tail(kv.key, FAILOVERS)
            rec = c.db.get_instance(name)
            if record.get("from") != cluster.name or rec is None:
                continue
            owner = await cluster.etcd.get(keys.instance(name))
            if owner is None or owner.json().get("node") == cluster.name:
                continue
            await self._drop_stale(rec, str(record.get("to")))
            await cluster.etcd.txn([Compare.unchanged(kv.key, kv.mod_revision)], [Delete(kv.key)])
            removed.append(name)
        return removed

    async def _drop_stale(self, rec: InstanceRecord, to: str) -> None:
        c = self.c
        log.warning("ha: %s failed over to %s while this node was offline; its copy here is removed "
                    "(its root is kept read-only under %s)", rec.name, to, STALE_DIR)
        if c.instances.is_running(rec):
            await c.instances.stop(rec, 0, True)
        bt = btrfs_of(c.instances.storage)
        if bt is not None:
            from ctd.storage.btrfs.lib import btrfsutil, errors
            aside = bt.root / STALE_DIR
            aside.mkdir(mode=0o700, exist_ok=True)
            with errors(f"keeping {rec.name}'s root aside"):
                btrfsutil.create_snapshot(bt.rootfs(rec.name), aside / f"{rec.name}-{int(time.time())}",
                                          read_only=True)
        await c.instances.destroy(c.instances.get(rec.id), force=True)

    # ------------------------------------------------------------ fencing

    def _running_ha(self) -> list[InstanceRecord]:
        return [r for r in self.c.db.list_instances() if r.name in self.ha_names and r.state is PowerState.RUNNING]

    def deadline(self) -> float:
        renewed = self.cluster.renewed_at
        if not renewed:
            return self.inherited
        return renewed + self.cluster.settings.lease_ttl - margin(self.cluster.settings.lease_ttl)

    def write_fence(self) -> None:
        data = {"ctd": os.getpid(), "deadline": self.deadline(), "ha": sorted(self.ha_names),
                "instances": [{"name": r.name, "pid": r.pid, "start": r.pid_start} for r in self._running_ha()
                              if r.pid]}
        text = json.dumps(data)
        if text == self._written and self.fence_file.exists():
            return
        tmp = self.fence_file.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.fence_file)
        self._written = text

    async def _fence_loop(self) -> None:
        while True:
            try:
                self.write_fence()
                if time.monotonic() > self.deadline():
                    for rec in self._running_ha():
                        log.error("fencing: this node's lease was not renewed in time (etcd out of reach?); "
                                  "killing HA instance %s, which may fail over to %s", rec.name, "its replica node")
                        await self.c.instances.stop(rec, 0, True)
            except CtdError as exc:
                log.error("fencing: %s", exc.message)
            except Exception:   # noqa: BLE001 - fencing must go on
                log.exception("fencing")
            await asyncio.sleep(FENCE_TICK)


def replica_store_json(path: Any) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
