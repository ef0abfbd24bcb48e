"""SQLite state (stdlib, WAL). Used from the event loop thread only; every call is short.

Every write that changes what an instance's view shows (its row, its NICs and addresses, its
backup schedule) tells the `changed` listeners the instance's id: the list cache
(ctd/instance/listing.py) rebuilds those instances only, instead of every row per request.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ctd.errors import Conflict, OperationFailed
from ctd.state.migrations import MIGRATIONS
from ctd.state.options import InstanceOptions
from ctd.state.records import (
    InstanceRecord,
    InstanceType,
    NetworkRecord,
    NicMode,
    NicRecord,
    PowerState,
    TemplateRecord,
)

_JSON_COLUMNS = ("limits", "init", "last_exit", "tags", "features", "mounts")   # and options, through InstanceOptions


class StateDB:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.changed: list[Callable[[int], None]] = []   # called with an instance id after a write
        self._migrate()

    def touched(self, instance_id: int) -> None:
        """Something an instance's view shows was written (a rolled-back write too: a listener
        reads the row again, so a spurious call costs one rebuild, never a wrong view)."""
        for listener in self.changed:
            listener(instance_id)

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self.conn.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    @property
    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self.conn.close()

    # -------------------------------------------------------------- instances

    @staticmethod
    def _instance(row: sqlite3.Row) -> InstanceRecord:
        values = dict(row)
        for column in _JSON_COLUMNS:
            values[column] = json.loads(values[column])
        try:
            values["options"] = InstanceOptions.from_stored(json.loads(values["options"]))
        except ValueError as exc:
            raise OperationFailed(f"instance {values['name']}: options.{exc}: ctd's state database was edited "
                                  "or is damaged; restore it from a backup of /var/lib/ctd") from None
        values["type"] = InstanceType(values["type"])
        values["state"] = PowerState(values["state"])
        for flag in ("privileged", "disabled", "protected", "onboot"):
            values[flag] = bool(values[flag])
        return InstanceRecord(**values)

    @staticmethod
    def _instance_row(rec: InstanceRecord) -> dict[str, Any]:
        values = {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec)}
        for column in _JSON_COLUMNS:
            values[column] = json.dumps(values[column])
        values["options"] = json.dumps(rec.options.to_stored())
        values["type"] = rec.type.value
        values["state"] = rec.state.value
        return values

    def add_instance(self, rec: InstanceRecord) -> None:
        values = self._instance_row(rec)
        columns = ", ".join(values)
        marks = ", ".join(f":{k}" for k in values)
        self.conn.execute(f"INSERT INTO instances ({columns}) VALUES ({marks})", values)
        self.touched(rec.id)

    def update_instance(self, rec: InstanceRecord) -> None:
        values = self._instance_row(rec)
        sets = ", ".join(f"{k} = :{k}" for k in values if k != "id")
        self.conn.execute(f"UPDATE instances SET {sets} WHERE id = :id", values)
        self.touched(rec.id)

    def delete_instance(self, instance_id: int) -> None:
        self.conn.execute("DELETE FROM instances WHERE id = ?", (instance_id,))
        self.touched(instance_id)

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

    # -------------------------------------------------------------- networks

    def add_network(self, rec: NetworkRecord) -> None:
        values = dataclasses.asdict(rec)
        self.conn.execute("INSERT INTO networks (name, bridge, subnet4, subnet6, nat, created_at, mtu, dhcp) "
                          "VALUES (:name, :bridge, :subnet4, :subnet6, :nat, :created_at, :mtu, :dhcp)", values)

    def get_network(self, name: str) -> NetworkRecord | None:
        row = self.conn.execute("SELECT * FROM networks WHERE name = ?", (name,)).fetchone()
        return NetworkRecord(**{**dict(row), "nat": bool(row["nat"]), "dhcp": bool(row["dhcp"])}) if row else None

    def list_networks(self) -> list[NetworkRecord]:
        return [NetworkRecord(**{**dict(r), "nat": bool(r["nat"]), "dhcp": bool(r["dhcp"])})
                for r in self.conn.execute("SELECT * FROM networks ORDER BY name")]

    def delete_network(self, name: str) -> None:
        self.conn.execute("DELETE FROM networks WHERE name = ?", (name,))

    def network_users(self, name: str) -> list[str]:
        return [r[0] for r in self.conn.execute(
            "SELECT DISTINCT i.name FROM nics n JOIN instances i ON i.id = n.instance_id WHERE n.network = ?",
            (name,))]

    # -------------------------------------------------------------- NICs and addresses

    def add_nic(self, nic: NicRecord) -> None:
        values = dataclasses.asdict(nic)
        addresses = values.pop("addresses")
        values["mode"] = nic.mode.value
        columns = ", ".join(values)
        marks = ", ".join(f":{k}" for k in values)
        self.conn.execute(f"INSERT INTO nics ({columns}) VALUES ({marks})", values)
        for address in addresses:
            self.add_address(address, nic.instance_id, nic.idx, nic.network)
        self.touched(nic.instance_id)

    def update_nic(self, nic: NicRecord) -> None:
        values = dataclasses.asdict(nic)
        values.pop("addresses")
        values["mode"] = nic.mode.value
        sets = ", ".join(f"{k} = :{k}" for k in values if k not in ("instance_id", "idx"))
        self.conn.execute(f"UPDATE nics SET {sets} WHERE instance_id = :instance_id AND idx = :idx", values)
        self.touched(nic.instance_id)

    def nics_of(self, instance_id: int) -> list[NicRecord]:
        nics = []
        for row in self.conn.execute("SELECT * FROM nics WHERE instance_id = ? ORDER BY idx", (instance_id,)):
            values = dict(row)
            values["mode"] = NicMode(values["mode"])
            values["filter"] = bool(values["filter"])
            values["addresses"] = [r[0] for r in self.conn.execute(
                "SELECT address FROM addresses WHERE instance_id = ? AND idx = ? ORDER BY rowid",
                (instance_id, row["idx"]))]
            nics.append(NicRecord(**values))
        return nics

    def delete_nic(self, instance_id: int, idx: int) -> None:
        self.conn.execute("DELETE FROM addresses WHERE instance_id = ? AND idx = ?", (instance_id, idx))
        self.conn.execute("DELETE FROM nics WHERE instance_id = ? AND idx = ?", (instance_id, idx))
        self.touched(instance_id)

    def address_owner(self, address: str) -> str | None:
        """Name of the instance holding address, None if it is free."""
        row = self.conn.execute("SELECT i.name FROM addresses a JOIN instances i ON i.id = a.instance_id "
                                "WHERE a.address = ?", (address,)).fetchone()
        return row[0] if row else None

    def used_macs(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT mac FROM nics")}

    def add_address(self, address: str, instance_id: int, idx: int, network: str | None) -> None:
        try:
            self.conn.execute("INSERT INTO addresses (address, instance_id, idx, network) VALUES (?, ?, ?, ?)",
                              (address, instance_id, idx, network))
        except sqlite3.IntegrityError:
            # not its name: the asker may be of another project (docs/remote.md, "Projects")
            raise Conflict(f"address {address} is already used by another instance; choose another") from None
        self.touched(instance_id)

    def delete_address(self, address: str) -> None:
        owner = self.conn.execute("SELECT instance_id FROM addresses WHERE address = ?", (address,)).fetchone()
        self.conn.execute("DELETE FROM addresses WHERE address = ?", (address,))
        if owner is not None:
            self.touched(owner[0])

    def addresses_in(self, network: str) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT address FROM addresses WHERE network = ?", (network,))]

    def transaction(self) -> _Transaction:
        """with db.transaction(): … — all or nothing."""
        return _Transaction(self.conn)


class _Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN")

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")
