"""Reading a backup's outer tar front to back (a pipe is fine): its header, then its members.

open_archive() opens a path or takes a file object and wraps it in Reader (progress over the
archive's bytes); start() refuses what is no backup at all (a compressed file: a template
tarball) with a clear word, read_header() reads and checks ctd-backup.json (at most
MAX_HEADER bytes, JSON nesting bounded by the parser). PAX and GNU long-name headers are
bounded as in template imports (archive.checks.BoundedTarInfo).
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import BinaryIO, cast

from ctd.errors import InvalidRequest
from ctd.storage.archive.checks import BoundedTarInfo
from ctd.storage.archive.streams import MAGICS, label_of, size_of
from ctd.storage.backup.format import BLOCK, CHUNK, HEADER, MAX_HEADER, BackupHeader, Progress, validate_header


class Reader:
    """The archive as tarfile reads it: hands back the sniffed first block, counts progress."""

    def __init__(self, fh: BinaryIO, progress: Progress | None, total: int) -> None:
        self.fh, self.progress, self.total, self.done, self._last = fh, progress, total, 0, 0
        self.head = b""

    def read(self, n: int = -1) -> bytes:
        if self.head:
            out, self.head = self.head[:n], self.head[n:]
            return out
        data = self.fh.read(n)
        self.done += len(data)
        if self.progress is not None and self.done - self._last >= 4 * CHUNK:
            self._last = self.done
            self.progress(self.done, self.total)
        return data


def open_archive(archive_: Path | BinaryIO,
                 progress: Progress | None) -> tuple[BinaryIO, bool, Reader, str]:
    """(file object, whether the caller closes it, its Reader, how messages name it)."""
    if isinstance(archive_, (str, Path)):
        try:
            fh = open(archive_, "rb")
        except OSError as exc:
            raise InvalidRequest(f"cannot read {archive_}: {exc.strerror}") from None
        total = os.fstat(fh.fileno()).st_size
        return fh, True, Reader(fh, progress, total), str(archive_)
    total = size_of(archive_)
    return archive_, False, Reader(archive_, progress, total), label_of(archive_)


def start(reader: Reader, label: str) -> tarfile.TarFile:
    """The outer tar, with a clear word for what is not a backup at all."""
    head = reader.fh.read(BLOCK)
    reader.done += len(head)
    if not head:
        raise InvalidRequest(f"{label} is empty")
    for comp, magic in MAGICS:
        if head.startswith(magic):
            raise InvalidRequest(f"{label} is a {comp}-compressed file, not a ctd backup (a backup is "
                                 "an uncompressed tar that starts with ctd-backup.json); a root "
                                 "filesystem tarball is imported as a template instead")
    reader.head = head
    try:
        return tarfile.open(fileobj=cast(BinaryIO, reader), mode="r|", tarinfo=BoundedTarInfo)
    except tarfile.ReadError as exc:
        raise InvalidRequest(f"{label} is not a ctd backup, or its start is corrupt ({exc})") from None


def read_header(tf: tarfile.TarFile, label: str) -> BackupHeader:
    """The first member, ctd-backup.json, parsed and checked."""
    m = tf.next()
    if m is None or m.name != HEADER or not m.isreg():
        raise InvalidRequest(f"{label} is not a ctd backup (it does not start with {HEADER})")
    if m.size > MAX_HEADER:
        raise InvalidRequest(f"{label}: {HEADER} is {m.size} bytes, too big to be a backup header")
    member = tf.extractfile(m)
    assert member is not None  # a regular member always has a file object
    data = member.read()
    if len(data) != m.size:
        raise tarfile.ReadError("unexpected end of data")
    try:
        header = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"{label}: {HEADER} is not valid JSON ({exc})") from None
    except RecursionError:  # 1 MiB of '[' exhausts the parser's stack
        raise InvalidRequest(f"{label}: {HEADER} nests too deeply to be a backup header") from None
    return validate_header(header)


def read_backup_header(archive_: Path | BinaryIO) -> BackupHeader:
    """The header of a backup (name, driver, created, meta ...) without restoring it."""
    fh, own, reader, label = open_archive(archive_, None)
    try:
        return read_header(start(reader, label), label)
    except (tarfile.TarError, EOFError) as exc:
        raise InvalidRequest(f"{label} is truncated or corrupt: {exc}") from None
    finally:
        if own:
            fh.close()
