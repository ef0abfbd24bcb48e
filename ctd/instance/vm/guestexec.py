"""`ctctl exec VM -- cmd`: the command run by the VM's guest agent (guest-exec, then
guest-exec-status until it exits), shaped like a container's ExecProcess so the exec WebSocket
serves both: stdout and stderr arrive on pipes, the exit code on a future.

What the agent allows, and so what a VM's exec is: no terminal (-t is refused), no stdin (what
the client sends is read and dropped), output delivered when the command ends (the agent keeps
it until then; it caps it at 16 MiB, ctd's reply limit at MAX_REPLY), and a signal from the
client (or its hang-up) passed on as `kill -SIG PID` run by the agent (Linux guests).
Exit code: the command's, 128+N when signal N ended it, 255 when the agent went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from ctd.errors import CtdError, InvalidRequest
from ctd.instance.container.exec_session import ExecProcess
from ctd.instance.vm.agent import GuestAgent

log = logging.getLogger("ctd.vm.exec")
POLL_FIRST, POLL_MAX = 0.05, 0.5
# cd into the requested directory (guest-exec has no cwd); then the command itself
_CD = 'cd -- "$1" 2>/dev/null || cd /; shift; exec "$@"'


def refuse_tty(name: str) -> None:
    raise InvalidRequest(f"{name} is a VM: its guest agent runs commands without a terminal, so exec -t is "
                         f"not available; run it without -t, or use 'ctctl console {name}' or ssh")


async def start(agent: GuestAgent, command: list[str], env: dict[str, str], cwd: str, linux: bool) -> ExecProcess:
    argv = ["/bin/sh", "-c", _CD, "sh", cwd, *command] if linux else command
    pid = await agent.exec(argv, env)
    loop = asyncio.get_running_loop()
    pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(3)]
    stdin_r, stdin_w = pipes[0]
    exit_code: asyncio.Future[int] = loop.create_future()
    os.set_blocking(stdin_r, False)

    def drop_stdin() -> None:
        try:
            if os.read(stdin_r, 65536):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        loop.remove_reader(stdin_r)

    loop.add_reader(stdin_r, drop_stdin)

    def on_signal(sig: int) -> None:
        if linux:
            loop.create_task(_signal(agent, pid, sig))

    task = loop.create_task(_follow(agent, pid, pipes[1][1], pipes[2][1], exit_code))

    def finished(_: object) -> None:
        loop.remove_reader(stdin_r)
        os.close(stdin_r)

    task.add_done_callback(finished)
    return ExecProcess(0, [stdin_w, pipes[1][0], pipes[2][0]], exit_code, asyncio.Queue(), on_signal)


async def _follow(agent: GuestAgent, pid: int, out_w: int, err_w: int, exit_code: asyncio.Future[int]) -> None:
    code = 255
    try:
        delay = POLL_FIRST
        while True:
            try:
                st = await agent.exec_status(pid)
            except CtdError as exc:
                await _write(err_w, f"ctd: lost the guest agent while the command ran: {exc.message}\n".encode())
                break
            if st.exited:
                await _write(out_w, st.stdout)
                await _write(err_w, st.stderr)
                if st.truncated:
                    await _write(err_w, b"ctd: the guest agent truncated the output\n")
                code = st.exitcode if st.exitcode is not None else 128 + (st.signal or 0) if st.signal else 255
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)
    finally:
        for fd in (out_w, err_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if not exit_code.done():
            exit_code.set_result(code)


async def _write(fd: int, data: bytes) -> None:
    os.set_blocking(fd, False)
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            await asyncio.sleep(0.005)
        except OSError:   # the reader (the WebSocket bridge) is gone
            return


async def _signal(agent: GuestAgent, pid: int, sig: int) -> None:
    with contextlib.suppress(CtdError):
        await agent.exec(["kill", f"-{int(sig)}", str(pid)], {})
