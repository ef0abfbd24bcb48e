"""exec and console: HTTP upgraded to a WebSocket.

exec frames, server -> client: binary, first byte the channel (1 stdout, 2 stderr), then a
text frame {"type": "exit", "code": N}. Client -> server: binary = stdin; text = control
{"type": "eof"} | {"type": "resize", "width", "height"} | {"type": "signal", "signal": N}.
console: binary both ways (the pty), text {"type": "resize", ...} from the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import signal
import struct
import termios
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from ctd import validate
from ctd.api.handlers import ctx, routes
from ctd.errors import Conflict, InvalidRequest

if TYPE_CHECKING:
    from ctd.instance.container.driver import ExecProcess

log = logging.getLogger("ctd.api.stream")

DRAIN_AFTER_EXIT = 1.0


class FdReader:
    """Chunks read from a non-blocking fd into a queue; b'' marks the end."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=64)
        self.loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        self.loop.add_reader(fd, self._readable)
        self.done = False

    def _readable(self) -> None:
        if self.queue.full():
            self.loop.remove_reader(self.fd)  # back-pressure: resume when the client caught up
            self.loop.call_later(0.01, self._resume)
            return
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            data = b"" if exc.errno == errno.EIO else b""
        if not data:
            self.loop.remove_reader(self.fd)
            self.done = True
        self.queue.put_nowait(data)

    def _resume(self) -> None:
        if not self.done:
            self.loop.add_reader(self.fd, self._readable)

    def stop(self) -> None:
        if not self.done:
            self.loop.remove_reader(self.fd)
            self.done = True


async def write_all(fd: int, data: bytes) -> None:
    os.set_blocking(fd, False)
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
            view = view[n:]
        except BlockingIOError:
            await asyncio.sleep(0.005)


def set_winsize(fd: int, width: int, height: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


def _size(query: Mapping[str, str], key: str) -> int | None:
    raw = query.get(key)
    if raw is None:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 10000:
        raise InvalidRequest(f"{key} must be a whole number from 1 to 9999")
    return int(raw)


@routes.get("/1.0/instances/{ref}/exec")
async def exec_ws(request: web.Request) -> web.StreamResponse:
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    command = request.query.getall("cmd", [])
    if not command or any(not part or "\0" in part for part in command[:1]) or any("\0" in p for p in command):
        raise InvalidRequest("give the command as one or more 'cmd' query parameters, e.g. ?cmd=ps&cmd=aux")
    env: dict[str, str] = {}
    for item in request.query.getall("env", []):
        key, sep, value = item.partition("=")
        if not sep or not key or "\0" in item:
            raise InvalidRequest(f"env entries must look like KEY=VALUE, got {item!r}")
        env[key] = value
    cwd = request.query.get("cwd", "/root")
    if not cwd.startswith("/") or "\0" in cwd:
        raise InvalidRequest("cwd must be an absolute path inside the container")
    tty = request.query.get("tty", "0") in ("1", "true")
    width, height = _size(request.query, "width"), _size(request.query, "height")
    if rec.name not in c.instances.containers.running:
        raise Conflict(f"{rec.name} is not running; start it first with 'ctctl start {rec.name}'")
    ws = web.WebSocketResponse(max_msg_size=1 << 20)
    if not ws.can_prepare(request).ok:  # refuse before the command runs, not after
        raise InvalidRequest("exec is a WebSocket endpoint: send the WebSocket upgrade handshake")
    proc = await c.instances.exec(rec.name, command, env, cwd, tty)
    try:
        await ws.prepare(request)
        if tty and width and height:
            set_winsize(proc.fds[0], width, height)
        await _bridge_exec(ws, proc, tty)
    finally:
        for fd in proc.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
    return ws


async def _bridge_exec(ws: web.WebSocketResponse, proc: ExecProcess, tty: bool) -> None:
    stdin_fd = proc.fds[0]
    outputs = [(1, FdReader(proc.fds[0]))] if tty else [(1, FdReader(proc.fds[1])), (2, FdReader(proc.fds[2]))]
    stdin_open = True

    async def pump(channel: int, reader: FdReader) -> None:
        while True:
            data = await reader.queue.get()
            if not data:
                return
            await ws.send_bytes(bytes([channel]) + data)

    async def from_client() -> None:
        nonlocal stdin_open
        async for msg in ws:
            if msg.type == WSMsgType.BINARY and stdin_open:
                await write_all(stdin_fd, msg.data)
            elif msg.type == WSMsgType.TEXT:
                try:
                    control = json.loads(msg.data)
                except (json.JSONDecodeError, RecursionError):  # deep nesting: ignored, like bad JSON
                    continue
                kind = control.get("type") if isinstance(control, dict) else None
                if kind == "eof" and stdin_open and not tty:
                    stdin_open = False
                    os.close(stdin_fd)
                    proc.fds[0] = -1
                elif kind == "eof" and tty:
                    await write_all(stdin_fd, b"\x04")
                elif kind == "resize" and tty:
                    set_winsize(stdin_fd, int(control.get("width", 80)), int(control.get("height", 24)))
                elif kind == "signal":
                    with contextlib.suppress(ProcessLookupError, ValueError, TypeError, OSError):
                        os.kill(proc.pid, int(control.get("signal", signal.SIGTERM)))

    pumps = [asyncio.create_task(pump(ch, r)) for ch, r in outputs]
    client = asyncio.create_task(from_client())
    try:
        done, _ = await asyncio.wait([proc.exit_code, client], return_when=asyncio.FIRST_COMPLETED)
        if proc.exit_code not in done:
            log.debug("exec %s: client left first (%s)", proc.pid, client.exception() if client.done() else None)
            # The client went away: end the command, like a hung-up terminal would.
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGHUP if tty else signal.SIGKILL)
            await proc.exit_code
            return
        # Output written just before exit is still in the pipes: drain it, but not forever
        # (a daemon started by the command may hold them open).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*pumps), DRAIN_AFTER_EXIT)
        await ws.send_str(json.dumps({"type": "exit", "code": proc.exit_code.result()}))
        # Stop reading first: close() then does the full closing handshake, so the client
        # gets every frame before the connection goes.
        client.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await client
        await ws.close()
    finally:
        for _, reader in outputs:
            reader.stop()
        for task in pumps + [client]:
            task.cancel()


@routes.get("/1.0/instances/{ref}/console")
async def console_ws(request: web.Request) -> web.StreamResponse:
    c = ctx(request)
    ref = validate.instance_ref(request.match_info["ref"])
    console = c.instances.console(ref)
    if isinstance(console, Path):  # a VM: QEMU's serial port on a unix socket
        return await _serial_ws(request, console)
    width, height = _size(request.query, "width"), _size(request.query, "height")
    backlog = request.query.get("backlog", "1") in ("1", "true")
    ws = web.WebSocketResponse(max_msg_size=1 << 20)
    await ws.prepare(request)
    if width and height:
        set_winsize(console.master_fd, width, height)
    outgoing: asyncio.Queue[bytes] = asyncio.Queue(maxsize=256)

    def listener(data: bytes) -> None:
        if not outgoing.full() or not data:
            outgoing.put_nowait(data)

    async def to_client() -> None:
        if backlog and console.backlog():
            await ws.send_bytes(console.backlog())
        while True:
            data = await outgoing.get()
            if not data:  # the container stopped
                await ws.close()
                return
            await ws.send_bytes(data)

    console.subscribe(listener)
    sender = asyncio.create_task(to_client())
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                console.write(msg.data)
            elif msg.type == WSMsgType.TEXT:
                with contextlib.suppress(json.JSONDecodeError, ValueError, TypeError, AttributeError,
                                         RecursionError):
                    control = json.loads(msg.data)
                    if control.get("type") == "resize":
                        set_winsize(console.master_fd, int(control["width"]), int(control["height"]))
    finally:
        console.unsubscribe(listener)
        sender.cancel()
    return ws


async def _serial_ws(request: web.Request, path: Path) -> web.StreamResponse:
    """Bridge a WebSocket to a VM's serial console; the recent output comes first."""
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
    except OSError as exc:
        raise Conflict(f"the VM's serial console is not reachable: {exc.strerror}") from None
    ws = web.WebSocketResponse(max_msg_size=1 << 20)
    await ws.prepare(request)
    log_file = path.with_name("serial.log")
    if request.query.get("backlog", "1") in ("1", "true") and log_file.exists():
        with log_file.open("rb") as fh:
            fh.seek(max(0, log_file.stat().st_size - 16384))
            tail = fh.read()
        if tail:
            await ws.send_bytes(tail)

    async def to_client() -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                await ws.close()
                return
            await ws.send_bytes(data)

    sender = asyncio.create_task(to_client())
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                writer.write(msg.data)
                await writer.drain()
    finally:
        sender.cancel()
        writer.close()
    return ws
