"""QEMU's streams of a live VM migration, tunnelled through ctd's mutual TLS between the nodes.

No TCP port is opened for QEMU. On the source node, ctd listens on two unix sockets of its own
(mode 0600 in a 0700 directory of its run dir): QEMU's drive-mirror connects to `nbd.sock` (one
connection per disk) and its migration to `migrate.sock`. Each connection is carried by one
WebSocket to the target node (`GET /1.0/cluster/vm-migrations/{id}/tunnel?to=nbd|migrate`), on
the HTTPS listener the nodes already use: the source presents its node certificate, the target
accepts only the member that began this migration, and the source pins the target's certificate
fingerprint from its etcd record (checked before a byte of QEMU's goes out). On the target, ctd
connects the WebSocket to the target QEMU's own unix socket for that stream (NBD server or
`migrate-incoming`): paths the target chose, never the request's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from ctd.cluster.migrate import Target

log = logging.getLogger("ctd.cluster.migrate")
BLOCK = 256 << 10
STREAMS = ("nbd", "migrate")


async def _pump_socket_to_ws(reader: asyncio.StreamReader, send: aiohttp.ClientWebSocketResponse
                             | web.WebSocketResponse) -> None:
    while data := await reader.read(BLOCK):
        await send.send_bytes(data)
    await send.close()


async def _pump_ws_to_socket(ws: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
                             writer: asyncio.StreamWriter) -> None:
    async for msg in ws:
        if msg.type is not aiohttp.WSMsgType.BINARY:
            break
        writer.write(msg.data)
        await writer.drain()
    with contextlib.suppress(OSError):
        if writer.can_write_eof():
            writer.write_eof()


async def bridge(ws: aiohttp.ClientWebSocketResponse | web.WebSocketResponse, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
    """Bytes both ways until either side ends (then both are closed)."""
    tasks = [asyncio.ensure_future(_pump_socket_to_ws(reader, ws)),
             asyncio.ensure_future(_pump_ws_to_socket(ws, writer))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        # one direction ended: let the other drain a moment (QEMU closes after its last bytes)
        await asyncio.wait(tasks, timeout=5)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        writer.close()
        with contextlib.suppress(Exception):
            await ws.close()


class SourceRelay:
    """The source node's unix sockets for QEMU, each connection a pinned WebSocket to the target."""

    def __init__(self, target: Target, sid: str, directory: Path) -> None:
        self.target, self.sid, self.dir = target, sid, directory
        self.servers: list[asyncio.Server] = []
        self.session: aiohttp.ClientSession | None = None
        self.conns: set[asyncio.Task[None]] = set()
        self.failed: str | None = None

    def path(self, stream: str) -> Path:
        return self.dir / f"{stream}.sock"

    async def __aenter__(self) -> SourceRelay:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=False)
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=30))
        try:
            for stream in STREAMS:
                server = await asyncio.start_unix_server(functools.partial(self._accepted, stream),
                                                         path=str(self.path(stream)))
                os.chmod(self.path(stream), 0o600)
                self.servers.append(server)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for server in self.servers:
            server.close()
        for task in list(self.conns):
            task.cancel()
        for task in list(self.conns):
            with contextlib.suppress(BaseException):
                await task
        if self.session is not None:
            await self.session.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _accepted(self, stream: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._carry(stream, reader, writer))
        self.conns.add(task)
        task.add_done_callback(self.conns.discard)

    async def _carry(self, stream: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.session is not None
        url = f"{self.target.address.rstrip('/')}/1.0/cluster/vm-migrations/{self.sid}/tunnel?to={stream}"
        try:
            ws = await self.session.ws_connect(url, ssl=self.target.context, max_msg_size=0, autoping=True,
                                               heartbeat=None)
        except (aiohttp.ClientError, OSError) as exc:
            self.failed = f"the tunnel to node {self.target.node} failed: {exc}"
            log.warning("%s", self.failed)
            writer.close()
            return
        ssl_object = ws.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else b""
        if not hmac.compare_digest(hashlib.sha256(der or b"").hexdigest(), self.target.fingerprint):
            self.failed = (f"node {self.target.node}'s certificate is not the one its membership records; "
                           "nothing was sent")
            log.error("%s", self.failed)
            await ws.close()
            writer.close()   # QEMU sees the connection end: its mirror or migration fails, and is undone
            return
        await bridge(ws, reader, writer)


async def serve(request: web.Request, socket: Path) -> web.WebSocketResponse:
    """The target's end: the WebSocket joined to QEMU's unix socket."""
    reader, writer = await asyncio.open_unix_connection(str(socket))
    ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
    await ws.prepare(request)
    await bridge(ws, reader, writer)
    return ws
