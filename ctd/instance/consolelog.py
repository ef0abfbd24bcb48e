"""The console log: the last 1 MiB an instance's console printed, on disk, in a file that never
grows. `ctctl console --log NAME` and GET /1.0/instances/{ref}/console/log read it, running or
stopped, across ctd restarts.

Where: `STATE_DIR/consoles/ID.log`, by instance id — outside the instance's storage, so a backup
never carries it and a rename changes nothing (the id stays); destroy removes it, and recovery
removes a log whose instance is gone (a crash between the row and the file).

Layout: a header of 16 bytes (MAGIC, then the count of bytes ever written, u64 little endian),
then the ring: CAPACITY bytes, the byte number n at HEADER + n % CAPACITY. The data goes first,
the header second: a crash in between loses the last write, never the order of the rest. A file
that is not of this layout (hand-edited, an older ctd's) is started afresh.

Abuse: a guest that prints without end (`yes > /dev/console`, a kernel oops loop). The file stays
at HEADER + CAPACITY bytes whatever it prints; how fast ctd reads a console at all is bounded by
ctd/instance/consolehub.py. The bytes are the guest's, unfiltered: whoever shows them on a
terminal must neutralise escape sequences (ctctl does, see ctctl/inside.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from pathlib import Path

MAGIC = b"CTDLOG1\n"
HEADER = len(MAGIC) + 8
CAPACITY = 1 << 20
DIR_NAME = "consoles"
log = logging.getLogger("ctd.console")


def log_dir(state_dir: Path) -> Path:
    return state_dir / DIR_NAME


def log_path(state_dir: Path, instance_id: int) -> Path:
    return log_dir(state_dir) / f"{int(instance_id)}.log"


def _open(path: Path, flags: int) -> int:
    return os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)


def _count(fd: int) -> int | None:
    """Bytes ever written, from the header; None for a file not of this layout."""
    head = os.pread(fd, HEADER, 0)
    if len(head) != HEADER or not head.startswith(MAGIC):
        return None
    count: int = struct.unpack("<Q", head[len(MAGIC):])[0]
    size = os.fstat(fd).st_size
    if size > HEADER + CAPACITY or size < HEADER + min(count, CAPACITY):
        return None
    return count


class RingLog:
    """The writer: one per running console, its fd held while the console lives."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = path
        self._fd = _open(path, os.O_RDWR | os.O_CREAT)
        try:
            count = _count(self._fd)
            if count is None:   # new, or not ours: start afresh
                os.ftruncate(self._fd, 0)
                count = 0
                self._write_header(0)
        except OSError:
            os.close(self._fd)
            raise
        self.count = count

    def _write_header(self, count: int) -> None:
        os.pwrite(self._fd, MAGIC + struct.pack("<Q", count), 0)

    def append(self, data: bytes) -> None:
        """Add data at the ring's end (only its last CAPACITY bytes can stay)."""
        if self._fd < 0 or not data:
            return
        total = len(data)
        if total > CAPACITY:
            data = data[-CAPACITY:]
        start = (self.count + total - len(data)) % CAPACITY
        first = data[:CAPACITY - start]
        os.pwrite(self._fd, first, HEADER + start)
        if len(first) < len(data):
            os.pwrite(self._fd, data[len(first):], HEADER)
        self.count += total
        self._write_header(self.count)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read(path: Path) -> bytes:
    """What the log holds, oldest first; b"" when there is none (never started, destroyed)."""
    try:
        fd = _open(path, os.O_RDONLY)
    except FileNotFoundError:
        return b""
    try:
        count = _count(fd)
        if not count:
            return b""
        ring = os.pread(fd, min(count, CAPACITY), HEADER)
    finally:
        os.close(fd)
    if count <= CAPACITY:
        return ring
    cut = count % CAPACITY
    return ring[cut:] + ring[:cut]


def remove(state_dir: Path, instance_id: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        log_path(state_dir, instance_id).unlink()


def sweep(state_dir: Path, live_ids: set[int]) -> list[str]:
    """Remove the logs of instances that no longer exist; the names removed."""
    gone = []
    try:
        entries = list(log_dir(state_dir).iterdir())
    except FileNotFoundError:
        return []
    for entry in entries:
        stem, dot, ext = entry.name.partition(".")
        if dot and ext == "log" and stem.isdigit() and int(stem) not in live_ids:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
            gone.append(entry.name)
    return gone


def open_ring(path: Path) -> RingLog | None:
    """The writer, or None (logged) where the log cannot be kept: the console works without."""
    try:
        return RingLog(path)
    except OSError as exc:
        log.warning("console log %s: %s; this run's console is not logged", path, exc)
        return None
