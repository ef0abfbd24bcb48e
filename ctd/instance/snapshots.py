"""Snapshots of an instance's root: take, list, delete, roll back.

The manager keeps locks and power; this room asks it for them through `Power` (a protocol the
manager implements, ctd/instance/power.py), so it reaches into nothing private. Every change takes
the instance's lock and re-reads its record first, like the manager's own coroutines; checks
(check_*, name) run before the API answers 202. A rollback with restart is power.restarting().
"""

from __future__ import annotations

import asyncio
from typing import Any

from ctd import validate
from ctd.errors import Conflict, NotFound
from ctd.events import model as ev
from ctd.instance import admin
from ctd.instance.kinds import Kinds
from ctd.instance.power import Power, restarting
from ctd.instance.shapes import SnapshotTaken
from ctd.state import InstanceRecord, PowerState
from ctd.storage.base import StorageDriver


def check_name(value: Any) -> str:
    return validate.instance_name(value, "snapshot name")


class Snapshots:
    def __init__(self, power: Power, kinds: Kinds, storage: StorageDriver) -> None:
        self.power = power
        self.kinds = kinds
        self.storage = storage

    def list(self, rec: InstanceRecord) -> list[str]:
        return self.storage.list_snapshots(rec.name)

    def _require(self, rec: InstanceRecord, snap: str) -> None:
        if snap not in self.storage.list_snapshots(rec.name):
            raise NotFound(f"{rec.name} has no snapshot {snap!r}; 'ctctl snapshot-list {rec.name}' shows them")

    async def take(self, rec: InstanceRecord, snap: str) -> SnapshotTaken:
        p = self.power
        async with p.lock(rec):
            rec = p.get(rec.id)   # its name as it is now (a rename may have come first)
            extra = await self.kinds.of(rec).snapshot(rec, snap)   # a running VM's: live, consistency
            p.emit(rec, ev.Lifecycle.SNAPSHOT_CREATED, snapshot=snap)
        if extra is None:
            return SnapshotTaken(instance=rec.name, snapshot=snap)
        return SnapshotTaken(instance=rec.name, snapshot=snap, **extra)

    async def delete(self, rec: InstanceRecord, snap: str) -> None:
        self._require(rec, snap)
        p = self.power
        async with p.lock(rec):
            rec = p.get(rec.id)
            await asyncio.to_thread(self.storage.delete_snapshot, rec.name, snap)
            p.emit(rec, ev.Lifecycle.SNAPSHOT_DELETED, snapshot=snap)

    def check_rollback(self, rec: InstanceRecord, snap: str, restart: bool) -> None:
        admin.refuse_protected(rec, "rollback")
        self._require(rec, snap)
        if rec.state is not PowerState.STOPPED and not restart:
            raise Conflict(f"{rec.name} is running; stop it first or roll back with --restart")

    async def rollback(self, rec: InstanceRecord, snap: str, restart: bool) -> dict[str, Any]:
        p = self.power
        async with p.lock(rec):
            rec = p.get(rec.id)
            self.check_rollback(rec, snap, restart)
            async with restarting(p, rec) as rec:
                await self.kinds.of(rec).rollback(rec, snap)
                p.emit(p.get(rec.id), ev.Lifecycle.ROLLED_BACK, snapshot=snap)
            return p.view(p.get(rec.id))
