"""Reservations and the undo block of a new instance (used by ctd/instance/provision.py and
the kinds): names, ids and id ranges held until its row exists, and what a create, clone or
restore that fails half-way takes back.

`Reservations` holds what a request checked as free (a name, an instance id, an id range) in
memory until the work ends, so two concurrent requests never get the same one. `new_instance`
is the one block every maker of an instance uses: whatever it registered (storage made, row
added with its addresses) is taken back if the body raises, the `.creating` marker tells a
restarted ctd to drop a half-made one, and the reservation is released in any case.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from ctd import idmap, validate
from ctd.config import DaemonConfig
from ctd.errors import Conflict
from ctd.network.manager import NetworkManager, NicRequest
from ctd.state import InstanceRecord, StateDB
from ctd.storage.base import StorageDriver

FIRST_AUTO_ID = 100
CREATING = ".creating"  # in an instance's storage dir until create/clone has set up its guest


class Reservations:
    """Names, ids and id ranges held for instances whose row does not exist yet."""

    def __init__(self, config: DaemonConfig, db: StateDB) -> None:
        self.config = config
        self.db = db
        self._names: set[str] = set()
        self._ids: set[int] = set()
        self._bases: dict[int, int] = {}  # instance id -> its id range, until its row exists
        # In a cluster: the ids other nodes' instances have (ctd/cluster/node.py sets it), so that
        # an id chosen here is free cluster-wide; the cluster's transaction has the last word.
        self.foreign_ids: Callable[[], set[int]] = set
        # and the id ranges (start, size) other nodes' containers have, as of the last look
        # (published, not claimed: docs/cluster.md, "One namespace")
        self.foreign_ranges: Callable[[], list[tuple[int, int]]] = list

    def reserve(self, name: str, instance_id: int | None, hint: str, moving_in: bool = False) -> int:
        """Hold a name and an id (the given one or the lowest free from 100) for a new instance
        until release(); a taken one is a Conflict. moving_in: an instance migrating here keeps
        its id, which the cluster knows as its source node's (ctd/cluster/migrate_receive.py)."""
        if self.db.get_instance(name) or name in self._names:
            raise Conflict(f"an instance named {name!r} already exists; {hint}")
        foreign = set() if moving_in else self.foreign_ids()
        taken = self.db.used_ids() | self._ids | foreign
        if instance_id is None:
            instance_id = next(i for i in range(FIRST_AUTO_ID, validate.MAX_INSTANCE_ID) if i not in taken)
        elif instance_id in taken:
            where = " in the cluster (by another node's instance)" if instance_id in foreign else ""
            raise Conflict(f"id {instance_id} is taken{where}; choose another or leave it out")
        self._names.add(name)
        self._ids.add(instance_id)
        return instance_id

    def name_taken(self, name: str) -> bool:
        """An instance has this name, or a create in progress holds it."""
        return self.db.get_instance(name) is not None or name in self._names

    def reserve_idmap(self, instance_id: int, privileged: bool) -> int | None:
        """A free id range for a new instance, held in memory until its row exists (two
        concurrent creates must not get the same one)."""
        if privileged:
            return None
        base = idmap.allocate(self.config.idmap_base, self.config.idmap_size,
                              self.db.used_idmap_bases() | set(self._bases.values()),
                              idmap.subid_ranges(Path("/etc/subuid"), Path("/etc/subgid")) + self.foreign_ranges(),
                              self.config.idmap_limit)
        self._bases[instance_id] = base
        return base

    def release(self, name: str, instance_id: int) -> None:
        """What a check reserved, once the work is done or failed."""
        self._names.discard(name)
        self._ids.discard(instance_id)
        self._bases.pop(instance_id, None)


class NewInstance:
    """What one create/clone/restore has made so far; undone (newest first) unless commit()."""

    def __init__(self, storage: StorageDriver, db: StateDB, network: NetworkManager, name: str,
                 undo: contextlib.ExitStack, project: str = "default") -> None:
        self.storage, self.db, self.network, self.name = storage, db, network, name
        self.project = project
        self._undo = undo
        self._marker: Path | None = None

    def storage_made(self) -> None:
        """Its storage exists (or is being made): deleted again on failure."""
        self._undo.callback(self.storage.delete_instance, self.name)

    def mark_creating(self) -> None:
        """The marker recover() looks for: a ctd that dies before commit() drops this instance."""
        self._marker = self.storage.instance_path(self.name) / CREATING
        self._marker.touch()

    def add_record(self, rec: InstanceRecord, nics: list[NicRequest]) -> None:
        """Its row (in the project the request named) and its NICs' addresses in one
        transaction; the row goes again on failure."""
        rec.project = self.project
        with self.db.transaction():
            self.db.add_instance(rec)
            self.network.allocate(rec.id, nics)
        self._undo.callback(self.db.delete_instance, rec.id)

    def commit(self) -> None:
        """Done: the marker goes and nothing is undone any more."""
        if self._marker is not None:
            self._marker.unlink()
        self._undo.pop_all()


@contextlib.contextmanager
def new_instance(reservations: Reservations, storage: StorageDriver, db: StateDB, network: NetworkManager,
                 name: str, instance_id: int, project: str = "default") -> Iterator[NewInstance]:
    """The undo block of a new instance; its name and id are released at the end either way."""
    try:
        with contextlib.ExitStack() as undo:
            yield NewInstance(storage, db, network, name, undo, project)
    finally:
        reservations.release(name, instance_id)
