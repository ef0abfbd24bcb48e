"""A container's cgroups: standby inits staged in groups of their own ahead of a start, the
group a start makes (or takes over from its standby), and where an adopted init really is.

v1 hierarchies can rename a group: a standby forked ahead by the spawner is moved into
`standby-PID` off the start path, and a start renames that group to `ct-NAME` (no process
moves: a move waits for an RCU grace period, milliseconds). cgroup2 cannot rename: there the
directory keeps the standby's name, recorded as the instance's *fixed* name while it runs.
Only groups below this daemon's base are ever named here, and a record's fixed name is never
trusted: adoption reads where the init is from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re

from cgroups import CgroupError, CgroupGroup, CgroupManager, Resources
from cgroups.discovery import UNIFIED
from ctd import faults
from ctd.errors import OperationFailed
from ctd.instance.container import devices, features
from ctd.state import InstanceRecord

log = logging.getLogger(__name__)

# The only shape a recorded fixed name may have: the standby group the container started in.
STANDBY_GROUP = re.compile(r"standby-[1-9][0-9]{0,9}")


def cgroup_name(instance: InstanceRecord) -> str:
    return f"ct-{instance.name}"


def standby_group_name(pid: int) -> str:
    return f"standby-{pid}"


def destroy_group_quietly(group: CgroupGroup) -> None:
    """Kill what is left in it and remove it; a group that is gone or busy is no error here."""
    with contextlib.suppress(Exception):
        if group.exists():
            group.kill_all()
            group.destroy()


def attach(group: CgroupGroup, pid: int) -> None:
    """Move a container's init into its group (a start that could not take its standby's)."""
    try:
        group.attach(pid)
    except CgroupError as exc:
        raise OperationFailed(f"moving the container's init into its cgroups: {exc}") from None


def make_group(cgroups: CgroupManager, rec: InstanceRecord, resources: Resources, undo: contextlib.ExitStack,
               staged: CgroupGroup | None = None, staged_pid: int = 0) -> tuple[CgroupGroup, int]:
    """The container's cgroup with its limits: the standby's group renamed, or a new one.
    Returns it and the pid already in it (0 if none: init is moved in later)."""
    group: CgroupGroup | None = None
    holds = 0
    if staged is not None:
        try:
            group, holds = staged.rename(cgroup_name(rec)), staged_pid
        except CgroupError as exc:  # a stale ct-<name> left by a crash: init moves over
            log.warning("%s: %s; moving its init instead", rec.name, exc)
    if group is None:
        group = cgroups.group(cgroup_name(rec))
        group.create()
    faults.point("start.after_cgroup")
    undo.callback(destroy_group_quietly, group)
    # Before init runs (a staged standby sits in the group, but runs no guest code yet).
    try:
        group.restrict_devices(devices.ALLOWED + features.device_rules(rec.features), seal=rec.privileged)
    except CgroupError as exc:  # no container runs without its device list
        raise OperationFailed(f"starting {rec.name}: ctd cannot confine its devices on this host: {exc}; "
                              "'ctctl check' shows what the host lacks") from None
    group.apply(resources)
    if rec.options.systemd and not rec.privileged:
        # systemd inside manages its own subtree (init.scope, system.slice …)
        assert rec.idmap_base is not None   # an unprivileged container has its id range
        group.delegate(rec.idmap_base, rec.idmap_base)
    if group.fixed:
        rec.options = dataclasses.replace(rec.options, cgroup_fixed=dict(group.fixed))
    return group, holds


def verified_fixed(cgroups: CgroupManager, rec: InstanceRecord) -> dict[str, str]:
    """Where the adopted init (pid and start time checked by the caller) really is in the
    hierarchy that cannot rename (cgroup2): the kernel says so in /proc/PID/cgroup. Only a
    standby group right below this daemon's base counts; what the record says is not trusted."""
    bases = cgroups.base_dirs()
    kept: dict[str, str] = {}
    if UNIFIED in bases and not cgroups.renames_in(UNIFIED):
        try:
            lines = open(f"/proc/{rec.pid}/cgroup").read().splitlines()
        except OSError:
            lines = []
        for line in lines:
            if line.startswith("0::"):
                parent, name = os.path.split(line[3:].strip())
                if (STANDBY_GROUP.fullmatch(name) and bases[UNIFIED].endswith(parent)
                        and os.path.isdir(os.path.join(bases[UNIFIED], name))):
                    kept[UNIFIED] = name
    recorded = rec.options.cgroup_fixed
    if recorded and recorded != kept:
        log.warning("%s: its record names cgroup(s) %r, but its init is in %r; using what the kernel says",
                    rec.name, recorded, kept)
    return kept


class StandbyGroups:
    """Standby inits (forked ahead by the spawner) put in cgroups of their own ahead, v1 only.
    Off (enabled False) until recovery has run: it removes groups of no running container."""

    def __init__(self, cgroups: CgroupManager) -> None:
        self.cgroups = cgroups
        self.enabled = False
        self._staged: dict[int, CgroupGroup] = {}   # standby pid -> its group, ready
        self._staging: dict[int, asyncio.Future[CgroupGroup | None]] = {}  # being made: pid -> its thread's future

    def ready(self, pid: int) -> None:
        """The spawner's word: standby pid waits. Its group is made in a thread."""
        if not self.enabled or not any(self.cgroups.renames_in(k) for k in self.cgroups.base_dirs()):
            return
        future = asyncio.get_running_loop().run_in_executor(None, self._stage, pid)
        self._staging[pid] = future
        future.add_done_callback(lambda f: self._staged_done(pid, f))

    def _stage(self, pid: int) -> CgroupGroup | None:
        group = self.cgroups.group(standby_group_name(pid))
        try:
            group.create()
            pidfd = os.pidfd_open(pid)  # alive now, so pid is still our standby's number
            try:
                group.attach(pid)
            finally:
                os.close(pidfd)
        except (CgroupError, OSError):
            destroy_group_quietly(group)
            return None
        return group

    def _staged_done(self, pid: int, future: asyncio.Future[CgroupGroup | None]) -> None:
        group = None if future.cancelled() or future.exception() else future.result()
        if pid not in self._staging:  # gone (or taken by a start) meanwhile
            if group is not None and not self.enabled:  # shutting down: no executor to ask
                destroy_group_quietly(group)
            elif group is not None:
                asyncio.get_running_loop().run_in_executor(None, destroy_group_quietly, group)
            return
        del self._staging[pid]
        if group is not None:
            self._staged[pid] = group

    def gone(self, pid: int) -> None:
        """The spawner's word: standby pid died before a start took it."""
        self._staging.pop(pid, None)
        group = self._staged.pop(pid, None)
        if group is not None:
            asyncio.get_running_loop().run_in_executor(None, destroy_group_quietly, group)

    async def settle(self, pid: int) -> CgroupGroup | None:
        """A start got standby pid without asking for it (another start's request, or none,
        reached the spawner first). ctd may be moving it into its standby group right now:
        let that finish (its move must not come after the start's), and take the group out of
        the pool. Returns the group, to remove once init has moved out of it."""
        future = self._staging.get(pid)
        if future is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(future)  # _staged_done has run by now: it was added first
        return self._staged.pop(pid, None)

    def take(self) -> tuple[int, CgroupGroup | None]:
        """The oldest standby already in cgroups of its own: (pid, group), or (0, None)."""
        for pid in self._staged:
            return pid, self._staged.pop(pid)
        return 0, None

    async def drop_all(self) -> None:
        """At shutdown: the standbys go with the spawner, and so do their groups — also those a
        thread is making right now (waited for: a group made after this returned would keep
        ctd's base from being removed)."""
        self.enabled = False
        pending = list(self._staging.values())
        if pending:
            await asyncio.wait(pending, timeout=5)  # _staged_done has run for each by now
        staged = list(self._staged.values())
        self._staged.clear()
        self._staging.clear()

        def destroy_all() -> None:
            for group in staged:
                destroy_group_quietly(group)

        await asyncio.to_thread(destroy_all)
