"""The backup scheduler: every backup_tick seconds, each instance whose schedule is due gets a
backup operation (kind "backup", as `ctctl backup NAME` makes: the same check_backup and backup
entry points of Transfers, so every kind those back up gets schedules too).

Contract:
- One at a time per instance: an instance whose scheduled backup still runs is not started
  again (a manual backup meanwhile waits on the instance's lock).
- Survives restarts: the next due time is stored (backup_schedules.next_due). When a run is
  started, next_due moves to the first due time after *now*, so after downtime that missed N
  runs the instance gets one backup, not N; a ctd killed during a run does not repeat it (the
  partial file and snapshot are removed at the next start, see restore.discard_partial).
- A run that cannot start (the instance is gone, a check refuses it) is logged and waits for
  its next due time; a failing backup is a failed operation, as any.
- Time: the host's clock, or (tests only) the epoch seconds in backup_clock_file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from ctd.errors import CtdError
from ctd.instance.backups import BackupChains
from ctd.instance.schedule import parse_schedule
from ctd.operations import Operation, Operations

log = logging.getLogger(__name__)


class BackupScheduler:
    def __init__(self, chains: BackupChains, transfers: Any, operations: Operations, tick: float) -> None:
        self.chains, self.transfers, self.operations, self.tick = chains, transfers, operations, tick
        self.running: set[int] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _loop(self) -> None:
        while True:
            try:
                self.run_due()
            except Exception:   # the scheduler must outlive any one bad row
                log.exception("backup scheduler")
            await asyncio.sleep(self.tick)

    def run_due(self) -> list[Operation]:
        """Start an operation for each due schedule; returns them."""
        now = self.chains.clock()
        started = []
        for row in self.chains.store.scheduled():
            if row.next_due is None or row.next_due > now or row.instance_id in self.running:
                continue
            self.chains.store.set_next_due(row.instance_id, parse_schedule(row.schedule).next_due(now))
            rec = self.transfers.db.get_instance(row.instance_id)
            if rec is None:
                continue
            try:
                checked = dataclasses.replace(self.transfers.check_backup(rec, {}), scheduled=True)
            except CtdError as exc:
                log.warning("scheduled backup of %s not started: %s", rec.name, exc)
                continue
            op = self.operations.new("backup", rec.name)
            self.running.add(rec.id)
            log.info("scheduled backup of %s (operation %s)", rec.name, op.id)
            started.append(self.operations.start("backup", rec.name, self._run(rec, checked, op), op))
        return started

    async def _run(self, rec: Any, checked: Any, op: Operation) -> Any:
        try:
            return await self.transfers.backup(rec, checked, op)
        finally:
            self.running.discard(rec.id)
