"""exec and console over ctd's WebSocket endpoints (see ctd/api/stream.py for the framing)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import ssl
import sys
import termios
import tty as ttymod
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import aiohttp

from ctctl.client import ApiError, Client
from ctctl.tls import pinning_context

DETACH_KEY = b"\x1d"  # Ctrl-]


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """fd in raw mode for the block (its settings back after it); a no-op when fd is no terminal."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        ttymod.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class _ClientCertConnector(aiohttp.TCPConnector):
    """Pins the server by fingerprint and presents this user's client certificate. aiohttp pins only
    with a context of its own (no certificate in it), so this one hands it ours instead."""

    def __init__(self, pinned: aiohttp.Fingerprint, context: ssl.SSLContext) -> None:
        super().__init__(ssl=pinned)
        self._client_context = context

    def _get_ssl_context(self, req: aiohttp.ClientRequest) -> ssl.SSLContext | None:
        return self._client_context if req.is_ssl() else None


def _session(client: Client) -> tuple[aiohttp.ClientSession, str]:
    """A session to the socket, or to a remote whose certificate must be the pinned one."""
    if client.remote is None:
        return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=client.socket_path)), "http://localhost"
    pinned = aiohttp.Fingerprint(bytes.fromhex(client.remote.fingerprint))
    client_cert = client.client_cert()
    connector = (aiohttp.TCPConnector(ssl=pinned) if client_cert is None
                 else _ClientCertConnector(pinned, pinning_context(client_cert)))
    return aiohttp.ClientSession(connector=connector, headers=client.auth_headers()), client.remote.url


async def _connect(client: Client, path: str, query: list[tuple[str, str]]
                   ) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    """A WebSocket to path on ctd, and its session (the caller closes both); ApiError, one line, if not."""
    session, base = _session(client)
    socket_path = client.where
    try:
        ws = await session.ws_connect(f"{base}{path}", params=query, max_msg_size=1 << 22,
                                      autoping=True, heartbeat=None)
    except aiohttp.ServerFingerprintMismatch as exc:
        await session.close()
        raise ApiError(f"the certificate of {socket_path} has SHA-256 {exc.got.hex()}, not the pinned "
                       f"{exc.expected.hex()}: refusing to talk to it") from None
    except aiohttp.WSServerHandshakeError as exc:
        await session.close()
        # ctd puts its error message in a header of the refused upgrade
        headers = cast("Mapping[str, str]", exc.headers or {})  # aiohttp's CIMultiDictProxy of the reply
        message = headers.get("X-Ctd-Error") or f"ctd refused the connection (HTTP {exc.status})"
        raise ApiError(message, status=exc.status) from None
    except aiohttp.ClientConnectorError as exc:
        await session.close()
        raise ApiError(f"cannot reach ctd at {socket_path} ({exc.os_error.strerror}); is it running?") from None
    except aiohttp.ClientError as exc:
        await session.close()
        raise ApiError(f"talking to ctd at {socket_path} failed: {exc}") from None
    return session, ws


def _stdin_reader(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes]) -> None:
    def pump() -> None:
        while True:
            try:
                data = os.read(0, 65536)
            except OSError:
                data = b""
            loop.call_soon_threadsafe(queue.put_nowait, data)
            if not data:
                return
    import threading
    threading.Thread(target=pump, daemon=True).start()


async def run_exec(client: Client, ref: str, command: list[str], env: list[str], cwd: str | None,
                   use_tty: bool) -> int:
    query = [("cmd", c) for c in command] + [("env", e) for e in env]
    if cwd:
        query.append(("cwd", cwd))
    if use_tty:
        size = shutil.get_terminal_size()
        query += [("tty", "1"), ("width", str(size.columns)), ("height", str(size.lines))]
        term = os.environ.get("TERM")
        if term:
            query.append(("env", f"TERM={term}"))
    session, ws = await _connect(client, f"/1.0/instances/{ref}/exec", query)
    loop = asyncio.get_running_loop()
    stdin: asyncio.Queue[bytes] = asyncio.Queue()
    _stdin_reader(loop, stdin)
    exit_code = 1

    async def send_stdin() -> None:
        # The command may end before its input does: then there is no one to send to.
        with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
            while not ws.closed:
                data = await stdin.get()
                if not data:
                    await ws.send_str(json.dumps({"type": "eof"}))
                    return
                await ws.send_bytes(data)

    def on_winch() -> None:
        size = shutil.get_terminal_size()
        asyncio.ensure_future(ws.send_str(json.dumps({"type": "resize", "width": size.columns,
                                                      "height": size.lines})))

    if use_tty and os.isatty(1):
        loop.add_signal_handler(signal.SIGWINCH, on_winch)
    sender = asyncio.create_task(send_stdin())
    try:
        with raw_terminal(0) if use_tty else contextlib.nullcontext():
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    out = sys.stdout.buffer if msg.data[0] == 1 else sys.stderr.buffer
                    out.write(msg.data[1:])
                    out.flush()
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    control: dict[str, Any] = json.loads(msg.data)
                    if control.get("type") == "exit":
                        exit_code = int(control["code"])
                    elif control.get("type") == "error":
                        raise ApiError(control.get("error", "exec failed"))
                elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break
    finally:
        sender.cancel()
        await ws.close()
        await session.close()
    return exit_code


async def run_console(client: Client, ref: str) -> None:
    size = shutil.get_terminal_size()
    session, ws = await _connect(client, f"/1.0/instances/{ref}/console",
                                 [("width", str(size.columns)), ("height", str(size.lines))])
    loop = asyncio.get_running_loop()
    stdin: asyncio.Queue[bytes] = asyncio.Queue()
    _stdin_reader(loop, stdin)
    sys.stderr.write(f"Connected to the console of {ref}; detach with Ctrl-]\r\n")
    sys.stderr.flush()

    async def send_stdin() -> None:
        while True:
            data = await stdin.get()
            if not data or DETACH_KEY in data:
                head = data.split(DETACH_KEY, 1)[0] if data else b""
                if head:
                    await ws.send_bytes(head)
                if not data and not os.isatty(0):
                    await asyncio.sleep(1.0)  # piped input: let the guest answer it first
                await ws.close()
                return
            await ws.send_bytes(data)

    sender = asyncio.create_task(send_stdin())
    try:
        with raw_terminal(0):
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    sys.stdout.buffer.write(msg.data)
                    sys.stdout.buffer.flush()
                elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break
    finally:
        sender.cancel()
        await ws.close()
        await session.close()
    sys.stderr.write("\r\nDetached from the console.\r\n")


async def run_vnc_proxy(socket_path: str, host: str, port: int) -> None:
    """A loopback TCP port whose connections go to QEMU's VNC unix socket."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_unix_connection(socket_path)
        except OSError as exc:
            writer.close()
            sys.stderr.write(f"ctctl: cannot reach the VM's VNC socket: {exc.strerror}\n")
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    server = await asyncio.start_server(handle, host, port)
    async with server:
        await server.serve_forever()


async def run_events(client: Client, types: list[str], instance: str | None,
                     show: Callable[[dict[str, Any]], None]) -> None:
    """Each event of GET /1.0/events to `show` until ctd closes the stream; ApiError when ctd cut
    this client off (too slow) or went away."""
    query = [("type", t) for t in types] + ([("instance", instance)] if instance else [])
    session, ws = await _connect(client, "/1.0/events", query)
    reason = ""
    try:
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                show(json.loads(msg.data))
            elif msg.type == aiohttp.WSMsgType.CLOSE:
                reason = msg.extra or ""
                break
            elif msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                break
    finally:
        await ws.close()
        await session.close()
    if ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION:
        raise ApiError(f"ctd cut this monitor off: {reason}")
    raise ApiError(f"ctd closed the event stream ({reason or 'it went away'}); run 'ctctl monitor' again")
