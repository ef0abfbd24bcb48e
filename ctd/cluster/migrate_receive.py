"""The target node's side of a container migration (docs/cluster.md, "Migration").

The source node (ctd/cluster/migrate.py) drives it over mutual TLS, as the member it is
(`certificate:node:SOURCE`; nobody else may):

    begin    the backup-style header (validate_header, then restore_plan: the same checks as a
             restore, nothing in it trusted) and the instance's id; the name and id are held here
             and a staging directory STORAGE/.restore-NAME-migrate-XXXX made (0700)
    round    one btrfs send stream (the first full, each next one `send -p` of the previous):
             received through the backup's StreamCheck into staging/.received, checked to name
             exactly the previous round's subvolume as its parent; the previous one is deleted.
             The first rounds are the instance's snapshots, oldest first, as begin named them
             (each name checked as a snapshot's): each is kept as staging/snapshots/NAME
             (read-only, device-node placeholders removed); the rounds after are the root's
    finish   the last subvolume snapshotted writable as the instance's root, device-node
             placeholders removed, its row and NICs (addresses and MACs as they were) added,
             started if it ran on the source
    abort    everything of the migration removed (after a finish too: the instance destroyed)

A failed round aborts the whole migration here at once: nothing is left (no subvolume, no row,
no cgroup). The staging directory has the restore prefix, so a ctd killed meanwhile removes it
at its next start (backup.discard_partial). The etcd keys are not touched here: the source
moves them in one transaction once this node has the instance (ctd/cluster/migrate.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctd.cluster import keys, placement
from ctd.errors import Conflict, CtdError, Forbidden, InvalidRequest, NotFound, NotSupported
from ctd.events.model import Lifecycle
from ctd.instance import snapshots
from ctd.instance.restore_plan import RestorePlan, plan_restore
from ctd.limits import human_size
from ctd.network.nics import NicRequest
from ctd.project import model
from ctd.state import InstanceRecord, InstanceType
from ctd.storage import backup
from ctd.storage.archive.checks import Space
from ctd.storage.backup.btrfs_io import btrfs_of, drop_placeholders, receive
from ctd.storage.backup.format import RESTORE_PREFIX
from ctd.storage.backup.restore import _move_into_place
from ctd.storage.backup.sendstream import Link, StreamCheck
from ctd.storage.base import SNAPSHOTS, unique_suffix

if TYPE_CHECKING:
    from ctd.api.context import ApiContext
    from ctd.storage.archive.streams import Readable
    from ctd.storage.btrfs import BtrfsStorage

log = logging.getLogger("ctd.cluster.migrate")

MAX_ROUNDS = 20   # the source sends at most a few (after the snapshots); more is a confused or hostile peer
MAX_SNAPSHOTS = 64   # snapshots a migration may bring (the source's migrate.MAX_SNAPSHOTS)
CLEANUP_TRIES, CLEANUP_PAUSE = 6, 1.0
IDLE_LIMIT, IDLE_CHECK = 300, 10.0   # seconds: a source silent that long between requests is gone
_CLEANING: set[asyncio.Task[None]] = set()   # background aborts (a reference keeps each task alive)


@dataclass
class Incoming:
    """One migration arriving here, between begin and finish/abort."""

    id: str
    source: str               # the member node sending it
    name: str
    instance_id: int
    project: str
    plan: RestorePlan
    staging: Path
    nonce: bytes
    max_bytes: int | None
    link: Link | None = None      # what the next round's stream must name as its parent
    received: Path | None = None  # the last round's read-only subvolume
    dropped: int = 0              # mknod commands turned into placeholders so far
    rounds: int = 0
    busy: bool = False
    rec: InstanceRecord | None = None   # after finish: the instance made here
    snapshots: list[str] = field(default_factory=list)   # the first rounds are these snapshots, oldest first
    hold: str = ""            # the project's hold (ProjectManager.admit_new) until the migration ends
    touched: float = field(default_factory=time.monotonic)   # the source's last request

    @property
    def recv(self) -> Path:
        return self.staging / ".received"


# This daemon's migrations under way, by id (one ctd per process).
INCOMING: dict[str, Incoming] = {}


def _session(sid: str, source: str) -> Incoming:
    found = INCOMING.get(sid)
    if found is None or found.source != source:
        raise NotFound(f"no migration {sid} from node {source} is under way here (it was aborted or finished)")
    found.touched = time.monotonic()
    return found


def _bt(c: ApiContext) -> BtrfsStorage:
    bt = btrfs_of(c.instances.storage)
    if bt is None:
        raise NotSupported(f"this node's storage is {c.instances.storage.name}: containers migrate between nodes "
                           "with btrfs storage only (btrfs send/receive)")
    return bt


def begin(c: ApiContext, source: str, body: dict[str, Any]) -> Incoming:
    """Check the header like a restore's and hold the name and id here."""
    bt = _bt(c)
    header = backup.validate_header(body.get("header"))
    if header.get("type") != "container" or header["driver"] != "btrfs-send" or header.get("kind") != "full":
        raise InvalidRequest("a container migrates as a full btrfs-send stream with its header")
    plan = plan_restore(c.instances.ctx, header, {"privileged": bool(header.get("meta", {}).get("privileged"))})
    plan = dataclasses.replace(plan, nics=_with_macs(c, _nics(c, header.get("meta", {}).get("nics")), body.get("macs")))
    instance_id = body.get("id")
    if not isinstance(instance_id, int) or isinstance(instance_id, bool) or instance_id <= 0:
        raise InvalidRequest("migration: id must be the instance's numeric id")
    project = body.get("project", "default")
    if not isinstance(project, str) or c.projects.store.get(project) is None and project != "default":
        raise InvalidRequest(f"migration: project {str(project)[:60]!r} does not exist on this node; "
                             "make it here first")
    snaps = _snapshot_names(body.get("snapshots"))
    usage = body.get("usage", 0)
    if isinstance(usage, bool) or not isinstance(usage, int) or not 0 <= usage < (1 << 62):
        raise InvalidRequest("migration: usage must be the root's disk use in bytes")
    check_room(c, plan, usage)
    c.projects.check_instance_name(plan.name, project)
    c.instances.reservations.reserve(plan.name, instance_id, "it exists on this node already", moving_in=True)
    try:   # the project's limits here, as for a restore (the snapshots count too); held until the end
        hold = c.projects.admit_new(project, instance_id, model.instance_usage(
            plan.limits, addresses=c.projects.nic_addresses(plan.nics), snapshots=len(snaps)), plan.limits)
    except BaseException:
        c.instances.release(plan.name, instance_id)
        raise
    staging = bt.root / f"{RESTORE_PREFIX}{plan.name}-migrate-{unique_suffix()}"
    try:
        staging.mkdir(mode=0o700)
        (staging / ".received").mkdir(mode=0o700)
    except OSError as exc:
        c.instances.release(plan.name, instance_id)
        c.projects.release(hold)
        with contextlib.suppress(CtdError):
            bt._remove_root(staging)
        raise Conflict(f"could not make {staging}: {exc.strerror}") from None
    quota = plan.limits.get("diskspace")
    inc = Incoming(secrets.token_hex(16), source, plan.name, instance_id, project, plan, staging,
                   os.urandom(16).hex().encode(), quota if quota and quota > 0 else None, snapshots=snaps,
                   hold=hold)
    INCOMING[inc.id] = inc
    watchdog = asyncio.get_running_loop().create_task(_watch(c, inc))
    _CLEANING.add(watchdog)
    watchdog.add_done_callback(_CLEANING.discard)
    log.info("migration %s of %s from node %s: begun", inc.id, inc.name, source)
    return inc


def check_room(c: ApiContext, plan: RestorePlan, usage: int) -> None:
    """Room here as placement counts it (ctd/cluster/placement.py): the RAM limit within what is
    free and not promised, the CPUs, the disk limit or the root's disk use, whichever is more,
    within the pool's free space not promised. A 409 before a byte is copied."""
    from ctd.cluster.node import node_stats  # here: cluster mode only
    cluster = c.cluster
    if cluster is None:
        return
    asked = placement.needs_of(plan.limits)
    needs = dataclasses.replace(asked, disk=max(asked.disk, usage))   # a diskspace limit, or what it uses
    room = placement.room_of(cluster.name, node_stats(cluster.settings.storage_root), cluster.local_views())
    lacks = room.lacks(needs)
    if lacks:
        used = f" (its root uses {human_size(-(-usage >> 20) << 20)})" if usage > asked.disk else ""
        raise Conflict(f"node {cluster.name} has no room for {plan.name} ({asked.text()}){used}: it has {lacks}; "
                       "free room there or migrate to another node")


async def _watch(c: ApiContext, inc: Incoming) -> None:
    """A source that went away between two requests (killed, cut off): its migration is
    aborted here after IDLE_LIMIT without a request, so nothing stays behind."""
    while INCOMING.get(inc.id) is inc:
        await asyncio.sleep(IDLE_CHECK)
        if INCOMING.get(inc.id) is inc and not inc.busy and time.monotonic() - inc.touched > IDLE_LIMIT:
            if inc.rec is not None and await _ours(c, inc):   # the source switched, then went silent
                done(inc)
                return
            log.warning("migration %s of %s: no word from node %s for %d s; aborting it", inc.id, inc.name,
                        inc.source, IDLE_LIMIT)
            await abort(c, inc)


def _nics(c: ApiContext, raw: Any) -> list[NicRequest]:
    """The NICs as they were, addresses included (a restore gives new ones): checked as a
    create's; a NIC on a network this node lacks refuses the migration (it must not vanish).
    Their MACs follow from the instance's id, which the migration keeps (nics.mac_for)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidRequest("migration: the header's nics must be a list")
    wanted = []
    for index, nic in enumerate(raw, 1):
        if not isinstance(nic, dict):
            raise InvalidRequest(f"migration: NIC {index} is not an object")
        network, rate = nic.get("network"), nic.get("rate")
        if network is not None and (not isinstance(network, str) or c.db.get_network(network) is None):
            raise InvalidRequest(f"migration: NIC {index} is on network {str(network)[:60]!r}, which this node lacks; "
                                 "create it here (same subnet) first")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int)):
            raise InvalidRequest(f"migration: NIC {index}: invalid rate {rate!r}")
        wanted.append({k: v for k, v in {"network": network, "mode": nic.get("mode", "bridged"),
                                          "addresses": nic.get("addresses", []), "filter": nic.get("filter", True),
                                          "rate": f"{rate}bit" if rate is not None else None,
                                          "mtu": nic.get("mtu"), "vlan": nic.get("vlan")}.items()
                       if v is not None})
    return c.network.check_nics(wanted)


def _snapshot_names(raw: Any) -> list[str]:
    """The snapshots that come first, oldest first: each a valid snapshot name, none twice, at
    most MAX_SNAPSHOTS (the source refuses more)."""
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_SNAPSHOTS:
        raise InvalidRequest(f"migration: snapshots must be a list of at most {MAX_SNAPSHOTS} snapshot names")
    names = [snapshots.check_name(name) for name in raw]
    if len(set(names)) != len(names):
        raise InvalidRequest("migration: a snapshot name is given twice")
    return names


MAC = re.compile(r"02(:[0-9a-f]{2}){5}")   # ctd's locally administered unicast MACs (nics.mac_for)


def _with_macs(c: ApiContext, nics: list[NicRequest], raw: Any) -> list[NicRequest]:
    """The NICs keep the MACs they had on the source (the cluster's keys for them move with the
    instance); each one checked: ctd's form, one per NIC, none in use on this node."""
    if raw is None:
        return nics
    if not isinstance(raw, list) or len(raw) != len(nics):
        raise InvalidRequest(f"migration: macs must be a list with one MAC per NIC ({len(nics)})")
    used = c.db.used_macs()
    for nic, mac in zip(nics, raw, strict=True):
        if not isinstance(mac, str) or not MAC.fullmatch(mac) or mac in used or raw.count(mac) > 1:
            raise InvalidRequest(f"migration: MAC {str(mac)[:40]!r} is not a ctd MAC free on this node")
        nic.mac = mac
    return nics


def receive_round(bt: BtrfsStorage, inc: Incoming, data: Readable) -> int:
    """One stream into inc.recv, checked against the previous round (runs in a thread). Returns
    the round's number."""
    label = f"migration of {inc.name} from {inc.source}, round {inc.rounds}"
    check = StreamCheck(label, Space(inc.recv, inc.max_bytes), parent=inc.link, nonce=inc.nonce)
    got = receive(bt, data, inc.recv, label, check)
    if inc.rounds < len(inc.snapshots):
        _keep_snapshot(bt, inc, got, inc.dropped + check.dropped)
    if inc.received is not None:
        bt._remove_root(inc.received)
    inc.link, inc.received, inc.dropped = check.link, got, inc.dropped + check.dropped
    inc.rounds += 1
    return inc.rounds


def _keep_snapshot(bt: BtrfsStorage, inc: Incoming, got: Path, dropped: int) -> None:
    """A snapshot round: what it received kept as staging/snapshots/NAME, read-only as a
    snapshot taken here is, without the placeholders of device nodes. A writable copy is
    cleaned, then made read-only (a copy, so the received subvolume stays the next round's
    parent, and has no received UUID that btrfs receive could take for that parent)."""
    from ctd.storage.btrfs.lib import btrfsutil, errors
    name = inc.snapshots[inc.rounds]
    base = inc.staging / SNAPSHOTS
    base.mkdir(mode=0o700, exist_ok=True)
    staged = base / f".new-{name}"
    with errors(f"keeping snapshot {name} of {inc.name}"):
        btrfsutil.create_snapshot(got, staged, read_only=False)
    try:
        drop_placeholders(staged, inc.nonce, f"{inc.name}'s snapshot {name}", dropped)
        with errors(f"keeping snapshot {name} of {inc.name}"):
            btrfsutil.set_subvolume_read_only(staged, True)
        staged.rename(base / name)
    except BaseException:
        bt._remove_root(staged)
        raise


def _materialize(bt: BtrfsStorage, inc: Incoming) -> None:
    """The last received subvolume made the instance's writable root, moved into place."""
    from ctd.storage.btrfs.lib import btrfsutil, errors
    assert inc.received is not None
    with errors(f"snapshotting {inc.received}"):
        btrfsutil.create_snapshot(inc.received, inc.staging / "rootfs", read_only=False)
    bt._remove_root(inc.recv)
    drop_placeholders(inc.staging / "rootfs", inc.nonce, inc.name, inc.dropped)
    _move_into_place(bt, inc.staging, inc.name)


async def finish(c: ApiContext, inc: Incoming, start: bool) -> dict[str, Any]:
    """The instance made here from the last round; started when it ran on the source."""
    if inc.received is None or inc.rounds <= len(inc.snapshots):
        raise Conflict(f"migration {inc.id}: the instance's root was not received yet (only {inc.rounds} of its "
                       f"{len(inc.snapshots)} snapshot(s) and root)")
    bt, plan, instances = _bt(c), inc.plan, c.instances
    with instances.new_instance(inc.name, inc.instance_id, inc.project) as new:
        base = instances.reserve_idmap(inc.instance_id, plan.privileged)
        rec = InstanceRecord(
            id=inc.instance_id, name=inc.name, type=InstanceType.CONTAINER, template=plan.template,
            hostname=plan.hostname, privileged=plan.privileged, idmap_base=base, limits=plan.limits,
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            init=plan.init, stop_signal=plan.stop_signal, options=plan.options,
            description=plan.description, tags=plan.tags)
        await asyncio.to_thread(_materialize, bt, inc)
        new.storage_made()
        if "diskspace" in rec.limits:
            await asyncio.to_thread(bt.set_quota, inc.name, rec.limits["diskspace"])
        new.mark_creating()
        new.add_record(rec, plan.nics)
        await asyncio.to_thread(instances.setup_guest, rec, bt.rootfs(inc.name))
        new.commit()
    inc.rec = rec
    c.projects.release(inc.hold)   # its row counts now
    instances.emit(rec, Lifecycle.CREATED, via="migrate", source=inc.source)
    if start:
        await instances.start(instances.get(rec.id))
    # no poke of the cluster here: the keys are still the source's until its switch ("done" pokes)
    return instances.brief(instances.get(rec.id))


async def abort(c: ApiContext, inc: Incoming) -> None:
    """Everything this migration made here goes (the instance too, after a finish)."""
    INCOMING.pop(inc.id, None)
    c.projects.release(inc.hold)
    if inc.rec is not None:
        with contextlib.suppress(NotFound):
            await c.instances.destroy(c.instances.get(inc.rec.id), force=True)
    else:
        c.instances.release(inc.name, inc.instance_id)
    for attempt in range(CLEANUP_TRIES):
        try:
            if inc.staging.exists():
                await asyncio.to_thread(_bt(c)._remove_root, inc.staging)
            break
        except (CtdError, OSError) as exc:   # a full pool can fail even the removal's bookkeeping
            log.warning("migration %s: removing %s failed (%s); trying again", inc.id, inc.staging, exc)
            await asyncio.sleep(CLEANUP_PAUSE * (attempt + 1))
    else:
        log.error("migration %s: %s stays until ctd's next start removes it", inc.id, inc.staging)
    log.info("migration %s of %s from node %s: aborted, nothing kept", inc.id, inc.name, inc.source)


def abort_soon(c: ApiContext, inc: Incoming) -> None:
    """abort() in the background: the refusal goes back to the source at once, while a removal
    that must wait (a full pool) is retried here."""
    INCOMING.pop(inc.id, None)
    c.projects.release(inc.hold)
    task = asyncio.get_running_loop().create_task(abort(c, inc))
    _CLEANING.add(task)
    task.add_done_callback(_CLEANING.discard)


async def _ours(c: ApiContext, inc: Incoming) -> bool:
    """Whether etcd says the instance is this node's (the source's switch happened)."""
    if c.cluster is None:
        return False
    try:
        kv = await c.cluster.etcd.get(keys.instance(inc.name))
    except CtdError:
        return True   # cannot tell: keep the instance (destroying a copy that may be the only one is worse)
    return kv is not None and kv.json().get("node") == c.cluster.name


def done(inc: Incoming) -> None:
    """The source moved the instance's keys: it is this node's now."""
    INCOMING.pop(inc.id, None)
    log.info("migration %s of %s from node %s: done", inc.id, inc.name, inc.source)


def require_peer(identity_name: str) -> str:
    """The member node a request comes from (only members send migrations)."""
    if not identity_name.startswith("node:"):
        raise Forbidden("only another node of the cluster sends migrations (with its certificate); "
                        "use 'ctctl migrate NAME --to NODE' on the instance's node")
    return identity_name[len("node:"):]
