"""SQLite state (stdlib, WAL). Used from the event loop thread only; every call is short."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

from ctd.state.migrations import MIGRATIONS
from ctd.state.records import InstanceRecord, InstanceType, PowerState, TemplateRecord

_JSON_COLUMNS = ("limits", "init")


class StateDB:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self.conn.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    @property
    def schema_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def close(self) -> None:
        self.conn.close()

    # -------------------------------------------------------------- instances

    @staticmethod
    def _instance(row: sqlite3.Row) -> InstanceRecord:
        values = dict(row)
        for column in _JSON_COLUMNS:
            values[column] = json.loads(values[column])
        values["type"] = InstanceType(values["type"])
        values["state"] = PowerState(values["state"])
        values["privileged"] = bool(values["privileged"])
        return InstanceRecord(**values)

    def add_instance(self, rec: InstanceRecord) -> None:
        values = dataclasses.asdict(rec)
        for column in _JSON_COLUMNS:
            values[column] = json.dumps(values[column])
        values["type"] = rec.type.value
        values["state"] = rec.state.value
        columns = ", ".join(values)
        marks = ", ".join(f":{k}" for k in values)
        self.conn.execute(f"INSERT INTO instances ({columns}) VALUES ({marks})", values)

    def update_instance(self, rec: InstanceRecord) -> None:
        values = dataclasses.asdict(rec)
        for column in _JSON_COLUMNS:
            values[column] = json.dumps(values[column])
        values["type"] = rec.type.value
        values["state"] = rec.state.value
        sets = ", ".join(f"{k} = :{k}" for k in values if k != "id")
        self.conn.execute(f"UPDATE instances SET {sets} WHERE id = :id", values)

    def delete_instance(self, instance_id: int) -> None:
        self.conn.execute("DELETE FROM instances WHERE id = ?", (instance_id,))

    def get_instance(self, ref: str | int) -> InstanceRecord | None:
        if isinstance(ref, int) or str(ref).isdigit():
            row = self.conn.execute("SELECT * FROM instances WHERE id = ?", (int(ref),)).fetchone()
        else:
            row = self.conn.execute("SELECT * FROM instances WHERE name = ?", (ref,)).fetchone()
        return self._instance(row) if row else None

    def list_instances(self) -> list[InstanceRecord]:
        return [self._instance(r) for r in self.conn.execute("SELECT * FROM instances ORDER BY id")]

    def used_ids(self) -> set[int]:
        return {r[0] for r in self.conn.execute("SELECT id FROM instances")}

    def used_idmap_bases(self) -> set[int]:
        return {r[0] for r in self.conn.execute("SELECT idmap_base FROM instances WHERE idmap_base IS NOT NULL")}

    # -------------------------------------------------------------- templates

    def add_template(self, rec: TemplateRecord) -> None:
        values = dataclasses.asdict(rec)
        columns = ", ".join(values)
        marks = ", ".join(f":{k}" for k in values)
        self.conn.execute(f"INSERT OR REPLACE INTO templates ({columns}) VALUES ({marks})", values)

    def get_template(self, name: str) -> TemplateRecord | None:
        row = self.conn.execute("SELECT * FROM templates WHERE name = ?", (name,)).fetchone()
        return TemplateRecord(**dict(row)) if row else None

    def list_templates(self) -> list[TemplateRecord]:
        return [TemplateRecord(**dict(r)) for r in self.conn.execute("SELECT * FROM templates ORDER BY name")]

    def delete_template(self, name: str) -> None:
        self.conn.execute("DELETE FROM templates WHERE name = ?", (name,))

    def template_in_use(self, name: str) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM instances WHERE template = ?", (name,))]
