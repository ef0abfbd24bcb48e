"""The QEMU guest agent of a VM: qemu-ga (Linux) or virtio-win's agent (Windows) on the
virtio-serial port org.qemu.guest_agent.0 (argv._agent), which QEMU serves on a unix socket.

Protocol: JSON requests and replies, one per line, no greeting. ctd connects for each call
(QEMU serves one client at a time; a per-VM asyncio.Lock queues ctd's own callers), resets the
agent's parser with a 0xFF byte, and synchronises with guest-sync-delimited (the reply is
preceded by 0xFF; anything before it is a stale reply to an earlier, abandoned call).

The channel is hostile input: the guest controls the agent. So
- every read is bounded in size (MAX_REPLY) and every call in time (the whole call, lock
  included, runs under one timeout: a silent or stuck agent costs its caller `timeout` seconds
  and never holds the instance lock beyond that; the agent lock is not the instance lock);
- a reply is parsed as JSON once, with nesting errors caught, and only the fields ctd reads are
  taken, each checked for its type (AgentReply helpers); nothing else of it is used;
- what the guest says is never trusted for a host decision: addresses are shown, exit codes
  passed on, output is bytes handed to the caller, capped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from ctd.errors import Conflict, CtdError, OperationFailed

MAX_REPLY = 4 << 20            # bytes of one reply line (base64 output included)
MAX_STALE = 8 << 20            # bytes of stale replies skipped before a sync is given up
PING_TIMEOUT = 5.0             # no answer within this: no agent (under TCG a busy guest is slow)
CALL_TIMEOUT = 15.0
REFRESH_AFTER = 15.0           # seconds a status shows the guest's addresses before asking again
AGENT_NAME = "org.qemu.guest_agent.0"
MISSING_HINT = ("install the guest agent in the VM (Debian/Ubuntu: apt-get install qemu-guest-agent; "
                "Windows: the QEMU guest agent from the virtio-win ISO) and start it")


class NoAgent(Conflict):
    """No agent answers on the VM's channel (HTTP 409)."""


@dataclass
class ExecStatus:
    exited: bool
    exitcode: int | None = None
    signal: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    truncated: bool = False


@dataclass
class GuestNic:
    name: str
    mac: str | None
    addresses: list[str] = field(default_factory=list)   # "ADDR/PREFIX"


class GuestNicView(TypedDict):
    name: str
    mac: str | None
    addresses: list[str]


class AgentView(TypedDict):
    """What `status` shows of the guest (AgentClient.shown)."""

    agent: bool | None               # None: not asked yet; False: no agent answered
    interfaces: list[GuestNicView]   # its last answer to guest-network-get-interfaces
    age_s: int | None                # how old that answer is


def _str(value: Any, limit: int = 256) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        return b""
    try:
        return base64.b64decode(value, validate=False)
    except (ValueError, TypeError):
        return b""


class GuestAgent:
    """One VM's agent channel."""

    def __init__(self, socket: Path, vm: str, port_open: Callable[[], Awaitable[bool | None]] | None = None) -> None:
        self.socket = Path(socket)
        self.vm = vm
        # QEMU's word on whether the guest has opened the port (QMP query-chardev frontend-open):
        # False means no agent listens, known at once instead of after a ping's timeout
        self._port_open = port_open
        self._lock = asyncio.Lock()
        self._seen = AgentView(agent=None, interfaces=[], age_s=None)
        self._seen_at: float | None = None
        self._refresh: asyncio.Task[None] | None = None

    def shown(self) -> AgentView:
        """What `status` shows: the last answer of guest-network-get-interfaces (agent: None =
        not asked yet, False = none answered); a refresh starts in the background when it is older
        than REFRESH_AFTER, so status never waits for the guest."""
        now = time.monotonic()
        stale = self._seen_at is None or now - self._seen_at > REFRESH_AFTER
        if stale and (self._refresh is None or self._refresh.done()):
            with contextlib.suppress(RuntimeError):   # no running loop: show what we have
                self._refresh = asyncio.get_running_loop().create_task(self._look())
        age = None if self._seen_at is None else round(now - self._seen_at)
        return {**self._seen, "age_s": age}

    async def _look(self) -> None:
        try:
            nics = await self.interfaces()
            self._seen = AgentView(agent=True, interfaces=[
                GuestNicView(name=n.name, mac=n.mac, addresses=list(n.addresses)) for n in nics], age_s=None)
        except CtdError:
            self._seen = AgentView(agent=False, interfaces=[], age_s=None)
        self._seen_at = time.monotonic()

    async def call(self, command: str, args: dict[str, object] | None = None, timeout: float = CALL_TIMEOUT,
                   reply: bool = True) -> Any:
        """The command's 'return' value; NoAgent when nothing answers, OperationFailed when the
        agent answers with an error or garbage. reply=False: commands the agent does not answer
        (guest-shutdown), sent after a sync."""
        try:
            return await asyncio.wait_for(self._locked(command, args, reply), timeout)
        except TimeoutError:
            raise NoAgent(f"VM {self.vm}: the guest agent did not answer {command} within {timeout:g} s; "
                          + MISSING_HINT) from None

    async def _locked(self, command: str, args: dict[str, object] | None, reply: bool) -> Any:
        async with self._lock:
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.socket), limit=MAX_REPLY)
            except OSError as exc:
                raise NoAgent(f"VM {self.vm}: no guest agent channel ({exc.strerror or exc}); is the VM "
                              "running?") from None
            try:
                await self._sync(reader, writer)
                writer.write(json.dumps({"execute": command, **({"arguments": args} if args else {})}).encode() + b"\n")
                await writer.drain()
                if not reply:
                    return None
                return _result(command, await _read_json(reader))
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    @staticmethod
    async def _sync(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        token = secrets.randbelow(1 << 31)
        writer.write(b"\xff" + json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": token}}).encode()
                     + b"\n")
        await writer.drain()
        skipped = 0
        while True:   # stale bytes (replies to abandoned calls) end at the 0xFF of our sync
            try:
                chunk = await reader.readuntil(b"\xff")
            except asyncio.LimitOverrunError as exc:
                chunk = await reader.readexactly(exc.consumed)
            except asyncio.IncompleteReadError:
                raise OperationFailed("the guest agent closed its channel") from None
            skipped += len(chunk)
            if skipped > MAX_STALE:
                raise OperationFailed("the guest agent sent too much data before its sync reply")
            if chunk.endswith(b"\xff"):
                msg = await _read_json(reader)
                if isinstance(msg, dict) and msg.get("return") == token:
                    return

    # --- the commands ctd uses -----------------------------------------------------------

    async def ping(self, timeout: float = PING_TIMEOUT) -> bool:
        if self._port_open is not None:
            with contextlib.suppress(CtdError):
                if await self._port_open() is False:
                    return False
        try:
            await self.call("guest-ping", timeout=timeout)
            return True
        except (NoAgent, OperationFailed):
            return False

    async def exec(self, command: list[str], env: dict[str, str]) -> int:
        """Start command in the guest (output captured); the agent's pid for exec_status."""
        args: dict[str, object] = {"path": command[0], "arg": command[1:], "capture-output": True}
        if env:
            args["env"] = [f"{k}={v}" for k, v in env.items()]
        raw = await self.call("guest-exec", args)
        pid = _int(raw.get("pid")) if isinstance(raw, dict) else None
        if pid is None:
            raise OperationFailed("the guest agent's guest-exec reply has no pid")
        return pid

    async def exec_status(self, pid: int) -> ExecStatus:
        raw = await self.call("guest-exec-status", {"pid": pid})
        if not isinstance(raw, dict):
            raise OperationFailed("the guest agent's guest-exec-status reply is not an object")
        return ExecStatus(exited=raw.get("exited") is True, exitcode=_int(raw.get("exitcode")),
                          signal=_int(raw.get("signal")), stdout=_b64(raw.get("out-data")),
                          stderr=_b64(raw.get("err-data")),
                          truncated=raw.get("out-truncated") is True or raw.get("err-truncated") is True)

    async def set_password(self, user: str, secret: str, crypted: bool) -> None:
        """The user's password: a crypt(3) hash (Linux: the clear text never crosses the channel)
        or, crypted=False, the clear text (virtio-win's agent takes nothing else)."""
        await self.call("guest-set-user-password", {"username": user, "crypted": crypted,
                                                    "password": base64.b64encode(secret.encode()).decode()})

    async def interfaces(self) -> list[GuestNic]:
        raw = await self.call("guest-network-get-interfaces", timeout=PING_TIMEOUT)
        nics: list[GuestNic] = []
        for item in raw if isinstance(raw, list) else []:
            if not isinstance(item, dict) or len(nics) >= 64:
                continue
            name = _str(item.get("name"), 64)
            if not name or name == "lo":
                continue
            addrs: list[str] = []
            for a in item.get("ip-addresses") or []:
                if isinstance(a, dict) and (ip := _str(a.get("ip-address"), 64)) and len(addrs) < 32:
                    prefix = _int(a.get("prefix"))
                    addrs.append(f"{ip}/{prefix}" if prefix is not None else ip)
            nics.append(GuestNic(name, _str(item.get("hardware-address"), 32), addrs))
        return nics

    async def shutdown(self) -> None:
        """Ask the agent to power the guest off (it sends no reply on success)."""
        await self.call("guest-shutdown", {"mode": "powerdown"}, reply=False)

    async def freeze(self, timeout: float = 30.0) -> int:
        """Filesystems frozen (guest-fsfreeze-freeze); how many. Call thaw() whatever follows."""
        count = _int(await self.call("guest-fsfreeze-freeze", timeout=timeout))
        if count is None:
            raise OperationFailed("the guest agent's fsfreeze reply is not a number")
        return count

    async def thaw(self) -> None:
        await self.call("guest-fsfreeze-thaw")


async def _read_json(reader: asyncio.StreamReader) -> Any:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise OperationFailed(f"the guest agent's reply is larger than {MAX_REPLY >> 20} MiB") from None
    except asyncio.IncompleteReadError:
        raise OperationFailed("the guest agent closed its channel") from None
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        raise OperationFailed("the guest agent sent a reply that is not JSON") from None


def _result(command: str, msg: Any) -> Any:
    if not isinstance(msg, dict):
        raise OperationFailed(f"the guest agent's reply to {command} is not an object")
    if "error" in msg:
        err = msg["error"]
        desc = _str(err.get("desc"), 500) if isinstance(err, dict) else None
        raise OperationFailed(f"the guest agent refused {command}: {desc or 'no reason given'}")
    if "return" not in msg:
        raise OperationFailed(f"the guest agent's reply to {command} has no result")
    return msg["return"]
