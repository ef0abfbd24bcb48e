"""Backups into the node's backup_dir: the schedule settings, chains, retention and the list.

`--backup-schedule` and `--backup-keep` (create and set) are checked by check_settings and
stored by BackupChains.apply (tables of migration 12, never InstanceRecord). A backup with no
file named goes to BACKUP_DIR/NAME/NAME-YYYYmmdd-HHMMSS-ID.ctdbackup (the scheduler's runs and
`ctctl backup NAME`): BackupChains.make writes it as the next link of the instance's chain.

Chains and retention: on btrfs a container's backup is incremental (`btrfs send -p`) against the
snapshot of its previous backup (storage.backup.chain), and a new full backup starts every
min(keep, backup_full_every) backups, or when the previous backup's file or snapshot is gone.
Retention keeps the newest `keep` backups and every backup one of them is made on: a backup is
deleted only when no kept increment needs it, so whole chains go, oldest first, and up to
keep + min(keep, backup_full_every) - 1 files may be on disk. A backup that fails (a full
target) leaves neither a partial file nor a row, and the previous snapshot stays, so the next
run is again an increment of the same chain. Without btrfs, and for a VM (its disk copied by QEMU as
qcow2, vm/backup.py, a coroutine writer), every backup is
full; retention is the same.

Abuse: the schedule is parsed as hostile text (schedule.py); keep is bounded (MAX_KEEP) so a
tenant cannot make the node keep unbounded files; files are named by ctd, never by the request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctd.config import DaemonConfig
from ctd.errors import InvalidRequest
from ctd.instance.schedule import parse_schedule
from ctd.state import InstanceRecord, InstanceType, StateDB
from ctd.state.backups import DEFAULT_KEEP, BackupRow, BackupStore
from ctd.storage.backup.btrfs_io import is_subvolume
from ctd.storage.backup.chain import kept_snapshot, kept_snapshots, parent_for
from ctd.storage.backup.format import Parent
from ctd.storage.base import StorageDriver

log = logging.getLogger(__name__)
# (file, parent, where to keep the snapshot, backup id) -> the header written, with "size"
# A container's writer runs in a thread; a VM's is a coroutine (QEMU copies a running VM's disk).
Writer = Callable[[Path, "Parent | None", "Path | None", str], Any]

BACKUP_FIELDS = frozenset({"backup_schedule", "backup_keep"})
MAX_KEEP = 1000
SUFFIX = ".ctdbackup"


@dataclass(frozen=True)
class BackupSettings:
    """What a create/set body gave (None: not given). schedule "": remove the schedule."""

    schedule: str | None = None
    keep: int | None = None

    @property
    def given(self) -> bool:
        return self.schedule is not None or self.keep is not None


def check_settings(body: dict[str, Any]) -> BackupSettings:
    """backup_schedule and backup_keep of a create/set body, checked (400 naming the field)."""
    schedule = body.get("backup_schedule")
    if schedule is not None:
        if isinstance(schedule, str) and schedule.strip().lower() in ("", "none"):
            schedule = ""
        else:
            schedule = parse_schedule(schedule).text
    keep = body.get("backup_keep")
    if keep is not None:
        if isinstance(keep, str) and keep.strip().isdigit():
            keep = int(keep)
        if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= MAX_KEEP:
            raise InvalidRequest(f"backup_keep must be a whole number from 1 to {MAX_KEEP} (backups kept), "
                                 f"not {body['backup_keep']!r}")
    return BackupSettings(schedule, keep)


def needed(rows: list[BackupRow], keep: int) -> set[str]:
    """Ids retention keeps: the newest `keep` backups and every parent they are made on."""
    by_id = {r.id: r for r in rows}
    kept: set[str] = set()
    for row in rows[-keep:]:
        current: BackupRow | None = row
        while current is not None and current.id not in kept:
            kept.add(current.id)
            current = by_id.get(current.parent) if current.parent else None
    return kept


def _iso(ts: float | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


class BackupChains:
    def __init__(self, config: DaemonConfig, db: StateDB, storage: StorageDriver) -> None:
        self.dir, self.full_every = config.backups_dir, config.backup_full_every
        self.clock_file = config.backup_clock_file
        self.store, self.storage = BackupStore(db), storage

    def clock(self) -> float:
        """Now for schedules: the host's clock, or (tests only) backup_clock_file's epoch seconds."""
        if self.clock_file is not None:
            try:
                return float(self.clock_file.read_text().strip())
            except (OSError, ValueError):
                pass
        return time.time()

    # ------------------------------------------------------------- settings

    def apply(self, rec: InstanceRecord, settings: BackupSettings) -> None:
        """Store the schedule and keep a create/set gave; the next run counts from now."""
        if not settings.given:
            return
        old = self.store.schedule_of(rec.id)
        schedule = settings.schedule if settings.schedule is not None else (old.schedule if old else "")
        keep = settings.keep if settings.keep is not None else (old.keep if old else DEFAULT_KEEP)
        next_due = parse_schedule(schedule).next_due(self.clock()) if schedule else None
        if settings.schedule is None and old is not None:
            next_due = old.next_due
        self.store.set_schedule(rec.id, schedule, keep, next_due)

    def view_fields(self, rec: InstanceRecord) -> dict[str, Any]:
        row = self.store.schedule_of(rec.id)
        return {"backup_schedule": (row.schedule or None) if row else None,
                "backup_keep": row.keep if row else DEFAULT_KEEP,
                "backup_next": _iso(row.next_due) if row else None}

    def keep_of(self, rec: InstanceRecord) -> int:
        row = self.store.schedule_of(rec.id)
        return row.keep if row else DEFAULT_KEEP

    # ------------------------------------------------------------- making one

    def target(self, rec: InstanceRecord) -> Path:
        """Where the next backup of rec goes: a name ctd makes (nothing from the request)."""
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return self.dir / rec.name / f"{rec.name}-{stamp}-{uuid.uuid4().hex[:6]}{SUFFIX}"

    def _parent(self, rec: InstanceRecord, out: Path, rows: list[BackupRow]) -> Parent | None:
        """The previous backup when the next one can be its increment, else None (a full one)."""
        if rec.type is not InstanceType.CONTAINER or not rows:
            return None
        since_full = 0
        for row in reversed(rows):
            since_full += 1
            if row.kind == "full":
                break
        if since_full >= min(self.keep_of(rec), self.full_every):
            return None
        last = rows[-1]
        if Path(last.file).parent != out.parent:   # a rename moved the instance's directory
            return None
        return parent_for(self.storage, rec.name, last.id, Path(last.file))

    async def make(self, rec: InstanceRecord, out: Path, write: Writer, scheduled: bool) -> dict[str, Any]:
        """The next backup of rec's chain into out (the caller holds the instance's lock), its
        row, then retention. write(out, parent, keep, backup_id) makes the file (in a thread):
        the kind's own writer; parent and keep are None but for a container on btrfs. Returns
        the operation's result."""
        rows = self.store.backups_of(rec.id)
        parent = self._parent(rec, out, rows)
        backup_id = uuid.uuid4().hex
        chained = rec.type is InstanceType.CONTAINER and is_subvolume(self.storage, self.storage.rootfs(rec.name))
        keep = kept_snapshot(self.storage, rec.name, backup_id) if chained else None
        await asyncio.to_thread(out.parent.mkdir, mode=0o700, parents=True, exist_ok=True)
        if asyncio.iscoroutinefunction(write):
            header = await write(out, parent, keep, backup_id)
        else:
            header = await asyncio.to_thread(write, out, parent, keep, backup_id)
        await asyncio.to_thread(self._drop_old_snapshots, rec.name, keep)
        row = BackupRow(id=backup_id, instance_id=rec.id, file=str(out), kind=header.get("kind", "full"),
                        parent=parent.id if parent else None, created=time.time(),
                        size=int(header.get("size", 0)), scheduled=scheduled)
        self.store.add_backup(row)
        removed = await self.retain(rec)
        return {"file": str(out), "driver": header.get("driver"), "size": row.size, "id": backup_id,
                "kind": row.kind, "parent": row.parent, "removed": removed,
                **{k: header[k] for k in ("consistency", "notes") if k in header}}

    def discard_partial(self, names: dict[int, str]) -> list[str]:
        """At start-up (no backup runs): the partial files a killed ctd left in backup_dir and
        the snapshots of backups that never completed (every kept snapshot but the last
        backup's). names: instance id -> name. Blocking: run it in a thread."""
        removed = [str(p) for p in self.dir.glob("*/.*.part-*")] if self.dir.is_dir() else []
        for path in removed:
            Path(path).unlink(missing_ok=True)
        for instance_id, name in names.items():
            rows = self.store.backups_of(instance_id)
            last = kept_snapshot(self.storage, name, rows[-1].id) if rows else None
            for snap in kept_snapshots(self.storage, name):
                if snap != last:
                    self.storage._remove_root(snap)
                    removed.append(str(snap))
        return removed

    def _drop_old_snapshots(self, name: str, keep: Path | None) -> None:
        """Every kept snapshot but the new one (the parent's, and any a crash left)."""
        for path in kept_snapshots(self.storage, name):
            if path != keep:
                self.storage._remove_root(path)

    async def retain(self, rec: InstanceRecord) -> list[str]:
        """Delete the backups retention does not keep (files and rows); returns their files."""
        rows = self.store.backups_of(rec.id)
        keep = needed(rows, self.keep_of(rec))
        gone = [r for r in rows if r.id not in keep]
        for row in gone:
            await asyncio.to_thread(Path(row.file).unlink, missing_ok=True)
            self.store.delete_backup(row.id)
        return [r.file for r in gone]

    # ------------------------------------------------------------- the list

    def list(self, rec: InstanceRecord) -> list[dict[str, Any]]:
        return [{"id": r.id, "created": _iso(r.created), "kind": r.kind, "parent": r.parent, "file": r.file,
                 "size": r.size, "scheduled": r.scheduled, "present": Path(r.file).is_file()}
                for r in self.store.backups_of(rec.id)]
