"""The guest agent client (ctd/instance/vm/agent.py) against a fake agent on a unix socket: the
protocol (0xFF reset, guest-sync-delimited, stale replies skipped) and a hostile guest (huge,
garbage, silent, wrongly typed replies). The real qemu-ga is tested in tests/vm/test_vm_agent.py."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from ctd.errors import Conflict, OperationFailed
from ctd.instance.vm import agent as agent_mod
from ctd.instance.vm import guestexec
from ctd.instance.vm.agent import GuestAgent, NoAgent

Handler = Callable[[dict[str, Any]], bytes | None]


@contextlib.asynccontextmanager
async def fake_agent(path: Path, handle: Handler, stale: bytes = b"") -> AsyncIterator[list[dict[str, Any]]]:
    """A qemu-ga look-alike: answers the sync properly, everything else through handle()."""
    seen: list[dict[str, Any]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(stale)
        try:
            while line := await reader.readline():
                msg = json.loads(line.lstrip(b"\xff"))
                seen.append(msg)
                if msg["execute"] == "guest-sync-delimited":
                    writer.write(b"\xff" + json.dumps({"return": msg["arguments"]["id"]}).encode() + b"\n")
                else:
                    out = handle(msg)
                    if out is not None:
                        writer.write(out)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(serve, str(path))
    try:
        yield seen
    finally:
        server.close()


def reply(value: Any) -> bytes:
    return json.dumps({"return": value}).encode() + b"\n"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_sync_skips_stale_replies_and_the_command_goes_through(tmp_path: Path) -> None:
    async def main() -> None:
        sock = tmp_path / "a.sock"
        stale = reply({"pid": 999}) * 3   # answers to calls an earlier, timed-out session abandoned
        async with fake_agent(sock, lambda m: reply({"pid": 42}), stale) as seen:
            assert await GuestAgent(sock, "vm1").exec(["ls", "-l"], {"A": "1"}) == 42
        assert seen[-1] == {"execute": "guest-exec", "arguments": {
            "path": "ls", "arg": ["-l"], "capture-output": True, "env": ["A=1"]}}
    run(main())


def test_exec_status_decodes_output_and_ignores_fields_of_the_wrong_type(tmp_path: Path) -> None:
    async def main() -> None:
        sock = tmp_path / "a.sock"
        answer = {"exited": True, "exitcode": 3, "out-data": base64.b64encode(b"hello").decode(),
                  "err-data": 17, "signal": "nine", "extra": {"deep": [1] * 100}}
        async with fake_agent(sock, lambda m: reply(answer)):
            st = await GuestAgent(sock, "vm1").exec_status(1)
        assert (st.exited, st.exitcode, st.signal, st.stdout, st.stderr) == (True, 3, None, b"hello", b"")
    run(main())


def test_an_oversized_reply_is_refused_not_buffered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_mod, "MAX_REPLY", 4096)

    async def main() -> None:
        sock = tmp_path / "a.sock"
        async with fake_agent(sock, lambda m: b'{"return": "' + b"x" * 100_000 + b'"}\n'):
            with pytest.raises(OperationFailed, match="larger than"):
                await GuestAgent(sock, "vm1").call("guest-info")
    run(main())


@pytest.mark.parametrize("answer, message", [
    (b"not json at all\n", "not JSON"),
    (b"[" * 100_000 + b"\n", "not JSON"),                      # nesting: no RecursionError escapes
    (b'{"error": {"class": "GenericError", "desc": "nope"}}\n', "refused guest-info: nope"),
    (b'{"something": 1}\n', "has no result"),
    (b"[1, 2]\n", "not an object"),
])
def test_garbage_and_errors_are_clear_failures(tmp_path: Path, answer: bytes, message: str) -> None:
    async def main() -> None:
        sock = tmp_path / "a.sock"
        async with fake_agent(sock, lambda m: answer):
            with pytest.raises(OperationFailed, match=message):
                await GuestAgent(sock, "vm1").call("guest-info")
    run(main())


def test_a_silent_agent_costs_the_timeout_and_is_a_409_that_names_the_fix(tmp_path: Path) -> None:
    async def main() -> None:
        sock = tmp_path / "a.sock"
        ga = GuestAgent(sock, "vm1")
        async with fake_agent(sock, lambda m: None):
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(NoAgent, match="qemu-guest-agent") as err:
                await ga.call("guest-info", timeout=0.5)
            assert loop.time() - start < 2
            assert isinstance(err.value, Conflict)   # HTTP 409
            assert not await ga.ping(timeout=0.3)
            assert not ga._lock.locked()   # a stuck agent holds no lock afterwards
        with pytest.raises(NoAgent, match="no guest agent channel"):
            await ga.call("guest-ping")   # no socket at all (VM stopped)
    run(main())


def test_interfaces_keep_only_well_typed_bounded_fields(tmp_path: Path) -> None:
    nics = [{"name": "lo", "ip-addresses": [{"ip-address": "127.0.0.1", "prefix": 8}]},
            {"name": "eth0", "hardware-address": "52:54:00:00:00:01",
             "ip-addresses": [{"ip-address": "10.0.0.5", "prefix": 24}, {"ip-address": 5}, "junk"]},
            "junk", {"name": 7}] + [{"name": f"x{i}"} for i in range(100)]

    async def main() -> None:
        sock = tmp_path / "a.sock"
        async with fake_agent(sock, lambda m: reply(nics)):
            got = await GuestAgent(sock, "vm1").interfaces()
        assert got[0].name == "eth0" and got[0].addresses == ["10.0.0.5/24"]
        assert len(got) == 64
    run(main())


def test_vm_exec_session_delivers_output_and_exit_code(tmp_path: Path) -> None:
    polls = []

    def handle(m: dict[str, Any]) -> bytes:
        if m["execute"] == "guest-exec":
            return reply({"pid": 7})
        polls.append(m)
        if len(polls) < 3:
            return reply({"exited": False})
        return reply({"exited": True, "exitcode": 5, "out-data": base64.b64encode(b"out\n").decode(),
                      "err-data": base64.b64encode(b"err\n").decode()})

    async def main() -> None:
        sock = tmp_path / "a.sock"
        async with fake_agent(sock, handle) as seen:
            proc = await guestexec.start(GuestAgent(sock, "vm1"), ["id"], {}, "/tmp", linux=True)
            assert await asyncio.wait_for(proc.exit_code, 10) == 5
            outs = []
            for fd in proc.fds[1:]:
                chunks = []
                while data := await asyncio.to_thread(lambda f=fd: os.read(f, 65536)):
                    chunks.append(data)
                outs.append(b"".join(chunks))
            assert outs == [b"out\n", b"err\n"]
            exec_args = next(m for m in seen if m["execute"] == "guest-exec")["arguments"]
            assert exec_args["path"] == "/bin/sh" and exec_args["arg"][-2:] == ["/tmp", "id"]
            proc.kill(9)   # passed on as `kill -9 7` by the agent, never to a host pid
            await asyncio.sleep(0.2)
            assert seen[-1]["arguments"]["path"] == "kill" and seen[-1]["arguments"]["arg"] == ["-9", "7"]
    run(main())


def test_exec_with_a_terminal_is_refused() -> None:
    with pytest.raises(Exception, match="without a terminal"):
        guestexec.refuse_tty("vm1")


def test_a_port_the_guest_never_opened_means_no_agent_without_waiting(tmp_path: Path) -> None:
    async def closed() -> bool:
        return False

    async def main() -> None:
        sock = tmp_path / "a.sock"
        async with fake_agent(sock, lambda m: reply({})) as seen:
            loop = asyncio.get_running_loop()
            start = loop.time()
            assert not await GuestAgent(sock, "vm1", port_open=closed).ping(timeout=5)
            assert loop.time() - start < 1 and seen == []   # QEMU said so: nothing sent to the guest
    run(main())
