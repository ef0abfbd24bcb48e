"""create_backup: an instance's root (or one of its snapshots) written as a backup file.

btrfs-send where the root is a btrfs subvolume (every block, owner, xattr and hole exactly as
on disk, fast), tar otherwise or on request (driver="tar": portable to a host on the dir
driver). Without a snapshot name it takes a temporary read-only snapshot
(STORAGE/.backup-NAME-XXXX, crash-consistent, deleted afterwards; restore.discard_partial
removes one a crash left); on the dir driver it reads the live tree. A path is written aside
and renamed into place when complete; a pipe gets a file spooled in the pool first.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from ctd.errors import InvalidRequest, NotFound, NotSupported, OperationFailed
from ctd.storage.archive.export import data_size, export_rootfs
from ctd.storage.archive.streams import CountingWriter, zstandard_module
from ctd.storage.backup.btrfs_io import is_subvolume, send
from ctd.storage.backup.format import (BACKUP_PREFIX, BLOCK, CHUNK, FORMAT, HEADER, MAX_HEADER, MEMBERS,
                                       RECORD, VERSION, BackupHeader, Progress, header_block, pad)
from ctd.storage.base import StorageDriver, check_component, unique_suffix


def _write_backup(fh: BinaryIO, source: Path, driver: str, header: BackupHeader,
                  progress: Progress | None) -> int:
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
            send(source, sink, progress, total)
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
                  progress: Progress | None = None, meta: dict[str, Any] | None = None,
                  driver: str | None = None) -> BackupHeader:
    """Write a backup of instance name (or of its snapshot `snapshot`) to out: a path (written
    aside and renamed into place when complete) or a binary file object (a pipe is fine: the
    backup is spooled to a temporary file in the pool first, since tar needs sizes up front).
    meta: what restore_backup hands back (the instance's config). driver: "btrfs-send", "tar"
    or None (btrfs-send where the root is a btrfs subvolume, else tar).
    progress(done, total): bytes of the root processed / its file data (an estimate for
    btrfs-send). Blocking: run it in a thread. Returns the header written, plus "size"."""
    source = _source_of(storage, name, snapshot)
    driver = _pick_driver(storage, source, driver)
    now = dt.datetime.now(dt.timezone.utc)
    header: BackupHeader = {
        "format": FORMAT, "version": VERSION, "driver": driver, "member": MEMBERS[driver],
        "name": name, "snapshot": snapshot, "source_storage": storage.name,
        "created": now.isoformat(timespec="seconds"), "created_ts": int(now.timestamp()),
        "meta": meta or {}}

    temp_snap: Path | None = None
    try:
        if driver == "btrfs-send":
            from ctd.storage.btrfs.lib import btrfsutil, errors
            if snapshot is None or not btrfsutil.get_subvolume_read_only(source):
                temp_snap = storage.root / f"{BACKUP_PREFIX}{name}-{unique_suffix()}"
                with errors(f"snapshotting {source} for the backup"):
                    btrfsutil.create_snapshot(source, temp_snap, read_only=True)
                source = temp_snap
        size = _write_to(out, storage.root, source, driver, header, progress)
    except OSError as exc:
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
              progress: Progress | None) -> int:
    """The backup into out: a path, a seekable file, or anything else through a spool file
    in spool_dir (tar needs the root member's size before its data). Returns its size."""
    if isinstance(out, (str, Path)):
        return _write_file(Path(out), source, driver, header, progress)
    if _seekable(out):
        return _write_backup(out, source, driver, header, progress)
    with tempfile.TemporaryFile(dir=spool_dir) as spool:
        size = _write_backup(spool, source, driver, header, progress)
        spool.seek(0)
        shutil.copyfileobj(spool, out, CHUNK)
    out.flush()
    return size


def _write_file(out: Path, source: Path, driver: str, header: BackupHeader,
                progress: Progress | None) -> int:
    """The backup written aside, synced, and renamed to out when complete (no half file)."""
    tmp_out = out.parent / f".{out.name}.part-{unique_suffix()}"
    try:
        fd = os.open(tmp_out, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise OperationFailed(f"cannot write {out}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w+b") as fh:
            size = _write_backup(fh, source, driver, header, progress)
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
