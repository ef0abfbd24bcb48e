"""Snapshots of a running VM, and the other guest-agent-aware steps of a running VM's life.

Design (docs/vms.md "Live snapshots"): a VM's snapshot is the same thing whether it runs or not,
a reflink copy of disk.raw in snapshots/SNAP (storage.snapshot_vm_disk), so rollback, clone
from a snapshot and backup of a snapshot work unchanged. For a running VM ctd
1. asks the guest agent to freeze the guest's filesystems (guest-fsfreeze-freeze), when one
   answers; otherwise the snapshot is crash-consistent (like pulling the plug at that instant);
   then writes disk.raw's dirty host pages back (fdatasync) while the guest still runs, so the
   clone in the pause has next to nothing to flush;
2. pauses the vCPUs (QMP stop: QEMU drains and flushes every in-flight write to disk.raw),
3. reflinks disk.raw (a metadata copy on btrfs/XFS: milliseconds), 4. resumes (QMP cont),
5. thaws. The guest stalls only between 2 and 4 (`paused_ms` in the answer); a failure at any
step resumes and thaws the VM, which runs on its disk as before, and leaves no snapshot.
RAM state (--memory) is not taken: a rollback boots the disk as it was.

A tenant controls the agent: a freeze that never answers costs at most FREEZE_TIMEOUT, a
freeze error only downgrades the snapshot to crash-consistent, and a thaw is always attempted
(the agent's own freeze also ends by itself when the guest's fsfreeze timeout fires).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from ctd.errors import Conflict, CtdError
from ctd.instance.shapes import LiveSnapshot
from ctd.instance.vm.agent import GuestAgent
from ctd.instance.vm.process import wait_exit
from ctd.instance.vm.qmp import Qmp
from ctd.storage.base import StorageDriver

FREEZE_TIMEOUT = 20.0
CRASH = "crash-consistent: the disk as a power cut would have left it (no guest agent froze the filesystems)"
FROZEN = "filesystems frozen: the guest agent flushed and froze {n} filesystem(s) for the copy"


@contextlib.asynccontextmanager
async def frozen(agent: GuestAgent | None, notes: list[str]) -> AsyncIterator[int | None]:
    """The guest's filesystems frozen for the block (their count), or None if no agent froze them
    (no agent: the caller's consistency text says so; a failed freeze: the reason in notes)."""
    count: int | None = None
    tried = agent is not None and await agent.ping()
    if agent is not None and tried:
        try:
            count = await agent.freeze(FREEZE_TIMEOUT)
        except CtdError as exc:
            notes.append(f"the guest agent could not freeze the filesystems ({exc.message})")
    try:
        yield count
    finally:
        if agent is not None and tried:   # also after a failed freeze: some may be frozen
            try:
                await agent.thaw()
            except CtdError as exc:
                notes.append(f"thawing the guest's filesystems failed ({exc.message}); the agent thaws "
                             "them itself after its timeout")


async def snapshot(storage: StorageDriver, name: str, qmp: Qmp | None, agent: GuestAgent | None,
                   snap: str) -> LiveSnapshot:
    """Snapshot a running VM's disk (see the module docstring); what the answer shows."""
    if qmp is None or not qmp.connected:
        raise Conflict(f"{name} runs without a QMP session to ctd; stop it to snapshot its disk")
    notes: list[str] = []
    async with frozen(agent, notes) as count:
        # written-back first, while the guest runs: the clone in the pause then has little to flush
        await asyncio.to_thread(_writeback, storage.instance_path(name) / "disk.raw")
        was_running = await qmp.status() == "running"
        started = time.monotonic()
        if was_running:
            await qmp.pause()
        copy_started = time.monotonic()
        try:
            await asyncio.to_thread(storage.snapshot_vm_disk, name, snap)
        finally:
            copy_ms = round((time.monotonic() - copy_started) * 1000, 1)
            if was_running:
                await qmp.cont()
            paused_ms = round((time.monotonic() - started) * 1000, 1)
    consistency = FROZEN.format(n=count) if count is not None else CRASH
    return LiveSnapshot(live=True, consistency=consistency, paused_ms=paused_ms if was_running else 0,
                        copy_ms=copy_ms, notes=notes)


def _writeback(disk: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(disk, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)


async def agent_shutdown(agent: GuestAgent | None, pid: int, timeout: float) -> bool:
    """After the ACPI button was ignored: guest-shutdown through the agent; True if QEMU then
    exited within timeout (the stop's timeout again, at least 30 s: a guest that obeys the agent
    still has to shut down)."""
    if agent is None or not await agent.ping():
        return False
    with contextlib.suppress(CtdError):
        await agent.shutdown()
        return await wait_exit(pid, timeout)
    return False
