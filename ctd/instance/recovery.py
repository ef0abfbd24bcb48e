"""After a daemon restart: adopt the instances that kept running, mark the others stopped, and
clean up what a crash left half-done (directories, records, cgroups, partial backups).

Only what this daemon's state records is ended: groups of recorded instances go; a standby
group (ctd's own naming) goes only if empty; anything else under the base is left and named.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable

from cgroups import CgroupError, CgroupManager
from ctd.instance import admin, consolelog, exits
from ctd.instance.container.groups import STANDBY_GROUP, destroy_group_quietly
from ctd.instance.context import InstanceContext
from ctd.instance.kinds import Kinds
from ctd.instance.reserve import CREATING
from ctd.lxcfs import LXCFS_GROUP
from ctd.state import InstanceRecord, PowerState
from ctd.storage.backup import discard_partial as discard_partial_backups

log = logging.getLogger("ctd.instances")
MarkStopped = Callable[[InstanceRecord, exits.ExitReport], Awaitable[None]]


def _remove_if_empty(cgroups: CgroupManager, name: str) -> bool:
    """rmdir a group that holds no process (the kernel refuses a populated one); never kills."""
    try:
        cgroups.group(name).destroy(timeout=0.2)
        return True
    except CgroupError:
        return False


def lost(rec: InstanceRecord) -> exits.ExitReport:
    """The exit report of an instance that ended while no ctd watched it."""
    report = exits.describe(None, requested=rec.state is PowerState.STOPPING, killed=False, lost=True)
    log.info("%s: %s", rec.name, report.text)
    return report


async def recover(ctx: InstanceContext, kinds: Kinds, mark_stopped: MarkStopped) -> dict[str, list[str]]:
    """Adopt instances that kept running; clean up what a crash left half-done."""
    report: dict[str, list[str]] = {"adopted": [], "stopped": [], "removed_dirs": [], "removed_cgroups": [],
                                    "removed_records": [], "left_cgroups": []}
    # a rename a crash cut: finished before leftover directories (the old name's) are swept
    report["renamed"] = admin.finish_renames(ctx)
    records = ctx.db.list_instances()
    await _adopt_or_stop(ctx, kinds, records, report, mark_stopped)
    # Filters of NICs whose container died with the old ctd go; those of adopted ones stay.
    if ctx.network.filters:
        await asyncio.to_thread(ctx.network.apply_filters)
    else:
        await asyncio.to_thread(ctx.network.remove_filters)
    await _remove_leftover_dirs(ctx, kinds, records, report)
    await _remove_leftover_groups(ctx, kinds, records, report)
    for key, names in report.items():
        if names:
            log.info("recovery: %s: %s", key, ", ".join(names))
    return report


async def _adopt_or_stop(ctx: InstanceContext, kinds: Kinds, records: list[InstanceRecord],
                         report: dict[str, list[str]], mark_stopped: MarkStopped) -> None:
    for rec in records:
        kind = kinds.of(rec)
        report["removed_dirs"] += kind.release_leftovers(rec)
        if rec.state is PowerState.STOPPED:
            continue
        adopted = await kind.adopt(rec)
        if adopted and (ctx.storage.instance_path(rec.name) / CREATING).exists():
            # a live migration's target QEMU whose ctd died before the guest ran here (cluster/vm_live.py):
            # ended, and the instance dropped with the others still being made (_remove_leftover_dirs)
            await kind.stop(rec, 0, True)
            await kind.cleanup(rec)
            await mark_stopped(rec, lost(rec))
            report["stopped"].append(rec.name)
        elif adopted:   # suspended or not: the freezer's / QEMU's word, not the row's
            rec.state = PowerState.SUSPENDED if await kind.is_suspended(rec) else PowerState.RUNNING
            ctx.db.update_instance(rec)
            report["adopted"].append(rec.name)
        else:
            await mark_stopped(rec, lost(rec))
            report["stopped"].append(rec.name)


async def _remove_leftover_dirs(ctx: InstanceContext, kinds: Kinds, records: list[InstanceRecord],
                                report: dict[str, list[str]]) -> None:
    storage = ctx.storage
    known = {r.name for r in records}
    for name in storage.instance_names():
        if name not in known:
            await asyncio.to_thread(storage.delete_instance, name)
            report["removed_dirs"].append(name)
    report["removed_dirs"] += await asyncio.to_thread(storage.discard_staging)
    report["removed_dirs"] += await asyncio.to_thread(storage.recover_partial)
    report["removed_dirs"] += await asyncio.to_thread(discard_partial_backups, storage)
    for rec in records:  # a destroy the crash interrupted after the root was deleted: finish it;
        # a create or clone it interrupted before the guest was set up: undo it
        kind = kinds.of(rec)
        if not kind.is_running(rec) and (not kind.has_storage(rec)
                                         or (storage.instance_path(rec.name) / CREATING).exists()):
            await asyncio.to_thread(storage.delete_instance, rec.name)
            ctx.db.delete_instance(rec.id)
            report["removed_records"].append(rec.name)
    live = {r.id for r in ctx.db.list_instances()}   # logs of destroyed instances (a crash cut the destroy)
    report["removed_dirs"] += [f"{consolelog.DIR_NAME}/{n}" for n in
                               await asyncio.to_thread(consolelog.sweep, ctx.config.state_dir, live)]


async def _remove_leftover_groups(ctx: InstanceContext, kinds: Kinds, records: list[InstanceRecord],
                                  report: dict[str, list[str]]) -> None:
    """Only groups of instances this state records are ctd's to end; a standby group (ctd's
    own naming) goes only if empty; anything else under the base is left alone and named."""
    cgroups = ctx.cgroups
    own = {kinds.of(r).group_name(r) for r in records}
    in_use = {os.path.basename(d) for r in records if kinds.of(r).is_running(r)
              for d in kinds.of(r).group(r).dirs().values()}
    for group_name in cgroups.list_groups():
        if group_name in in_use or group_name == LXCFS_GROUP:  # lxcfs outlives ctd
            continue
        if group_name in own:
            await asyncio.to_thread(destroy_group_quietly, cgroups.group(group_name))
            report["removed_cgroups"].append(group_name)
        elif STANDBY_GROUP.fullmatch(group_name) is not None and await asyncio.to_thread(_remove_if_empty, cgroups,
                                                                             group_name):
            report["removed_cgroups"].append(group_name)
        else:
            report["left_cgroups"].append(group_name)
    if report["left_cgroups"]:
        log.warning("recovery: cgroups under the base that no instance of %s records were left alone: %s",
                    ctx.config.state_dir, ", ".join(report["left_cgroups"]))

