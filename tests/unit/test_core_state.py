"""The SQLite state: migrations, typed instance and template rows."""
from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from ctd.state import InstanceRecord, InstanceType, PowerState, StateDB, TemplateRecord
from ctd.state import db as db_mod
from ctd.state.migrations import MIGRATIONS


@pytest.fixture
def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    d = StateDB(tmp_path / "state" / "ctd.db")
    yield d
    d.close()


def record(id: int = 100, name: str = "web", **kw) -> InstanceRecord:  # type: ignore[no-untyped-def]
    values = dict(id=id, name=name, type=InstanceType.CONTAINER, template="busybox", hostname=name,
                  privileged=False, idmap_base=1_000_000 + (id - 100) * 65536,
                  limits={"ram": 256 << 20, "cpus": 1, "numproc": 100}, created_at="2024-01-01T00:00:00+00:00",
                  init=["/sbin/init", "--foo"], stop_signal="SIGUSR2")
    values.update(kw)
    return InstanceRecord(**values)


def tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_fresh_db_is_migrated_to_the_latest_version(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "ctd.db"  # parents are created
    d = StateDB(path)
    try:
        assert d.schema_version == len(MIGRATIONS) >= 1
        assert {"instances", "templates"} <= tables(d.conn)
        assert d.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert d.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    finally:
        d.close()


def test_reopening_does_not_rerun_migrations(tmp_path: Path) -> None:
    path = tmp_path / "ctd.db"
    d = StateDB(path)
    d.add_instance(record())
    d.close()
    d = StateDB(path)  # re-running migration 1 would fail: the tables exist
    try:
        assert d.schema_version == len(MIGRATIONS)
        assert d.get_instance("web") == record()
    finally:
        d.close()


def test_only_new_migrations_run_on_an_old_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ctd.db"
    d = StateDB(path)
    d.add_instance(record())
    d.close()
    monkeypatch.setattr(db_mod, "MIGRATIONS", [*MIGRATIONS, "CREATE TABLE extra (x INTEGER)"])
    d = StateDB(path)
    try:
        assert d.schema_version == len(MIGRATIONS) + 1
        assert "extra" in tables(d.conn)
        assert d.get_instance("web") == record()
    finally:
        d.close()


def test_a_failing_migration_leaves_the_db_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ctd.db"
    StateDB(path).close()
    monkeypatch.setattr(db_mod, "MIGRATIONS", [*MIGRATIONS, "CREATE TABLE half (x); INSERT INTO nosuch VALUES (1)"])
    with pytest.raises(sqlite3.OperationalError):
        StateDB(path)
    monkeypatch.setattr(db_mod, "MIGRATIONS", MIGRATIONS)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert "half" not in tables(conn)
    finally:
        conn.close()


def test_instance_round_trip_by_name_and_id(db: StateDB) -> None:
    rec = record(state=PowerState.RUNNING, pid=4242, pid_start=987654)
    db.add_instance(rec)
    for ref in ("web", 100, "100"):
        got = db.get_instance(ref)
        assert got == rec, ref
    got = db.get_instance("web")
    assert got is not None
    assert got.type is InstanceType.CONTAINER and got.state is PowerState.RUNNING
    assert got.privileged is False and isinstance(got.limits, dict) and got.init == ["/sbin/init", "--foo"]
    assert db.get_instance("nope") is None and db.get_instance(101) is None


def test_privileged_instance_without_idmap(db: StateDB) -> None:
    rec = record(privileged=True, idmap_base=None, limits={})
    db.add_instance(rec)
    got = db.get_instance(100)
    assert got == rec and got.privileged is True and got.idmap_base is None and got.limits == {}


def test_update_instance(db: StateDB) -> None:
    db.add_instance(record())
    db.add_instance(record(101, "other"))
    changed = dataclasses.replace(record(), state=PowerState.STOPPING, pid=77, pid_start=5,
                                  limits={"ram": 1 << 30}, hostname="changed")
    db.update_instance(changed)
    assert db.get_instance("web") == changed
    assert db.get_instance("other") == record(101, "other"), "an update touches one row only"


def test_delete_instance(db: StateDB) -> None:
    db.add_instance(record())
    db.add_instance(record(101, "other"))
    db.delete_instance(100)
    assert db.get_instance("web") is None and db.get_instance(100) is None
    assert [r.name for r in db.list_instances()] == ["other"]


def test_list_used_ids_and_idmap_bases(db: StateDB) -> None:
    db.add_instance(record(105, "b"))
    db.add_instance(record(100, "a"))
    db.add_instance(record(200, "c", privileged=True, idmap_base=None))
    assert [r.id for r in db.list_instances()] == [100, 105, 200]
    assert db.used_ids() == {100, 105, 200}
    assert db.used_idmap_bases() == {1_000_000, 1_000_000 + 5 * 65536}


def test_names_ids_and_idmap_bases_are_unique(db: StateDB) -> None:
    db.add_instance(record())
    with pytest.raises(sqlite3.IntegrityError):
        db.add_instance(record(101, "web"))
    with pytest.raises(sqlite3.IntegrityError):
        db.add_instance(record(100, "other", idmap_base=5))
    with pytest.raises(sqlite3.IntegrityError):
        db.add_instance(record(101, "other", idmap_base=1_000_000))
    # several privileged instances (no idmap) are fine
    db.add_instance(record(102, "p1", idmap_base=None))
    db.add_instance(record(103, "p2", idmap_base=None))


def test_templates(db: StateDB) -> None:
    assert db.list_templates() == [] and db.get_template("busybox") is None
    bb = TemplateRecord("busybox", "/t/busybox.toml", "/s/busybox", 2_000_000, "2024-01-01T00:00:00+00:00",
                        "busybox", "1", "x86_64")
    deb = TemplateRecord("debian-12", "/t/debian-12.toml", "/s/debian-12", 200_000_000, "2024-01-02")
    db.add_template(deb)
    db.add_template(bb)
    assert db.get_template("busybox") == bb
    assert [t.name for t in db.list_templates()] == ["busybox", "debian-12"]
    rebuilt = dataclasses.replace(bb, size=3_000_000, built_at="2024-02-01")
    db.add_template(rebuilt)  # a rebuild replaces the row
    assert db.get_template("busybox") == rebuilt and len(db.list_templates()) == 2
    db.delete_template("debian-12")
    assert db.list_templates() == [rebuilt]


def test_template_in_use(db: StateDB) -> None:
    db.add_instance(record(100, "a"))
    db.add_instance(record(101, "b", template="debian-12"))
    db.add_instance(record(102, "c"))
    assert sorted(db.template_in_use("busybox")) == ["a", "c"]
    assert db.template_in_use("debian-12") == ["b"]
    assert db.template_in_use("nothing") == []
