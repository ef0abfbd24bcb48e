"""The Qmp wrapper against a small fake QMP server on a unix socket (no QEMU)."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ctd.errors import OperationFailed
from ctd.instance.vm.qmp import Qmp

GREETING = {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""},
                    "capabilities": []}}
TS = {"seconds": 1, "microseconds": 0}


async def fake_qemu(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await _serve(reader, writer)
    except (ConnectionResetError, BrokenPipeError):
        pass   # the client hung up first
    finally:
        writer.close()


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    def send(obj: dict[str, Any]) -> None:
        writer.write(json.dumps(obj).encode() + b"\r\n")

    async def messages() -> Any:
        """QMP clients need not end a command with a newline: parse the stream as JSON."""
        buf, dec = "", json.JSONDecoder()
        while chunk := await reader.read(4096):
            buf += chunk.decode()
            while buf.strip():
                try:
                    obj, end = dec.raw_decode(buf.lstrip())
                except json.JSONDecodeError:
                    break
                buf = buf.lstrip()[end:]
                yield obj

    send(GREETING)
    state = "running"
    async for msg in messages():
        cmd = msg["execute"]
        ident = {"id": msg["id"]} if "id" in msg else {}
        reply: dict[str, Any] = {"return": {}, **ident}
        if cmd == "query-status":
            reply["return"] = {"status": state, "running": state == "running"}
        elif cmd == "stop":
            state = "paused"
            send({"event": "STOP", "data": {}, "timestamp": TS})
        elif cmd == "query-pci":
            bridge = {"bus": {}, "devices": [{"qdev_id": "behind-bridge"}]}
            reply["return"] = [{"bus": 0, "devices": [{"qdev_id": "disk0"}, {"qdev_id": "", "pci_bridge": bridge}]}]
        elif cmd == "hang":
            continue
        elif cmd == "bogus":
            reply = {"error": {"class": "CommandNotFound", "desc": "The command bogus has not been found"}, **ident}
        send(reply)
        await writer.drain()
        if cmd == "system_powerdown":   # the guest obeys the button
            send({"event": "POWERDOWN", "data": {}, "timestamp": TS})
            send({"event": "SHUTDOWN", "data": {"guest": True, "reason": "guest-shutdown"}, "timestamp": TS})
            await writer.drain()
            break
        if cmd == "quit":
            break


def with_server(tmp_path: Path, body: Callable[[Path], Awaitable[None]],
                handler: Callable[..., Awaitable[None]] = fake_qemu) -> None:
    sock = tmp_path / "qmp.sock"

    async def go() -> None:
        server = await asyncio.start_unix_server(handler, str(sock))
        try:
            await asyncio.wait_for(body(sock), 20)
        finally:
            server.close()
    asyncio.run(go())


def test_commands_and_queries(tmp_path: Path) -> None:
    async def body(sock: Path) -> None:
        async with Qmp(sock) as q:
            assert q.connected
            assert await q.status() == "running"
            # Concurrent commands on one session get their own replies (ids matched).
            statuses = await asyncio.gather(*(q.status() for _ in range(5)))
            assert statuses == ["running"] * 5
            async with q.events("STOP") as ev:
                await q.pause()
                stop = await q.wait_event(ev, 2)
            assert stop is not None and stop["event"] == "STOP"
            assert await q.status() == "paused"
            assert [d["qdev_id"] for d in await q.query_pci()] == ["disk0", "", "behind-bridge"]
        assert not q.connected
    with_server(tmp_path, body)


def test_errors_and_timeouts(tmp_path: Path) -> None:
    async def body(sock: Path) -> None:
        async with Qmp(sock) as q:
            with pytest.raises(OperationFailed, match="QMP bogus failed: The command bogus has not been found"):
                await q.execute("bogus")
            with pytest.raises(OperationFailed, match="QMP hang got no answer within 0.2 s"):
                await q.execute("hang", timeout=0.2)
            assert await q.status() == "running"   # the session survives both
            await q.quit()                         # reply or not, no error
    with_server(tmp_path, body)


def test_watch_delivers_events_and_ends_when_qemu_goes(tmp_path: Path) -> None:
    async def body(sock: Path) -> None:
        q = Qmp(sock)
        await q.connect()
        seen: list[str] = []
        task = q.watch(lambda ev: seen.append(ev["event"]))
        await q.powerdown()
        await asyncio.wait_for(task, 5)   # no cancel needed: the session ended
        assert seen == ["POWERDOWN", "SHUTDOWN"]
        await q.close()
    with_server(tmp_path, body)


def test_connect_waits_for_the_socket_then_gives_up(tmp_path: Path) -> None:
    sock = tmp_path / "late.sock"

    async def go() -> None:
        async def serve_later() -> asyncio.AbstractServer:
            await asyncio.sleep(0.3)
            return await asyncio.start_unix_server(fake_qemu, str(sock))
        later = asyncio.ensure_future(serve_later())
        q = Qmp(sock)
        await q.connect(timeout=5)
        assert await q.status() == "running"
        await q.close()
        (await later).close()
        with pytest.raises(OperationFailed, match="cannot connect to QEMU's QMP socket .*nothere"):
            await Qmp(tmp_path / "nothere.sock").connect(timeout=0.3)
    asyncio.run(go())


def test_no_greeting_times_out(tmp_path: Path) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()   # like a QEMU whose monitor is busy with another client

    async def body(sock: Path) -> None:
        with pytest.raises(OperationFailed, match="no QMP greeting"):
            await Qmp(sock).connect(timeout=0.5)
    with_server(tmp_path, body, silent)
