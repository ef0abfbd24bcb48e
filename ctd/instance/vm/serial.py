"""A VM's serial console: ctd is the one client of QEMU's serial socket (a chardev server takes
one at a time) for the VM's whole run, reading whether or not anyone is attached; attached
WebSocket clients, the backlog and the console log hang off it (ctd/instance/consolehub.py).

After a ctd restart, adopt() connects again: only what the guest printed while no ctd was
there is missing. QEMU drops serial output while no client is connected, so nothing piles up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from ctd.instance.consolehub import ConsoleHub
from ctd.instance.consolelog import RingLog

log = logging.getLogger("ctd.vm")
CONNECT_TIMEOUT = 5.0


class SerialConsole(ConsoleHub):
    def __init__(self, socket: Path, ring: RingLog | None = None) -> None:
        super().__init__(ring)
        self.socket = socket
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Connect (QEMU made the socket before it daemonised) and start reading."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_TIMEOUT
        while True:
            try:
                reader, self._writer = await asyncio.open_unix_connection(str(self.socket))
                break
            except OSError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.05)
        self._task = loop.create_task(self._pump(reader))

    async def _pump(self, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(65536):
                wait = self.output(data)
                if wait > 0:   # over its read budget: the guest's UART waits meanwhile
                    await asyncio.sleep(wait)
        except OSError as exc:
            log.debug("serial console %s: %s", self.socket, exc)
        finally:
            self._close_writer()
            super().close()   # QEMU is gone: attached clients are told

    def write(self, data: bytes) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)

    def _close_writer(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()   # its finally closes the rest
        else:
            self._close_writer()
            super().close()
