"""create_backup: an instance's root (or one of its snapshots) written as a backup file.

btrfs-send where the root is a btrfs subvolume (every block, owner, xattr and hole exactly as
on disk, fast), tar otherwise or on request (driver="tar": portable to a host on the dir
driver). Without a snapshot name it takes a temporary read-only snapshot
(STORAGE/.backup-NAME-XXXX, crash-consistent, deleted afterwards; restore.discard_partial
removes one a crash left); on the dir driver it reads the live tree. A path is written aside
and renamed into place when complete; a pipe gets a file spooled in the pool first.

Chained backups (chain.py): with `parent` the stream is `btrfs send -p` against the parent's
kept snapshot (an incremental backup); with `keep` the snapshot this backup is sent from is
made at that path and kept once the file is complete, for the next one to be made against. A failure
(a full target: Conflict naming it) removes the partial file and the new
snapshot and leaves the parent's snapshot as it was.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ctd.errors import Conflict, InvalidRequest, NotFound, NotSupported, OperationFailed
from ctd.storage.archive.export import data_size, export_rootfs
from ctd.storage.archive.streams import CountingWriter, zstandard_module
from ctd.storage.backup.btrfs_io import is_subvolume, send
from ctd.storage.backup.format import (
    BACKUP_PREFIX,
    BLOCK,
    CHUNK,
    FORMAT,
    HEADER,
    MAX_HEADER,
    MEMBERS,
    RECORD,
    VERSION,
    BackupHeader,
    BackupMeta,
    Parent,
    Progress,
    header_block,
    pad,
)
from ctd.storage.base import StorageDriver, check_component, unique_suffix


def _write_backup(fh: BinaryIO, source: Path, driver: str, header: BackupHeader,
                  progress: Progress | None, parent: Path | None = None) -> int:
    """The outer tar into the seekable fh (from its current position). The rootfs member's
    header is written after its data, once its size is known: nothing is spooled."""
    base = fh.tell()
    now = int(header["created_ts"])
    body = json.dumps({k: v for k, v in header.items() if k != "created_ts"}, indent=1,
                      sort_keys=True).encode() + b"\n"
    if len(body) > MAX_HEADER:
        raise InvalidRequest(f"the backup's metadata is {len(body)} bytes; at most {MAX_HEADER}")
    fh.write(header_block(HEADER, len(body), now) + body + pad(len(body)))
    start = fh.tell()
    fh.write(bytes(BLOCK))  # the member's header, written for real below
    out = CountingWriter(fh)
    total = data_size(source)
    if driver == "btrfs-send":
        # zstd level 3 on every core: about 2.5 times smaller than the raw stream for a system
        # root, at a fraction of what btrfs send itself costs
        z = zstandard_module().ZstdCompressor(level=3, write_checksum=True, threads=-1)
        with z.stream_writer(out, closefd=False) as sink:
            send(source, sink, progress, total, parent)
    else:
        export_rootfs(source, out, "zst", progress)
    size = out.count
    fh.write(pad(size))
    end = fh.tell()
    fh.seek(start)
    fh.write(header_block(header["member"], size, now))
    fh.seek(end)
    fh.write(bytes(2 * BLOCK))
    fh.write(bytes(-(fh.tell() - base) % RECORD))
    if progress is not None:
        progress(max(total, 1), max(total, 1))
    return fh.tell() - base


def create_backup(storage: StorageDriver, name: str, out: Path | BinaryIO, snapshot: str | None = None,
                  progress: Progress | None = None, meta: BackupMeta | None = None,
                  driver: str | None = None, parent: Parent | None = None,
                  keep: Path | None = None, backup_id: str | None = None) -> BackupHeader:
    """Write a backup of instance name (or of its snapshot `snapshot`) to out: a path (written
    aside and renamed into place when complete) or a binary file object (a pipe is fine: the
    backup is spooled to a temporary file in the pool first, since tar needs sizes up front).
    meta: what restore_backup hands back (the instance's config). driver: "btrfs-send", "tar"
    or None (btrfs-send where the root is a btrfs subvolume, else tar).
    progress(done, total): bytes of the root processed / its file data (an estimate for
    btrfs-send). parent: make it incremental (btrfs send -p); keep: where the snapshot it is
    sent from is made and stays (both btrfs-send only, see the module's docstring); backup_id:
    the header's id (default: a new one). Blocking: run it in a
    thread. Returns the header written, plus "size"."""
    source = _source_of(storage, name, snapshot)
    driver = _pick_driver(storage, source, driver)
    if (parent is not None or keep is not None) and (driver != "btrfs-send" or snapshot is not None):
        raise NotSupported("a chained (incremental) backup needs btrfs storage and the live root")
    now = dt.datetime.now(dt.UTC)
    header: BackupHeader = {
        "format": FORMAT, "version": VERSION, "driver": driver, "member": MEMBERS[driver],
        "name": name, "snapshot": snapshot, "source_storage": storage.name,
        "created": now.isoformat(timespec="seconds"), "created_ts": int(now.timestamp()),
        "meta": meta or {}, "id": backup_id or uuid.uuid4().hex, "kind": "full" if parent is None else "incremental"}
    if parent is not None:
        header["parent"] = {"id": parent.id, "file": parent.file}

    temp_snap: Path | None = None
    try:
        if driver == "btrfs-send":
            from ctd.storage.btrfs.lib import btrfsutil, errors
            if snapshot is None or not btrfsutil.get_subvolume_read_only(source):
                # made where it is kept: a read-only subvolume cannot move to another directory
                temp_snap = keep or storage.root / f"{BACKUP_PREFIX}{name}-{unique_suffix()}"
                with errors(f"snapshotting {source} for the backup"):
                    btrfsutil.create_snapshot(source, temp_snap, read_only=True)
                source = temp_snap
        size = _write_to(out, storage.root, source, driver, header, progress,
                         None if parent is None else parent.snapshot)
        if keep is not None:
            temp_snap = None   # it stays, for the next backup of the chain
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            where = Path(out).parent if isinstance(out, (str, Path)) else "the backup's target"
            raise Conflict(f"the backup target {where} is full ({exc.strerror}); the partial file "
                           "was removed: free space there or point backup_dir elsewhere") from None
        raise OperationFailed(f"writing the backup of {name!r} failed: {exc.strerror or exc}") from None
    finally:
        if temp_snap is not None:
            storage._remove_root(temp_snap)
    header.pop("created_ts", None)
    header["size"] = size
    return header


def _source_of(storage: StorageDriver, name: str, snapshot: str | None) -> Path:
    """The root to back up: the instance's, or its snapshot's (NotFound if it has none)."""
    source = storage._existing_rootfs(name)
    if snapshot is not None:
        check_component("snapshot", snapshot)
        source = storage.snapshot_path(name, snapshot)
        if not source.is_dir():
            raise NotFound(f"instance {name!r} has no snapshot {snapshot!r}")
    return source


def _pick_driver(storage: StorageDriver, source: Path, driver: str | None) -> str:
    """driver checked against what source is on; None: btrfs-send for a subvolume, else tar."""
    if driver is None:
        driver = "btrfs-send" if is_subvolume(storage, source) else "tar"
    if driver not in MEMBERS:
        raise InvalidRequest(f"unknown backup driver {driver!r}; use btrfs-send or tar")
    if driver == "btrfs-send" and not is_subvolume(storage, source):
        raise NotSupported(f"a btrfs-send backup needs the instance's root on btrfs storage "
                           f"(this one is on {storage.name}); use the tar driver")
    return driver


def _write_to(out: Path | BinaryIO, spool_dir: Path, source: Path, driver: str, header: BackupHeader,
              progress: Progress | None, parent: Path | None) -> int:
    """The backup into out: a path, a seekable file, or anything else through a spool file
    in spool_dir (tar needs the root member's size before its data). Returns its size."""
    if isinstance(out, (str, Path)):
        return _write_file(Path(out), source, driver, header, progress, parent)
    if _seekable(out):
        return _write_backup(out, source, driver, header, progress, parent)
    with tempfile.TemporaryFile(dir=spool_dir) as spool:
        size = _write_backup(spool, source, driver, header, progress, parent)
        spool.seek(0)
        shutil.copyfileobj(spool, out, CHUNK)
    out.flush()
    return size


def _write_file(out: Path, source: Path, driver: str, header: BackupHeader,
                progress: Progress | None, parent: Path | None) -> int:
    """The backup written aside, synced, and renamed to out when complete (no half file)."""
    return write_aside(out, lambda fh: _write_backup(fh, source, driver, header, progress, parent))


def write_aside(out: Path, fill: Callable[[BinaryIO], int]) -> int:
    """fill(fh) writes a file into a hidden .part file beside out, which is synced and renamed to
    out when complete, and removed if anything fails (no half file, ever). Returns fill's size."""
    tmp_out = out.parent / f".{out.name}.part-{unique_suffix()}"
    try:
        fd = os.open(tmp_out, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise OperationFailed(f"cannot write {out}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w+b") as fh:
            size = fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_out, out)
    except BaseException:
        tmp_out.unlink(missing_ok=True)
        raise
    return size


def _seekable(fh: BinaryIO) -> bool:
    """Whether the backup can be written straight into fh (a seek back sets a member's size)."""
    try:
        return bool(fh.seekable()) and fh.tell() >= 0
    except (OSError, AttributeError, ValueError):
        return False
