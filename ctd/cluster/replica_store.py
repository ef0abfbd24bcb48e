"""Replicas this node keeps of other nodes' containers (docs/cluster.md, "Replication"): the
receiving side of ctd/cluster/replicate.py.

A replica is not an instance (no row, no name held here, not listed): STORAGE/.replicas/NAME
holds `state.json` (the generation, the link the next increment must name as its parent, the
device-node nonce, the backup-style header of the last round) and `snaps/r-GEN`, the received
read-only subvolumes (the last KEEP). Everything a sender gives is hostile input, as a
migration's is:

- the sender is a member node (its certificate identity `node:NAME`, require_peer) that etcd
  records as the instance's owner (/ctd/instances/NAME), and /ctd/replication/NAME names this
  node as the target; this node has no instance of that name;
- the header is checked as a restore's (validate_header, plan_restore) and must name the
  instance and the id etcd has;
- a round is announced (generation, parent) and then streamed: the stream goes through the
  backup's StreamCheck into `btrfs receive --chroot snaps/` (one subvolume, clones only from
  itself or the parent, no device nodes, the data within the pool's free space and the
  container's disk limit); an increment must name exactly the last generation kept as its
  parent, and the subvolume made must be r-GEN.

A failed round leaves the previous generations as they were. Failover turns the last
generation into an instance (ha.py, through migrate_receive's finish).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctd import validate
from ctd.cluster import keys
from ctd.cluster.replicate import GEN, KEEP, Replication
from ctd.errors import Conflict, CtdError, Forbidden, InvalidRequest, NotFound
from ctd.instance.restore_plan import plan_restore
from ctd.storage import backup
from ctd.storage.archive.checks import Space
from ctd.storage.backup.btrfs_io import btrfs_of, receive
from ctd.storage.backup.sendstream import Link, StreamCheck

if TYPE_CHECKING:
    from ctd.api.context import ApiContext
    from ctd.cluster.node import ClusterNode
    from ctd.storage.archive.streams import Readable
    from ctd.storage.btrfs import BtrfsStorage

log = logging.getLogger("ctd.cluster.replicate")

REPLICA_DIR = ".replicas"
MAX_GEN = 10 ** 9


@dataclass
class ReplicaState:
    """state.json of one replica."""

    name: str
    source: str
    instance_id: int
    project: str
    gen: int
    link: Link
    nonce: str
    dropped: int
    header: dict[str, Any]
    macs: list[str]
    at: float

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "id": self.instance_id, "project": self.project,
                "gen": self.gen, "link": {"uuid": self.link.uuid.hex(), "ctransid": self.link.ctransid.hex()},
                "nonce": self.nonce, "dropped": self.dropped, "header": self.header, "macs": self.macs,
                "at": self.at}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ReplicaState:
        link = raw["link"]
        return cls(str(raw["name"]), str(raw["source"]), int(raw["id"]), str(raw["project"]), int(raw["gen"]),
                   Link(bytes.fromhex(link["uuid"]), bytes.fromhex(link["ctransid"])), str(raw["nonce"]),
                   int(raw["dropped"]), dict(raw["header"]), [str(m) for m in raw.get("macs") or []],
                   float(raw["at"]))


@dataclass
class Pending:
    """A round announced by its sender, before its stream."""

    source: str
    gen: int
    parent: int | None
    instance_id: int
    project: str
    header: dict[str, Any]
    macs: list[str]
    max_bytes: int | None


PENDING: dict[str, Pending] = {}
BUSY: set[str] = set()   # replicas a stream is being received into (or made an instance of) now


def root(bt: BtrfsStorage) -> Path:
    return bt.root / REPLICA_DIR


def directory(bt: BtrfsStorage, name: str) -> Path:
    return root(bt) / validate.instance_name(name)


def load(bt: BtrfsStorage, name: str) -> ReplicaState | None:
    try:
        return ReplicaState.from_json(json.loads((directory(bt, name) / "state.json").read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("replica %s: state.json unreadable (%s); it is dropped at the next round", name, exc)
        return None


def _save(bt: BtrfsStorage, state: ReplicaState) -> None:
    path = directory(bt, state.name) / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.to_json()))
    os.replace(tmp, path)


def snapshot(bt: BtrfsStorage, state: ReplicaState) -> Path:
    return directory(bt, state.name) / "snaps" / f"r-{state.gen}"


def _bt(c: ApiContext) -> BtrfsStorage:
    bt = btrfs_of(c.instances.storage)
    if bt is None:
        raise Conflict(f"this node's storage is {c.instances.storage.name}: it keeps no replicas (btrfs only)")
    return bt


def _cluster(c: ApiContext) -> ClusterNode:
    if c.cluster is None or not c.cluster.member:
        raise Conflict("this ctd is no member of a cluster: it keeps no replicas")
    return c.cluster


async def check_sender(c: ApiContext, source: str, name: str) -> tuple[int, Replication]:
    """The sender owns the instance per etcd, and its replication names this node: (id, settings)."""
    cluster = _cluster(c)
    name = validate.instance_name(name)
    owner = await cluster.etcd.get(keys.instance(name))
    settings_kv = await cluster.etcd.get(keys.replication(name))
    settings = Replication.from_json(settings_kv.json()) if settings_kv is not None else None
    value = owner.json() if owner is not None else {}
    if value.get("node") != source or not isinstance(value.get("id"), int):
        raise Forbidden(f"node {source} does not own {name} in the cluster: it may not send replicas of it")
    if settings is None or settings.target != cluster.name:
        raise Forbidden(f"{name} is not replicated to this node ({cluster.name}); set it with "
                        f"'ctctl set {name} --replicate-to {cluster.name}'")
    if c.db.get_instance(name) is not None:
        raise Conflict(f"this node has an instance named {name}: it keeps no replica of another node's")
    return int(value["id"]), settings


async def held(c: ApiContext, source: str, name: str) -> dict[str, Any]:
    """GET /1.0/cluster/replicas/NAME (the sender only): the generation kept, if any."""
    await check_sender(c, source, name)
    state = load(_bt(c), name)
    return {"name": name, "generation": state.gen if state is not None and state.source == source else None}


async def announce(c: ApiContext, source: str, name: str, gen: Any, parent: Any, body: Any) -> None:
    """POST /1.0/cluster/replicas/NAME?gen=N[&parent=P]: a round's header, checked."""
    bt = _bt(c)
    instance_id, _ = await check_sender(c, source, name)
    gen_n, parent_n = _number(gen, "gen"), None if parent is None else _number(parent, "parent")
    body = validate.body_fields(body, {"header", "id", "project", "macs"}, {"header", "id"})
    header = backup.validate_header(body["header"])
    if header.get("type") != "container" or header["driver"] != "btrfs-send" or header.get("name") != name:
        raise InvalidRequest(f"a replica of {name} comes as a container's btrfs-send header naming it")
    if body["id"] != instance_id:
        raise InvalidRequest(f"replica of {name}: id {str(body['id'])[:20]} is not the id the cluster records")
    project = body.get("project", "default")
    macs = body.get("macs") or []
    if not isinstance(project, str) or not isinstance(macs, list) or not all(isinstance(m, str) for m in macs) \
            or len(macs) > 64:
        raise InvalidRequest(f"replica of {name}: project must be a name and macs a list of MACs")
    plan = plan_restore(c.instances.ctx, header, {"privileged": bool(header.get("meta", {}).get("privileged"))})
    state = load(bt, name)
    have = state.gen if state is not None and state.source == source else None
    if parent_n is not None and parent_n != have:
        raise Conflict(f"replica of {name}: this node keeps generation {have}, not {parent_n}; send it in full")
    if have is not None and gen_n <= have:
        raise Conflict(f"replica of {name}: generation {gen_n} is not newer than the {have} kept here")
    if name in BUSY:
        raise Conflict(f"replica of {name}: a round is being received already")
    quota = plan.limits.get("diskspace")
    PENDING[name] = Pending(source, gen_n, parent_n, instance_id, project, dict(header), list(macs),
                            quota if quota and quota > 0 else None)


def _number(raw: Any, what: str) -> int:
    if not isinstance(raw, str) or not raw.isdigit() or not 0 < int(raw) < MAX_GEN:
        raise InvalidRequest(f"{what} must be a generation number")
    return int(raw)


def claim(source: str, name: str) -> Pending:
    """The announced round of `name` from `source`, its receive begun (one at a time)."""
    pending = PENDING.get(name)
    if pending is None or pending.source != source:
        raise NotFound(f"no round of {name} from node {source} was announced here")
    if name in BUSY:
        raise Conflict(f"replica of {name}: a round is being received already")
    BUSY.add(name)
    del PENDING[name]
    return pending


def receive_round(bt: BtrfsStorage, name: str, pending: Pending, data: Readable) -> ReplicaState:
    """The stream into snaps/ (runs in a thread, after claim); the state saved when it is in."""
    place = directory(bt, name)
    snaps = place / "snaps"
    state = load(bt, name)
    if pending.parent is None:   # a full round: the old chain (another source's, or lost) goes after
        state = None
    elif state is None or state.gen != pending.parent:
        raise Conflict(f"replica of {name}: its parent generation {pending.parent} is gone")
    snaps.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root(bt), 0o700)
    label = f"replica of {name} from {pending.source}, generation {pending.gen}"
    nonce = state.nonce if state is not None else os.urandom(16).hex()
    check = StreamCheck(label, Space(snaps, pending.max_bytes), parent=state.link if state else None,
                        nonce=nonce.encode())
    before = set(snaps.iterdir())
    try:
        got = receive(bt, data, snaps, label, check)
        if got.name != f"r-{pending.gen}":
            raise InvalidRequest(f"{label}: the stream made {got.name[:40]!r}, not r-{pending.gen}")
    except BaseException:   # what this round made goes; the generations kept stay
        for path in set(snaps.iterdir()) - before:
            with contextlib.suppress(CtdError, OSError):
                bt._remove_root(path)
        raise
    new = ReplicaState(name, pending.source, pending.instance_id, pending.project, pending.gen, check.link, nonce,
                       (state.dropped if state else 0) + check.dropped, pending.header, pending.macs, time.time())
    _save(bt, new)
    keep = {f"r-{new.gen}"} | ({f"r-{pending.parent}"} if pending.parent is not None and KEEP > 1 else set())
    for path in snaps.iterdir():
        if path.name not in keep and GEN.fullmatch(path.name):
            bt._remove_root(path)
    return new


async def publish(c: ApiContext, state: ReplicaState) -> None:
    from ctd.cluster.etcd import put_json  # a standalone ctd never loads the etcd client
    cluster = _cluster(c)
    await cluster.etcd.txn([], [put_json(keys.replica(state.name), {"node": cluster.name, "source": state.source,
                                                                    "gen": state.gen, "at": state.at})])


def drop(bt: BtrfsStorage, name: str) -> None:
    """A replica and everything of it (its subvolumes, its state)."""
    place = directory(bt, name)
    snaps = place / "snaps"
    if snaps.is_dir():
        for path in snaps.iterdir():
            bt._remove_root(path)
    (place / "state.json").unlink(missing_ok=True)
    (place / "state.tmp").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        snaps.rmdir()
    with contextlib.suppress(OSError):
        place.rmdir()


async def collect(c: ApiContext) -> list[str]:
    """Replicas kept here that no replication names this node for any more (stopped, moved to
    another target) or whose instance is this node's now: dropped. Returns their names."""
    bt = btrfs_of(c.instances.storage)
    cluster = c.cluster
    if bt is None or cluster is None or not cluster.member or not root(bt).is_dir():
        return []
    dropped = []
    for path in list(root(bt).iterdir()):
        name = path.name
        if name in BUSY:
            continue
        kv = await cluster.etcd.get(keys.replication(name))
        settings = Replication.from_json(kv.json()) if kv is not None else None
        if settings is not None and settings.target == cluster.name and c.db.get_instance(name) is None:
            continue
        try:
            await asyncio.to_thread(drop, bt, name)
        except (CtdError, OSError) as exc:
            log.error("replica %s could not be removed: %s", name, exc)
            continue
        mine = await cluster.etcd.get(keys.replica(name))
        if mine is not None and mine.json().get("node") == cluster.name:
            await cluster.etcd.delete(keys.replica(name))
        dropped.append(name)
        log.info("replica %s dropped: it is not replicated to this node any more", name)
    return dropped


def local(c: ApiContext) -> list[dict[str, Any]]:
    """The replicas on this node's disk."""
    bt = btrfs_of(c.instances.storage)
    if bt is None or not root(bt).is_dir():
        return []
    out = []
    for path in sorted(root(bt).iterdir()):
        with contextlib.suppress(InvalidRequest):
            state = load(bt, path.name)
            if state is not None:
                out.append({"name": state.name, "id": state.instance_id, "source": state.source,
                            "generation": state.gen, "at": state.at})
    return out
