"""reserve.new_instance, the one undo block of create, clone and restore: what was made goes
again if the work fails half-way, the `.creating` marker goes with a finished one, and the
name and id are free again either way."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ctd.config import DaemonConfig
from ctd.errors import Conflict
from ctd.instance.reserve import CREATING, Reservations, new_instance
from ctd.state import InstanceRecord, InstanceType


class FakeDB:
    def __init__(self) -> None:
        self.rows: dict[int, InstanceRecord] = {}

    def get_instance(self, ref: str | int) -> InstanceRecord | None:
        return next((r for r in self.rows.values() if ref in (r.id, r.name)), None)

    def used_ids(self) -> set[int]:
        return set(self.rows)

    @contextlib.contextmanager
    def transaction(self) -> Any:
        yield

    def add_instance(self, rec: InstanceRecord) -> None:
        self.rows[rec.id] = rec

    def delete_instance(self, instance_id: int) -> None:
        self.rows.pop(instance_id, None)


class FakeStorage:
    def __init__(self, root: Path) -> None:
        self.root = root

    def instance_path(self, name: str) -> Path:
        return self.root / name

    def make(self, name: str) -> None:
        self.instance_path(name).mkdir()

    def delete_instance(self, name: str) -> None:
        path = self.instance_path(name)
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


def parts(tmp_path: Path) -> tuple[Reservations, FakeStorage, FakeDB, SimpleNamespace]:
    db = FakeDB()
    network = SimpleNamespace(allocated=[], allocate=lambda i, nics: network.allocated.append(i))
    return Reservations(DaemonConfig(state_dir=tmp_path), db), FakeStorage(tmp_path), db, network  # type: ignore[arg-type]


def record(name: str, instance_id: int) -> InstanceRecord:
    return InstanceRecord(id=instance_id, name=name, type=InstanceType.CONTAINER, template="busybox",
                          hostname=name, privileged=True, idmap_base=None)


def test_a_failure_half_way_takes_back_storage_and_row_and_frees_the_name(tmp_path: Path) -> None:
    reservations, storage, db, network = parts(tmp_path)
    instance_id = reservations.reserve("web", None, "choose another name")
    with pytest.raises(RuntimeError), new_instance(reservations, storage, db, network,  # type: ignore[arg-type]
                                                   "web", instance_id) as new:
        storage.make("web")
        new.storage_made()
        new.mark_creating()
        new.add_record(record("web", instance_id), [])
        raise RuntimeError("the guest could not be set up")
    assert not storage.instance_path("web").exists() and db.rows == {}
    assert reservations.reserve("web", instance_id, "x") == instance_id   # free again


def test_a_finished_one_keeps_all_and_drops_its_marker(tmp_path: Path) -> None:
    reservations, storage, db, network = parts(tmp_path)
    instance_id = reservations.reserve("web", 123, "choose another name")
    with pytest.raises(Conflict):
        reservations.reserve("web", None, "choose another name")   # held while it is made
    with new_instance(reservations, storage, db, network, "web", instance_id) as new:  # type: ignore[arg-type]
        storage.make("web")
        new.storage_made()
        new.mark_creating()
        assert (storage.instance_path("web") / CREATING).exists()
        new.add_record(record("web", instance_id), [])
        new.commit()
    assert storage.instance_path("web").is_dir() and not (storage.instance_path("web") / CREATING).exists()
    assert set(db.rows) == {123} and network.allocated == [123]
    with pytest.raises(Conflict, match="already exists"):
        reservations.reserve("web", None, "choose another name")   # now its row holds the name


def test_an_id_range_skips_the_ranges_other_nodes_published(tmp_path: Path) -> None:
    reservations, _, db, _ = parts(tmp_path)
    db.used_idmap_bases = set  # type: ignore[attr-defined]
    config = reservations.config
    first = reservations.reserve_idmap(1, privileged=False)
    assert first == config.idmap_base
    reservations.release("x", 1)
    # another node's containers have the first two ranges (published with their size)
    reservations.foreign_ranges = lambda: [(config.idmap_base, 2 * config.idmap_size)]
    assert reservations.reserve_idmap(2, privileged=False) == config.idmap_base + 2 * config.idmap_size
