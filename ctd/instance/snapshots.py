"""Snapshots of an instance's root: take, list, delete, roll back.

The manager keeps locks and power; this room asks it for them through `Power` (a protocol the
manager implements), so it reaches into nothing private. Every change takes the instance's lock
and re-reads its record first, like the manager's own coroutines; checks (check_*, name) run
before the API answers 202.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from ctd import validate
from ctd.errors import Conflict, NotFound
from ctd.events import model as ev
from ctd.instance import admin
from ctd.instance.kinds import Kinds
from ctd.state import InstanceRecord, PowerState
from ctd.storage.base import StorageDriver


class Power(Protocol):
    """What snapshots need of the manager."""

    def get(self, ref: str | int) -> InstanceRecord: ...
    def lock(self, rec: InstanceRecord) -> asyncio.Lock: ...
    def is_running(self, rec: InstanceRecord) -> bool: ...
    def stop_timeout(self, rec: InstanceRecord) -> float: ...
    def emit(self, rec: InstanceRecord, action: ev.Lifecycle, **metadata: Any) -> None: ...
    def view(self, rec: InstanceRecord, cached: bool = False) -> dict[str, Any]: ...
    async def stop_locked(self, rec: InstanceRecord, timeout: float, kill: bool) -> Any: ...
    async def start_locked(self, rec: InstanceRecord, paused: bool = False) -> None: ...


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

    async def take(self, rec: InstanceRecord, snap: str) -> dict[str, Any]:
        p = self.power
        async with p.lock(rec):
            rec = p.get(rec.id)   # its name as it is now (a rename may have come first)
            extra = await self.kinds.of(rec).snapshot(rec, snap)   # a running VM's: live, consistency
            p.emit(rec, ev.Lifecycle.SNAPSHOT_CREATED, snapshot=snap)
        return {"instance": rec.name, "snapshot": snap, **(extra or {})}

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
            was_running = p.is_running(rec)
            if was_running:
                await p.stop_locked(rec, p.stop_timeout(rec), kill=False)
            await self.kinds.of(rec).rollback(rec, snap)
            p.emit(p.get(rec.id), ev.Lifecycle.ROLLED_BACK, snapshot=snap)
            if was_running:
                await p.start_locked(p.get(rec.id))
            return p.view(p.get(rec.id))
