"""The container's /dev/console: a pty whose master ctd holds and always drains."""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable

BACKLOG = 64 * 1024
Listener = Callable[[bytes], None]


class Console:
    def __init__(self, master_fd: int) -> None:
        self.master_fd = master_fd
        os.set_blocking(master_fd, False)
        self._backlog: deque[bytes] = deque()
        self._backlog_size = 0
        self._listeners: list[Listener] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.master_fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.master_fd, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: no process has the slave open right now
            data = b""
        if not data:
            # Stop polling a hung-up pty; a later open of /dev/console inside reopens it,
            # and writes from a client re-arm the reader.
            if self._loop:
                self._loop.remove_reader(self.master_fd)
                self._loop.call_later(0.5, self._rearm)
            return
        self._backlog.append(data)
        self._backlog_size += len(data)
        while self._backlog_size > BACKLOG:
            self._backlog_size -= len(self._backlog.popleft())
        for listener in list(self._listeners):
            listener(data)

    def _rearm(self) -> None:
        if self._loop and self.master_fd >= 0:
            self._loop.add_reader(self.master_fd, self._readable)

    def backlog(self) -> bytes:
        return b"".join(self._backlog)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def write(self, data: bytes) -> None:
        try:
            os.write(self.master_fd, data)
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        for listener in list(self._listeners):
            listener(b"")  # tells attached clients the console is gone
        if self.master_fd >= 0:
            if self._loop:
                self._loop.remove_reader(self.master_fd)
            os.close(self.master_fd)
            self.master_fd = -1
