"""exec and console: HTTP upgraded to a WebSocket.

exec frames, server -> client: binary, first byte the channel (1 stdout, 2 stderr), then a
text frame {"type": "exit", "code": N}. Client -> server: binary = stdin; text = control
{"type": "eof"} | {"type": "resize", "width", "height"} | {"type": "signal", "signal": N}.
console: binary both ways (the pty), text {"type": "resize", ...} from the client.
vnc (a running VM's display): binary both ways, QEMU's VNC (RFB) stream from its unix socket; no
VNC port is ever open on the network, the API's authentication and role check guard it.
All of them answer the subprotocol "ctd.v1" when the client offers it (the web console does,
beside its token: ctd/remote/api.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from ctd import validate
from ctd.api.handlers import ctx, routes
from ctd.errors import Conflict, InvalidRequest
from ctd.instance.consolehub import ConsoleHub
from ctd.instance.container.console import set_winsize
from ctd.state.records import InstanceType

if TYPE_CHECKING:
    from ctd.instance.container.driver import ExecProcess

log = logging.getLogger("ctd.api.stream")

DRAIN_AFTER_EXIT = 1.0
PROTOCOLS = ("ctd.v1",)   # the only subprotocol answered; a token offered beside it is never echoed


def websocket() -> web.WebSocketResponse:
    return web.WebSocketResponse(max_msg_size=1 << 20, protocols=PROTOCOLS)


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
    # a VM's: its kind answers (409 when it is not running or its guest agent does not answer)
    if rec.type != InstanceType.VM and rec.name not in c.instances.containers.running:
        raise Conflict(f"{rec.name} is not running; start it first with 'ctctl start {rec.name}'")
    ws = websocket()
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
                        proc.kill(int(control.get("signal", signal.SIGTERM)))

    pumps = [asyncio.create_task(pump(ch, r)) for ch, r in outputs]
    client = asyncio.create_task(from_client())
    try:
        waiting: list[asyncio.Future[Any]] = [proc.exit_code, client]
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if proc.exit_code not in done:
            log.debug("exec %s: client left first (%s)", proc.pid, client.exception() if client.done() else None)
            # The client went away: end the command, like a hung-up terminal would.
            with contextlib.suppress(ProcessLookupError):
                proc.kill(signal.SIGHUP if tty else signal.SIGKILL)
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
    """A container's pty or a VM's serial line (both a ConsoleHub that ctd reads all along)."""
    c = ctx(request)
    ref = validate.instance_ref(request.match_info["ref"])
    console: ConsoleHub = c.instances.console(ref)
    width, height = _size(request.query, "width"), _size(request.query, "height")
    backlog = request.query.get("backlog", "1") in ("1", "true")
    ws = websocket()
    await ws.prepare(request)
    if width and height:
        console.resize(width, height)
    outgoing: asyncio.Queue[bytes] = asyncio.Queue(maxsize=256)

    def listener(data: bytes) -> None:
        if not outgoing.full() or not data:
            outgoing.put_nowait(data)

    async def to_client() -> None:
        if backlog and console.backlog():
            await ws.send_bytes(console.backlog())
        while True:
            data = await outgoing.get()
            if not data:  # the instance stopped
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
                                         RecursionError, KeyError):
                    control = json.loads(msg.data)
                    if control.get("type") == "resize":
                        w, h = int(control["width"]), int(control["height"])
                        if 0 < w < 10000 and 0 < h < 10000:
                            console.resize(w, h)
    finally:
        console.unsubscribe(listener)
        sender.cancel()
    return ws


@routes.get("/1.0/instances/{ref}/console/log")
async def console_log(request: web.Request) -> web.Response:
    """The console log (the guest's bytes as they came, last 1 MiB), running or stopped."""
    c = ctx(request)
    data = await asyncio.to_thread(c.instances.console_log, request.match_info["ref"])
    return web.Response(body=data, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


@routes.get("/1.0/instances/{ref}/vnc")
async def vnc_ws(request: web.Request) -> web.StreamResponse:
    """A running VM's display: its VNC unix socket bridged to the WebSocket (noVNC speaks RFB)."""
    c = ctx(request)
    rec = c.instances.get(validate.instance_ref(request.match_info["ref"]))
    if rec.type is not InstanceType.VM:
        raise InvalidRequest(f"{rec.name} is a container: it has no display (only VMs have one); use its console")
    shown = c.instances.kinds.of(rec).view_fields(rec).get("vm") or {}
    if not shown.get("vnc_socket"):
        raise Conflict(f"{rec.name} is not running; start it first with 'ctctl start {rec.name}'")
    return await _unix_ws(request, Path(shown["vnc_socket"]), "display (VNC)")


async def _unix_ws(request: web.Request, path: Path, what: str) -> web.StreamResponse:
    """Bridge a WebSocket to a unix socket of QEMU's."""
    ws = websocket()
    if not ws.can_prepare(request).ok:   # before QEMU's socket is opened (it would stay open)
        raise InvalidRequest(f"the {what} is a WebSocket endpoint: send the WebSocket upgrade handshake")
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
    except OSError as exc:
        raise Conflict(f"the VM's {what} is not reachable: {exc.strerror}") from None
    try:
        await ws.prepare(request)
    except BaseException:
        writer.close()
        raise

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
