"""Root filesystem tarballs: safe import and export, in the layout OpenVZ and Proxmox templates
use (a tar of the root's *contents*, members named `./etc/hostname`, numeric owners).

import_rootfs(archive, target)   extracts a .tar, .tar.gz, .tar.xz, .tar.zst or .tar.bz2 (the
                                 compression is recognised by its magic bytes, not the file name)
                                 into an empty directory, refusing anything that could write
                                 outside it;
export_rootfs(source, out)       writes a root as such a tarball (zstd, gzip, xz or plain).

What an import refuses (ctd.errors.InvalidRequest naming the member and why; the target is
emptied again, so nothing of the archive is left; the caller removes the target itself):

- absolute member names (`/etc/passwd`) and names with a `..` component (`a/../../x`);
- a member whose parent, as extracted so far, is a symlink or not a directory (the
  `lnk -> /etc` then `lnk/passwd` trick): every path is walked one component at a time with
  openat(O_NOFOLLOW | O_DIRECTORY) from the target's own descriptor, so no extracted symlink is
  ever followed;
- hard links whose target is absolute, has `..`, or is not a member extracted before them;
- a directory replaced by a later member of another type, and member types tar has but a root
  does not need (GNU volume labels, multi-volume continuations ...);
- more file data than fits: members are charged as their headers are read, before their data
  is written, against the free space of the target's filesystem and max_bytes (the quota the
  root will have); a file declaring more bytes than that whole filesystem holds is refused
  even when sparse. Sparse members (GNU tar --sparse, old GNU and PAX formats) count their
  data segments only, and are written segment by segment, seeking over the holes: the cost of
  an import follows the bytes in the archive, not the sizes it declares.

Dropped, never made, and counted ("skipped_devices", and a warning naming the first few):
block and character device nodes, wherever they are (dev/loop0 on a guest's disk reads the
pool's block device; a chroot's dev/ or home/sda no less), and hard links to them. Roots
carry them legitimately (debootstrap's /dev/null ...), so they are not refused: ctd mounts a
private tmpfs on every guest's /dev and makes the few nodes it allows itself.

Kept as they are: symlinks to anywhere (they are resolved inside the container, never by the
import), FIFOs (inert on disk; ctd never opens a guest's files but through guestfs, which
refuses them), hard links inside the root, setuid/setgid bits (a system needs /usr/bin/sudo
setuid; with every path confined to the target there is no "setuid file outside the root"),
numeric owners (uname/gname are ignored: the ids of the archive are the ids of the guest),
modes, mtimes and extended attributes stored the GNU tar / star way (`SCHILY.xattr.NAME`: file
capabilities such as ping's cap_net_raw, ACLs). Owners are only set when running as root.

A truncated or corrupt archive (a compressed stream that stops early or fails its checksum, a
tar that ends inside a member or without its end-of-archive block) raises InvalidRequest
"... is truncated or corrupt: ...".

zstd needs the `zstandard` module (PyPI); gzip, xz and bzip2 come with Python.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import io
import logging
import lzma
import os
import stat
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ctd.errors import CtdError, InvalidRequest, NotSupported, OperationFailed

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

MiB = 1 << 20
CHUNK = MiB
ZSTD_INPUT_CHUNK = 1024  # bounds what one zstd decompress call may return (RLE bombs)
PROGRESS_STEP = 4 * MiB
HOLE = 64 * 1024

MAGICS = [  # (compression, magic bytes at offset 0)
    ("gz", b"\x1f\x8b"),
    ("xz", b"\xfd7zXZ\x00"),
    ("zst", b"\x28\xb5\x2f\xfd"),
    ("bz2", b"BZh"),
]
COMPRESSIONS = ("zst", "gz", "xz", "bz2", "none")
SUFFIXES = {".tar.zst": "zst", ".tzst": "zst", ".tar.gz": "gz", ".tgz": "gz", ".tar.xz": "xz",
            ".txz": "xz", ".tar.bz2": "bz2", ".tbz2": "bz2", ".tar": "none"}

# Errors writing to the target that are the host's problem, not the archive's.
HOST_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM, errno.EMFILE,
               errno.ENFILE}
XATTR_PREFIX = "SCHILY.xattr."


def _zstandard():  # type: ignore[no-untyped-def]
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


class _Corrupt(Exception):
    """Reading the archive failed: its compression or tar structure is broken."""


class _Progress:
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


class _Source:
    """The raw (compressed) archive: counts bytes for progress; hands back sniffed bytes first."""

    def __init__(self, fh: BinaryIO, progress: _Progress) -> None:
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


class _ZstdReader:
    """zstd frames one after the other; unlike zstandard's stream_reader, a stream that ends
    inside a frame is an error, and output per call stays bounded (small input slices)."""

    def __init__(self, src: _Source) -> None:
        self._dctx = _zstandard().ZstdDecompressor()
        self._src, self._obj = src, None
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


class _Guard:
    """The decompressed tar stream as tarfile reads it: any failure of the layers below is a
    corrupt archive, told apart from failures writing the target. Counts bytes read."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.count = inner, 0

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.inner.read(n)
        except (_Corrupt, CtdError):
            raise
        except Exception as exc:  # EOFError, zlib.error, lzma.LZMAError, ZstdError, OSError ...
            raise _Corrupt(str(exc) or type(exc).__name__) from exc
        self.count += len(data)
        return data


def _detect(head: bytes) -> str:
    for comp, magic in MAGICS:
        if head.startswith(magic):
            return comp
    if len(head) >= 512:
        if head[257:262] == b"ustar":
            return "none"
        try:
            if tarfile.nti(head[148:156]) in tarfile.calc_chksums(head[:512]):
                return "none"  # a pre-POSIX (v7) tar header
        except tarfile.HeaderError:
            pass
    return ""


def _decompressor(comp: str, src: _Source):  # type: ignore[no-untyped-def]
    if comp == "gz":
        return gzip.GzipFile(fileobj=src, mode="rb")  # type: ignore[arg-type]
    if comp == "xz":
        return lzma.LZMAFile(src)  # type: ignore[arg-type]
    if comp == "bz2":
        return bz2.BZ2File(src)  # type: ignore[arg-type]
    if comp == "zst":
        return _ZstdReader(src)
    return src


# -- import -------------------------------------------------------------------------------------

MAX_META_HEADER = 1 * MiB  # PAX and GNU long-name headers: xattrs, long paths; never more
META_TYPES = {tarfile.XHDTYPE: "PAX", tarfile.XGLTYPE: "PAX global", tarfile.SOLARIS_XHDTYPE: "PAX",
              tarfile.GNUTYPE_LONGNAME: "GNU long name", tarfile.GNUTYPE_LONGLINK: "GNU long link"}


class HeaderTooBig(tarfile.HeaderError):
    """A PAX or GNU long-name header bigger than MAX_META_HEADER."""


class BoundedTarInfo(tarfile.TarInfo):
    """TarInfo that refuses huge PAX / GNU long-name headers before tarfile reads them whole
    into memory (three copies: a 510 KB .tgz declaring a 512 MiB PAX header took 1.5 GiB)."""

    def _proc_member(self, tarfile_):  # type: ignore[no-untyped-def]
        kind = META_TYPES.get(self.type)
        if kind is not None and self.size > MAX_META_HEADER:
            raise HeaderTooBig(f"it has a {kind} header of {self.size} bytes; ctd reads at most "
                               f"{MAX_META_HEADER} (extended attributes and long names need far "
                               "less)")
        return super()._proc_member(tarfile_)


class _Refused(Exception):
    def __init__(self, member: str, why: str) -> None:
        super().__init__(f"member {member!r} {why}")


def _components(name: str, member: str, what: str = "its name") -> tuple[str, ...]:
    if name.startswith("/"):
        raise _Refused(member, f"has an absolute path ({what} {name!r}); a root filesystem "
                               "tarball holds paths relative to the root, like ./etc/hostname")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise _Refused(member, f"has a '..' component ({what} {name!r}), which could reach "
                               "outside the root")
    return parts


class _Space:
    """What an import may write: the data of its files must fit the free space of the target's
    filesystem (and max_bytes, the quota it will live under), and no file may declare more
    bytes than the whole filesystem holds. Charged member by member as headers are read,
    before a member's data is written."""

    def __init__(self, target: Path, max_bytes: int | None) -> None:
        st = os.statvfs(target)
        self.fs_size = st.f_blocks * st.f_frsize
        self.limit = st.f_bavail * st.f_frsize
        self.what = f"the {self.limit} bytes free where it is extracted"
        if max_bytes is not None and max_bytes < self.limit:
            self.limit, self.what = max_bytes, f"its disk space limit of {max_bytes} bytes"
        self.used = 0

    def charge(self, m: tarfile.TarInfo, tf: tarfile.TarFile) -> list[tuple[int, int]]:
        """The member's data segments (offset, size); refuses what cannot fit."""
        if m.size > self.fs_size:
            raise _Refused(m.name, f"declares a file of {m.size} bytes, more than the whole "
                                   f"filesystem it would land on holds ({self.fs_size} bytes)")
        segments = self._sparse_map(m, tf) if m.issparse() else [(0, m.size)]
        self.used += sum(size for _, size in segments)
        if self.used > self.limit:
            raise _Refused(m.name, f"brings the archive's data past {self.what}; free space "
                                   "(or raise the limit) and try again")
        return segments

    @staticmethod
    def _sparse_map(m: tarfile.TarInfo, tf: tarfile.TarFile) -> list[tuple[int, int]]:
        """The sparse map checked: ascending, inside the file, backed by the archive's bytes."""
        segments, end = [], 0
        for offset, size in m.sparse or ():
            if size == 0:
                continue  # GNU tar pads its map with (0, 0)
            if offset < end or size < 0 or offset + size > m.size:
                raise _Refused(m.name, "has a sparse map with overlapping or out-of-file "
                                       "segments (corrupt)")
            segments.append((offset, size))
            end = offset + size
        stored = tf.offset - m.offset_data  # the member's data, rounded up to whole blocks
        if sum(size for _, size in segments) > stored:
            raise _Refused(m.name, "has a sparse map that claims more data than the archive "
                                   "holds (corrupt)")
        return segments


class _Extractor:
    DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

    def __init__(self, target: Path, same_owner: bool, space: _Space) -> None:
        self.root_fd = os.open(target, self.DIR_FLAGS)
        self.same_owner = same_owner
        self.dirs: list[tuple[tuple[str, ...], tarfile.TarInfo]] = []
        self.skipped: set[tuple[str, ...]] = set()
        self.skipped_devices = 0
        self.skipped_names: list[str] = []
        self.space = space
        self._key: tuple[str, ...] | None = None
        self._fd = -1

    def close(self) -> None:
        self._drop_cache()
        os.close(self.root_fd)

    def _drop_cache(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._key, self._fd = None, -1

    def _walk(self, comps: tuple[str, ...], member: str, *, create: bool) -> int:
        """A new fd for the directory comps below the root, never following a symlink."""
        fd = os.dup(self.root_fd)
        try:
            for i, comp in enumerate(comps):
                try:
                    nfd = os.open(comp, self.DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise _Refused(member, f"needs {'/'.join(comps[:i + 1])!r}, which is not "
                                               "in the archive before it") from None
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    nfd = os.open(comp, self.DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise _Refused(member, f"goes through {'/'.join(comps[:i + 1])!r}, which the "
                                               "archive made a symlink or a non-directory") from None
                    raise
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _parent(self, comps: tuple[str, ...], member: str) -> int:
        key = comps[:-1]
        if key != self._key:
            self._drop_cache()
            self._fd = self._walk(key, member, create=True)
            self._key = key
        return self._fd

    def _clear(self, parent: int, name: str, member: str) -> None:
        """Make room for a non-directory member: an earlier non-directory of the same name goes
        (the last one wins, as with tar), a directory is never replaced."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise _Refused(member, "would replace a directory the archive made before")
        os.unlink(name, dir_fd=parent)

    def _owner_mode(self, fd: int, m: tarfile.TarInfo) -> None:
        if self.same_owner:
            self._check_ids(m)
            os.fchown(fd, m.uid, m.gid)
        os.fchmod(fd, m.mode & 0o7777)  # after chown, which clears setuid bits

    def _check_ids(self, m: tarfile.TarInfo) -> None:
        for what, value in (("uid", m.uid), ("gid", m.gid)):
            if not 0 <= value < 0xFFFFFFFF:
                raise _Refused(m.name, f"has an impossible {what} {value}")

    def _xattrs(self, fd: int, m: tarfile.TarInfo) -> None:
        for key, value in m.pax_headers.items():
            if not key.startswith(XATTR_PREFIX):
                continue
            name = key[len(XATTR_PREFIX):]
            try:
                os.setxattr(fd, name, value.encode("utf-8", "surrogateescape"))
            except OSError as exc:
                if exc.errno in HOST_ERRNOS:
                    raise
                # not supported here, not permitted to an unprivileged caller, an invalid ACL
                log.warning("%s: extended attribute %s not restored: %s", m.name, name, exc.strerror)

    @staticmethod
    def _mtime_ns(m: tarfile.TarInfo) -> int:
        try:
            return int(m.mtime * 1_000_000_000)
        except (OverflowError, ValueError, TypeError):
            return 0

    def _times(self, fd: int, m: tarfile.TarInfo) -> None:
        ns = self._mtime_ns(m)
        try:
            os.utime(fd, ns=(ns, ns))
        except (OverflowError, OSError) as exc:
            log.debug("%s: mtime not set: %s", m.name, exc)

    def add(self, m: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
        comps = _components(m.name, m.name)
        if m.isdir():
            self._dir(comps, m)
            return
        if not comps:
            raise _Refused(m.name, "names the root itself but is not a directory")
        if m.ischr() or m.isblk():
            # Never made, wherever they are: a node on the guest's disk is a door to the host's
            # devices (dev/loop0 reads the pool). ctd makes each guest's /dev itself.
            self.skipped.add(comps)
            self.skipped_devices += 1
            if len(self.skipped_names) < 5:
                self.skipped_names.append(m.name)
            return
        self.skipped.discard(comps)  # a later member of that name is no longer a dropped node
        if m.islnk():
            self._hardlink(comps, m)
            return
        if not (m.isreg() or m.issym() or m.isfifo()):
            raise _Refused(m.name, f"has a member type tar allows but a root does not need "
                                   f"(type {m.type!r})")
        parent = self._parent(comps, m.name)
        name = comps[-1]
        self._clear(parent, name, m.name)
        if m.issym():
            os.symlink(m.linkname, name, dir_fd=parent)
            if self.same_owner:
                self._check_ids(m)
                os.chown(name, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
            ns = self._mtime_ns(m)
            try:
                os.utime(name, ns=(ns, ns), dir_fd=parent, follow_symlinks=False)
            except (OverflowError, OSError):
                pass
            return
        if m.isfifo():
            os.mkfifo(name, 0o600, dir_fd=parent)
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            try:
                self._owner_mode(fd, m)
                self._times(fd, m)
            finally:
                os.close(fd)
            return
        segments = self.space.charge(m, tf)  # before a byte of it is written
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=parent)
        try:
            if m.issparse():
                self._write_sparse(fd, tf, m, segments)
            else:
                self._write(fd, tf.extractfile(m), m.size)
            os.ftruncate(fd, m.size)
            self._owner_mode(fd, m)
            self._xattrs(fd, m)
            self._times(fd, m)
        finally:
            os.close(fd)

    @classmethod
    def _write_sparse(cls, fd: int, tf: tarfile.TarFile, m: tarfile.TarInfo,
                      segments: list[tuple[int, int]]) -> None:
        """A sparse member's data segments, each at its offset: holes are seeked over, never
        written or even made as zeros in memory, so the cost follows the archive's bytes (a
        GNU tar --sparse file of 160 GB of holes is a 129-byte .tgz)."""
        stream = tf.fileobj  # positioned at the member's data (a stream: seeks only forward)
        stream.seek(m.offset_data)  # type: ignore[union-attr]
        for offset, size in segments:
            os.lseek(fd, offset, os.SEEK_SET)
            cls._write(fd, stream, size)

    @staticmethod
    def _write(fd: int, data, size: int) -> None:  # type: ignore[no-untyped-def]
        """Copy size bytes from the current offset; 64 KiB runs of zeros become holes (sparse
        files stay sparse; the caller truncates to the file's size)."""
        zeros = bytes(CHUNK)
        left = size
        while left > 0:
            chunk = data.read(min(CHUNK, left))
            if not chunk:
                raise tarfile.ReadError("unexpected end of data")
            left -= len(chunk)
            chunk = bytes(chunk)
            if chunk == zeros[:len(chunk)]:  # bytes == bytes is a memcmp
                os.lseek(fd, len(chunk), os.SEEK_CUR)
                continue
            for start in range(0, len(chunk), HOLE):
                piece = chunk[start:start + HOLE]
                if piece == zeros[:len(piece)]:
                    os.lseek(fd, len(piece), os.SEEK_CUR)
                    continue
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view):]

    def _dir(self, comps: tuple[str, ...], m: tarfile.TarInfo) -> None:
        if comps:
            parent = self._parent(comps, m.name)
            name = comps[-1]
            try:
                os.mkdir(name, 0o700, dir_fd=parent)
            except FileExistsError:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=parent)
                    os.mkdir(name, 0o700, dir_fd=parent)
        self.dirs.append((comps, m))  # owner, mode, times once its contents are in

    def _hardlink(self, comps: tuple[str, ...], m: tarfile.TarInfo) -> None:
        source = _components(m.linkname, m.name, "its link target")
        if not source:
            raise _Refused(m.name, "is a hard link to the root directory")
        if source in self.skipped:
            self.skipped.add(comps)
            return
        if source == comps:
            return
        src_fd = self._walk(source[:-1], m.name, create=False)
        try:
            try:
                st = os.stat(source[-1], dir_fd=src_fd, follow_symlinks=False)
            except FileNotFoundError:
                raise _Refused(m.name, f"is a hard link to {m.linkname!r}, which is not in the "
                                       "archive before it") from None
            if stat.S_ISDIR(st.st_mode):
                raise _Refused(m.name, f"is a hard link to the directory {m.linkname!r}")
            parent = self._parent(comps, m.name)
            self._clear(parent, comps[-1], m.name)
            os.link(source[-1], comps[-1], src_dir_fd=src_fd, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(src_fd)

    def finish(self) -> None:
        self._drop_cache()
        for comps, m in sorted(self.dirs, key=lambda d: len(d[0]), reverse=True):
            fd = self._walk(comps, m.name, create=False)
            try:
                self._owner_mode(fd, m)
                self._xattrs(fd, m)
                self._times(fd, m)
            finally:
                os.close(fd)


def drop_device_nodes(root: Path) -> list[str]:
    """Removes every block and character device node below root (each name of one, hard links
    included) and returns their paths relative to root. For trees made outside ctd's own import
    (a builder's output, a copy of an instance's root) before they become a template: only call
    it on a tree no container can reach yet (a staging directory). Symlinks are not followed."""
    removed = []
    for dirpath, dirnames, filenames, dirfd in os.fwalk(root, follow_symlinks=False):
        for name in filenames + dirnames:
            try:
                mode = os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                os.unlink(name, dir_fd=dirfd)
                removed.append(os.path.normpath(os.path.join(os.path.relpath(dirpath, root), name)))
    if removed:
        log.warning("%s: dropped %d device node(s), e.g. %s (ctd makes each guest's /dev itself)",
                    root, len(removed), ", ".join(removed[:5]))
    return removed


def _empty(target: Path) -> None:
    """Remove everything below target (not target itself); symlink-safe."""
    import shutil
    with os.scandir(target) as it:
        entries = list(it)
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError as exc:
            log.warning("could not remove %s after a failed import: %s", entry.path, exc)


def _label(archive: Path | BinaryIO) -> str:
    if isinstance(archive, (str, Path)):
        return str(archive)
    name = getattr(archive, "name", None)
    return str(name) if isinstance(name, str) else "the archive"


def _size_of(fh: BinaryIO) -> int:
    try:
        st = os.fstat(fh.fileno())
    except (OSError, AttributeError, io.UnsupportedOperation):
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def import_rootfs(archive: Path | BinaryIO, target: Path, progress: Progress | None = None, *,
                  same_owner: bool | None = None, label: str | None = None,
                  max_bytes: int | None = None) -> dict:
    """Extract a (compressed) rootfs tarball into the empty directory target (see the module
    doc for what is refused). progress(done, total) gets archive bytes read and the archive's
    size (0 when it is not a regular file). same_owner: set numeric owners (default: when root).
    Returns {"members": N, "skipped_devices": N}. On failure target is left empty and the
    error is InvalidRequest (bad archive), NotSupported (no zstd module) or OperationFailed.
    label: how messages name the archive (default: its path). max_bytes: the quota the root
    will live under; the files' data must fit it and the free space of target's filesystem."""
    label = label or _label(archive)
    if same_owner is None:
        same_owner = os.geteuid() == 0
    if not target.is_dir() or target.is_symlink():
        raise OperationFailed(f"import target {target} is not a directory")
    if any(target.iterdir()):
        raise OperationFailed(f"import target {target} is not empty")
    own = isinstance(archive, (str, Path))
    try:
        fh: BinaryIO = open(archive, "rb") if own else archive  # type: ignore[arg-type,assignment]
    except OSError as exc:
        raise InvalidRequest(f"cannot read {label}: {exc.strerror}") from None
    members = 0
    extractor: _Extractor | None = None
    try:
        prog = _Progress(progress, _size_of(fh))
        src = _Source(fh, prog)
        head = src.sniff(512)
        if not head:
            raise InvalidRequest(f"{label} is empty")
        comp = _detect(head)
        if not comp:
            raise InvalidRequest(f"{label} is not a tar archive (plain, or compressed with gzip, "
                                 "xz, zstd or bzip2)")
        guard = _Guard(_decompressor(comp, src))
        extractor = _Extractor(target, same_owner, _Space(target, max_bytes))
        try:
            tf = tarfile.open(fileobj=guard, mode="r|", tarinfo=BoundedTarInfo)  # type: ignore[call-overload]
            while True:
                m = tf.next()
                if m is None:
                    break
                tf.members.clear()  # a stream: keep no list of every member in memory
                members += 1
                extractor.add(m, tf)
            if members == 0:
                raise _Corrupt("it holds no files")
            end = tf.offset
            budget = 16 * CHUNK  # read the padding to its end: the compression layer checks
            while budget > 0 and (tail := guard.read(CHUNK)):  # its trailer (CRC, size) there
                budget -= len(tail)
            if guard.count < end + tarfile.BLOCKSIZE:
                raise _Corrupt("the tar stream stops without its end-of-archive block")
            extractor.finish()
        except (_Refused, HeaderTooBig) as exc:
            raise InvalidRequest(f"{label}: {exc}; nothing was imported") from None
        except (_Corrupt, tarfile.TarError, EOFError) as exc:
            raise InvalidRequest(f"{label} is truncated or corrupt: {exc}") from None
        except OSError as exc:
            where = f" (member {m.name!r})" if members and m is not None else ""
            if exc.errno in HOST_ERRNOS:
                raise OperationFailed(f"importing {label} failed{where}: {exc.strerror}") from None
            raise InvalidRequest(f"{label}: cannot extract{where}: {exc.strerror}") from None
        if extractor.skipped_devices:
            log.warning("%s: dropped %d device node(s), e.g. %s (ctd makes each guest's /dev "
                        "itself)", label, extractor.skipped_devices,
                        ", ".join(extractor.skipped_names))
        prog.finish()
        return {"members": members, "skipped_devices": extractor.skipped_devices}
    except BaseException:
        if extractor is not None:
            extractor.close()
            extractor = None
        _empty(target)
        raise
    finally:
        if extractor is not None:
            extractor.close()
        if own:
            fh.close()


# -- export -------------------------------------------------------------------------------------

class _CountingWriter:
    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.count = fh, 0

    def write(self, data) -> int:  # type: ignore[no-untyped-def]
        self.fh.write(data)
        n = len(data)
        self.count += n
        return n

    def flush(self) -> None:
        self.fh.flush()

    def writable(self) -> bool:
        return True


class _FileData:
    """Exactly size bytes of an open file for tarfile: a file that shrank while being read is
    padded with zeros, one that grew is cut (as GNU tar does with "file changed as we read it")."""

    def __init__(self, fd: int, size: int, progress: _Progress) -> None:
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

    def __init__(self, fd: int, segments: list[tuple[int, int]], progress: _Progress) -> None:
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


def _data_size(source: Path) -> int:
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


def _compressor(comp: str, raw):  # type: ignore[no-untyped-def]
    if comp == "zst":
        zstandard = _zstandard()
        return zstandard.ZstdCompressor(level=3, write_checksum=True, threads=-1).stream_writer(
            raw, closefd=False)
    if comp == "gz":
        return gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0)
    if comp == "xz":
        return lzma.LZMAFile(raw, "wb", preset=6)
    if comp == "bz2":
        return bz2.BZ2File(raw, "wb")
    return None


class _Exporter:
    def __init__(self, tf: tarfile.TarFile, progress: _Progress) -> None:
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
        for name in sorted(names):
            try:
                value = os.getxattr(fd, name)
            except OSError:
                continue
            ti.pax_headers[XATTR_PREFIX + name] = value.decode("utf-8", "surrogateescape")

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
        try:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            return  # gone since the directory was listed
        mode = st.st_mode
        ti = self._info(arcname, st)
        if stat.S_ISDIR(mode):
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
        elif stat.S_ISREG(mode):
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
                    self.tf.addfile(ti, _FileData(fd, ti.size, self.progress))  # type: ignore[arg-type]
                else:
                    if not segments or sum(segments[-1]) < fst.st_size:
                        segments.append((fst.st_size, 0))  # as GNU tar ends it: the size, no data
                    data = _SparseData(fd, segments, self.progress)
                    # GNU tar's header name: a reader without sparse support extracts the raw
                    # map and data aside, never over the real path. "path" goes first: readers
                    # apply the records in order, so GNU.sparse.name, later, names the file.
                    head, _, base = arcname.rpartition("/")
                    ti.name, ti.size = f"{head}/GNUSparseFile.0/{base}", data.size
                    ti.pax_headers = {"path": ti.name, **ti.pax_headers,
                                      "GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                                      "GNU.sparse.name": arcname,
                                      "GNU.sparse.realsize": str(fst.st_size)}
                    self.tf.addfile(ti, data)  # type: ignore[arg-type]
            finally:
                os.close(fd)
            if st.st_nlink > 1:
                self.links[key] = arcname
        elif stat.S_ISLNK(mode):
            ti.type = tarfile.SYMTYPE
            try:
                ti.linkname = os.readlink(name, dir_fd=dirfd)
            except OSError:
                return
            self.tf.addfile(ti)
        elif stat.S_ISFIFO(mode):
            ti.type = tarfile.FIFOTYPE
            self.tf.addfile(ti)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            if not arcname.startswith("./dev/"):
                self.skipped_devices += 1
                log.warning("export: device node %s outside /dev skipped", arcname)
                return
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            self.tf.addfile(ti)
        # sockets are not archived (tar has no type for them)


def _write_tar(source: Path, raw: BinaryIO, comp: str, progress: Progress | None) -> None:
    prog = _Progress(progress, _data_size(source))
    compressor = _compressor(comp, raw)
    stream = compressor if compressor is not None else raw
    tf = tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                      encoding="utf-8", errors="surrogateescape")
    tf.copybufsize = CHUNK
    exporter = _Exporter(tf, prog)
    exporter.root(source)
    for dirpath, dirnames, filenames, dirfd in os.fwalk(source, follow_symlinks=False):
        dirnames.sort()
        rel = os.path.relpath(dirpath, source)
        prefix = "./" if rel == "." else f"./{rel}/"
        for name in sorted(dirnames + filenames):
            exporter.entry(dirfd, name, prefix + name)
    tf.close()
    if compressor is not None:
        compressor.close()
    prog.finish()


def export_rootfs(source: Path, out: Path | BinaryIO, compression: str | None = None,
                  progress: Progress | None = None) -> int:
    """Write the root at source as a tarball of its contents (`./`, `./etc/`, `./etc/hostname`
    ..., numeric owners, modes, mtimes, xattrs, hard links, symlinks, FIFOs; device nodes only
    under ./dev; sockets not at all). A file with 1 MiB or more of holes is a sparse member
    (GNU tar's PAX 1.0 format, found with SEEK_DATA/SEEK_HOLE): the cost of an export follows
    the data a guest's files hold, not the sizes a tenant can declare with truncate. compression: "zst", "gz", "xz", "bz2" or "none"; None
    picks it from out's name (.tar.xz -> xz), zst when that says nothing. A path out is written
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
        writer = _CountingWriter(out)
        _write_tar(source, writer, comp, progress)  # type: ignore[arg-type]
        return writer.count
    out = Path(out)
    tmp = out.parent / f".{out.name}.part-{uuid.uuid4().hex[:8]}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise OperationFailed(f"cannot write {out}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            writer = _CountingWriter(fh)  # type: ignore[arg-type]
            _write_tar(source, writer, comp, progress)  # type: ignore[arg-type]
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


__all__ = ["import_rootfs", "export_rootfs", "compression_for", "drop_device_nodes", "COMPRESSIONS"]
