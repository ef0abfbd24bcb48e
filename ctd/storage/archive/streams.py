"""Byte streams under the tar layer, shared by the extractor, the exporter and backups.

Reading: Source (the raw archive, with sniffed bytes handed back first) -> a decompressor
picked by detect() from the magic bytes (gzip, xz, bzip2, or ZstdReader, which refuses a
stream that ends inside a frame and bounds what one call returns) -> Guard, which turns any
failure below into Corrupt (a broken archive, told apart from failures writing the target).
Writing: compressor() for an export, CountingWriter to count what reaches the file.
ProgressMeter reports progress(done, total) at most every PROGRESS_STEP bytes.

zstd needs the `zstandard` module (PyPI); gzip, xz and bzip2 come with Python.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO, Protocol, cast

from ctd.errors import CtdError, NotSupported

Progress = Callable[[int, int], None]

MiB = 1 << 20
CHUNK = MiB
ZSTD_INPUT_CHUNK = 1024  # bounds what one zstd decompress call may return (RLE bombs)
PROGRESS_STEP = 4 * MiB
HOLE = 64 * 1024  # runs of zeros this long become holes on import; the smallest gap merged on export
XATTR_PREFIX = "SCHILY.xattr."  # extended attributes in PAX headers, the GNU tar / star way

MAGICS = [  # (compression, magic bytes at offset 0)
    ("gz", b"\x1f\x8b"),
    ("xz", b"\xfd7zXZ\x00"),
    ("zst", b"\x28\xb5\x2f\xfd"),
    ("bz2", b"BZh"),
]
COMPRESSIONS = ("zst", "gz", "xz", "bz2", "none")
SUFFIXES = {".tar.zst": "zst", ".tzst": "zst", ".tar.gz": "gz", ".tgz": "gz", ".tar.xz": "xz",
            ".txz": "xz", ".tar.bz2": "bz2", ".tbz2": "bz2", ".tar": "none"}


class Readable(Protocol):
    """What the layers read from: a file object's read()."""

    def read(self, n: int, /) -> bytes: ...


class Writable(Protocol):
    """What the layers write to: a file object's write() and flush()."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class Compressor(Writable, Protocol):
    """A compressing writer: close() writes its trailer (the file below stays open)."""

    def close(self) -> None: ...


def zstandard_module() -> ModuleType:
    """The zstandard module, or NotSupported saying how to install it."""
    try:
        import zstandard
    except ImportError:  # pragma: no cover - depends on the host
        raise NotSupported("zstd archives need the zstandard Python module "
                           "(pip install zstandard; ./setup.sh installs it)") from None
    return zstandard


def compression_for(path: Path | str, default: str = "zst") -> str:
    """The compression a file name asks for (debian-12.tar.xz -> "xz"), else default."""
    name = str(path).lower()
    for suffix, comp in SUFFIXES.items():
        if name.endswith(suffix):
            return comp
    return default


class Corrupt(Exception):
    """Reading the archive failed: its compression or tar structure is broken."""


class ProgressMeter:
    """Calls callback(done, total) as bytes are added, at most every PROGRESS_STEP of them,
    and once more at the end (total 0: unknown, reported as what was done)."""

    def __init__(self, callback: Progress | None, total: int) -> None:
        self.callback, self.total, self.done, self._last = callback, total, 0, -PROGRESS_STEP

    def add(self, n: int) -> None:
        self.done += n
        if self.callback is not None and self.done - self._last >= PROGRESS_STEP:
            self._last = self.done
            self.callback(min(self.done, self.total) if self.total else self.done, self.total)

    def finish(self) -> None:
        if self.callback is not None:
            total = self.total or self.done
            self.callback(total, total)


class Source:
    """The raw (compressed) archive: counts bytes for progress; hands back sniffed bytes first."""

    def __init__(self, fh: BinaryIO, progress: ProgressMeter) -> None:
        self.fh, self.progress, self._head = fh, progress, b""

    def sniff(self, n: int) -> bytes:
        head = b""
        while len(head) < n:
            data = self.fh.read(n - len(head))
            if not data:
                break
            head += data
        self.progress.add(len(head))
        self._head = head
        return head

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0 or n >= len(self._head):
                out, self._head = self._head, b""
                if n < 0:
                    out += self.read(-1)
                return out
            out, self._head = self._head[:n], self._head[n:]
            return out
        if n < 0:
            parts = []
            while data := self.read(CHUNK):
                parts.append(data)
            return b"".join(parts)
        data = self.fh.read(n)
        self.progress.add(len(data))
        return data

    def readable(self) -> bool:
        return True


class ZstdReader:
    """zstd frames one after the other; unlike zstandard's stream_reader, a stream that ends
    inside a frame is an error, and output per call stays bounded (small input slices)."""

    def __init__(self, src: Readable) -> None:
        self._dctx = zstandard_module().ZstdDecompressor()
        self._src = src
        self._obj: Any = None  # the decompressor of the frame being read
        self._in, self._in_pos = b"", 0
        self._out: list[bytes] = []
        self._buf, self._pos, self._eof = b"", 0, False

    def _fill(self) -> None:
        if self._in_pos >= len(self._in):
            self._in, self._in_pos = self._src.read(64 * 1024), 0
            if not self._in:
                if self._obj is not None:
                    raise EOFError("the zstd stream ends in the middle of a frame")
                self._eof = True
                return
        data = memoryview(self._in)[self._in_pos:self._in_pos + ZSTD_INPUT_CHUNK]
        self._in_pos += len(data)
        if self._obj is None:
            self._obj = self._dctx.decompressobj()
        out = self._obj.decompress(data)
        if out:
            self._out.append(out)
        if self._obj.eof:  # a frame ended: what followed it starts the next one
            self._in, self._in_pos = self._obj.unused_data + self._in[self._in_pos:], 0
            self._obj = None

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            parts = []
            while data := self.read(CHUNK):
                parts.append(data)
            return b"".join(parts)
        while len(self._buf) - self._pos < n and not self._eof:
            if not self._out:
                self._fill()
                continue
            self._buf = self._buf[self._pos:] + b"".join(self._out)
            self._pos, self._out = 0, []
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        return out

    def readable(self) -> bool:
        return True


class Guard:
    """The decompressed tar stream as tarfile reads it: any failure of the layers below is a
    corrupt archive, told apart from failures writing the target. Counts bytes read."""

    def __init__(self, inner: Readable) -> None:
        self.inner, self.count = inner, 0

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.inner.read(n)
        except (Corrupt, CtdError):
            raise
        except Exception as exc:  # EOFError, zlib.error, lzma.LZMAError, ZstdError, OSError ...
            raise Corrupt(str(exc) or type(exc).__name__) from exc
        self.count += len(data)
        return data


def detect(head: bytes) -> str:
    """The compression of an archive from its first bytes ("none" for a plain tar), "" when
    it is no tar archive ctd reads."""
    for comp, magic in MAGICS:
        if head.startswith(magic):
            return comp
    if len(head) >= 512:
        if head[257:262] == b"ustar":
            return "none"
        try:
            # nti/calc_chksums: tarfile's own header helpers, not in typeshed
            if tarfile.nti(head[148:156]) in tarfile.calc_chksums(head[:512]):  # type: ignore[attr-defined]
                return "none"  # a pre-POSIX (v7) tar header
        except tarfile.HeaderError:
            pass
    return ""


def decompressor(comp: str, src: Source) -> Readable:
    """The decompressed stream of src for compression comp (src itself for "none")."""
    raw = cast(BinaryIO, src)  # the compression modules read it through read() only
    if comp == "gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if comp == "xz":
        return lzma.LZMAFile(raw)
    if comp == "bz2":
        return bz2.BZ2File(raw)
    if comp == "zst":
        return ZstdReader(src)
    return src


def compressor(comp: str, raw: Writable) -> Compressor | None:
    """A compressing writer into raw for comp ("zst", "gz", "xz", "bz2"); None for "none".
    The caller closes it (that writes the trailer), raw stays open."""
    sink = cast(BinaryIO, raw)
    if comp == "zst":
        zstandard = zstandard_module()
        return cast(Compressor, zstandard.ZstdCompressor(level=3, write_checksum=True, threads=-1).stream_writer(
            sink, closefd=False))
    if comp == "gz":
        return gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=6, mtime=0)
    if comp == "xz":
        return lzma.LZMAFile(sink, "wb", preset=6)
    if comp == "bz2":
        return bz2.BZ2File(sink, "wb")
    return None


class CountingWriter:
    """Writes into fh and counts the bytes (what an export or a backup member is long)."""

    def __init__(self, fh: Writable) -> None:
        self.fh, self.count = fh, 0

    def write(self, data: bytes) -> int:
        self.fh.write(data)
        n = len(data)
        self.count += n
        return n

    def flush(self) -> None:
        self.fh.flush()

    def writable(self) -> bool:
        return True


def label_of(archive: Path | BinaryIO) -> str:
    """How messages name an archive: its path, a file object's name, else "the archive"."""
    if isinstance(archive, (str, Path)):
        return str(archive)
    name = getattr(archive, "name", None)
    return str(name) if isinstance(name, str) else "the archive"


def size_of(fh: BinaryIO) -> int:
    """The size of a regular file behind fh; 0 for a pipe, a socket or no descriptor at all."""
    try:
        st = os.fstat(fh.fileno())
    except (OSError, AttributeError, io.UnsupportedOperation):
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0
