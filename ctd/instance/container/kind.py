"""Containers as an instance kind (ctd/instance/kind.py): the container driver, the template
root in the pool, NICs plugged into the new network namespace before init runs.

Wraps ContainerDriver without reaching into it; the manager calls this through the registry.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

from cgroups import CgroupGroup, Resources
from ctd import faults, guest
from ctd.errors import Conflict, InvalidRequest, OperationFailed
from ctd.instance import consolelog
from ctd.instance.consolehub import ConsoleHub
from ctd.instance.container import hostmounts
from ctd.instance.container.driver import ContainerDriver, ExecProcess, cgroup_name
from ctd.instance.context import InstanceContext, set_password
from ctd.instance.requests import CloneRequest, CreateRequest
from ctd.instance.reserve import NewInstance
from ctd.instance.rollback import Rollback
from ctd.network.manager import NicRequest
from ctd.network.netlink import InsideNic
from ctd.state import InstanceRecord, InstanceType
from ctd.state.options import InstanceOptions

FREEZE_TIMEOUT = 10.0   # seconds the kernel gets to stop every task of a container

log = logging.getLogger("ctd.instances")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class ContainerKind:
    """System containers: namespaces, cgroups and a root from a template."""

    type = InstanceType.CONTAINER
    process_name = "init"
    takes_io_uring = True
    nics_go_with_it = True   # a container's veths go with its network namespace

    def __init__(self, ctx: InstanceContext, driver: ContainerDriver) -> None:
        self.ctx = ctx
        self.driver = driver

    # ------------------------------------------------------------- shown

    def is_running(self, rec: InstanceRecord) -> bool:
        return rec.name in self.driver.running

    def has_storage(self, rec: InstanceRecord) -> bool:
        return self.ctx.storage.rootfs(rec.name).is_dir()

    def group(self, rec: InstanceRecord) -> CgroupGroup:
        return self.driver.group(rec)

    def group_name(self, rec: InstanceRecord) -> str:
        return cgroup_name(rec)

    def view_fields(self, rec: InstanceRecord) -> dict[str, Any]:
        rc = self.driver.running.get(rec.name)
        return {"console": bool(rc and rc.console), "vm": None, "features": list(rec.features),
                "mounts": [dict(m) for m in rec.mounts]}

    # ------------------------------------------------------------- provisioning

    def check_body(self, body: dict[str, Any]) -> None:
        if body.get("vm") is not None:
            raise InvalidRequest("vm options (disk, iso, profile …) are for --type vm only")
        if body.get("template") is None:
            raise InvalidRequest("missing field(s): template (e.g. 'busybox')")
        return None

    def check_limits(self, limits: dict[str, int]) -> None:
        """Every limit applies to a container."""

    def clone_body(self, src: InstanceRecord, name: str) -> dict[str, Any]:
        return {"name": name, "template": src.template, "hostname": name, "privileged": src.privileged}

    def check_reinstall(self, rec: InstanceRecord) -> None:
        """Containers can be reinstalled."""

    async def create(self, req: CreateRequest, new: NewInstance) -> InstanceRecord:
        ctx, name = self.ctx, req.name
        recipe = ctx.templates.recipe_of(req.template)
        base = ctx.reservations.reserve_idmap(req.id, req.privileged)
        rec = InstanceRecord(
            id=req.id, name=name, type=InstanceType.CONTAINER, template=req.template,
            hostname=req.hostname, privileged=req.privileged, idmap_base=base,
            limits=req.limits, created_at=_now(), init=list(recipe.init), stop_signal=recipe.stop_signal,
            options=InstanceOptions(systemd=recipe.systemd, network_style=recipe.network_style,
                                    ssh_keys=tuple(req.ssh_keys), timezone=req.timezone,
                                    nameservers=tuple(req.nameservers), io_uring=req.io_uring),
        )
        rootfs = await asyncio.to_thread(ctx.storage.create_instance, name, req.template)
        new.storage_made()
        faults.point("create.after_storage")
        if "diskspace" in req.limits:
            await asyncio.to_thread(ctx.storage.set_quota, name, req.limits["diskspace"])
            faults.point("create.after_quota")
        new.mark_creating()
        await asyncio.to_thread(ctx.network.prepare, req.nics)
        new.add_record(rec, req.nics)
        faults.point("create.after_db")
        await asyncio.to_thread(ctx.setup_guest, rec, rootfs, req.userpasswd)
        if req.userpasswd is not None:
            ctx.db.update_instance(rec)  # the password's hash, for reinstall
        new.commit()
        faults.point("create.after_guest")
        return rec

    async def clone(self, req: CloneRequest, new: NewInstance, src_lock: asyncio.Lock) -> InstanceRecord:
        """A new container from another's root (or snapshot): new id, id range, hostname, MAC, IP."""
        ctx, src, name = self.ctx, req.source, req.name
        base = ctx.reservations.reserve_idmap(req.new.id, src.privileged)
        rec = InstanceRecord(
            id=req.new.id, name=name, type=src.type, template=src.template, hostname=name,
            privileged=src.privileged, idmap_base=base, limits=dict(src.limits), created_at=_now(),
            init=list(src.init), stop_signal=src.stop_signal, options=src.options.copyable())
        nics = [NicRequest(n.network, n.mode, [] if n.network else [], n.filter, n.rate, n.mtu, n.vlan)
                for n in ctx.db.nics_of(src.id)]
        async with src_lock:
            rootfs = await asyncio.to_thread(ctx.storage.clone_instance, src.name, name, req.snapshot)
        new.storage_made()
        faults.point("clone.after_storage")
        if "diskspace" in rec.limits:
            await asyncio.to_thread(ctx.storage.set_quota, name, rec.limits["diskspace"])
        faults.point("clone.before_db")
        new.mark_creating()
        new.add_record(rec, [n for n in nics if n.network])
        faults.point("clone.after_db")
        await asyncio.to_thread(guest.new_identity, rootfs)
        await asyncio.to_thread(ctx.setup_guest, rec, rootfs)
        new.commit()
        return rec

    # ------------------------------------------------------------- power

    async def start(self, rec: InstanceRecord, resources: Resources, paused: bool) -> tuple[int, int | None]:
        network = self.ctx.network

        async def plug_nics(pid: int) -> list[InsideNic]:
            began = time.perf_counter()
            inside = await asyncio.to_thread(network.setup, rec, pid)
            faults.point("start.after_nics")
            if inside:
                log.debug("%s: NICs host side %.1f ms", rec.name, (time.perf_counter() - began) * 1000)
            return inside  # init addresses them itself before it execs

        for m in hostmounts.from_stored(rec.mounts):   # a symlink swapped in since create/set stops here
            hostmounts.check_source(m.source, self.ctx.config.state_dir)
        try:
            rc = await self.driver.start(rec, self.ctx.storage.rootfs(rec.name), resources, plug_nics,
                                         consolelog.log_path(self.ctx.config.state_dir, rec.id))
        except BaseException:
            await asyncio.to_thread(network.teardown, rec)
            raise
        return rc.pid, rc.start_time

    async def stop(self, rec: InstanceRecord, timeout: float, kill: bool) -> bool:
        """True if it had to be killed."""
        rc = self.driver.running.get(rec.name)
        await self.driver.stop(rec, timeout, kill)
        return rc is not None and rc.forced

    async def cleanup(self, rec: InstanceRecord) -> None:
        await self.driver.cleanup(rec)

    async def destroy(self, rec: InstanceRecord) -> None:
        faults.point("destroy.after_stop")
        await self.driver.cleanup(rec)
        faults.point("destroy.after_cgroup")

    async def suspend(self, rec: InstanceRecord) -> None:
        """Every process frozen by the cgroup freezer; returns once the kernel says frozen
        (a task stuck in the kernel can hold that up: then it is thawed again and refused)."""
        group = self.group(rec)

        def freeze() -> bool:
            group.freeze()
            if group.wait_frozen(FREEZE_TIMEOUT):
                return True
            group.thaw()
            return False

        if not await asyncio.to_thread(freeze):
            raise OperationFailed(f"{rec.name} did not freeze within {FREEZE_TIMEOUT:.0f} s (a process stuck "
                                  "in the kernel, e.g. on a hung NFS mount); it runs on — try again")

    async def resume(self, rec: InstanceRecord) -> None:
        await asyncio.to_thread(self.group(rec).thaw)

    async def is_suspended(self, rec: InstanceRecord) -> bool:
        """The kernel's word (the freezer), not the state row's."""
        return await asyncio.to_thread(self.group(rec).freezer_state) in ("frozen", "freezing")

    async def hardware(self, rec: InstanceRecord) -> dict[str, Any]:
        raise InvalidRequest(f"{rec.name} is not a VM")

    def console(self, rec: InstanceRecord) -> ConsoleHub:
        rc = self.driver.running.get(rec.name)
        if rc is None:
            raise Conflict(f"{rec.name} is not running; start it first")
        if rc.console is None:
            raise Conflict(f"the console of {rec.name} was lost when ctd restarted; "
                           f"'ctctl restart {rec.name}' gives it a new one")
        return rc.console

    async def exec(self, rec: InstanceRecord, command: list[str], env: dict[str, str], cwd: str,
                   tty: bool) -> ExecProcess:
        return await self.driver.exec(rec, command, env, cwd, tty)

    # ------------------------------------------------------------- storage

    async def snapshot(self, rec: InstanceRecord, snap: str) -> None:
        await asyncio.to_thread(self.ctx.storage.snapshot_instance, rec.name, snap)
        faults.point("snapshot.after_create")

    async def rollback(self, rec: InstanceRecord, snap: str) -> None:
        await asyncio.to_thread(self.ctx.storage.rollback, rec.name, snap)

    # ------------------------------------------------------------- settings

    def init_pid(self, rec: InstanceRecord) -> int | None:
        """The running container's init, None when it is not running."""
        rc = self.driver.running.get(rec.name)
        return rc.pid if rc is not None else None

    async def configure_nics(self, rec: InstanceRecord, inside: list[InsideNic]) -> None:
        """A running container's interfaces as the state now has them (set --ipadd/--ipdel)."""
        rc = self.driver.running.get(rec.name)
        if rc is not None:
            await self.driver.netconf(rc.pid, inside)

    def check_password_user(self, rec: InstanceRecord, user: str) -> None:
        guest.check_guest_has_user(self.ctx.storage.rootfs(rec.name), user)

    async def apply_limits(self, rec: InstanceRecord, before: InstanceRecord, new_limits: dict[str, int],
                           removed: frozenset[str], done: Rollback) -> None:
        """New limits into a running container's cgroup at once (the kernel may refuse one:
        then none of them stays)."""
        if rec.name not in self.driver.running:
            return
        old_limits = dict(before.limits)
        rec.limits = new_limits
        wanted = self.ctx.resources(rec, removed)
        # the old limits, with those that are new lifted again
        rec.limits = old_limits
        previous = self.ctx.resources(rec, frozenset(new_limits) - frozenset(old_limits))

        async def undo() -> None:
            await self.driver.update(before, previous, previous)

        done.done("limits", undo)
        rec.limits = new_limits  # update() reads more than cgroups from it (numpty, numfile)
        await self.driver.update(rec, wanted, previous)

    async def write_guest(self, rec: InstanceRecord, before: InstanceRecord, userpasswd: tuple[str, str] | None,
                          notes: list[str], done: Rollback) -> None:
        rootfs: Path = self.ctx.storage.rootfs(rec.name)

        async def undo() -> None:   # the old settings (and NICs, by then restored) written again
            await asyncio.to_thread(self.ctx.setup_guest, before, rootfs)

        done.done("guest settings", undo)
        await asyncio.to_thread(self.ctx.setup_guest, rec, rootfs)
        if userpasswd is not None:
            done.done(f"password of {userpasswd[0]}", None)
            await asyncio.to_thread(set_password, rec, rootfs, userpasswd)

    async def after_set(self, rec: InstanceRecord, changes: dict[str, int]) -> list[str]:
        return []

    # ------------------------------------------------------------- after a daemon restart

    def release_leftovers(self, rec: InstanceRecord) -> list[str]:
        return []

    async def adopt(self, rec: InstanceRecord) -> bool:
        running = self.driver.adopt(rec)
        if running is None:
            return False
        await asyncio.to_thread(self.ctx.network.adopt, rec, running.pid)
        return True

    def unavailable(self) -> str | None:
        return None   # the daemon does not start without cgroups and namespaces
