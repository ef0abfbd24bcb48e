"""Suspend and resume (OpenVZ's `vzctl suspend`, Incus' pause): the rules and the state change.

A container is frozen by the cgroup freezer (v1 freezer.state, v2 cgroup.freeze; the kernel must
report it frozen), a VM stopped by QMP `stop` (a VM started --paused counts as suspended). The
state row says `suspended`; it is written after the kernel/QEMU took the change, and recovery
asks the kernel/QEMU again (is_suspended) rather than trusting the row. The caller (the manager)
holds the instance's lock. While suspended: stop and destroy work (the manager resumes first, so
no stop timeout is spent on a frozen init and a VM sees its ACPI button), limits can be changed,
exec and console are refused (409) — a process entering a frozen group would hang.
"""

from __future__ import annotations

from ctd.errors import Conflict
from ctd.instance.kind import InstanceKind
from ctd.state import InstanceRecord, PowerState, StateDB


def check_suspend(rec: InstanceRecord) -> None:
    if rec.state is PowerState.SUSPENDED:
        raise Conflict(f"{rec.name} is already suspended")
    if rec.state is not PowerState.RUNNING:
        raise Conflict(f"{rec.name} is {rec.state.value}: only a running instance can be suspended")


def check_resume(rec: InstanceRecord) -> None:
    if rec.state is PowerState.RUNNING:
        raise Conflict(f"{rec.name} is running, not suspended: nothing to resume")
    if rec.state is not PowerState.SUSPENDED:
        raise Conflict(f"{rec.name} is {rec.state.value}, not suspended; 'ctctl start {rec.name}' starts it")


def refuse_if_suspended(rec: InstanceRecord, what: str) -> None:
    """exec, console: 409 while the instance is frozen."""
    if rec.state is PowerState.SUSPENDED:
        raise Conflict(f"{rec.name} is suspended: resume it first ('ctctl resume {rec.name}') to {what}")


async def suspend(kind: InstanceKind, db: StateDB, rec: InstanceRecord) -> None:
    check_suspend(rec)
    if not kind.is_running(rec):
        raise Conflict(f"{rec.name} is not running")
    await kind.suspend(rec)
    rec.state = PowerState.SUSPENDED
    db.update_instance(rec)


async def resume(kind: InstanceKind, db: StateDB, rec: InstanceRecord) -> None:
    check_resume(rec)
    if not kind.is_running(rec):
        raise Conflict(f"{rec.name} is not running")
    await kind.resume(rec)
    rec.state = PowerState.RUNNING
    db.update_instance(rec)
