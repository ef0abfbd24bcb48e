"""A client of GET /1.0/events for tests: a WebSocket read in a thread of its own, events kept
in a list the test waits on. `paused=True` connects and reads nothing until resume()."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import aiohttp

Event = dict[str, Any]


class EventStream:
    def __init__(self, *, socket: str | None = None, https: tuple[int, str, ssl.SSLContext] | None = None,
                 query: dict[str, str] | None = None, paused: bool = False) -> None:
        self.socket, self.https, self.query = socket, https, query or {}
        self.events: list[Event] = []
        self.arrived: list[float] = []   # time.perf_counter() at each event's arrival (bench/events.py)
        self.close_code: int | None = None
        self.close_reason = ""
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._ended = threading.Event()
        self._resume = threading.Event()
        if not paused:
            self._resume.set()
        self._loop = asyncio.new_event_loop()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)

    def __enter__(self) -> EventStream:
        self._thread.start()
        if not self._connected.wait(30) or self.error is not None:
            raise AssertionError(f"the event stream did not connect: {self.error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _main(self) -> None:
        if self.https is not None:
            port, token, context = self.https
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context),
                                            headers={"Authorization": f"Bearer {token}"})
            url = f"https://127.0.0.1:{port}/1.0/events"
        else:
            session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=self.socket or ""))
            url = "http://localhost/1.0/events"
        try:
            async with session:
                self._ws = ws = await session.ws_connect(url, params=self.query, autoping=True)
                self._connected.set()
                while not self._resume.is_set():
                    await asyncio.sleep(0.05)
                while True:
                    msg = await ws.receive()
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        with self._lock:
                            self.events.append(json.loads(msg.data))
                            self.arrived.append(time.perf_counter())
                    else:
                        if msg.type == aiohttp.WSMsgType.CLOSE:
                            self.close_reason = msg.extra or ""
                        break
                self.close_code = ws.close_code
                await ws.close()
        except BaseException as exc:  # noqa: BLE001 — the test reads it
            self.error = exc
        finally:
            self._connected.set()
            self._ended.set()

    def resume(self) -> None:
        self._resume.set()

    def wait(self, until: Callable[[list[Event]], bool], timeout: float = 30) -> list[Event]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                got = list(self.events)
            if until(got):
                return got
            if self._ended.is_set():
                break
            time.sleep(0.05)
        raise AssertionError(f"events not seen within {timeout} s (ended: {self._ended.is_set()}, "
                             f"close {self.close_code} {self.close_reason!r}); got: {got[-20:]}")

    def wait_ended(self, timeout: float = 30) -> None:
        assert self._ended.wait(timeout), "the event stream did not end"

    def snapshot(self) -> list[Event]:
        with self._lock:
            return list(self.events)

    def close(self) -> None:
        if not self._ended.is_set() and self._ws is not None:
            asyncio.run_coroutine_threadsafe(self._ws.close(), self._loop)
        self._thread.join(15)


def actions(events: list[Event], name: str, kind: str = "lifecycle") -> list[str]:
    return [e["metadata"]["action"] for e in events if e["type"] == kind and e["instance"] == name]


class StalledClient:
    """A WebSocket client of GET /1.0/events on the unix socket that stops reading after the
    handshake, like a stuck client (no library buffering on its side), then reads all that came:
    the events as JSON, and the close frame's code and reason."""

    def __init__(self, socket_path: str, query: str) -> None:
        import socket as socketmod
        self.sock = socketmod.socket(socketmod.AF_UNIX, socketmod.SOCK_STREAM)
        self.sock.setsockopt(socketmod.SOL_SOCKET, socketmod.SO_RCVBUF, 4096)
        self.sock.connect(socket_path)
        self.sock.sendall((f"GET /1.0/events?{query} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def read_all(self, timeout: float = 30) -> tuple[list[Event], int | None, str]:
        self.sock.settimeout(timeout)
        data = b""
        while chunk := self.sock.recv(65536):
            data += chunk
            events, code, reason = self._frames(data)
            if code is not None:
                break
        self.sock.close()
        return self._frames(data)

    @staticmethod
    def _frames(data: bytes) -> tuple[list[Event], int | None, str]:
        events: list[Event] = []
        at = 0
        while at + 2 <= len(data):
            opcode, size, at0 = data[at] & 0x0F, data[at + 1] & 0x7F, at + 2
            if size == 126:
                size, at0 = int.from_bytes(data[at0:at0 + 2], "big"), at0 + 2
            elif size == 127:
                size, at0 = int.from_bytes(data[at0:at0 + 8], "big"), at0 + 8
            if at0 + size > len(data):
                break
            payload = data[at0:at0 + size]
            at = at0 + size
            if opcode == 1:
                events.append(json.loads(payload))
            elif opcode == 8:
                return events, int.from_bytes(payload[:2], "big"), payload[2:].decode()
        return events, None, ""
