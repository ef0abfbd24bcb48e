"""`ctctl migrate NAME --to NODE` for containers: the source node's side (docs/cluster.md,
"Migration"; the target's is ctd/cluster/migrate_receive.py).

The container's root (a btrfs subvolume) goes to the target as btrfs send streams over the
nodes' mutual-TLS HTTPS (the target pins nothing new: peer.py's pinning, the member records in
etcd), its settings (limits, NICs with addresses and MACs, tags, flags) as a backup-style header
that the target checks as it checks a restore's. A stopped container: one full stream. A running
one: a full stream while it runs, then incremental ones (`send -p` of the previous read-only
snapshot) while what changed is more than SMALL_DELTA (at most LIVE_ROUNDS), then it is stopped,
a last incremental goes, and the target starts it. The downtime is from the stop to "started on
the target", measured here.

The instance's keys in etcd (its name and id) move to the target in one transaction, which
compares them unchanged since the start; only then does this node delete its copy. Anything that
fails before that transaction aborts the migration on the target (which then has nothing: no
subvolume, row, cgroup) and starts the container here again if it ran.

Process state does not move: the container's processes start afresh on the target (true live
migration needs CRIU, which Debian 12 does not ship in a working version).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import http.client
import json
import logging
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctd.cluster import keys
from ctd.cluster.migrate_receive import MAX_SNAPSHOTS  # each snapshot is one stream; the target takes no more
from ctd.cluster.peer import TIMEOUT, PeerReply, _Pinned, call, client_context
from ctd.errors import Conflict, CtdError, InvalidRequest, NotFound, NotSupported, OperationFailed, Unavailable
from ctd.state import InstanceRecord, InstanceType, PowerState
from ctd.storage.backup.btrfs_io import btrfs_of
from ctd.storage.backup.format import BACKUP_PREFIX, FORMAT, VERSION
from ctd.storage.base import unique_suffix

if TYPE_CHECKING:
    import ssl

    from ctd.api.context import ApiContext
    from ctd.cluster.node import ClusterNode
    from ctd.operations import Operation
    from ctd.storage.btrfs import BtrfsStorage

log = logging.getLogger("ctd.cluster.migrate")

SMALL_DELTA = 4 << 20   # an incremental stream this small is sent again after the stop: the downtime's part
LIVE_ROUNDS = 5         # incremental rounds while it runs, at most (a guest writing fast never converges)
BASE = "/1.0/cluster/migrations"


@dataclass(frozen=True)
class Target:
    node: str
    address: str
    fingerprint: str
    context: ssl.SSLContext

    async def json(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = await asyncio.to_thread(call, self.address, self.fingerprint, self.context, method, path,
                                        None if body is None else json.dumps(body).encode(), "application/json")
        return _answer(self.node, reply)

    async def stream(self, path: str, argv: list[str]) -> tuple[dict[str, Any], int]:
        return await asyncio.to_thread(_send_stream, self, path, argv)


def _answer(node: str, reply: PeerReply) -> dict[str, Any]:
    try:
        data = json.loads(reply.body or b"{}")
    except ValueError:
        data = {}
    if reply.status >= 400:
        said = data.get("error") if isinstance(data, dict) else None
        message = f"node {node} refused the migration: {said or reply.status}"
        raise Conflict(message) if reply.status == 409 else OperationFailed(message)
    return data if isinstance(data, dict) else {}


class _Counting:
    """btrfs send's output as the request body, counted (what a round sent)."""

    def __init__(self, raw: Any) -> None:
        self.raw, self.count = raw, 0

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.raw.read(n)
        self.count += len(data)
        return data


def put_body(target: Target, path: str, body: Any, chunked: bool = False) -> PeerReply:
    """A streamed body (a file-like object or an iterator of bytes) PUT to the target over its
    pinned TLS, and its reply (blocking: run in a thread). A target that answers before reading
    it all (a refusal) is heard out: its answer says why."""
    url = urllib.parse.urlsplit(target.address)
    conn = _Pinned(url.hostname or "", url.port or 8443, target.fingerprint, target.context, TIMEOUT)
    conn.blocksize = 1 << 20
    try:
        try:
            conn.request("PUT", path, body, {"Content-Type": "application/octet-stream"}, encode_chunked=chunked)
        except OSError as exc:
            if conn.sock is None:   # no connection at all
                raise Unavailable(f"node {target.node} did not answer during the migration ({exc})") from None
        try:
            resp = conn.getresponse()
            return PeerReply(resp.status, resp.read(), resp.getheader("Content-Type") or "")
        except (OSError, AttributeError, http.client.HTTPException) as exc:
            raise Unavailable(f"node {target.node} did not answer during the migration ({exc})") from None
    finally:
        conn.close()


def _send_stream(target: Target, path: str, argv: list[str]) -> tuple[dict[str, Any], int]:
    """`btrfs send` straight into a chunked PUT to the target (blocking: run in a thread)."""
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise OperationFailed("the btrfs command is missing; install btrfs-progs") from None
        assert proc.stdout is not None
        body = _Counting(proc.stdout)
        try:
            reply = put_body(target, path, body)
        finally:
            proc.stdout.close()
            if proc.poll() is None:
                proc.kill()
            rc = proc.wait()
        answer = _answer(target.node, reply)
        if rc != 0:
            err.seek(0)
            raise OperationFailed(f"btrfs send failed: {err.read().decode(errors='replace').strip()}")
    return answer, body.count


async def target_of(cluster: ClusterNode, node: str) -> Target:
    """The member to migrate to: online, with HTTPS; this node needs its certificate too."""
    if node == cluster.name:
        raise InvalidRequest(f"the instance is on {node} already; name another node with --to")
    member = await cluster.etcd.get(keys.node(node))
    if member is None:
        raise NotFound(f"no node {node!r} in the cluster; 'ctctl cluster list' shows them")
    record = member.json()
    if not record.get("address") or not record.get("fingerprint") or cluster.settings.cert is None:
        raise Unavailable(f"migrating needs https_address on both nodes (this one and {node}): set it in ctd.toml")
    if await cluster.etcd.get(keys.alive(node)) is None:
        raise Unavailable(f"node {node} is offline; bring it back or choose another node")
    return Target(node, str(record["address"]), str(record["fingerprint"]), client_context(*cluster.settings.cert))


def check(c: ApiContext, rec: InstanceRecord) -> BtrfsStorage:
    """What can migrate (before the operation starts: refusals come back as the request's answer)."""
    if c.cluster is None or not c.cluster.member:
        raise Conflict("this node is no member of a cluster: there is nowhere to migrate to")
    if rec.type is not InstanceType.CONTAINER:
        raise NotSupported(f"{rec.name} is a VM: ctd/cluster/vm_migrate.py moves VMs")
    bt = btrfs_of(c.instances.storage)
    if bt is None:
        raise NotSupported(f"this node's storage is {c.instances.storage.name}: containers migrate between nodes "
                           "with btrfs storage only (btrfs send/receive)")
    if rec.state not in (PowerState.RUNNING, PowerState.STOPPED):
        raise Conflict(f"{rec.name} is {rec.state.value}: a container migrates when it is running or stopped")
    if len(c.instances.storage.list_snapshots(rec.name)) > MAX_SNAPSHOTS:
        raise Conflict(f"{rec.name} has more than {MAX_SNAPSHOTS} snapshots; delete some before migrating it")
    return bt


def snapshots_oldest_first(bt: BtrfsStorage, name: str) -> list[tuple[str, Path]]:
    """The container's snapshots (read-only subvolumes) by creation, oldest first: the
    order they are sent in, each an increment of the one before."""
    from ctd.storage.btrfs.lib import btrfsutil, errors
    found = []
    for snap in bt.list_snapshots(name):
        path = bt.snapshot_path(name, snap)
        with errors(f"reading snapshot {snap} of {name}"):
            info = btrfsutil.subvolume_info(path)
        # otransid: the transaction that made it (each snapshot commits one); otime alone has
        # whole seconds here, so two snapshots of one second would come in name order
        found.append(((info.otransid, info.otime), snap, path))
    return [(snap, path) for _, snap, path in sorted(found)]


class _Snapshots:
    """The read-only snapshots sent from (STORAGE/.backup-NAME-migrate-*: removed at ctd's start
    if it dies meanwhile, as a backup's are)."""

    def __init__(self, bt: BtrfsStorage, name: str) -> None:
        self.bt, self.name = bt, name
        self.made: list[Path] = []
        self.taken = 0
        self.stem = f"{BACKUP_PREFIX}{name}-migrate-{unique_suffix()}"

    def take(self) -> Path:
        from ctd.storage.btrfs.lib import btrfsutil, errors
        path = self.bt.root / f"{self.stem}-{self.taken}"
        self.taken += 1
        with errors(f"snapshotting {self.name} to migrate it"):
            btrfsutil.create_snapshot(self.bt.rootfs(self.name), path, read_only=True)
        self.made.append(path)
        return path

    def drop(self, path: Path) -> None:
        self.bt._remove_root(path)
        self.made.remove(path)

    def drop_all(self) -> None:
        for path in list(self.made):
            try:
                self.drop(path)
            except CtdError as exc:
                log.error("could not remove %s after a migration: %s", path, exc.message)


def header_of(c: ApiContext, rec: InstanceRecord) -> dict[str, Any]:
    """The backup-style header the target checks as a restore's."""
    return {"format": FORMAT, "version": VERSION, "type": "container", "driver": "btrfs-send",
            "member": "rootfs.btrfs", "name": rec.name, "kind": "full", "meta": c.transfers.meta(rec),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


async def _switch(cluster: ClusterNode, rec: InstanceRecord, node: str) -> None:
    """The instance's name and id keys become the target's, both or neither."""
    from ctd.cluster.etcd import Compare, put_json  # here: a standalone ctd never loads the etcd client
    name_key, id_key = keys.instance(rec.name), keys.instance_id(rec.id)
    name_kv, id_kv = await cluster.etcd.get(name_key), await cluster.etcd.get(id_key)
    if name_kv is None or name_kv.json().get("node") != cluster.name:
        raise Conflict(f"the cluster no longer records {rec.name} as this node's; the migration is undone")
    compare = [Compare.unchanged(name_key, name_kv.mod_revision),
               Compare.unchanged(id_key, id_kv.mod_revision) if id_kv is not None else Compare.missing(id_key)]
    result = await cluster.etcd.txn(compare, [put_json(name_key, {**name_kv.json(), "node": node}),
                                              put_json(id_key, {"node": node, "name": rec.name})])
    if not result.succeeded:
        raise Conflict(f"{rec.name}'s keys in etcd changed during the migration; it is undone")


MIGRATING: set[int] = set()   # ids of this node's instances being migrated (one migration each at a time)


def claim(rec: InstanceRecord) -> None:
    if rec.id in MIGRATING:
        raise Conflict(f"{rec.name} is being migrated already; wait for that operation")
    MIGRATING.add(rec.id)


@dataclass(frozen=True)
class Session:
    """A migration the target has accepted (begin): it checked the header, the project's limits
    and its room there, and holds the name and id; nothing is copied yet."""

    target: Target
    id: str
    bt: BtrfsStorage
    kept: list[tuple[str, Path]]   # the snapshots, oldest first (sent first)

    async def abort(self) -> None:
        with contextlib.suppress(CtdError):
            await self.target.json("DELETE", f"{BASE}/{self.id}")


async def begin(c: ApiContext, rec: InstanceRecord, node: str) -> Session:
    """Asks the target to take the instance (before the operation: its refusal, such as a 409
    for a project's limit or no room there, is the request's answer)."""
    assert c.cluster is not None
    bt = check(c, rec)
    target = await target_of(c.cluster, node)
    kept = await asyncio.to_thread(snapshots_oldest_first, bt, rec.name)
    begun = await target.json("POST", BASE, {"header": header_of(c, rec), "id": rec.id, "project": rec.project,
                                             # the NICs' MACs as they are (a cluster's claim may have salted them)
                                             "macs": [n.mac for n in c.db.nics_of(rec.id)],
                                             "snapshots": [snap for snap, _ in kept],
                                             "usage": await asyncio.to_thread(bt.usage, rec.name)})
    return Session(target, str(begun["migration"]["id"]), bt, kept)


async def migrate(c: ApiContext, rec: InstanceRecord, session: Session, op: Operation) -> dict[str, Any]:
    """The whole migration (the operation's work, after claim(rec) and begin()); its result says
    the rounds and the downtime."""
    try:
        return await _migrate(c, rec, session, op)
    finally:
        MIGRATING.discard(rec.id)


async def _migrate(c: ApiContext, rec: InstanceRecord, session: Session, op: Operation) -> dict[str, Any]:
    cluster, instances = c.cluster, c.instances
    assert cluster is not None
    target, sid, bt, kept = session.target, session.id, session.bt, session.kept
    node = target.node
    try:
        rec = instances.get(rec.id)
        check(c, rec)
    except BaseException:
        await session.abort()
        raise
    running = rec.state is PowerState.RUNNING
    snaps = _Snapshots(bt, rec.name)
    sizes: list[int] = []
    stopped = False
    downtime: float | None = None
    parts: dict[str, float] = {}   # the downtime's parts: the guest's stop, the last round, the start there

    async def send(parent: Path | None, snap: Path | None = None) -> int:
        """One round: a snapshot kept (snap) or a new one of the root, as an increment of parent."""
        if snap is None:
            snap = await asyncio.to_thread(snaps.take)
        argv = ["btrfs", "send", "-q", *(["-p", str(parent)] if parent else []), str(snap)]
        op.progress = f"round {len(sizes) + 1}: sending to {node}"
        _, sent = await target.stream(f"{BASE}/{sid}/stream", argv)
        if parent is not None and parent in snaps.made:
            await asyncio.to_thread(snaps.drop, parent)
        sizes.append(sent)
        return sent

    try:
        # the snapshots first, oldest first, each an increment of the one before; then the root's
        newest: Path | None = None
        for _, path in kept:
            await send(newest, path)
            newest = path
        sent = await send(newest)
        live = len(sizes)   # the rounds before the live ones (the snapshots and the root's first)
        if running:
            while sent > SMALL_DELTA and len(sizes) - live < LIVE_ROUNDS:
                sent = await send(snaps.made[-1])
            t0 = time.monotonic()
            op.progress = f"stopping {rec.name} for the last round"
            await instances.stop(instances.get(rec.id), None, False)
            stopped = True
            parts["stop"] = time.monotonic() - t0
            await send(snaps.made[-1])
            parts["last_round"] = time.monotonic() - t0 - parts["stop"]
        else:
            t0 = time.monotonic()
        now = [snap for snap, _ in await asyncio.to_thread(snapshots_oldest_first, bt, rec.name)]
        if now != [snap for snap, _ in kept]:   # taken or deleted meanwhile: this copy would lose it
            raise Conflict(f"{rec.name}'s snapshots changed during the migration ({', '.join(now) or 'none'} now); "
                           "it is undone: migrate it again")
        op.progress = f"{'starting' if running else 'making'} {rec.name} on {node}"
        t1 = time.monotonic()
        made = await target.json("POST", f"{BASE}/{sid}/finish", {"start": running})
        await _switch(cluster, rec, node)
        if running:
            downtime = time.monotonic() - t0
            parts["start_on_target"] = time.monotonic() - t1
    except BaseException as exc:
        log.warning("migration of %s to %s failed (%s); undoing it", rec.name, node,
                    exc.message if isinstance(exc, CtdError) else repr(exc))
        await session.abort()
        if stopped:
            with contextlib.suppress(CtdError):
                await instances.start(instances.get(rec.id))
        raise
    finally:
        await asyncio.to_thread(snaps.drop_all)
    # the target has it (running if it ran): this node's copy goes; its keys are the target's now
    with contextlib.suppress(CtdError):
        await target.json("POST", f"{BASE}/{sid}/done")
    try:
        await instances.destroy(instances.get(rec.id), force=True)
    except CtdError as exc:   # it runs on the target: this copy is only garbage now, never started again
        log.error("%s migrated to %s, but its copy here could not be removed: %s", rec.name, node, exc.message)
    cluster.poke()
    log.info("migrated %s to %s: %s, downtime %s", rec.name, node, sizes,
             f"{downtime:.3f} s" if downtime is not None else "none (it was stopped)")
    return {"instance": made.get("instance"), "node": node, "was_running": running,
            "rounds": sizes, "downtime": round(downtime, 3) if downtime is not None else None,
            "downtime_parts": {k: round(v, 3) for k, v in parts.items()}}
