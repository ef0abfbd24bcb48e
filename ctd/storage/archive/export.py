"""export_rootfs: a root filesystem written as a tarball of its contents (`./`, `./etc/` ...).

Numeric owners, modes, mtimes, xattrs (SCHILY.xattr), hard links, symlinks and FIFOs as they
are; device nodes only under ./dev; sockets not at all. The tree is walked with os.fwalk and
each entry opened with O_NOFOLLOW, so a symlink swapped in while a running guest's root is
exported is archived as a symlink, never followed. A file with SPARSE_MIN_HOLES or more of
holes is a sparse member in GNU tar's PAX 1.0 format (found with SEEK_DATA/SEEK_HOLE): the
cost of an export follows the data a guest's files hold, not the sizes it can declare.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tarfile
import uuid
from pathlib import Path
from typing import BinaryIO, cast

from ctd.errors import InvalidRequest, OperationFailed
from ctd.storage.archive.streams import (
    CHUNK,
    COMPRESSIONS,
    HOLE,
    XATTR_PREFIX,
    CountingWriter,
    MiB,
    Progress,
    ProgressMeter,
    Writable,
    compression_for,
    compressor,
)

log = logging.getLogger(__name__)


class _FileData:
    """Exactly size bytes of an open file for tarfile: a file that shrank while being read is
    padded with zeros, one that grew is cut (as GNU tar does with "file changed as we read it")."""

    def __init__(self, fd: int, size: int, progress: ProgressMeter) -> None:
        self.fd, self.left, self.progress = fd, size, progress

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.left:
            n = self.left
        data = os.read(self.fd, n) if n else b""
        if len(data) < n:
            data += bytes(n - len(data))
        self.left -= len(data)
        self.progress.add(len(data))
        return data


MAX_SEGMENTS = 4096  # a sparse map longer than this is coalesced (holes between become zeros)
SPARSE_MIN_HOLES = 1 * MiB  # files with fewer bytes of holes are archived as they are


def _data_segments(fd: int, size: int) -> list[tuple[int, int]] | None:
    """(offset, length) of the data in a file with holes, from SEEK_DATA/SEEK_HOLE; None when
    it has too few holes to be worth a sparse member (or the filesystem does not say)."""
    segments: list[tuple[int, int]] = []
    offset = 0
    try:
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break  # only a hole from here to the end
                raise
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            segments.append((start, end - start))
            offset = end
    except OSError:
        return None
    if size - sum(n for _, n in segments) < SPARSE_MIN_HOLES:
        return None
    gap = HOLE
    while len(segments) > MAX_SEGMENTS:  # merge across the smallest holes until the map is short
        merged = [segments[0]]
        for start, n in segments[1:]:
            last_start, last_n = merged[-1]
            if start - (last_start + last_n) <= gap:
                merged[-1] = (last_start, start + n - last_start)
            else:
                merged.append((start, n))
        segments, gap = merged, gap * 4
    return segments


class _SparseData:
    """A sparse member's data in GNU tar's PAX 1.0 sparse format: the map (the segment count,
    then each segment's offset and length, one decimal per line, padded to whole blocks), then
    each data segment. Reading costs what the file holds: a 1 TiB file of holes is a few blocks."""

    def __init__(self, fd: int, segments: list[tuple[int, int]], progress: ProgressMeter) -> None:
        text = f"{len(segments)}\n" + "".join(f"{o}\n{n}\n" for o, n in segments)
        head = text.encode()
        self.head = head + bytes(-len(head) % tarfile.BLOCKSIZE)
        self.size = len(self.head) + sum(n for _, n in segments)
        self.fd, self.progress = fd, progress
        self._todo = list(reversed(segments))

    def read(self, n: int = -1) -> bytes:
        """n bytes (fewer only at the end): tarfile takes a short read for a truncated file."""
        parts, want = [], n if n >= 0 else self.size
        while want > 0 and (self.head or self._todo):
            if self.head:
                part, self.head = self.head[:want], self.head[want:]
            else:
                offset, length = self._todo.pop()
                if want < length:
                    self._todo.append((offset + want, length - want))
                    length = want
                part = os.pread(self.fd, length, offset)
                if len(part) < length:  # the file shrank while it was read
                    part += bytes(length - len(part))
                self.progress.add(len(part))
            parts.append(part)
            want -= len(part)
        return b"".join(parts)


def data_size(source: Path) -> int:
    """The bytes of file data below source (each inode once; a sparse file counts what it holds)."""
    total, seen = 0, set()
    for dirpath, _dirs, files in os.walk(source):
        for f in files:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1:
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                total += min(st.st_size, st.st_blocks * 512)  # sparse files: what they hold
    return total


class Exporter:
    """Adds a root's entries to tf (see the module doc); skipped_devices counts nodes outside ./dev."""

    def __init__(self, tf: tarfile.TarFile, progress: ProgressMeter) -> None:
        self.tf, self.progress = tf, progress
        self.links: dict[tuple[int, int], str] = {}
        self.skipped_devices = 0

    def _info(self, arcname: str, st: os.stat_result) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(arcname)
        ti.mode = stat.S_IMODE(st.st_mode)
        ti.uid, ti.gid = st.st_uid, st.st_gid
        ti.uname = ti.gname = ""  # numeric owners only: the guest's ids, not the host's names
        ti.mtime = int(st.st_mtime)
        return ti

    @staticmethod
    def _xattrs(ti: tarfile.TarInfo, fd: int) -> None:
        try:
            names = os.listxattr(fd)
        except OSError:
            return
        headers = dict(ti.pax_headers)
        for name in sorted(names):
            try:
                value = os.getxattr(fd, name)
            except OSError:
                continue
            headers[XATTR_PREFIX + name] = value.decode("utf-8", "surrogateescape")
        ti.pax_headers = headers

    def root(self, source: Path) -> None:
        fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            ti = self._info(".", os.fstat(fd))
            ti.type = tarfile.DIRTYPE
            self._xattrs(ti, fd)
        finally:
            os.close(fd)
        self.tf.addfile(ti)

    def entry(self, dirfd: int, name: str, arcname: str) -> None:
        """The entry name of the directory dirfd, as arcname; one gone since it was listed or
        that cannot be opened is left out."""
        try:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            return  # gone since the directory was listed
        mode = st.st_mode
        ti = self._info(arcname, st)
        if stat.S_ISDIR(mode):
            self._directory(ti, dirfd, name)
        elif stat.S_ISREG(mode):
            self._regular(ti, st, dirfd, name)
        elif stat.S_ISLNK(mode):
            self._symlink(ti, dirfd, name)
        elif stat.S_ISFIFO(mode):
            ti.type = tarfile.FIFOTYPE
            self.tf.addfile(ti)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            self._device(ti, st)
        # sockets are not archived (tar has no type for them)

    def _directory(self, ti: tarfile.TarInfo, dirfd: int, name: str) -> None:
        ti.type = tarfile.DIRTYPE
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        except OSError:
            return
        try:
            self._xattrs(ti, fd)
        finally:
            os.close(fd)
        self.tf.addfile(ti)

    def _regular(self, ti: tarfile.TarInfo, st: os.stat_result, dirfd: int, name: str) -> None:
        """A regular file: a hard link to its first name when it has several, else its data
        read through an O_NOFOLLOW descriptor checked to be the inode that was listed."""
        arcname = ti.name
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.links:
            ti.type, ti.linkname = tarfile.LNKTYPE, self.links[key]
            self.tf.addfile(ti)
            return
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirfd)
        except OSError as exc:
            log.warning("export: %s skipped: %s", arcname, exc.strerror)
            return
        try:
            fst = os.fstat(fd)
            if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != key:
                return  # replaced since it was listed
            ti.type, ti.size = tarfile.REGTYPE, fst.st_size
            self._xattrs(ti, fd)
            segments = (_data_segments(fd, fst.st_size)
                        if fst.st_blocks * 512 + SPARSE_MIN_HOLES <= fst.st_size else None)
            if segments is None:
                self.tf.addfile(ti, cast(BinaryIO, _FileData(fd, ti.size, self.progress)))
            else:
                self._sparse(ti, fd, segments)
        finally:
            os.close(fd)
        if st.st_nlink > 1:
            self.links[key] = arcname

    def _sparse(self, ti: tarfile.TarInfo, fd: int, segments: list[tuple[int, int]]) -> None:
        """ti (a regular file of ti.size bytes) as a GNU tar PAX 1.0 sparse member."""
        arcname, size = ti.name, ti.size
        if not segments or sum(segments[-1]) < size:
            segments.append((size, 0))  # as GNU tar ends it: the size, no data
        data = _SparseData(fd, segments, self.progress)
        # GNU tar's header name: a reader without sparse support extracts the raw
        # map and data aside, never over the real path. "path" goes first: readers
        # apply the records in order, so GNU.sparse.name, later, names the file.
        head, _, base = arcname.rpartition("/")
        ti.name, ti.size = f"{head}/GNUSparseFile.0/{base}", data.size
        ti.pax_headers = {"path": ti.name, **ti.pax_headers,
                          "GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                          "GNU.sparse.name": arcname,
                          "GNU.sparse.realsize": str(size)}
        self.tf.addfile(ti, cast(BinaryIO, data))

    def _symlink(self, ti: tarfile.TarInfo, dirfd: int, name: str) -> None:
        ti.type = tarfile.SYMTYPE
        try:
            ti.linkname = os.readlink(name, dir_fd=dirfd)
        except OSError:
            return
        self.tf.addfile(ti)

    def _device(self, ti: tarfile.TarInfo, st: os.stat_result) -> None:
        """A device node, archived only under ./dev (counted and skipped elsewhere)."""
        if not ti.name.startswith("./dev/"):
            self.skipped_devices += 1
            log.warning("export: device node %s outside /dev skipped", ti.name)
            return
        ti.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
        ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        self.tf.addfile(ti)


def _write_tar(source: Path, raw: Writable, comp: str, progress: Progress | None) -> None:
    """The tarball of source into raw, compressed with comp, progress over its file data."""
    prog = ProgressMeter(progress, data_size(source))
    packer = compressor(comp, raw)
    stream = packer if packer is not None else raw
    tf = tarfile.open(fileobj=cast(BinaryIO, stream), mode="w|", format=tarfile.PAX_FORMAT,
                      encoding="utf-8", errors="surrogateescape")
    tf.copybufsize = CHUNK  # type: ignore[attr-defined]  # tarfile's copy buffer, not in typeshed
    exporter = Exporter(tf, prog)
    exporter.root(source)
    for dirpath, dirnames, filenames, dirfd in os.fwalk(source, follow_symlinks=False):
        dirnames.sort()
        rel = os.path.relpath(dirpath, source)
        prefix = "./" if rel == "." else f"./{rel}/"
        for name in sorted(dirnames + filenames):
            exporter.entry(dirfd, name, prefix + name)
    tf.close()
    if packer is not None:
        packer.close()
    prog.finish()


def export_rootfs(source: Path, out: Path | Writable, compression: str | None = None,
                  progress: Progress | None = None) -> int:
    """Write the root at source as a tarball of its contents (`./`, `./etc/`, `./etc/hostname`
    ..., numeric owners, modes, mtimes, xattrs, hard links, symlinks, FIFOs; device nodes only
    under ./dev; sockets not at all). A file with 1 MiB or more of holes is a sparse member
    (GNU tar's PAX 1.0 format, found with SEEK_DATA/SEEK_HOLE): the cost of an export follows
    the data a guest's files hold, not the sizes a tenant can declare with truncate.
    compression: "zst", "gz", "xz", "bz2" or "none"; None picks it from out's name
    (.tar.xz -> xz), zst when that says nothing. A path out is written
    aside and renamed into place when complete (no half file, ever); a file object is written
    as a stream. progress(done, total) counts file data bytes. Returns the bytes written.

    The tree is walked with os.fwalk and opened with O_NOFOLLOW, so a symlink swapped in while
    a running guest's root is exported is archived as a symlink, never followed."""
    comp = compression or (compression_for(out) if isinstance(out, (str, Path)) else "zst")
    if comp not in COMPRESSIONS:
        raise InvalidRequest(f"unknown compression {comp!r}; use one of {', '.join(COMPRESSIONS)}")
    if not source.is_dir():
        raise OperationFailed(f"{source} is not a directory")
    if not isinstance(out, (str, Path)):
        writer = CountingWriter(out)
        _write_tar(source, writer, comp, progress)
        return writer.count
    out = Path(out)
    tmp = out.parent / f".{out.name}.part-{uuid.uuid4().hex[:8]}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise OperationFailed(f"cannot write {out}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            writer = CountingWriter(fh)
            _write_tar(source, writer, comp, progress)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OperationFailed(f"writing {out} failed: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return writer.count
