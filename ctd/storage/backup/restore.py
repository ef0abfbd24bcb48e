"""restore_backup: a backup file made into a new instance's storage, nothing left on failure.

The instance is built aside (STORAGE/.restore-NAME-XXXX, 0700) and renamed to instances/NAME
(renameat2 RENAME_NOREPLACE) only when complete: a failure at any point removes everything it
made, and a crash leaves only a dot-directory that discard_partial() removes at the next start.
A tar backup goes through archive.import_rootfs (its checks, its device-node dropping); a
btrfs-send backup through sendstream.StreamCheck into `btrfs receive` (btrfs_io), then a
writable snapshot of what was received, from which the placeholders of device nodes are
removed before it becomes the instance's root. The data must fit the pool's free space and
the disk space limit the backup's meta gives the instance.

An incremental backup restores with its chain (chain.resolve_chain: every link checked before
anything is received): the full backup and each increment are received oldest first into the
same staging directory, each stream checked to name the previous one's subvolume as its parent
(sendstream.Link), each received parent deleted once its child is in; each stream's data must
fit the space and limit on its own (the pool's free space measured anew for each).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import tarfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from ctd.errors import Conflict, CtdError, InvalidRequest, NotSupported, OperationFailed
from ctd.storage.archive.checks import Space
from ctd.storage.archive.importer import import_rootfs
from ctd.storage.archive.streams import Corrupt, Guard, Readable, ZstdReader
from ctd.storage.backup.btrfs_io import btrfs_of, drop_placeholders, receive
from ctd.storage.backup.chain import resolve_chain
from ctd.storage.backup.format import BACKUP_PREFIX, RESTORE_PREFIX, BackupHeader, Progress
from ctd.storage.backup.reader import open_archive, read_header, start
from ctd.storage.backup.sendstream import Link, StreamCheck
from ctd.storage.base import StorageDriver, check_component, unique_suffix

if TYPE_CHECKING:
    from ctd.storage.btrfs import BtrfsStorage

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1


def _rename_noreplace(src: Path, dst: Path) -> None:
    """rename(2) that fails with EEXIST instead of replacing dst."""
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is None:  # pragma: no cover - glibc < 2.28
        if os.path.lexists(dst):
            raise FileExistsError(str(dst))
        os.rename(src, dst)
        return
    if renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), RENAME_NOREPLACE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(dst))


def _empty_root(storage: StorageDriver, path: Path) -> None:
    """The new root at path: a subvolume on btrfs, a directory elsewhere."""
    bt = btrfs_of(storage)
    if bt is not None:
        from ctd.storage.btrfs.lib import btrfsutil, errors
        with errors(f"creating subvolume {path}"):
            btrfsutil.create_subvolume(path)
    else:
        path.mkdir(mode=0o755)


def _quota_of(header: BackupHeader) -> int | None:
    """The disk space limit the restored instance will get (its data must fit it)."""
    limits = header.get("meta", {}).get("limits")
    value = limits.get("diskspace") if isinstance(limits, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@dataclass
class Restoring:
    """A restore under way (restoring() hands it to the body): the backup's tar stream after its
    checked header, and the staging directory once stage() made it."""

    tf: tarfile.TarFile
    header: BackupHeader
    label: str
    staging: Path
    staged: bool = False

    def stage(self) -> Path:
        self.staging.mkdir(mode=0o700)
        self.staged = True
        return self.staging


@contextlib.contextmanager
def restoring(storage: StorageDriver, archive_: Path | BinaryIO, new_name: str, progress: Progress | None,
              remove: Callable[[Path], None]) -> Iterator[Restoring]:
    """What a container's restore and a VM's (vmarchive.py) share: the name checked and free, the
    file opened and its header read; the body fills the staging directory; then it is renamed
    into place, or (any failure) removed by `remove`, its errors said as InvalidRequest (a
    corrupt or truncated file), OperationFailed (the host's) or the CtdError raised."""
    check_component("instance", new_name)
    if os.path.lexists(storage.instance_path(new_name)):
        raise Conflict(f"storage for instance {new_name!r} already exists")
    fh, own, reader, label = open_archive(archive_, progress)
    restore: Restoring | None = None
    try:
        tf = start(reader, label)
        restore = Restoring(tf, read_header(tf, label), label,
                            storage.root / f"{RESTORE_PREFIX}{new_name}-{unique_suffix()}")
        yield restore
        if restore.staged:
            _move_into_place(storage, restore.staging, new_name)
            restore.staged = False
        if progress is not None:
            progress(reader.done, reader.total or reader.done)
    except (tarfile.TarError, EOFError, Corrupt) as exc:
        raise InvalidRequest(f"{label} is truncated or corrupt: {exc}") from None
    except CtdError:
        raise
    except OSError as exc:
        raise OperationFailed(f"restoring {label} failed: {exc.strerror or exc}") from None
    finally:
        if restore is not None and restore.staged:
            try:
                remove(restore.staging)
            except CtdError as exc:
                log.error("could not remove %s after a failed restore: %s", restore.staging, exc)
        if own:
            fh.close()


def restore_backup(storage: StorageDriver, archive_: Path | BinaryIO, new_name: str,
                   progress: Progress | None = None) -> Mapping[str, object]:
    """Restore a backup as instance new_name (instances/NEW/rootfs; no snapshots). Returns the
    backup's meta. progress(done, total): archive bytes read / its size (0 for a pipe).
    Refuses (InvalidRequest) a corrupt, truncated or hostile backup, unknown versions, and
    (NotSupported) a btrfs-send backup on non-btrfs storage; Conflict if new_name exists.
    Nothing is left behind on failure. Blocking: run it in a thread."""
    with restoring(storage, archive_, new_name, progress, storage._remove_root) as restore:
        tf, header, label = restore.tf, restore.header, restore.label
        if header.get("type") == "vm":   # vmarchive.py reads those
            raise InvalidRequest(f"{label} is a VM's backup, not a container's")
        driver = header["driver"]
        bt = btrfs_of(storage)
        if driver == "btrfs-send" and bt is None:
            raise NotSupported(
                f"{label} is a btrfs-send backup and this host's storage is {storage.name}; "
                "restore it on a host with btrfs storage, or make the backup with the tar driver")
        max_bytes = _quota_of(header)
        m = tf.next()
        if m is None or m.name != header["member"] or not m.isreg():
            raise InvalidRequest(f"{label} is truncated or corrupt: {header['member']} is missing")
        staging = restore.stage()
        data = _member_data(tf, m)
        if driver == "btrfs-send":
            assert bt is not None  # refused above without btrfs
            _receive_root(bt, data, staging, label, max_bytes, _parents(archive_, header, label))
        else:
            _empty_root(storage, staging / "rootfs")
            import_rootfs(cast(BinaryIO, data), staging / "rootfs", label=label,
                          max_bytes=max_bytes)  # logs the device nodes it dropped
        if tf.next() is not None:
            raise InvalidRequest(f"{label} holds more than a backup (unexpected members)")
    return header.get("meta", {})


def _member_data(tf: tarfile.TarFile, m: tarfile.TarInfo) -> Readable:
    """The root member's bytes, decompressed when it is a .zst (a broken stream is Corrupt)."""
    member = tf.extractfile(m)
    assert member is not None  # checked to be a regular member by the caller
    if m.name.endswith(".zst"):
        return Guard(ZstdReader(member))
    return member


def _parents(archive_: Path | BinaryIO, header: BackupHeader, label: str) -> list[Path]:
    """The files an incremental backup is made on, oldest first (none for a full one)."""
    if header.get("kind") != "incremental":
        return []
    if not isinstance(archive_, (str, Path)):
        raise InvalidRequest(f"{label} is an incremental backup: restore it from its file, whose "
                             "directory holds the rest of its chain, not from a pipe")
    return [path for path, _ in resolve_chain(Path(archive_), header)[:-1]]


def _receive_root(bt: BtrfsStorage, data: Readable, staging: Path, label: str,
                  max_bytes: int | None, parents: list[Path]) -> None:
    """A btrfs send stream (after the streams of its parents, oldest first) made into
    staging/rootfs: received read-only through the stream check, snapshotted writable, the
    received copies deleted, device-node placeholders removed."""
    recv = staging / ".received"
    recv.mkdir(mode=0o700)
    nonce = os.urandom(16).hex().encode()
    link: Link | None = None
    previous: Path | None = None
    dropped = 0
    for path in parents:
        link, previous, count = _receive_parent(bt, path, recv, link, previous, max_bytes, nonce)
        dropped += count
    check = StreamCheck(label, Space(recv, max_bytes), parent=link, nonce=nonce)
    received = receive(bt, data, recv, label, check)
    if previous is not None:
        bt._remove_root(previous)
    from ctd.storage.btrfs.lib import btrfsutil, errors
    with errors(f"snapshotting {received}"):
        btrfsutil.create_snapshot(received, staging / "rootfs", read_only=False)
    bt._remove_root(recv)
    removed = drop_placeholders(staging / "rootfs", nonce, label, dropped + check.dropped)
    if removed:
        log.warning("%s: dropped %d device node(s), e.g. %s (ctd makes each guest's "
                    "/dev itself)", label, len(removed), ", ".join(removed[:5]))


def _receive_parent(bt: BtrfsStorage, path: Path, recv: Path, link: Link | None, previous: Path | None,
                    max_bytes: int | None, nonce: bytes) -> tuple[Link, Path, int]:
    """One earlier backup of a chain received into recv on top of the previous one, which is
    deleted once the new one is in. Returns the new link, its subvolume and its dropped nodes."""
    fh, own, reader, label = open_archive(path, None)
    try:
        tf = start(reader, label)
        header = read_header(tf, label)
        m = tf.next()
        if m is None or m.name != header["member"] or not m.isreg():
            raise InvalidRequest(f"{label} is truncated or corrupt: {header['member']} is missing")
        check = StreamCheck(label, Space(recv, max_bytes), parent=link, nonce=nonce)
        received = receive(bt, _member_data(tf, m), recv, label, check)
    finally:
        if own:
            fh.close()
    if previous is not None:
        bt._remove_root(previous)
    return check.link, received, check.dropped


def _move_into_place(storage: StorageDriver, staging: Path, new_name: str) -> None:
    """staging renamed to the instance's directory, never over one made meanwhile (Conflict)."""
    storage.instance_path(new_name).parent.mkdir(parents=True, exist_ok=True)
    try:
        _rename_noreplace(staging, storage.instance_path(new_name))
    except FileExistsError:
        raise Conflict(f"storage for instance {new_name!r} already exists") from None
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise Conflict(f"storage for instance {new_name!r} already exists") from None
        raise


def discard_partial(storage: StorageDriver) -> list[str]:
    """After a crash: remove temporary backup snapshots and half-restored instances (the dot
    directories at the storage root). Call at start-up, when no backup/restore runs."""
    removed: list[str] = []
    if not storage.root.is_dir():
        return removed
    for path in sorted(storage.root.iterdir()):
        if path.name.startswith((BACKUP_PREFIX, RESTORE_PREFIX)):
            storage._remove_root(path)
            removed.append(path.name)
    return removed
