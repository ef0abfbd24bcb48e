"""What the rooms around the manager ask of it (locks, records, power, events), and the one
"stop, act, restart" shape rollback and reinstall share.

`Power` is a protocol the manager implements, so snapshots.py, vm/devices.py and the like
reach into nothing private and import no manager. `restarting()` runs inside the instance's
lock: it stops a running instance, lets the caller act on it, and starts it again after; if the
act fails the instance stays stopped (as a half-done rollback must not run).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

from ctd.events import model as ev
from ctd.state import InstanceRecord


class Power(Protocol):
    """What the rooms need of the manager."""

    def get(self, ref: str | int) -> InstanceRecord: ...
    def lock(self, rec: InstanceRecord) -> asyncio.Lock: ...
    def is_running(self, rec: InstanceRecord) -> bool: ...
    def stop_timeout(self, rec: InstanceRecord) -> float: ...
    def emit(self, rec: InstanceRecord, action: ev.Lifecycle, **metadata: Any) -> None: ...
    def view(self, rec: InstanceRecord, cached: bool = False) -> dict[str, Any]: ...
    async def stop_locked(self, rec: InstanceRecord, timeout: float, kill: bool) -> Any: ...
    async def start_locked(self, rec: InstanceRecord, paused: bool = False) -> None: ...


@contextlib.asynccontextmanager
async def restarting(power: Power, rec: InstanceRecord) -> AsyncIterator[InstanceRecord]:
    """Stop rec if it runs (a clean stop, its own timeout), yield its record as it is now, and
    start it again once the body is done. The caller holds rec's lock. An exception in the body
    leaves the instance stopped and goes on up."""
    was_running = power.is_running(rec)
    if was_running:
        await power.stop_locked(rec, power.stop_timeout(rec), kill=False)
        rec = power.get(rec.id)
    yield rec
    if was_running:
        await power.start_locked(power.get(rec.id))
