"""Instance lifecycle: lookup, per-instance locks, power state, and dispatch to the rooms that do
the work — the instance's kind (ctd/instance/kind.py, through the registry in kinds.py),
provisioning (provision.py), settings (settings.py), snapshots (snapshots.py) and recovery after
a restart (recovery.py). How an instance is shown is views.py; the list, kept current, listing.py.

Every public coroutine that changes an instance takes its lock and re-reads its record first;
checks (check_*) run before the API answers 202 and raise 4xx errors (ctd.errors).
Each change publishes its lifecycle event (and an end of a run its exit event) on `events`
right after its state row is written (ctd/events/bus.py).
"""

from __future__ import annotations

import asyncio
import builtins  # list[...] below the method named list
import contextlib
import enum
import logging
import os
import signal
from pathlib import Path
from typing import Any

from cgroups import CgroupGroup, CgroupManager, Resources
from ctd import faults, validate
from ctd import limits as limits_mod
from ctd.config import DaemonConfig
from ctd.errors import Conflict, CtdError, NotFound
from ctd.events import model as ev
from ctd.events.bus import EventBus
from ctd.instance import admin, consolelog, exits, recovery, settings, suspend
from ctd.instance.backups import BackupChains
from ctd.instance.consolehub import ConsoleHub
from ctd.instance.container.driver import ContainerDriver, ExecProcess
from ctd.instance.context import InstanceContext, set_password
from ctd.instance.kind import InstanceKind
from ctd.instance.kinds import Kinds
from ctd.instance.listing import ListCache
from ctd.instance.power import restarting
from ctd.instance.provision import Provisioner
from ctd.instance.requests import CloneRequest, CreateRequest, SetRequest
from ctd.instance.reserve import NewInstance, Reservations, new_instance
from ctd.instance.settings import Settings
from ctd.instance.shapes import BeancounterRow
from ctd.instance.snapshots import Snapshots
from ctd.instance.views import ALIVE, InstanceViews
from ctd.network.manager import NetworkManager
from ctd.state import InstanceRecord, PowerState, StateDB
from ctd.storage.base import StorageDriver
from ctd.template.manager import TemplateManager

log = logging.getLogger("ctd.instances")


class StopOutcome(enum.Enum):
    """How a stop ended (ctctl says so: a forced stop is not a clean shutdown)."""

    CLEAN = "clean"              # the guest shut down on its stop signal / the ACPI button
    FORCED = "forced"            # it ignored that until the timeout and was killed
    KILLED = "killed"            # --kill: killed at once
    NOT_RUNNING = "not running"


def no_such_instance(ref: str | int) -> NotFound:
    """The answer for a name or id that does not exist, and for one of another project (the same
    bytes: no oracle)."""
    return NotFound(f"no instance named {ref!r}; 'ctctl list' shows the instances")


class InstanceManager:
    """The daemon's face for instances (the API handlers call it)."""

    def __init__(self, config: DaemonConfig, db: StateDB, storage: StorageDriver,
                 templates: TemplateManager, containers: ContainerDriver, cgroups: CgroupManager,
                 network: NetworkManager, events: EventBus | None = None) -> None:
        self.config = config
        self.events = events or EventBus()
        self.network = network
        self.db = db
        self.storage = storage
        self.templates = templates
        self.containers = containers
        self.cgroups = cgroups
        self.reservations = Reservations(config, db)
        self.ctx = InstanceContext(config, db, storage, templates, network, cgroups, self.reservations,
                                   cgroups.host_cpus(), limits_mod.block_device_of(storage.root))
        self.host_cpus = self.ctx.host_cpus
        self.io_device = self.ctx.io_device
        self.kinds = Kinds(self.ctx, containers, self._exited)
        self.provision = Provisioner(self.ctx, self.kinds)
        self.settings = Settings(self.ctx, self.kinds)
        self.backups = BackupChains(config, db, storage)   # schedules, chains, retention
        self._locks: dict[int, asyncio.Lock] = {}
        self._exit_tasks: dict[str, asyncio.Task[None]] = {}
        self._starting: set[str] = set()
        self.views = InstanceViews(config, storage, network, self.kinds, self.backups)
        self.snapshots = Snapshots(self, self.kinds, storage)
        self.listing = ListCache(db, self.views)
        containers.on_stopped = self._exited

    # ------------------------------------------------------------- kinds

    def probe_vms(self) -> dict[str, Any]:
        """The VM driver's state (GET /1.0, ctctl check); attaches it once QEMU is installed."""
        return self.kinds.vm.probe()

    def emit(self, rec: InstanceRecord, action: ev.Lifecycle, **metadata: Any) -> None:
        """A lifecycle event of rec (call it right after rec's new state is written)."""
        self.events.publish(ev.lifecycle(rec, action, **metadata))

    def kind_of(self, rec: InstanceRecord) -> InstanceKind:
        return self.kinds.of(rec)

    def is_running(self, rec: InstanceRecord) -> bool:
        return self.kinds.of(rec).is_running(rec)

    # ------------------------------------------------------------- lookup

    def get(self, ref: str | int) -> InstanceRecord:
        validate.instance_ref(str(ref))
        rec = self.db.get_instance(ref)
        if rec is None:
            raise no_such_instance(ref)
        return rec

    def lock(self, rec: InstanceRecord) -> asyncio.Lock:
        return self._locks.setdefault(rec.id, asyncio.Lock())

    def view(self, rec: InstanceRecord, cached: bool = False) -> dict[str, Any]:
        """The instance's whole view (views.py)."""
        return self.views.view(rec, cached)

    def brief(self, rec: InstanceRecord) -> dict[str, Any]:
        """What a state change answers with (views.py)."""
        return self.views.brief(rec)

    def group_of(self, rec: InstanceRecord) -> CgroupGroup:
        """The instance's cgroup handle (no side effect)."""
        return self.kinds.of(rec).group(rec)

    def summaries(self) -> builtins.list[dict[str, Any]]:
        """What a cluster node publishes of each instance (ctd/cluster/node.py): the list's
        columns from the rows alone, no counters read (it runs every few seconds)."""
        return [{"id": r.id, "name": r.name, "project": r.project, "type": r.type.value, "state": r.state.value,
                 "pid": r.pid if r.state in ALIVE else None, "template": r.template, "hostname": r.hostname,
                 "limits": limits_mod.shown(r.limits), "idmap_base": r.idmap_base, **admin.view_fields(r),
                 "nics": [{"name": f"eth{n.idx}", "network": n.network, "mode": n.mode.value, "mac": n.mac,
                           "addresses": n.addresses} for n in self.db.nics_of(r.id)]}
                for r in self.db.list_instances()]

    # ------------------------------------------------------------- provisioning (provision.py)

    def check_create(self, body: Any, project: str = "default") -> CreateRequest:
        """Everything that can be checked before work starts; raises 4xx errors."""
        return self.provision.check_create(body, project)

    async def create(self, req: CreateRequest) -> dict[str, Any]:
        rec = await self.provision.create(req)
        self.emit(rec, ev.Lifecycle.CREATED)
        return self.brief(rec)

    def check_clone(self, src: InstanceRecord, body: Any) -> CloneRequest:
        return self.provision.check_clone(src, body)

    async def clone(self, req: CloneRequest) -> dict[str, Any]:
        """A new instance from another's root (or snapshot): new id, id range, hostname, MAC, IP."""
        rec = await self.provision.clone(req, self.lock(req.source))
        self.emit(rec, ev.Lifecycle.CREATED, source=req.source.name)
        return self.brief(rec)

    def check_reinstall(self, rec: InstanceRecord, template: Any, restart: bool = False) -> None:
        self.provision.check_reinstall(rec, template, restart)

    async def reinstall(self, rec: InstanceRecord, template: str, restart: bool = False) -> dict[str, Any]:
        """A fresh root from the template (OpenVZ's reinstall): id, limits, NICs, keys and
        passwords stay; with restart, a running instance is stopped first and started after."""
        async with self.lock(rec):
            rec = self.get(rec.id)
            self.check_reinstall(rec, template, restart)
            async with restarting(self, rec) as rec:
                notes = await self.provision.reinstall(rec, template)
                self.emit(self.get(rec.id), ev.Lifecycle.REINSTALLED, template=template)
            return {**self.brief(self.get(rec.id)), "notes": notes}

    def reserve(self, name: str, instance_id: int | None, hint: str) -> int:
        """Hold a name and an id for a new instance until release() (see Reservations)."""
        return self.reservations.reserve(name, instance_id, hint)

    def reserve_idmap(self, instance_id: int, privileged: bool) -> int | None:
        return self.reservations.reserve_idmap(instance_id, privileged)

    def release(self, name: str, instance_id: int) -> None:
        self.reservations.release(name, instance_id)

    def new_instance(self, name: str, instance_id: int,
                     project: str = "default") -> contextlib.AbstractContextManager[NewInstance]:
        """The undo block of a new instance (restore uses it too): see reserve.new_instance."""
        return new_instance(self.reservations, self.storage, self.db, self.network, name, instance_id, project)

    def setup_guest(self, rec: InstanceRecord, rootfs: Path, userpasswd: tuple[str, str] | None = None) -> None:
        """Write the instance's settings into its root (runs in a thread)."""
        self.ctx.setup_guest(rec, rootfs, userpasswd)

    @staticmethod
    def set_password(rec: InstanceRecord, rootfs: Path, userpasswd: tuple[str, str]) -> None:
        set_password(rec, rootfs, userpasswd)

    def check_io_device(self, limits: dict[str, int]) -> None:
        self.ctx.check_io_device(limits)

    # ------------------------------------------------------------- start / stop

    def check_start(self, rec: InstanceRecord) -> None:
        admin.refuse_start(rec)
        if rec.state is PowerState.RUNNING or rec.name in self._starting:
            raise Conflict(f"{rec.name} is already running")
        if rec.state is PowerState.SUSPENDED:
            raise Conflict(f"{rec.name} is suspended; 'ctctl resume {rec.name}' lets it run on")
        if "ioprio" in rec.limits and self.cgroups.io_weight_file() is None:  # bfq gone since (a reboot)
            raise Conflict(f"{rec.name} has an ioprio: " + limits_mod.ioprio_unsupported(
                self.io_device, f"recreate it without --ioprio (its limits are shown by 'ctctl status {rec.name}')"))

    async def start(self, rec: InstanceRecord, paused: bool = False) -> dict[str, Any]:
        async with self.lock(rec):
            rec = self.get(rec.id)
            self.check_start(rec)
            await self.start_locked(rec, paused)
            return self.brief(rec)

    def check_suspend(self, rec: InstanceRecord) -> None:
        suspend.check_suspend(rec)

    def check_resume(self, rec: InstanceRecord) -> None:
        suspend.check_resume(rec)

    async def suspend(self, rec: InstanceRecord) -> dict[str, Any]:
        """Freeze a container / stop a VM's vCPUs (suspend.py)."""
        async with self.lock(rec):
            rec = self.get(rec.id)
            await suspend.suspend(self.kinds.of(rec), self.db, rec)
            self.emit(rec, ev.Lifecycle.SUSPENDED)
            return self.brief(rec)

    async def resume(self, rec: InstanceRecord) -> dict[str, Any]:
        """A suspended instance (or a VM started paused) runs on."""
        async with self.lock(rec):
            rec = self.get(rec.id)
            await suspend.resume(self.kinds.of(rec), self.db, rec)
            self.emit(rec, ev.Lifecycle.RESUMED)
            return self.brief(rec)

    async def hardware(self, rec: InstanceRecord) -> dict[str, Any]:
        return await self.kinds.of(rec).hardware(rec)

    async def start_locked(self, rec: InstanceRecord, paused: bool = False) -> None:
        """Start rec; the caller holds its lock (lock())."""
        admin.refuse_start(rec)   # every start path (restart, reboot, autostart) meets it
        self._starting.add(rec.name)
        try:
            resources = self.resources(rec)
            kind = self.kinds.require(self.kinds.of(rec))
            rec.pid, rec.pid_start = await kind.start(rec, resources, paused)
            rec.state = PowerState.SUSPENDED if paused else PowerState.RUNNING
            self.db.update_instance(rec)
            self.emit(rec, ev.Lifecycle.STARTED, pid=rec.pid)
            faults.point("start.after_db")
        finally:
            self._starting.discard(rec.name)

    def stop_timeout(self, rec: InstanceRecord) -> float:
        """How long a stop of it waits before it kills: its own setting, else the server's."""
        return float(rec.stop_timeout if rec.stop_timeout is not None else self.config.stop_timeout)

    async def stop(self, rec: InstanceRecord, timeout: float | None, kill: bool) -> dict[str, Any]:
        """timeout None: the instance's stop timeout (stop_timeout)."""
        async with self.lock(rec):
            rec = self.get(rec.id)
            timeout = self.stop_timeout(rec) if timeout is None else timeout
            how = await self.stop_locked(rec, timeout, kill)
            return {**self.brief(self.get(rec.id)), "stop": {"how": how.value, "timeout": timeout}}

    async def stop_locked(self, rec: InstanceRecord, timeout: float, kill: bool) -> StopOutcome:
        """Stop rec; the caller holds its lock (lock())."""
        if not self.is_running(rec):
            if rec.state is not PowerState.STOPPED:
                await self._mark_stopped(rec)
            return StopOutcome.NOT_RUNNING
        with contextlib.suppress(CtdError, OSError):   # it is killed below if it cannot be let run
            # a frozen init gets no signal, a paused guest no ACPI: suspended by ctd or by itself
            # (root of a privileged container can freeze its own cgroup)
            if rec.state is PowerState.SUSPENDED or await self.kinds.of(rec).is_suspended(rec):
                await self.kinds.of(rec).resume(rec)
        rec.state = PowerState.STOPPING
        self.db.update_instance(rec)
        faults.point("stop.after_mark_stopping")
        forced = await self.kinds.of(rec).stop(rec, timeout, kill)
        task = self._exit_tasks.get(rec.name)
        if task is not None:
            await asyncio.shield(task)
        if kill:
            return StopOutcome.KILLED
        return StopOutcome.FORCED if forced else StopOutcome.CLEAN

    async def restart(self, rec: InstanceRecord, timeout: float | None, kill: bool) -> dict[str, Any]:
        async with self.lock(rec):
            rec = self.get(rec.id)
            await self.stop_locked(rec, self.stop_timeout(rec) if timeout is None else timeout, kill)
            rec = self.get(rec.id)
            await self.start_locked(rec)
            return self.brief(rec)

    def _exited(self, name: str, status: int | None) -> None:
        """A driver saw an instance's main process end (init, QEMU)."""
        rec = self.db.get_instance(name)
        facts = self.containers.exit_facts.pop(name, None)
        report = exits.describe(status, requested=rec is not None and rec.state is PowerState.STOPPING,
                                killed=bool(facts and facts.killed), oom_kills=facts.oom_kills if facts else 0,
                                what=self.kinds.of(rec).process_name if rec is not None else "init")
        log.info("%s: %s", name, report.text)
        if rec is not None:
            self.events.publish(ev.Event(ev.EventType.EXIT, name, ev.project_of(rec), report.as_dict()))
        task = asyncio.get_running_loop().create_task(self._after_exit(name, status, rec, report))
        self._exit_tasks[name] = task
        task.add_done_callback(lambda t: self._exit_tasks.pop(name, None) if self._exit_tasks.get(name) is t else None)

    async def _after_exit(self, name: str, status: int | None, rec: InstanceRecord | None,
                          report: exits.ExitReport) -> None:
        if rec is None:
            return
        requested = rec.state is PowerState.STOPPING
        faults.point("stop.after_exit")
        await self._mark_stopped(rec, report)
        # reboot(2) inside a pid namespace ends its init with SIGHUP: the guest asked to reboot.
        rebooted = status is not None and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGHUP
        if rebooted and not requested:
            log.info("%s rebooted itself; starting it again", name)
            async with self.lock(rec):
                fresh = self.db.get_instance(rec.id)
                if fresh and fresh.state is PowerState.STOPPED:
                    try:
                        await self.start_locked(fresh)
                    except Exception:  # noqa: BLE001
                        log.exception("restarting %s after its reboot failed", name)

    async def _mark_stopped(self, rec: InstanceRecord, report: exits.ExitReport | None = None) -> None:
        kind = self.kinds.of(rec)
        await asyncio.to_thread(self.network.teardown, rec, kind.nics_go_with_it)
        faults.point("stop.after_nic_teardown")
        await kind.cleanup(rec)
        faults.point("stop.after_cgroup_cleanup")
        fresh = self.db.get_instance(rec.id)
        if fresh is not None:
            fresh.state, fresh.pid, fresh.pid_start = PowerState.STOPPED, None, None
            fresh.options = fresh.options.ended_run()  # what the run recorded ends with it
            if report is not None:
                fresh.last_exit = report.as_dict()
            self.db.update_instance(fresh)
            self.emit(fresh, ev.Lifecycle.STOPPED)

    # ------------------------------------------------------------- settings (settings.py)

    def resources(self, rec: InstanceRecord, removed: frozenset[str] = frozenset()) -> Resources:
        return self.ctx.resources(rec, removed)

    def check_set(self, body: Any) -> SetRequest:
        return settings.check_set(self.ctx, body)

    async def set_config(self, rec: InstanceRecord, req: SetRequest) -> dict[str, Any]:
        """ctctl set, all or nothing (see Settings.apply), answered with the instance's view."""
        async with self.lock(rec):
            rec = self.get(rec.id)
            admin.check_for(rec, req.admin, self.is_running(rec))
            notes: list[str] = []
            if req.admin.disabled and self.is_running(rec):   # with stop (check_for): stopped, then disabled
                how = await self.stop_locked(rec, self.stop_timeout(rec), kill=False)
                notes.append(f"stopped ({how.value}) before it was disabled")
                rec = self.get(rec.id)
            if req.changes_settings:
                notes += await self.settings.apply(rec, req)
                rec = self.get(rec.id)
            if not req.admin.empty:
                admin.apply(rec, req.admin)
                self.db.update_instance(rec)
            self.backups.apply(rec, req.backup)
            self.emit(self.get(rec.id), ev.Lifecycle.SET, notes=notes)
            return {**self.view(self.get(rec.id)), "notes": notes}

    async def rename(self, rec: InstanceRecord, body: Any) -> dict[str, Any]:
        """A stopped instance takes a new name (admin.rename: storage, snapshots and row follow)."""
        async with self.lock(rec):
            rec = self.get(rec.id)
            new = admin.check_rename(self.ctx, rec, body, self.is_running(rec) or rec.name in self._starting)
            old = rec.name
            notes = admin.rename(self.ctx, rec, new)
            self.views.forget(old)
            self.emit(self.get(rec.id), ev.Lifecycle.RENAMED, old_name=old)
            return {**self.view(self.get(rec.id)), "notes": notes}

    def beancounters(self, rec: InstanceRecord) -> builtins.list[BeancounterRow]:
        """OpenVZ's /proc/user_beancounters rows for one running container."""
        if not self.kinds.container.is_running(rec):
            raise Conflict(f"{rec.name} is not running: its counters live in its cgroup")
        return self.settings.beancounters(rec, self.views.disk(rec, cached=True))

    # ------------------------------------------------------------- destroy

    def check_destroy(self, rec: InstanceRecord, force: bool) -> None:
        admin.refuse_protected(rec, "destroy")
        if rec.state is not PowerState.STOPPED and not force:
            raise Conflict(f"{rec.name} is running; stop it first or destroy with --force")

    async def destroy(self, rec: InstanceRecord, force: bool) -> None:
        async with self.lock(rec):
            rec = self.get(rec.id)
            self.check_destroy(rec, force)
            if self.is_running(rec):
                await self.stop_locked(rec, 0, kill=True)
            await self.kinds.of(rec).destroy(rec)
            await asyncio.to_thread(self.network.forwards.drop_instance, rec.id)
            await asyncio.to_thread(self.storage.delete_instance, rec.name)
            faults.point("destroy.after_storage")
            self.db.delete_instance(rec.id)
            consolelog.remove(self.config.state_dir, rec.id)  # a crash before this: recovery sweeps it
            self.views.forget(rec.name)
            self.emit(rec, ev.Lifecycle.DESTROYED, state="destroyed")
        self._locks.pop(rec.id, None)

    # ------------------------------------------------------------- exec / console

    async def exec(self, ref: str, command: builtins.list[str], env: dict[str, str], cwd: str,
                   tty: bool) -> ExecProcess:
        rec = self.get(ref)
        suspend.refuse_if_suspended(rec, "run commands in it")
        proc: ExecProcess = await self.kinds.of(rec).exec(rec, command, env, cwd, tty)  # VMs refuse (NotSupported)
        return proc

    def console(self, ref: str) -> ConsoleHub:
        """A running instance's console: a container's pty, a VM's serial line."""
        rec = self.get(ref)
        suspend.refuse_if_suspended(rec, "use its console")
        hub: ConsoleHub = self.kinds.of(rec).console(rec)
        return hub

    def console_log(self, ref: str) -> bytes:
        """The last 1 MiB the instance's console printed, running or stopped (runs in a thread)."""
        return consolelog.read(consolelog.log_path(self.config.state_dir, self.get(ref).id))

    # ------------------------------------------------------------- after a daemon restart

    async def recover(self) -> dict[str, builtins.list[str]]:
        """Adopt instances that kept running; clean up what a crash left half-done (recovery.py)."""
        return await recovery.recover(self.ctx, self.kinds, self._mark_stopped)

