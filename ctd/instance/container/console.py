"""The container's /dev/console: a pty whose master ctd holds and always drains (into the
backlog, the attached clients and the console log: see ctd/instance/consolehub.py)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import termios

from ctd.instance.consolehub import ConsoleHub
from ctd.instance.consolelog import RingLog


def set_winsize(fd: int, width: int, height: int) -> None:
    """A pty's size (the console's, an exec's terminal)."""
    with contextlib.suppress(OSError, struct.error):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


class Console(ConsoleHub):
    def __init__(self, master_fd: int, ring: RingLog | None = None) -> None:
        super().__init__(ring)
        self.master_fd = master_fd
        os.set_blocking(master_fd, False)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paused: asyncio.TimerHandle | None = None

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
            self._pause(0.5)
            return
        wait = self.output(data)
        if wait > 0:  # over its read budget: the guest's writes block meanwhile
            self._pause(wait)

    def _pause(self, seconds: float) -> None:
        if self._loop and self._paused is None:
            self._loop.remove_reader(self.master_fd)
            self._paused = self._loop.call_later(seconds, self._rearm)

    def _rearm(self) -> None:
        self._paused = None
        if self._loop and self.master_fd >= 0:
            self._loop.add_reader(self.master_fd, self._readable)

    def resize(self, width: int, height: int) -> None:
        set_winsize(self.master_fd, width, height)

    def write(self, data: bytes) -> None:
        try:
            os.write(self.master_fd, data)
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        super().close()
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        if self.master_fd >= 0:
            if self._loop:
                self._loop.remove_reader(self.master_fd)
            os.close(self.master_fd)
            self.master_fd = -1
