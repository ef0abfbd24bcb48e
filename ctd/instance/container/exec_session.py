"""A command run in a running container: the spawner's exec helper joins it and forks the
command; ctd gets its stdio (three pipes, or the master of a pty of the container's own devpts)
and, later, its exit code. An exhausted numpty is the tenant's to fix: a Conflict saying how."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass

from cgroups import CgroupGroup
from ctd.errors import Conflict, OperationFailed
from ctd.instance.container.running import RunningContainer
from ctd.instance.container.spawner import NO_PTY
from ctd.instance.container.spawner_client import Reply, SpawnerClient, first_reply
from ctd.instance.container.spec import DEFAULT_PATH, ExecSpec, to_wire
from ctd.instance.container.spec_build import seccomp_deny
from ctd.linux import capabilities
from ctd.state import InstanceRecord


@dataclass
class ExecProcess:
    pid: int
    fds: list[int]  # ctd's ends: [stdin w, stdout r, stderr r], or [pty master]
    exit_code: asyncio.Future[int]
    queue: asyncio.Queue[Reply]
    on_signal: Callable[[int], None] | None = None   # a VM's: the guest agent passes it on

    def kill(self, sig: int) -> None:
        """Signal the command (a VM's command through on_signal; it has no host pid)."""
        if self.on_signal is not None:
            self.on_signal(sig)
        elif self.pid > 0:
            os.kill(self.pid, sig)


async def start_exec(spawner: SpawnerClient, rec: InstanceRecord, rc: RunningContainer, group: CgroupGroup,
                     command: list[str], env: dict[str, str], cwd: str, tty: bool) -> ExecProcess:
    """The command started in container rc (group: its cgroups, which the command joins)."""
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
            cgroup_procs=group.procs_files(),
            cap_drop=list(capabilities.DEFAULT_DROP), seccomp_deny=seccomp_deny(rec), tty=tty,
            nofile=rec.limits.get("numfile"),
        )
        queue = spawner.request("exec", to_wire(spec), theirs)
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
    exit_code: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().create_task(_await_exit(spawner, queue, exit_code))
    return ExecProcess(reply["pid"], ours, exit_code, queue)


async def _await_exit(spawner: SpawnerClient, queue: asyncio.Queue[Reply], exit_code: asyncio.Future[int]) -> None:
    while True:
        message, fds = await queue.get()
        for fd in fds:
            os.close(fd)
        if "exit" in message:
            exit_code.set_result(message["exit"])
            spawner.forget(queue)
            return
        if "error" in message or "helper_exit" in message:
            if not exit_code.done():
                exit_code.set_exception(OperationFailed(
                    f"exec failed: {message.get('error', 'the exec helper died')}"))
            return
