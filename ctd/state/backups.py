"""The backup tables (migration 11): per instance its schedule, and the backups made into the
node's backup_dir. Kept apart from InstanceRecord: a row cascades away with its instance (the
files stay on disk). Used from the event loop thread only, as StateDB.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctd.state.db import StateDB

DEFAULT_KEEP = 7


@dataclass(frozen=True)
class ScheduleRow:
    instance_id: int
    schedule: str        # "" : none (backup_keep may still be set, for manual chained backups)
    keep: int
    next_due: float | None


@dataclass(frozen=True)
class BackupRow:
    id: str
    instance_id: int
    file: str
    kind: str            # full | incremental
    parent: str | None   # the parent backup's id
    created: float       # epoch seconds
    size: int
    scheduled: bool


class BackupStore:
    def __init__(self, db: StateDB) -> None:
        self.db = db
        self.conn = db.conn

    def schedule_of(self, instance_id: int) -> ScheduleRow | None:
        row = self.conn.execute("SELECT * FROM backup_schedules WHERE instance_id = ?", (instance_id,)).fetchone()
        return ScheduleRow(**dict(row)) if row else None

    def set_schedule(self, instance_id: int, schedule: str, keep: int, next_due: float | None) -> None:
        self.conn.execute(
            "INSERT INTO backup_schedules (instance_id, schedule, keep, next_due) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (instance_id) DO UPDATE SET schedule = excluded.schedule, keep = excluded.keep, "
            "next_due = excluded.next_due", (instance_id, schedule, keep, next_due))
        self.db.touched(instance_id)   # the view shows the schedule

    def set_next_due(self, instance_id: int, next_due: float | None) -> None:
        self.conn.execute("UPDATE backup_schedules SET next_due = ? WHERE instance_id = ?", (next_due, instance_id))
        self.db.touched(instance_id)

    def scheduled(self) -> list[ScheduleRow]:
        rows = self.conn.execute("SELECT * FROM backup_schedules WHERE schedule != '' ORDER BY instance_id")
        return [ScheduleRow(**dict(r)) for r in rows]

    def add_backup(self, row: BackupRow) -> None:
        self.conn.execute("INSERT INTO backups (id, instance_id, file, kind, parent, created, size, scheduled) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                          (row.id, row.instance_id, row.file, row.kind, row.parent, row.created, row.size,
                           int(row.scheduled)))

    def backups_of(self, instance_id: int) -> list[BackupRow]:
        """Oldest first."""
        rows = self.conn.execute("SELECT * FROM backups WHERE instance_id = ? ORDER BY rowid",
                                 (instance_id,))
        return [BackupRow(**{**dict(r), "scheduled": bool(r["scheduled"])}) for r in rows]

    def delete_backup(self, backup_id: str) -> None:
        self.conn.execute("DELETE FROM backups WHERE id = ?", (backup_id,))
