"""The container driver: spec -> spawn through the spawner -> supervise by pidfd."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import resource
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from cgroups import CgroupError, CgroupManager, Resources
from cgroups.discovery import UNIFIED

from ctd.errors import Conflict, OperationFailed
from ctd import faults
from ctd.instance.container import devices
from ctd.instance.container.console import Console
from ctd.instance.container.spawner import NO_PTY
from ctd.instance.container.spawner_client import SpawnerClient, first_reply
from ctd.instance.container.spec import (
    DEFAULT_NUMPTY, DEFAULT_PATH, SYSTEMD_TMPFS, ContainerSpec, ExecSpec, IdMap, mount_plan, to_wire,
)
from ctd.linux import capabilities, seccomp
from ctd.lxcfs import Lxcfs
from ctd.linux.proc import is_zombie, start_time, userns_owner
from ctd.network import netlink
from ctd.network.netlink import InsideNic
from ctd.state import InstanceRecord
from ctd.template.recipe import signal_number

log = logging.getLogger(__name__)

TTY_GID = 5
START_TIMEOUT = 20.0
StoppedCallback = Callable[[str, "int | None"], None]  # (instance name, wait status or None)
PrepareHook = Callable[[int], Awaitable["list | None"]]  # the NICs to address inside


@dataclass
class RunningContainer:
    name: str
    pid: int
    pidfd: int
    start_time: int
    console: Console | None
    adopted: bool = False
    stopping: bool = False
    killed: bool = False  # ctd sent SIGKILL (a stop that timed out, or --kill)
    forced: bool = False  # init outlived the stop signal's timeout and was killed
    group: object = None  # its cgroup handle: made by this start, or verified at adoption
    privileged: bool = False
    numpty: int | None = None  # its devpts' max= (None: not known, after an adoption)
    exited: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(frozen=True)
class ExitFacts:
    """What the driver saw of a container's end, for the manager's exit report."""
    killed: bool     # ctd sent SIGKILL
    oom_kills: int   # the OOM killer's count in its cgroup


@dataclass
class ExecProcess:
    pid: int
    fds: list[int]  # ctd's ends: [stdin w, stdout r, stderr r], or [pty master]
    exit_code: asyncio.Future
    queue: asyncio.Queue


IO_URING_KEY = "io_uring"  # rec.options: True lets the container use io_uring


def seccomp_deny(rec: InstanceRecord) -> list[str]:
    """The container's deny list: the default one, less io_uring where it was allowed."""
    return list(seccomp.ALWAYS_DENY if rec.options.get(IO_URING_KEY) else seccomp.DEFAULT_DENY)


def cgroup_name(instance: InstanceRecord) -> str:
    return f"ct-{instance.name}"


FIXED_KEY = "cgroup_fixed"  # rec.options: hierarchy -> the running container's group name there
# The only shape a recorded fixed name may have: the standby group the container started in.
STANDBY_GROUP = re.compile(r"standby-[1-9][0-9]{0,9}")


def standby_group_name(pid: int) -> str:
    return f"standby-{pid}"


class ContainerDriver:
    def __init__(self, spawner: SpawnerClient, cgroups: CgroupManager, lxcfs: Lxcfs | None = None) -> None:
        self.spawner = spawner
        self.cgroups = cgroups
        self.lxcfs = lxcfs
        self._lxcfs_watch = -1  # a pidfd of lxcfs, in the event loop
        self._lxcfs_task: asyncio.Task | None = None  # its restart (held: the loop keeps weak refs)
        self.running: dict[str, RunningContainer] = {}
        self.on_stopped: StoppedCallback | None = None
        self._statuses: dict[int, int] = {}  # init pid -> wait status, from the spawner
        self._waiting: dict[int, RunningContainer] = {}
        spawner.on_exit = self._spawner_reaped
        # Standby inits (forked ahead by the spawner) put in cgroups of their own ahead, v1
        # only: at a start the group is renamed to the container's, so no process moves (a move
        # waits for an RCU grace period, milliseconds). Off until recovery has run.
        self.staging = False
        self._staged: dict[int, object] = {}   # standby pid -> its group, ready
        # The group of a container whose init has exited, until cleanup() removes it.
        self._exited_groups: dict[str, object] = {}
        self.exit_facts: dict[str, ExitFacts] = {}  # taken by the on_stopped callback
        self._staging: dict[int, asyncio.Future] = {}  # being made: pid -> its thread's future
        spawner.on_standby = self._standby_ready
        spawner.on_standby_gone = self._standby_gone

    # ------------------------------------------------------------- standby cgroups

    def _standby_ready(self, pid: int) -> None:
        if not self.staging or not any(self.cgroups.renames_in(k) for k in self.cgroups.base_dirs()):
            return
        future = asyncio.get_running_loop().run_in_executor(None, self._stage, pid)
        self._staging[pid] = future
        future.add_done_callback(lambda f: self._staged_done(pid, f))

    def _stage(self, pid: int):  # type: ignore[no-untyped-def]
        group = self.cgroups.group(standby_group_name(pid))
        try:
            group.create()
            pidfd = os.pidfd_open(pid)  # alive now, so pid is still our standby's number
            try:
                group.attach(pid)
            finally:
                os.close(pidfd)
        except (CgroupError, OSError):
            self._destroy_group_quietly(group)
            return None
        return group

    def _staged_done(self, pid: int, future: asyncio.Future) -> None:
        group = None if future.cancelled() or future.exception() else future.result()
        if pid not in self._staging:  # gone (or taken by a start) meanwhile
            if group is not None and not self.staging:  # shutting down: no executor to ask
                self._destroy_group_quietly(group)
            elif group is not None:
                asyncio.get_running_loop().run_in_executor(None, self._destroy_group_quietly, group)
            return
        del self._staging[pid]
        if group is not None:
            self._staged[pid] = group

    def _standby_gone(self, pid: int) -> None:
        self._staging.pop(pid, None)
        group = self._staged.pop(pid, None)
        if group is not None:
            asyncio.get_running_loop().run_in_executor(None, self._destroy_group_quietly, group)

    async def _settle_standby(self, pid: int):  # type: ignore[no-untyped-def]
        """A start got standby pid without asking for it (another start's request, or none,
        reached the spawner first). ctd may be moving it into its standby group right now:
        let that finish (its move must not come after the start's), and take the group out of
        the pool. Returns the group, to remove once init has moved out of it."""
        future = self._staging.get(pid)
        if future is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(future)  # _staged_done has run by now: it was added first
        return self._staged.pop(pid, None)

    def _take_staged(self):  # type: ignore[no-untyped-def]
        """The oldest standby already in cgroups of its own: (pid, group), or (0, None)."""
        for pid in self._staged:
            return pid, self._staged.pop(pid)
        return 0, None

    async def drop_staged(self) -> None:
        """At shutdown: the standbys go with the spawner, and so do their groups — also those a
        thread is making right now (waited for: a group made after this returned would keep
        ctd's base from being removed)."""
        self.staging = False
        pending = list(self._staging.values())
        if pending:
            await asyncio.wait(pending, timeout=5)  # _staged_done has run for each by now
        staged = list(self._staged.values())
        self._staged.clear()
        self._staging.clear()

        def destroy_all() -> None:
            for group in staged:
                self._destroy_group_quietly(group)

        await asyncio.to_thread(destroy_all)

    async def announce_owners(self) -> None:
        """Tell the spawner which user-namespace owner uids the containers it did not start (the
        ones adopted after a restart) hold, so no new container shares one; it makes standbys
        only after this."""
        uids = sorted({uid for rc in self.running.values() if (uid := userns_owner(rc.pid))})
        queue = self.spawner.request("owners", {"uids": uids}, [])
        try:
            await first_reply(queue, "telling the spawner the running containers' owners")
        finally:
            self.spawner.forget(queue)

    # ------------------------------------------------------------- lxcfs

    def watch_lxcfs(self) -> None:
        """lxcfs runs under a memory limit; tenants can drive it there (open handles), and the
        kernel then kills it. Restart it at once and bind its files into every running container
        again: the neighbours' /proc/meminfo is back in a moment instead of ENOTCONN for good."""
        lxcfs = self.lxcfs
        if lxcfs is None or not lxcfs.available:
            return
        try:
            pidfd = os.pidfd_open(int(lxcfs.pidfile.read_text()))
        except (OSError, ValueError) as exc:
            log.warning("cannot watch lxcfs: %s", exc)
            return
        loop = asyncio.get_running_loop()

        def died() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            self._lxcfs_task = loop.create_task(self._lxcfs_died())

        loop.add_reader(pidfd, died)
        self._lxcfs_watch = pidfd

    def unwatch_lxcfs(self) -> None:
        pidfd = self._lxcfs_watch
        if pidfd >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(pidfd)
                os.close(pidfd)
            self._lxcfs_watch = -1

    async def _lxcfs_died(self) -> None:
        assert self.lxcfs is not None
        self._lxcfs_watch = -1
        log.warning("lxcfs died (at its memory limit?); starting it again and rebinding its files")
        if not await asyncio.to_thread(self.lxcfs.ensure):
            log.error("lxcfs could not be started again: %s", self.lxcfs.reason)
            return
        self.watch_lxcfs()
        binds = await asyncio.to_thread(self.lxcfs.binds)
        began = time.monotonic()
        running = list(self.running.values())
        for rc in running:
            queue = self.spawner.request("lxcfs_rebind", {"init_pid": rc.pid, "privileged": rc.privileged,
                                                          "binds": binds}, [])
            try:
                await first_reply(queue, f"{rc.name}: binding lxcfs' files again")
            except OperationFailed as exc:
                log.warning("%s", exc.message)
            finally:
                self.spawner.forget(queue)
        log.info("lxcfs' files bound again in %d running container(s) in %.2f s", len(running),
                 time.monotonic() - began)

    # ------------------------------------------------------------- spec

    def build_spec(self, rec: InstanceRecord, rootfs: Path, console: bool = True) -> ContainerSpec:
        systemd = bool(rec.options.get("systemd"))
        if rec.privileged:
            uid_map: list[IdMap] = []
            gid_map: list[IdMap] = []
        else:
            assert rec.idmap_base is not None
            uid_map = [IdMap(0, rec.idmap_base, 65536)]
            gid_map = [IdMap(0, rec.idmap_base, 65536)]
        return ContainerSpec(
            name=rec.name, hostname=rec.hostname, rootfs=str(rootfs), init=list(rec.init),
            uid_map=uid_map, gid_map=gid_map,
            mounts=mount_plan(console=console, numpty=rec.limits.get("numpty", DEFAULT_NUMPTY),
                              lxcfs=self.lxcfs.binds() if self.lxcfs else None,
                              extra_tmpfs=SYSTEMD_TMPFS if systemd else (),
                              cgroupfs=self.cgroups.guest_mounts() if systemd else None),
            env=[f"PATH={DEFAULT_PATH}", "container=ctd", "TERM=linux", "HOME=/root"],
            cap_drop=list(capabilities.DEFAULT_DROP),
            seccomp_deny=seccomp_deny(rec),
            console=console,
            nofile=rec.limits.get("numfile"),
        )

    # ------------------------------------------------------------- start

    async def start(self, rec: InstanceRecord, rootfs: Path, resources: Resources,
                    prepare: PrepareHook | None = None) -> RunningContainer:
        """prepare(pid) runs after the namespaces exist and before init runs (NICs go in then)."""
        if rec.name in self.running:
            raise Conflict(f"{rec.name} is already running")
        init_path = rootfs / rec.init[0].lstrip("/")
        if not os.path.lexists(init_path):
            raise OperationFailed(f"{rec.name}: the root filesystem has no {rec.init[0]}; "
                                  "the template is broken — reinstall or recreate the container")
        rec.options.pop(FIXED_KEY, None)
        staged_pid, staged = (0, None) if rec.privileged else self._take_staged()
        with contextlib.ExitStack() as undo:
            if staged is not None:  # if the start fails before its group takes it over
                undo.callback(self._destroy_group_quietly, staged)
            master, slave = os.openpty()
            undo.callback(os.close, master)
            try:
                if not rec.privileged:
                    # Container root must own its console, or it can't even open it.
                    os.fchown(slave, rec.idmap_base, rec.idmap_base + TTY_GID)
                os.fchmod(slave, 0o620)
                spec = self.build_spec(rec, rootfs)
                hint = {"standby": staged_pid} if staged_pid else {}
                queue = self.spawner.request("spawn", to_wire(spec), [slave], **hint)
            finally:
                os.close(slave)
            undo.callback(self.spawner.forget, queue)
            # The spawner hands the root to the standby init meanwhile.
            group, holds = await asyncio.to_thread(self._make_group, rec, resources, undo, staged, staged_pid)
            reply, fds = await first_reply(queue, f"starting {rec.name}")
            faults.point("start.after_spawn")
            pid = reply["pid"]
            go_w, err_r, netns_socket = fds
            undo.callback(self._kill_quietly, pid)
            try:
                pidfd = os.pidfd_open(pid)
                undo.callback(os.close, pidfd)
            except ProcessLookupError:
                pidfd = -1
            try:
                # init waits for "go" while it builds /proc, /sys and /dev: move it into its
                # cgroups (that waits for an RCU grace period) while its NICs are plugged in.
                unasked = None if pid == holds else await self._settle_standby(pid)
                joined = (asyncio.ensure_future(asyncio.sleep(0)) if pid == holds else
                          asyncio.ensure_future(asyncio.to_thread(_attach, group, pid)))
                try:
                    if prepare is not None and pidfd >= 0:
                        inside = await prepare(pid)
                        if inside:  # addressed before init runs its first command
                            handed, netns_socket = netns_socket, -1  # closed by configure_inside
                            await asyncio.to_thread(netlink.configure_inside, inside, handed)
                finally:
                    await joined
                for empty in (staged if not holds else None, unasked):  # init has moved out
                    if empty is not None:
                        await asyncio.to_thread(self._destroy_group_quietly, empty)
                try:
                    os.write(go_w, b"1")
                except BrokenPipeError:
                    pass
                os.close(go_w)
                faults.point("start.after_go")
                failure = await read_to_eof(err_r, START_TIMEOUT)
            finally:
                os.close(err_r)
                if netns_socket >= 0:
                    os.close(netns_socket)
            if failure or pidfd < 0:
                raise OperationFailed(f"starting {rec.name}: {failure.decode(errors='replace') or 'init died at once'}")
            undo.pop_all()
        self.spawner.forget(queue)
        if not rec.privileged:
            self.spawner.notify("refill")  # the next standby, now that this start is done
        console = Console(master)
        console.attach_loop(asyncio.get_running_loop())
        rc = RunningContainer(rec.name, pid, pidfd, start_time(pid) or 0, console, group=group,
                              privileged=rec.privileged, numpty=rec.limits.get("numpty", DEFAULT_NUMPTY))
        self._watch(rc)
        return rc

    def _make_group(self, rec: InstanceRecord, resources: Resources, undo: contextlib.ExitStack,  # type: ignore[no-untyped-def]
                    staged=None, staged_pid: int = 0):
        """The container's cgroup with its limits: the standby's group renamed, or a new one.
        Returns it and the pid already in it (0 if none: init is moved in later)."""
        group, holds = None, 0
        if staged is not None:
            try:
                group, holds = staged.rename(cgroup_name(rec)), staged_pid
            except CgroupError as exc:  # a stale ct-<name> left by a crash: init moves over
                log.warning("%s: %s; moving its init instead", rec.name, exc)
        if group is None:
            group = self.cgroups.group(cgroup_name(rec))
            group.create()
        faults.point("start.after_cgroup")
        undo.callback(self._destroy_group_quietly, group)
        # Before init runs (a staged standby sits in the group, but runs no guest code yet).
        try:
            group.restrict_devices(devices.ALLOWED, seal=rec.privileged)
        except CgroupError as exc:  # no container runs without its device list
            raise OperationFailed(f"starting {rec.name}: ctd cannot confine its devices on this host: {exc}; "
                                  "'ctctl check' shows what the host lacks") from None
        group.apply(resources)
        if rec.options.get("systemd") and not rec.privileged:
            # systemd inside manages its own subtree (init.scope, system.slice …)
            group.delegate(rec.idmap_base, rec.idmap_base)
        if group.fixed:
            rec.options[FIXED_KEY] = dict(group.fixed)
        return group, holds

    # ------------------------------------------------------------- adopt after a daemon restart

    def adopt(self, rec: InstanceRecord) -> RunningContainer | None:
        """Find a container that kept running while ctd was away; None if it is gone (a zombie
        is gone too: its spawner died before it could reap it, and whoever inherited it, the
        host's init, may take its time)."""
        if rec.pid is None or rec.pid_start is None or start_time(rec.pid) != rec.pid_start:
            return None
        if is_zombie(rec.pid):
            return None
        try:
            pidfd = os.pidfd_open(rec.pid)
        except ProcessLookupError:
            return None
        if start_time(rec.pid) != rec.pid_start:  # recycled between the two checks
            os.close(pidfd)
            return None
        fixed = self._verified_fixed(rec)
        rec.options.pop(FIXED_KEY, None)
        if fixed:
            rec.options[FIXED_KEY] = fixed  # the caller saves the record
        rc = RunningContainer(rec.name, rec.pid, pidfd, rec.pid_start, None, adopted=True,
                              group=self.cgroups.group(cgroup_name(rec), fixed), privileged=rec.privileged)
        self._watch(rc)
        return rc

    def _verified_fixed(self, rec: InstanceRecord) -> dict[str, str]:
        """Where the adopted init (pid and start time checked by the caller) really is in the
        hierarchy that cannot rename (cgroup2): the kernel says so in /proc/PID/cgroup. Only a
        standby group right below this daemon's base counts; what the record says is not trusted."""
        bases = self.cgroups.base_dirs()
        kept: dict[str, str] = {}
        if UNIFIED in bases and not self.cgroups.renames_in(UNIFIED):
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
        recorded = rec.options.get(FIXED_KEY)
        if recorded and recorded != kept:
            log.warning("%s: its record names cgroup(s) %r, but its init is in %r; using what the kernel says",
                        rec.name, recorded, kept)
        return kept

    def group(self, rec: InstanceRecord):  # type: ignore[no-untyped-def]
        """The container's cgroup handle. Only a group this driver made (or verified at adoption)
        for a live container carries fixed names; otherwise ct-<name>, derived from the
        instance's own name below this daemon's base: a record can never aim it elsewhere."""
        rc = self.running.get(rec.name)
        if rc is not None and rc.group is not None:
            return rc.group
        exited = self._exited_groups.get(rec.name)
        if exited is not None:
            return exited
        return self.cgroups.group(cgroup_name(rec))

    # ------------------------------------------------------------- exit tracking

    def _watch(self, rc: RunningContainer) -> None:
        self.running[rc.name] = rc
        asyncio.get_running_loop().add_reader(rc.pidfd, self._pidfd_ready, rc)

    def _spawner_reaped(self, pid: int, status: int) -> None:
        rc = self._waiting.pop(pid, None)
        if rc is not None:
            self._finish(rc, status)
        else:
            self._statuses[pid] = status

    def _pidfd_ready(self, rc: RunningContainer) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(rc.pidfd)
        if rc.pid in self._statuses:
            self._finish(rc, self._statuses.pop(rc.pid))
        elif rc.adopted:
            self._finish(rc, None)  # not our child any more: the status went to someone else
        else:
            # The spawner reaps it a moment later and tells us how it ended.
            self._waiting[rc.pid] = rc
            loop.call_later(2.0, self._give_up_waiting, rc)

    def _give_up_waiting(self, rc: RunningContainer) -> None:
        if self._waiting.pop(rc.pid, None) is not None:
            self._finish(rc, None)

    def _finish(self, rc: RunningContainer, status: int | None) -> None:
        if rc.exited.done():
            return
        os.close(rc.pidfd)
        if rc.console:
            rc.console.close()
        self.running.pop(rc.name, None)
        oom_kills = 0
        if rc.group is not None:
            self._exited_groups[rc.name] = rc.group
            with contextlib.suppress(Exception):  # read before cleanup() removes the group
                oom_kills = rc.group.usage().oom_kills or 0
        self.exit_facts[rc.name] = ExitFacts(rc.killed, oom_kills)
        rc.exited.set_result(status)
        if self.on_stopped:
            self.on_stopped(rc.name, status)

    # ------------------------------------------------------------- stop

    async def stop(self, rec: InstanceRecord, timeout: float, kill: bool) -> int | None:
        rc = self.running.get(rec.name)
        if rc is None:
            return None
        rc.stopping = True
        if not kill:
            sig = signal_number(rec.stop_signal)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            # The kernel drops a signal to a namespace's init that has no handler for it: an init
            # that has just started may not have one yet. Send it again until init catches it.
            while (left := deadline - loop.time()) > 0:
                self._signal(rc, sig)
                faults.point("stop.after_signal")
                caught = catches(rc.pid, sig)
                try:
                    return await asyncio.wait_for(asyncio.shield(rc.exited), left if caught else min(0.2, left))
                except TimeoutError:
                    if caught:
                        break
            rc.forced = True
        rc.killed = True
        self._signal(rc, signal.SIGKILL)
        faults.point("stop.after_kill")
        return await rc.exited

    @staticmethod
    def _signal(rc: RunningContainer, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            signal.pidfd_send_signal(rc.pidfd, sig)

    async def update(self, rec: InstanceRecord, resources: Resources, fallback: Resources) -> None:
        """Apply new limits to a running container; on a kernel refusal put the old ones back."""
        group = self.group(rec)
        try:
            await asyncio.to_thread(group.apply, resources)
            if rec.options.get("systemd") and not rec.privileged:
                # systemd inside manages its own subtree (init.scope, system.slice …)
                await asyncio.to_thread(group.delegate, rec.idmap_base, rec.idmap_base)
        except CgroupError as exc:
            with contextlib.suppress(CgroupError):
                await asyncio.to_thread(group.apply, fallback)
            raise Conflict(f"{rec.name}: the kernel refused the new limits: {exc}") from None
        nofile = rec.limits.get("numfile")
        if nofile:
            for pid in await asyncio.to_thread(group.pids):
                with contextlib.suppress(OSError):
                    resource.prlimit(pid, resource.RLIMIT_NOFILE, (nofile, nofile))
        rc = self.running.get(rec.name)
        numpty = rec.limits.get("numpty", DEFAULT_NUMPTY)
        if rc is not None and rc.numpty != numpty:
            queue = self.spawner.request("devpts_max", {"init_pid": rc.pid, "privileged": rec.privileged,
                                                        "numpty": numpty}, [])
            try:
                await first_reply(queue, f"{rec.name}: setting numpty")
            finally:
                self.spawner.forget(queue)
            rc.numpty = numpty

    async def cleanup(self, rec: InstanceRecord) -> None:
        """After init is gone: end stragglers (exec sessions) and remove the cgroup (only the
        one this driver made for it, or ct-<name>: never a group a record names)."""
        if rec.name in self.running:
            return  # it runs (a record copied from it must not end it)
        group = self._exited_groups.pop(rec.name, None) or self.cgroups.group(cgroup_name(rec))
        await asyncio.to_thread(self._destroy_group_quietly, group)

    @staticmethod
    def _destroy_group_quietly(group) -> None:  # type: ignore[no-untyped-def]
        with contextlib.suppress(Exception):
            if group.exists():
                group.kill_all()
                group.destroy()

    @staticmethod
    def _kill_quietly(pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    async def netconf(self, pid: int, nics: list[InsideNic]) -> None:
        """Configure NICs inside the network namespace of init pid (the spawner hands us a
        netlink socket made in there)."""
        if not nics:
            return
        queue = self.spawner.request("netns_socket", {"init_pid": pid}, [])
        try:
            _, fds = await first_reply(queue, "configuring the container's network")
        finally:
            self.spawner.forget(queue)
        await asyncio.to_thread(netlink.configure_inside, nics, fds[0])

    # ------------------------------------------------------------- exec

    async def exec(self, rec: InstanceRecord, command: list[str], env: dict[str, str], cwd: str,
                   tty: bool) -> ExecProcess:
        rc = self.running.get(rec.name)
        if rc is None:
            raise Conflict(f"{rec.name} is not running; start it first with 'ctctl start {rec.name}'")
        theirs: list[int] = []
        ours: list[int] = []
        try:
            if not tty:  # with a tty, the spawner's helper opens a pty inside and hands us its master
                for child_reads in (True, False, False):
                    r, w = os.pipe2(os.O_CLOEXEC)
                    theirs.append(r if child_reads else w)
                    ours.append(w if child_reads else r)
            full_env = {"PATH": DEFAULT_PATH, "HOME": "/root", "container": "ctd",
                        "TERM": env.get("TERM", "xterm") if tty else "dumb", **env}
            spec = ExecSpec(
                init_pid=rc.pid, command=command, env=[f"{k}={v}" for k, v in full_env.items()],
                cwd=cwd, privileged=rec.privileged,
                cgroup_procs=self.group(rec).procs_files(),
                cap_drop=list(capabilities.DEFAULT_DROP), seccomp_deny=seccomp_deny(rec), tty=tty,
                nofile=rec.limits.get("numfile"),
            )
            queue = self.spawner.request("exec", to_wire(spec), theirs)
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        try:
            reply, fds = await first_reply(queue, f"exec in {rec.name}")
            if tty:
                if len(fds) != 1:
                    for fd in fds:
                        os.close(fd)
                    raise OperationFailed(f"exec in {rec.name}: no terminal came back from the container")
                ours = fds
        except OperationFailed as exc:
            for fd in ours:
                os.close(fd)
            if NO_PTY in exc.message:
                raise Conflict(f"{rec.name}: {NO_PTY}: every pty its numpty limit allows is open; "
                               "close some, or raise it with 'ctctl set NAME --numpty N'") from None
            raise
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        exit_code: asyncio.Future = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().create_task(self._await_exit(queue, exit_code))
        return ExecProcess(reply["pid"], ours, exit_code, queue)

    async def _await_exit(self, queue: asyncio.Queue, exit_code: asyncio.Future) -> None:
        while True:
            message, fds = await queue.get()
            for fd in fds:
                os.close(fd)
            if "exit" in message:
                exit_code.set_result(message["exit"])
                self.spawner.forget(queue)
                return
            if "error" in message or "helper_exit" in message:
                if not exit_code.done():
                    exit_code.set_exception(OperationFailed(
                        f"exec failed: {message.get('error', 'the exec helper died')}"))
                return


def _attach(group, pid: int) -> None:  # type: ignore[no-untyped-def]
    try:
        group.attach(pid)
    except CgroupError as exc:
        raise OperationFailed(f"moving the container's init into its cgroups: {exc}") from None


def catches(pid: int, sig: int) -> bool:
    """Whether process pid has a handler for sig (its SigCgt mask in /proc)."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except (OSError, ValueError):
        pass
    return False


async def read_to_eof(fd: int, timeout: float) -> bytes:
    """Everything written to a pipe until its last writer closes it (or exec()s, for CLOEXEC)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    chunks: list[bytes] = []
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            data = b"" if exc.errno == errno.EIO else f"read error: {exc}".encode()
        if data:
            chunks.append(data)
            return
        loop.remove_reader(fd)
        if not done.done():
            done.set_result(b"".join(chunks))

    loop.add_reader(fd, readable)
    try:
        return await asyncio.wait_for(done, timeout)
    except TimeoutError:
        loop.remove_reader(fd)
        raise OperationFailed(f"the container did not start within {timeout:.0f} s") from None
