"""A thin async wrapper on qemu.qmp.QMPClient: ctd's errors, timeouts, the queries ctd uses.

QEMU's QMP socket serves one client at a time (a second one waits in the listen backlog and
gets no greeting), so ctd should keep one Qmp per running VM and share it: commands issued
concurrently on one session are matched to their replies by id inside qemu.qmp.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypedDict

from qemu.qmp import ConnectError, EventListener, ExecInterruptedError, ExecuteError, QMPClient, QMPError, Runstate

from ctd.errors import OperationFailed

log = logging.getLogger("ctd.vm.qmp")

# Events a manager cares about: guest power-off / reset, host-initiated quit, pause/resume.
LIFECYCLE_EVENTS = ("SHUTDOWN", "POWERDOWN", "RESET", "STOP", "RESUME", "GUEST_PANICKED")
DEFAULT_TIMEOUT = 10.0


# QEMU's answers as its QAPI schema gives them (the fields ctd reads; QEMU may send more). Those
# ctd only shows (query-block, query-pci, query-tpm) stay JSON objects, JsonObject.
JsonObject = dict[str, object]


class QmpEvent(TypedDict, total=False):
    event: str                  # SHUTDOWN, DEVICE_DELETED, BLOCK_JOB_COMPLETED…
    data: JsonObject            # the event's own fields
    timestamp: dict[str, int]   # seconds, microseconds


# names with '-' need the functional form
HotpluggableCpu = TypedDict("HotpluggableCpu", {
    "type": str,                # the driver to device_add into the slot
    "props": dict[str, int],    # socket-id, core-id, thread-id (node-id)
    "qom-path": str,            # only on a present vCPU
    "vcpus-count": int,
}, total=False)
ChardevInfo = TypedDict("ChardevInfo", {"label": str, "filename": str, "frontend-open": bool}, total=False)


class BlockJob(TypedDict, total=False):
    device: str     # the job's id (ctd names it after its target node)
    type: str
    offset: int     # bytes done
    len: int        # bytes in all (an estimate while it runs)


class Qmp:
    """One QMP session to one QEMU. Use `async with Qmp(path) as q:` or connect()/close()."""

    def __init__(self, socket: Path, name: str = "ctd") -> None:
        self.socket = Path(socket)
        self._client = QMPClient(name)

    async def __aenter__(self) -> Qmp:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, timeout: float = 5.0) -> None:
        """Connect and negotiate capabilities; retried while the socket is not there yet."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if not self.socket.exists():   # checked first: qemu.qmp logs every failed attempt
                if left <= 0:
                    raise OperationFailed(f"cannot connect to QEMU's QMP socket {self.socket}: "
                                          "it does not exist (is the VM running?)")
                await asyncio.sleep(0.05)
                continue
            try:
                await asyncio.wait_for(self._client.connect(str(self.socket)), max(left, 0.01))
                return
            except TimeoutError:
                await self._reset()
                # Connected but no greeting: someone else holds the (single-client) monitor.
                raise OperationFailed(f"no QMP greeting on {self.socket} within {timeout:g} s "
                                      "(is another client connected, or is QEMU hung?)") from None
            except ConnectError as e:
                retry = isinstance(e.exc, (FileNotFoundError, ConnectionRefusedError))
                if not retry or time.monotonic() >= deadline:
                    raise OperationFailed(f"cannot connect to QEMU's QMP socket {self.socket}: "
                                          f"{e.exc or e}") from None
                await asyncio.sleep(0.05)

    async def _reset(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.disconnect()

    async def close(self) -> None:
        # After 'quit' or a guest power-off the reader saw EOF; disconnect re-raises it.
        with contextlib.suppress(QMPError, EOFError, OSError):
            await self._client.disconnect()

    @property
    def connected(self) -> bool:
        return self._client.runstate == Runstate.RUNNING

    async def execute(self, cmd: str, args: dict[str, object] | None = None,
                      timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Run one QMP command; OperationFailed carries QEMU's error description."""
        try:
            return await asyncio.wait_for(self._client.execute(cmd, args), timeout)
        except TimeoutError:
            raise OperationFailed(f"QMP {cmd} got no answer within {timeout:g} s") from None
        except ExecuteError as e:
            raise OperationFailed(f"QMP {cmd} failed: {e}") from None
        except ExecInterruptedError:
            raise OperationFailed(f"QMP {cmd}: QEMU closed the connection (it exited?)") from None
        except QMPError as e:
            raise OperationFailed(f"QMP {cmd}: {e}") from None

    # --- lifecycle ------------------------------------------------------------------------

    async def status(self) -> str:
        """QEMU's run state: 'running', 'paused', 'prelaunch' (-S), 'shutdown', 'inmigrate' …"""
        return str((await self.execute("query-status"))["status"])

    async def powerdown(self) -> None:
        """ACPI power button: the guest decides whether and when to power off."""
        await self.execute("system_powerdown")

    async def reset(self) -> None:
        await self.execute("system_reset")

    async def pause(self) -> None:
        await self.execute("stop")

    async def cont(self) -> None:
        await self.execute("cont")

    async def quit(self) -> None:
        """QEMU exits at once (a pulled plug). The reply may be lost as QEMU goes away."""
        with contextlib.suppress(OperationFailed):
            await self.execute("quit")

    # --- queries ---------------------------------------------------------------------------

    async def query_block(self) -> list[JsonObject]:
        return list(await self.execute("query-block"))

    async def query_named_block_nodes(self) -> list[JsonObject]:
        return list(await self.execute("query-named-block-nodes", {"flat": True}))

    async def query_block_jobs(self) -> list[BlockJob]:
        return list(await self.execute("query-block-jobs"))

    async def query_chardev(self) -> list[ChardevInfo]:
        return list(await self.execute("query-chardev"))

    async def frontend_open(self, label: str) -> bool | None:
        """Whether the guest side of chardev label is open (a virtio-serial port the guest
        opened); None if QEMU has no such chardev."""
        for dev in await self.query_chardev():
            if dev.get("label") == label:
                return bool(dev.get("frontend-open"))
        return None

    async def query_pci(self) -> list[JsonObject]:
        """Flattened: every device on every PCI bus (bridges' buses included)."""
        devices: list[JsonObject] = []

        def walk(devs: list[JsonObject]) -> None:
            for d in devs:
                devices.append(d)
                bridge = d.get("pci_bridge")
                walk(bridge.get("devices", []) if isinstance(bridge, dict) else [])

        for bus in await self.execute("query-pci"):
            walk(bus["devices"])
        return devices

    async def query_tpm(self) -> list[JsonObject]:
        return list(await self.execute("query-tpm"))

    async def query_vnc(self) -> JsonObject:
        return dict(await self.execute("query-vnc"))

    # --- live resizing ---------------------------------------------------------------------

    async def hotpluggable_cpus(self) -> list[HotpluggableCpu]:
        """Every vCPU slot: those with a 'qom-path' are present, the others free."""
        return list(await self.execute("query-hotpluggable-cpus"))

    async def vcpu_count(self) -> int:
        return len(await self.execute("query-cpus-fast"))

    async def device_add(self, driver: str, dev_id: str, **props: object) -> None:
        await self.execute("device_add", {"driver": driver, "id": dev_id, **props})

    async def device_del(self, dev_id: str) -> None:
        """Asks the guest to release the device (ACPI eject); DEVICE_DELETED says it did."""
        await self.execute("device_del", {"id": dev_id})

    async def balloon(self, target: int) -> None:
        """Ask the guest's balloon driver to leave it target bytes of RAM."""
        await self.execute("balloon", {"value": target})

    async def balloon_actual(self) -> int:
        """The RAM the guest has now, as its balloon driver reports it (bytes)."""
        return int((await self.execute("query-balloon"))["actual"])

    # --- events ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def events(self, *names: str) -> AsyncIterator[EventListener]:
        """`async with q.events("SHUTDOWN") as ev: msg = await ev.get()` (or `async for`).

        Events arriving while the block is open are queued; none are lost between opening it
        and issuing the command that causes them.
        """
        listener = EventListener(names or None)
        with self._client.listen(listener):
            yield listener

    async def wait_event(self, listener: EventListener, timeout: float) -> QmpEvent | None:
        """The next event of the listener, or None after timeout (or when QEMU went away)."""
        try:
            return _event(await asyncio.wait_for(listener.get(), timeout))
        except TimeoutError:
            return None

    async def disconnected(self) -> None:
        """Return once the session is over (QEMU exited, or close() was called)."""
        while self._client.runstate == Runstate.RUNNING:
            await self._client.runstate_changed()

    def watch(self, callback: Callable[[QmpEvent], Awaitable[None] | None],
              names: tuple[str, ...] = LIFECYCLE_EVENTS) -> asyncio.Task[None]:
        """Call callback(event) for each event, in order, until QEMU disconnects (or the task
        is cancelled); events already queued at the disconnect are still delivered."""
        listener = EventListener(names or None)
        self._client.register_listener(listener)

        async def deliver(event: QmpEvent) -> None:
            result = callback(event)
            if asyncio.iscoroutine(result):
                await result

        async def pump() -> None:
            gone = asyncio.ensure_future(self.disconnected())
            try:
                while True:
                    nxt = asyncio.ensure_future(listener.get())
                    await asyncio.wait({nxt, gone}, return_when=asyncio.FIRST_COMPLETED)
                    if nxt.done():
                        await deliver(_event(nxt.result()))
                        continue
                    nxt.cancel()
                    for event in listener.clear():
                        await deliver(_event(event))
                    return
            finally:
                gone.cancel()
                with contextlib.suppress(Exception):
                    self._client.remove_listener(listener)

        return asyncio.get_running_loop().create_task(pump(), name=f"qmp-events:{self.socket}")


def _event(message: Mapping[str, object]) -> QmpEvent:
    """A QMP event message (qemu.qmp's Message: event, data, timestamp) as ctd passes it on."""
    event = QmpEvent(event=str(message.get("event", "")))
    data, timestamp = message.get("data"), message.get("timestamp")
    if isinstance(data, dict):
        event["data"] = data
    if isinstance(timestamp, dict):
        event["timestamp"] = timestamp
    return event
