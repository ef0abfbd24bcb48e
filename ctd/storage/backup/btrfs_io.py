"""The btrfs side of backups: which storage can send, `btrfs send` on create, `btrfs receive
--chroot` of a checked stream on restore, and the removal of the placeholder files the stream
check made of device nodes. ctd.storage.btrfs is imported lazily: a host on the dir driver never
loads btrfsutil for a backup.
"""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ctd.errors import InvalidRequest, OperationFailed
from ctd.storage.archive.streams import Readable, Writable
from ctd.storage.backup.format import CHUNK, Progress
from ctd.storage.backup.sendstream import DROPPED_XATTR, StreamCheck
from ctd.storage.base import StorageDriver

if TYPE_CHECKING:
    from ctd.storage.btrfs import BtrfsStorage


def btrfs_of(storage: StorageDriver) -> BtrfsStorage | None:
    """The BtrfsStorage behind storage, or None."""
    from ctd.storage.btrfs import BtrfsStorage, btrfsutil
    if isinstance(storage, BtrfsStorage) and btrfsutil is not None:
        return storage
    return None


def is_subvolume(storage: StorageDriver, path: Path) -> bool:
    """Whether path is a btrfs subvolume that storage can send."""
    bt = btrfs_of(storage)
    return bt is not None and bt.is_subvolume(path)


def send(snap: Path, out: Writable, progress: Progress | None, total: int,
         parent: Path | None = None) -> None:
    """btrfs send of the read-only subvolume snap into out (a file object); with parent (a
    read-only snapshot the receiver has), only the difference (send -p)."""
    argv = ["btrfs", "send", "-q", *(["-p", str(parent)] if parent is not None else []), str(snap)]
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                    stderr=err, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise OperationFailed("the btrfs command is missing; install btrfs-progs") from None
        assert proc.stdout is not None
        last = done = 0
        try:
            while data := proc.stdout.read(CHUNK):
                out.write(data)
                done += len(data)
                if progress is not None and done - last >= 4 * CHUNK:
                    last = done
                    progress(min(done, total), max(total, 1))
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            proc.stdout.close()
        if proc.wait() != 0:
            err.seek(0)
            raise OperationFailed(f"btrfs send of {snap} failed: "
                                  f"{err.read().decode(errors='replace').strip()}")


def receive(bt: BtrfsStorage, data: Readable, dest: Path, label: str, check: StreamCheck) -> Path:
    """btrfs receive of the stream data (a file object), filtered by check, into dest (empty, or
    holding the received parent of an incremental stream); returns the new read-only subvolume."""
    before = set(dest.iterdir())
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(["btrfs", "receive", "-q", "-e", "--chroot", str(dest)],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        except FileNotFoundError:
            raise OperationFailed("the btrfs command is missing; install btrfs-progs") from None
        assert proc.stdin is not None
        broken = False
        try:
            while chunk := data.read(CHUNK):
                passed = check.feed(chunk)
                try:
                    proc.stdin.write(passed)
                except BrokenPipeError:
                    broken = True
                    break
            if not broken:
                check.finish()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
        rc = proc.wait()
        if rc != 0 or broken:
            err.seek(0)
            msg = err.read().decode(errors="replace").strip()
            raise InvalidRequest(f"{label}: btrfs receive refused the stream (corrupt?): {msg}")
    entries = list(set(dest.iterdir()) - before)
    if len(entries) != 1 or not bt.is_subvolume(entries[0]):
        raise InvalidRequest(f"{label}: the btrfs stream did not make exactly one subvolume")
    return entries[0]


def drop_placeholders(root: Path, nonce: bytes, label: str, expected: int) -> list[str]:
    """Removes every name of the files StreamCheck made of device nodes (hard links included)
    from the writable root; returns them. root is in a restore's staging directory (0700, no
    container sees it). A device node found here would mean the stream check missed one:
    refused rather than kept."""
    removed = []
    for dirpath, dirnames, filenames, dirfd in os.fwalk(root, follow_symlinks=False):
        for name in filenames + dirnames:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            rel = os.path.normpath(os.path.join(os.path.relpath(dirpath, root), name))
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                raise InvalidRequest(f"{label}: the restored root holds a device node ({rel}); "
                                     "refused")
            if not expected or not stat.S_ISREG(st.st_mode):
                continue  # expected: mknod commands the stream had (no tags to look for if none)
            try:
                tag = os.getxattr(f"/proc/self/fd/{dirfd}/{name}", DROPPED_XATTR, follow_symlinks=False)
            except OSError:
                continue
            if tag == nonce:
                os.unlink(name, dir_fd=dirfd)
                removed.append(rel)
    return removed
