"""The container driver: spec -> spawn through the spawner -> supervise by pidfd.

What the instance manager calls (start, stop, update, cleanup, adopt, exec, netconf, group,
running, exit_facts, on_stopped) is here; the driver's parts are modules of their own:
`groups` (standby staging, the start's cgroup, the adoption check), `spec_build` (record ->
spawner spec), `exec_session` (a command in a running container), `lxcfs_watch` (lxcfs
restarted and rebound), `running` (what is held of a running container).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import resource
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from cgroups import CgroupError, CgroupGroup, CgroupManager, Resources
from ctd import faults
from ctd.errors import Conflict, OperationFailed
from ctd.instance.consolelog import open_ring
from ctd.instance.container.console import Console
from ctd.instance.container.exec_session import ExecProcess, start_exec
from ctd.instance.container.groups import (
    STANDBY_GROUP,
    StandbyGroups,
    attach,
    cgroup_name,
    destroy_group_quietly,
    make_group,
    standby_group_name,
    verified_fixed,
)
from ctd.instance.container.lxcfs_watch import LxcfsWatch
from ctd.instance.container.running import ExitFacts, RunningContainer
from ctd.instance.container.spawner_client import SpawnerClient, first_reply
from ctd.instance.container.spec import DEFAULT_NUMPTY, ContainerSpec, to_wire
from ctd.instance.container.spec_build import build_spec, seccomp_deny
from ctd.linux.proc import is_zombie, start_time, userns_owner
from ctd.lxcfs import Lxcfs
from ctd.network import netlink
from ctd.network.netlink import InsideNic
from ctd.state import InstanceRecord
from ctd.template.recipe import signal_number

# Names the manager and others import from here (their home is the module named above).
__all__ = [
    "STANDBY_GROUP", "ContainerDriver", "ExecProcess", "ExitFacts",
    "RunningContainer", "catches", "cgroup_name", "read_to_eof", "seccomp_deny", "standby_group_name",
]

log = logging.getLogger(__name__)

TTY_GID = 5
START_TIMEOUT = 20.0
StoppedCallback = Callable[[str, "int | None"], None]  # (instance name, wait status or None)
PrepareHook = Callable[[int], Awaitable["list[InsideNic] | None"]]  # the NICs to address inside


class ContainerDriver:
    def __init__(self, spawner: SpawnerClient, cgroups: CgroupManager, lxcfs: Lxcfs | None = None) -> None:
        self.spawner = spawner
        self.cgroups = cgroups
        self.lxcfs = lxcfs
        self.running: dict[str, RunningContainer] = {}
        self.on_stopped: StoppedCallback | None = None
        self._statuses: dict[int, int] = {}  # init pid -> wait status, from the spawner
        self._waiting: dict[int, RunningContainer] = {}
        spawner.on_exit = self._spawner_reaped
        # Standby inits in cgroups of their own ahead (v1): a start renames the group.
        self.standbys = StandbyGroups(cgroups)
        self._lxcfs_watch = LxcfsWatch(lxcfs, spawner, lambda: self.running.values())
        # The group of a container whose init has exited, until cleanup() removes it.
        self._exited_groups: dict[str, CgroupGroup] = {}
        self.exit_facts: dict[str, ExitFacts] = {}  # taken by the on_stopped callback
        spawner.on_standby = self.standbys.ready
        spawner.on_standby_gone = self.standbys.gone

    # ------------------------------------------------------------- standbys, owners, lxcfs

    @property
    def staging(self) -> bool:
        """Whether standbys are put in cgroups ahead; off until recovery has run."""
        return self.standbys.enabled

    @staging.setter
    def staging(self, on: bool) -> None:
        self.standbys.enabled = on

    async def drop_staged(self) -> None:
        """At shutdown: the standbys' groups go with them (see StandbyGroups.drop_all)."""
        await self.standbys.drop_all()

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

    def watch_lxcfs(self) -> None:
        """Restart lxcfs when the kernel kills it, and bind its files in again (see lxcfs_watch)."""
        self._lxcfs_watch.watch()

    def unwatch_lxcfs(self) -> None:
        self._lxcfs_watch.unwatch()

    # ------------------------------------------------------------- start

    def build_spec(self, rec: InstanceRecord, rootfs: Path, console: bool = True) -> ContainerSpec:
        return build_spec(rec, rootfs, self.lxcfs, self.cgroups, console)

    async def start(self, rec: InstanceRecord, rootfs: Path, resources: Resources,
                    prepare: PrepareHook | None = None, console_log: Path | None = None) -> RunningContainer:
        """prepare(pid) runs after the namespaces exist and before init runs (NICs go in then);
        console_log: where the console's output is kept (consolelog.RingLog)."""
        if rec.name in self.running:
            raise Conflict(f"{rec.name} is already running")
        init_path = rootfs / rec.init[0].lstrip("/")
        if not os.path.lexists(init_path):
            raise OperationFailed(f"{rec.name}: the root filesystem has no {rec.init[0]}; "
                                  "the template is broken — reinstall or recreate the container")
        rec.options = rec.options.ended_run()   # the last run's cgroup names
        staged_pid, staged = (0, None) if rec.privileged else self.standbys.take()
        with contextlib.ExitStack() as undo:
            if staged is not None:  # if the start fails before its group takes it over
                undo.callback(destroy_group_quietly, staged)
            master, slave = os.openpty()
            undo.callback(os.close, master)
            try:
                if not rec.privileged:
                    # Container root must own its console, or it can't even open it.
                    assert rec.idmap_base is not None
                    os.fchown(slave, rec.idmap_base, rec.idmap_base + TTY_GID)
                os.fchmod(slave, 0o620)
                spec = self.build_spec(rec, rootfs)
                queue = self.spawner.request("spawn", to_wire(spec), [slave], standby=staged_pid or 0)
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
                unasked = None if pid == holds else await self.standbys.settle(pid)
                joined = (asyncio.ensure_future(asyncio.sleep(0)) if pid == holds else
                          asyncio.ensure_future(asyncio.to_thread(attach, group, pid)))
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
                        await asyncio.to_thread(destroy_group_quietly, empty)
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
        console = Console(master, open_ring(console_log) if console_log else None)
        console.attach_loop(asyncio.get_running_loop())
        rc = RunningContainer(rec.name, pid, pidfd, start_time(pid) or 0, console, group=group,
                              privileged=rec.privileged, numpty=rec.limits.get("numpty", DEFAULT_NUMPTY))
        self._watch(rc)
        return rc

    def _make_group(self, rec: InstanceRecord, resources: Resources, undo: contextlib.ExitStack,
                    staged: CgroupGroup | None = None, staged_pid: int = 0) -> tuple[CgroupGroup, int]:
        """The container's cgroup with its limits (see groups.make_group)."""
        return make_group(self.cgroups, rec, resources, undo, staged, staged_pid)

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
        fixed = verified_fixed(self.cgroups, rec)
        rec.options = dataclasses.replace(rec.options, cgroup_fixed=fixed)  # the caller saves the record
        rc = RunningContainer(rec.name, rec.pid, pidfd, rec.pid_start, None, adopted=True,
                              group=self.cgroups.group(cgroup_name(rec), fixed), privileged=rec.privileged)
        self._watch(rc)
        return rc

    def group(self, rec: InstanceRecord) -> CgroupGroup:
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
            if rec.options.systemd and not rec.privileged:
                # systemd inside manages its own subtree (init.scope, system.slice …)
                assert rec.idmap_base is not None
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
        await asyncio.to_thread(destroy_group_quietly, group)

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
        return await start_exec(self.spawner, rec, rc, self.group(rec), command, env, cwd, tty)


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
