"""The extractor: writes tar members into a target directory, confined to it.

Every path is walked one component at a time with openat(O_NOFOLLOW | O_DIRECTORY) from the
target's own descriptor, so no extracted symlink is ever followed (the `lnk -> /etc` then
`lnk/passwd` trick gets a refusal). Refused, with Refused naming the member: absolute names and
`..` components, a parent that the archive made a symlink or a non-directory, hard links whose
target is absolute, has `..` or was not extracted before them, a directory replaced by a later
member of another type, member types a root does not need (GNU volume labels ...), and regular
members whose data does not fit (checks.Space, charged before a byte is written).

Block and character device nodes are never made, wherever they are, nor hard links to them:
they are counted in skipped_devices (ctd makes each guest's /dev itself). drop_device_nodes()
does the same for a tree made outside an import. Sparse members are written segment by
segment, seeking over holes; runs of zeros in plain members become holes too. Owners are set
only with same_owner; modes (setuid included), mtimes and SCHILY.xattr extended attributes as
the archive has them, directories' once their contents are in (finish()).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tarfile
from pathlib import Path

from ctd.storage.archive.checks import Refused, Space, components
from ctd.storage.archive.streams import CHUNK, HOLE, XATTR_PREFIX, Readable

log = logging.getLogger(__name__)

# Errors writing to the target that are the host's problem, not the archive's.
HOST_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM, errno.EMFILE,
               errno.ENFILE}


class Extractor:
    """Writes the members of one archive below target (see the module doc); close() it."""

    DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

    def __init__(self, target: Path, same_owner: bool, space: Space) -> None:
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
                        raise Refused(member, f"needs {'/'.join(comps[:i + 1])!r}, which is not "
                                              "in the archive before it") from None
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    nfd = os.open(comp, self.DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise Refused(member, f"goes through {'/'.join(comps[:i + 1])!r}, which the "
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
            raise Refused(member, "would replace a directory the archive made before")
        os.unlink(name, dir_fd=parent)

    def _owner_mode(self, fd: int, m: tarfile.TarInfo) -> None:
        if self.same_owner:
            self._check_ids(m)
            os.fchown(fd, m.uid, m.gid)
        os.fchmod(fd, m.mode & 0o7777)  # after chown, which clears setuid bits

    def _check_ids(self, m: tarfile.TarInfo) -> None:
        for what, value in (("uid", m.uid), ("gid", m.gid)):
            if not 0 <= value < 0xFFFFFFFF:
                raise Refused(m.name, f"has an impossible {what} {value}")

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
        """Write member m (its data read from tf) or refuse it; directories get their owner,
        mode and times in finish()."""
        comps = components(m.name, m.name)
        if m.isdir():
            self._dir(comps, m)
            return
        if not comps:
            raise Refused(m.name, "names the root itself but is not a directory")
        if m.ischr() or m.isblk():
            self._skip_device(comps, m)
            return
        self.skipped.discard(comps)  # a later member of that name is no longer a dropped node
        if m.islnk():
            self._hardlink(comps, m)
            return
        if not (m.isreg() or m.issym() or m.isfifo()):
            raise Refused(m.name, f"has a member type tar allows but a root does not need "
                                  f"(type {m.type!r})")
        parent = self._parent(comps, m.name)
        name = comps[-1]
        self._clear(parent, name, m.name)
        if m.issym():
            self._symlink(parent, name, m)
        elif m.isfifo():
            self._fifo(parent, name, m)
        else:
            self._file(parent, name, m, tf)

    def _skip_device(self, comps: tuple[str, ...], m: tarfile.TarInfo) -> None:
        # Never made, wherever they are: a node on the guest's disk is a door to the host's
        # devices (dev/loop0 reads the pool). ctd makes each guest's /dev itself.
        self.skipped.add(comps)
        self.skipped_devices += 1
        if len(self.skipped_names) < 5:
            self.skipped_names.append(m.name)

    def _symlink(self, parent: int, name: str, m: tarfile.TarInfo) -> None:
        os.symlink(m.linkname, name, dir_fd=parent)
        if self.same_owner:
            self._check_ids(m)
            os.chown(name, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
        ns = self._mtime_ns(m)
        try:
            os.utime(name, ns=(ns, ns), dir_fd=parent, follow_symlinks=False)
        except (OverflowError, OSError):
            pass

    def _fifo(self, parent: int, name: str, m: tarfile.TarInfo) -> None:
        os.mkfifo(name, 0o600, dir_fd=parent)
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            self._owner_mode(fd, m)
            self._times(fd, m)
        finally:
            os.close(fd)

    def _file(self, parent: int, name: str, m: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
        """A regular member, charged against the space before a byte of it is written."""
        segments = self.space.charge(m, tf)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=parent)
        try:
            if m.issparse():
                self._write_sparse(fd, tf, m, segments)
            else:
                data = tf.extractfile(m)
                assert data is not None  # a regular member always has a file object
                self._write(fd, data, m.size)
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
        assert stream is not None
        stream.seek(m.offset_data)
        for offset, size in segments:
            os.lseek(fd, offset, os.SEEK_SET)
            cls._write(fd, stream, size)

    @staticmethod
    def _write(fd: int, data: Readable, size: int) -> None:
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
        """A directory made 0700 (a non-directory of its name goes); finish() sets the rest."""
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
        """A hard link to a non-directory extracted before it (or, to a dropped device node,
        dropped as well)."""
        source = components(m.linkname, m.name, "its link target")
        if not source:
            raise Refused(m.name, "is a hard link to the root directory")
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
                raise Refused(m.name, f"is a hard link to {m.linkname!r}, which is not in the "
                                      "archive before it") from None
            if stat.S_ISDIR(st.st_mode):
                raise Refused(m.name, f"is a hard link to the directory {m.linkname!r}")
            parent = self._parent(comps, m.name)
            self._clear(parent, comps[-1], m.name)
            os.link(source[-1], comps[-1], src_dir_fd=src_fd, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(src_fd)

    def finish(self) -> None:
        """Owner, mode, xattrs and times of every directory, deepest first."""
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
