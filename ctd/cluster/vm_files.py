"""A VM's files between two nodes (ctd/cluster/vm_migrate.py): sparse, checked on arrival.

A disk is a sparse raw file of many GB of which a few MB hold data. Each file goes as one
request body of records: a 16-byte header (offset, length: two big-endian 64-bit numbers), then
`length` bytes to write at `offset`; a record of length 0 ends the file. Holes (SEEK_HOLE) and
all-zero blocks are not sent: the target's file is made sparse at its announced size first.

The body is a peer's, so it is hostile input: every record must lie inside the announced size,
after the previous one (no rewrites), at most MAX_RECORD long, and all the data of a migration
counted against the budget the source announced at its begin (which had to fit the pool). A
stream cut short or with bytes after its end record is refused. The file is made with O_EXCL and
O_NOFOLLOW inside the migration's own staging directory (names are checked by the caller).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ctd.errors import InvalidRequest, OperationFailed

RECORD = struct.Struct(">QQ")
BLOCK = 1 << 20         # what the sender reads and sends at a time
MAX_RECORD = 4 << 20    # the most a record may carry


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The (offset, length) ranges of fd that hold data (SEEK_DATA/SEEK_HOLE)."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:   # ENXIO: no data after pos
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if end > start:
            yield start, end - start
        pos = end


def data_bytes(path: Path) -> int:
    """What extents() will read of path (an upper bound of what is sent: zero blocks are not)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        return sum(length for _, length in extents(fd, os.fstat(fd).st_size))
    finally:
        os.close(fd)


def records(path: Path, counter: list[int]) -> Iterator[bytes]:
    """path as the record stream (counter[0] grows by the data bytes sent)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        size = os.fstat(fd).st_size
        for start, length in extents(fd, size):
            pos, end = start, start + length
            while pos < end:
                chunk = os.pread(fd, min(BLOCK, end - pos), pos)
                if not chunk:
                    break   # the file shrank: the target checks nothing is missing by size only
                if chunk != bytes(len(chunk)):
                    counter[0] += len(chunk)
                    yield RECORD.pack(pos, len(chunk)) + chunk
                pos += len(chunk)
        yield RECORD.pack(0, 0)
    finally:
        os.close(fd)


@dataclass
class Budget:
    """The data bytes a migration may still write (announced at its begin, checked to fit)."""

    left: int


def _exact(data: Readable, n: int, label: str) -> bytes:
    out = bytearray()
    while len(out) < n:
        got = data.read(n - len(out))
        if not got:
            raise InvalidRequest(f"{label}: the stream ended early (cut off?)")
        out += got
    return bytes(out)


def receive(data: Readable, dest: Path, size: int, budget: Budget, label: str) -> int:
    """The record stream into a new sparse file dest of exactly size bytes (blocking: run in a
    thread). Returns the data bytes written."""
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise InvalidRequest(f"{label}: cannot make {dest.name}: {exc.strerror}") from None
    written, end = 0, 0
    try:
        os.ftruncate(fd, size)
        while True:
            offset, length = RECORD.unpack(_exact(data, RECORD.size, label))
            if length == 0:
                break
            if length > MAX_RECORD or offset < end or offset + length > size:
                raise InvalidRequest(f"{label}: a record at {offset} of {length} bytes lies outside the file's "
                                     f"{size} bytes or before the previous one")
            if length > budget.left:
                raise InvalidRequest(f"{label}: more data than the migration announced")
            chunk = _exact(data, length, label)
            budget.left -= length
            view = memoryview(chunk)
            while view:
                view = view[os.pwrite(fd, view, offset + len(chunk) - len(view)):]
            written, end = written + length, offset + length
        if data.read(1):
            raise InvalidRequest(f"{label}: bytes after the file's end record")
        os.fsync(fd)
    except OSError as exc:
        raise OperationFailed(f"{label}: writing {dest.name} failed: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return written
