"""One console's output, read by ctd whether or not anyone is attached: into the recent backlog
(what an attaching client sees first), to every attached client, and into the console log on
disk (consolelog.RingLog). A container's pty (container/console.py) and a VM's serial socket
(vm/serial.py) are the two sources; both read only when the kernel says there is data.

Abuse: a guest flooding its console must not cost the host more than the ring. The disk part is
the fixed-size ring; the CPU part is a read budget: each console may be read at RATE bytes a
second (BURST at once), and all consoles together at HOST_RATE. A console over its budget is not
read until the budget refills; the guest's writes then block on the full pty or serial line, as
they would on a real serial port, and the flood slows itself down.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

from ctd.instance.consolelog import RingLog

log = logging.getLogger("ctd.console")

BACKLOG = 64 * 1024
RATE = 4 << 20        # bytes a second one console may print
BURST = 1 << 20
HOST_RATE = 16 << 20  # bytes a second all consoles together
Listener = Callable[[bytes], None]


class Budget:
    """A token bucket: take(n) says how long to wait before reading again (0: at once)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._tokens = burst
        self._at = time.monotonic()

    def take(self, n: int) -> float:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


HOST_BUDGET = Budget(HOST_RATE, HOST_RATE)


class ConsoleHub:
    """The output side every console shares; subclasses read their source and call output()."""

    def __init__(self, ring: RingLog | None) -> None:
        self.ring = ring
        self._backlog: deque[bytes] = deque()
        self._backlog_size = 0
        self._listeners: list[Listener] = []
        self._budget = Budget(RATE, BURST)

    def output(self, data: bytes) -> float:
        """Take bytes the guest printed; returns the seconds to wait before reading again."""
        self._backlog.append(data)
        self._backlog_size += len(data)
        while self._backlog_size > BACKLOG:
            self._backlog_size -= len(self._backlog.popleft())
        if self.ring is not None:
            try:
                self.ring.append(data)
            except OSError as exc:  # a full disk: the console still works, the log stops
                log.warning("console log %s: %s; not logging this console any more", self.ring.path, exc)
                self.ring.close()
                self.ring = None
        for listener in list(self._listeners):
            listener(data)
        return max(self._budget.take(len(data)), HOST_BUDGET.take(len(data)))

    def backlog(self) -> bytes:
        return b"".join(self._backlog)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def resize(self, width: int, height: int) -> None:
        """A terminal's size; a serial line has none."""

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        for listener in list(self._listeners):
            listener(b"")  # tells attached clients the console is gone
        if self.ring is not None:
            with contextlib.suppress(OSError):
                self.ring.close()
            self.ring = None
