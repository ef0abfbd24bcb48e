"""This ctd as a node of a cluster: its lease, its instances' names, what it publishes (its
membership: ctd/cluster/membership.py, a base class of ClusterNode).

A ctd with `etcd_endpoints` makes one `ClusterNode` (ctd/daemon.py); a standalone ctd makes
none and never imports this package. The node is a *member* once `/ctd/nodes/NAME` exists
(written by `cluster init` on the first node, by `cluster join TOKEN` on the others, deleted by
`cluster remove`). While it is a member, one background task every third of the lease TTL:

- renews its lease (a new one when it lapsed: etcd was out of reach longer than the TTL) and
  writes `/ctd/alive/NAME` on it with the node's load and free RAM/CPU/disk: a node whose ctd
  stops renewing goes `offline` when etcd drops the key at the TTL, with no one else's help;
- publishes its instances' summaries under `/ctd/instances/NAME` (what `ctctl list` on any
  node shows) and drops the ones of instances it no longer has.

Names (and numeric ids, `/ctd/ids/N`) are unique cluster-wide because the `/ctd/instances/NAME`
key *is* the name's reservation: create, clone, restore and rename take it in an etcd
transaction (created only if absent) before any work starts, so of two nodes asking for one name
at once exactly one gets it. The key is released when the work fails, at destroy, and at the old
name after a rename.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ctd.cluster import keys, nicclaims, placement
from ctd.cluster.errors import IdTaken
from ctd.cluster.etcd import Compare, Delete, Etcd, EtcdUnavailable, Get, KeyValue, Op, put_json
from ctd.cluster.membership import Membership, NodeSettings, _now
from ctd.cluster.peer import PeerReply, call, client_context
from ctd.errors import Conflict, CtdError, NotFound, Unavailable
from ctd.network.nics import Foreign

if TYPE_CHECKING:
    from ctd.network.manager import NetworkManager

log = logging.getLogger("ctd.cluster")
T = TypeVar("T")


# What a node publishes of each instance: what `ctctl list` shows; nothing that changes by itself
# (counters, CPU time), so an idle node writes nothing.
SUMMARY_FIELDS = ("id", "name", "project", "type", "state", "pid", "template", "hostname", "limits", "disabled",
                  "tags", "description")
NIC_FIELDS = ("name", "network", "mode", "mac", "addresses")


def summary(view: dict[str, Any]) -> dict[str, Any]:
    """An instance's published summary, from its API view."""
    out = {k: view.get(k) for k in SUMMARY_FIELDS}
    out["nics"] = [{k: n.get(k) for k in NIC_FIELDS} for n in view.get("nics") or []]
    return out


def node_stats(storage_root: Path) -> dict[str, Any]:
    """Load and free resources, as `cluster list` shows them (placement will read them too)."""
    load1 = os.getloadavg()[0]
    cpus = os.cpu_count() or 1
    meminfo = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            meminfo[key] = int(rest.split()[0]) * 1024
    disk_free = disk_total = 0
    with contextlib.suppress(OSError):
        st = os.statvfs(storage_root)
        disk_free = st.f_bavail * st.f_frsize
        disk_total = st.f_blocks * st.f_frsize
    return {"load1": round(load1, 2), "cpus": cpus, "cpu_free": round(max(0.0, cpus - load1), 2),
            "ram_total": meminfo.get("MemTotal", 0), "ram_free": meminfo.get("MemAvailable", 0),
            "disk_free": disk_free, "disk_total": disk_total}


class ClusterNode(Membership):
    """This ctd's part in the cluster (one per daemon with etcd_endpoints)."""

    def __init__(self, etcd: Etcd, settings: NodeSettings,
                 local_views: Callable[[], list[dict[str, Any]]]) -> None:
        self.etcd = etcd
        self.settings = settings
        self.name = settings.name
        self.local_views = local_views     # the API views of this node's instances (the manager's list)
        self.member = False                # /ctd/nodes/NAME exists (as of the last tick)
        self.lease = 0
        self.renewed_at = 0.0              # time.monotonic() of the last renewal asked for that etcd made
        self.last_error = ""               # why the last tick failed (etcd out of reach), "" when fine
        self._held: set[str] = set()       # names claimed for work in progress (no row yet, or a rename)
        self._held_ids: set[int] = set()   # their ids
        self._replica_holds: dict[str, int] = {}   # of those: the replicas this node keeps (hold())
        self._foreign_ids: set[int] = set()   # ids of other nodes' instances, as of the last tick
        # ids etcd refused since: kept until a tick sees them (a tick whose read began before the
        # refusal would otherwise forget it, and the next pick would choose the same id again)
        self._refused_ids: set[int] = set()
        self._foreign_ranges: list[tuple[int, int]] = []   # other nodes' containers' id ranges (start, size)
        self._range_clashes: set[str] = set()               # logged already
        self._peer_fingerprints: dict[str, str] = {}   # certificate SHA-256 -> member name (not this node)
        self._client_context: ssl.SSLContext | None = None
        self._known = False                # a tick has succeeded: `member` is etcd's answer, not a guess
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()        # one tick at a time (the loop's and a forced one)
        self.nics = nicclaims.NicClaims(etcd, self.name)   # MACs and addresses cluster-wide
        self.network: NetworkManager | None = None          # set by nicclaims.attach (the daemon)
        self._nic_clashes: set[str] = set()                  # logged already

    # ---------------------------------------------------------------- life

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """At ctd's stop: the lease is revoked, so peers see this node offline at once (its
        instances keep running and stay listed)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.lease:   # briefly: a ctd that stops while etcd is away must not hang; the lease lapses anyway
            with contextlib.suppress(CtdError, asyncio.TimeoutError):
                await asyncio.wait_for(self.etcd.revoke(self.lease), 2)
        await self.etcd.close()

    def poke(self) -> None:
        """Something changed (an instance's state, a create): publish now, not at the next tick."""
        self._wake.set()

    async def _run(self) -> None:
        interval = max(0.5, self.settings.lease_ttl / 3)
        while True:
            self._wake.clear()   # before the tick: a poke during it makes the next one come at once
            try:
                await self.tick()
            except CtdError as exc:
                if exc.message != self.last_error:
                    log.warning("cluster: %s", exc.message)
                self.last_error = exc.message
            except Exception:   # noqa: BLE001 — the next tick tries again
                log.exception("cluster tick failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)

    async def tick(self) -> None:
        async with self._lock:
            was_member = self.member
            self.member = await self.etcd.get(keys.node(self.name)) is not None
            if not self.member:
                if was_member:
                    log.warning("cluster: this node (%s) is no longer a member (removed); it runs standalone "
                                "until it joins again", self.name)
                self._foreign_ids = set()
                self._peer_fingerprints = {}
                if self.lease:
                    await self.etcd.revoke(self.lease)
                    self.lease = 0
                self.last_error = ""
                self._known = True
                return
            asked = time.monotonic()   # the lease lives at least TTL after this (fencing: ha.py)
            if not self.lease or await self.etcd.keepalive(self.lease) <= 0:
                if self.lease:
                    log.warning("cluster: this node's lease lapsed (etcd out of reach for %d s or more); "
                                "taking a new one", self.settings.lease_ttl)
                self.lease = await self.etcd.grant(self.settings.lease_ttl)
            self.renewed_at = asked
            await self.etcd.txn([], [put_json(keys.alive(self.name), self._alive(), self.lease)])
            self._peer_fingerprints = {str(kv.json().get("fingerprint")): keys.tail(kv.key, keys.NODES)
                                       for kv in await self.etcd.get_prefix(keys.NODES)
                                       if kv.json().get("fingerprint") and keys.tail(kv.key, keys.NODES) != self.name}
            await self._publish()
            self.last_error = ""
            self._known = True

    def _alive(self) -> dict[str, Any]:
        ram, disk = placement.promised(self.local_views())
        return {"lease": str(self.lease), "version": self.settings.version, "at": _now().isoformat(),
                **node_stats(self.settings.storage_root), "ram_promised": ram, "disk_promised": disk}

    async def _publish(self) -> None:
        """Make /ctd/instances/* and /ctd/ids/* of this node match its instances. etcd is read
        first, then the rows and the claims in progress at one instant (no await between): a key
        of this node that neither names is a claim whose work failed or a row that is gone."""
        named = await self.etcd.get_prefix(keys.INSTANCES)
        numbered = await self.etcd.get_prefix(keys.IDS)
        local = {v["name"]: summary(v) for v in self.local_views()}
        held, held_ids = set(self._held), set(self._held_ids)
        mine: dict[str, tuple[dict[str, Any], KeyValue]] = {}
        for kv in named:
            value = kv.json()
            if value.get("node") == self.name:
                mine[keys.tail(kv.key, keys.INSTANCES)] = (value, kv)
        my_ids: dict[int, KeyValue] = {}
        foreign: set[int] = set()
        for kv in numbered:
            number = int(keys.tail(kv.key, keys.IDS))
            if kv.json().get("node") == self.name:
                my_ids[number] = kv
            else:
                foreign.add(number)
        self._foreign_ids = foreign
        self._refused_ids -= foreign
        for name, data in local.items():
            wanted = {**data, "node": self.name}
            have = mine.get(name)
            if have is None or have[0] != wanted:
                key = keys.instance(name)
                cond = [Compare.unchanged(key, have[1].mod_revision)] if have else [Compare.missing(key)]
                result = await self.etcd.txn(cond, [put_json(key, wanted)], [Get(key)])
                if not result.succeeded and have is None and result.ranges and result.ranges[0]:
                    other = result.ranges[0][0].json().get("node")
                    log.warning("cluster: instance %s exists on node %s too; rename one of them", name, other)
            number = data["id"]
            if number not in my_ids:
                key = keys.instance_id(number)
                result = await self.etcd.txn([Compare.missing(key)],
                                             [put_json(key, {"node": self.name, "name": name})], [Get(key)])
                if not result.succeeded and result.ranges and result.ranges[0]:
                    log.warning("cluster: instance %s has id %d, which %s on node %s has too", name, number,
                                result.ranges[0][0].json().get("name"), result.ranges[0][0].json().get("node"))
        for name, (_, kv) in mine.items():
            if name not in local and name not in held:
                await self.etcd.txn([Compare.unchanged(kv.key, kv.mod_revision)], [Delete(kv.key)])
        local_ids = {int(d["id"]) for d in local.values()}
        for number, kv in my_ids.items():
            if number not in local_ids and number not in held_ids:
                await self.etcd.txn([Compare.unchanged(kv.key, kv.mod_revision)], [Delete(kv.key)])
        await self._publish_nics()

    async def _publish_nics(self) -> None:
        """/ctd/macs/* and /ctd/addresses/* of this node to match its NICs (nicclaims.py); the
        others' are what this node avoids when it picks one itself. The claims in progress are
        taken before the reads and the NICs after them: a claim whose NIC is written meanwhile
        is in one or the other, never dropped."""
        held = self.nics.held_keys()
        kvs = [*await self.etcd.get_prefix(keys.MACS), *await self.etcd.get_prefix(keys.ADDRESSES)]
        views = self.local_views()
        self.nics.foreign = nicclaims.foreign_of(kvs, self.name)
        for compare, op in self.nics.reconcile(views, kvs, held):
            await self.etcd.txn([compare], [op])
        ranges = await self.etcd.get_prefix(keys.IDMAPS)
        self._foreign_ranges = [(int(keys.tail(kv.key, keys.IDMAPS)), int(kv.json().get("size") or 65536))
                                for kv in ranges if kv.json().get("node") != self.name]
        for compare, op in self._idmap_changes(views, ranges):
            await self.etcd.txn([compare], [op])
        clashes = set(self.nics.clashes(views, kvs, self.name))
        for clash in sorted(clashes - self._nic_clashes):
            log.warning("cluster: a NIC of this node has what another node's has too: %s; change one of them", clash)
        self._nic_clashes = clashes

    def attach(self, network: NetworkManager) -> None:
        """Cluster mode: the network manager avoids other nodes' MACs and addresses and claims a
        new NIC's (nic add) before writing it; the create handler claims through claim_nics."""
        network.foreign = lambda: self.nics.foreign if self.member else Foreign()
        network.claim = self.claim_nics
        network.claimed = self.nics.done
        self.network = network

    def _idmap_changes(self, views: list[dict[str, Any]], kvs: list[KeyValue]) -> list[tuple[Compare, Op]]:
        """/ctd/idmaps/* of this node to match its containers' id ranges. Published, not claimed:
        a range is chosen at create avoiding the ranges others published (foreign_ranges); two
        nodes choosing in the same instant could still clash, which is logged."""
        wanted = {keys.idmap(int(v["idmap_base"])): str(v["name"]) for v in views if v.get("idmap_base") is not None}
        mine = {kv.key: kv for kv in kvs if kv.json().get("node") == self.name}
        others = {kv.key: kv.json() for kv in kvs if kv.json().get("node") != self.name}
        out: list[tuple[Compare, Op]] = []
        for key, instance in wanted.items():
            have = mine.get(key)
            if key in others:
                if key not in self._range_clashes:
                    self._range_clashes.add(key)
                    log.warning("cluster: container %s has id range %s, which %s on node %s has too", instance,
                                keys.tail(key, keys.IDMAPS), others[key].get("instance"), others[key].get("node"))
                continue
            if have is None or have.json().get("instance") != instance:
                out.append((Compare.unchanged(key, have.mod_revision) if have else Compare.missing(key),
                            put_json(key, {"node": self.name, "instance": instance,
                                           "size": self.settings.idmap_size})))
        for key, kv in mine.items():
            if key not in wanted:
                out.append((Compare.unchanged(key, kv.mod_revision), Delete(key)))
        return out

    def foreign_ranges(self) -> list[tuple[int, int]]:
        """Id ranges (start, size) other nodes' containers have, as of the last tick."""
        return list(self._foreign_ranges) if self.member else []

    async def claim_nics(self, instance: str, instance_id: int, requests: list[Any], first_idx: int = 0) -> None:
        """Take new NICs' MACs and addresses cluster-wide (nicclaims.py); nothing while this node
        is no member (or no network manager is attached)."""
        network = self.network
        if not self.member or network is None or not requests:
            return
        await asyncio.to_thread(network.prepare, requests)   # the default network, made on first use
        await self.nics.claim(instance, instance_id, requests, first_idx, network.network, network.db.used_macs(),
                              network.db.addresses_in)

    def foreign_ids(self) -> set[int]:
        """Ids other nodes' instances have (Reservations skips them when it picks one)."""
        return self._foreign_ids | self._refused_ids

    # ---------------------------------------------------------------- names

    async def claim(self, name: str, instance_id: int | None = None) -> None:
        """Hold `name` (and a new instance's id) cluster-wide for work on this node, in one
        transaction; Conflict naming the node that has the name, IdTaken for the id. Nothing to
        do while this node is no member. Asked of etcd when no tick has told yet (ctd just started,
        or etcd was out of reach): a member must not make a name unchecked, so that is a 503."""
        if not self.member and ((self._known and not self.last_error) or not await self._is_member()):
            return
        self.member = True
        key = keys.instance(name)
        compare, ops, reads = [Compare.missing(key)], [put_json(key, {"node": self.name, "name": name,
                                                                      "state": "creating"})], [Get(key)]
        if instance_id is not None:
            id_key = keys.instance_id(instance_id)
            compare.append(Compare.missing(id_key))
            ops.append(put_json(id_key, {"node": self.name, "name": name}))
            reads.append(Get(id_key))
        result = await self.etcd.txn(compare, ops, reads)
        if not result.succeeded:
            by_name = result.ranges[0] if result.ranges else []
            if by_name or len(result.ranges) < 2:
                holder = by_name[0].json().get("node") if by_name else "?"
                where = "this node (being made or renamed)" if holder == self.name else f"node {holder}"
                raise Conflict(f"an instance named {name!r} exists in the cluster, on {where}; choose another name")
            other = result.ranges[1][0].json() if result.ranges[1] else {}
            self._refused_ids.add(int(instance_id or 0))
            # this node's view of the others' ids is a tick old: learn all of them now, so that the
            # next pick does not walk through them one refusal at a time
            with contextlib.suppress(CtdError):
                self._refused_ids |= {int(keys.tail(kv.key, keys.IDS)) for kv in await self.etcd.get_prefix(keys.IDS)
                                      if kv.json().get("node") != self.name}
            raise IdTaken(f"id {instance_id} is taken in the cluster (by {other.get('name', '?')} on node "
                          f"{other.get('node', '?')}); choose another id or leave it out")
        self._held.add(name)
        if instance_id is not None:
            self._held_ids.add(instance_id)

    async def release(self, name: str, instance_id: int | None = None) -> None:
        """Give a name (and an id) back: the work failed, the instance was destroyed or renamed."""
        self._held.discard(name)
        if instance_id is not None:
            self._held_ids.discard(instance_id)
        if not self.member:
            return
        # an id key keeps the name it was claimed with (a rename does not rewrite it): the node decides
        for key in [keys.instance(name)] + ([keys.instance_id(instance_id)] if instance_id is not None else []):
            kv = await self.etcd.get(key)
            if kv is not None and kv.json().get("node") == self.name:
                await self.etcd.txn([Compare.unchanged(key, kv.mod_revision)], [Delete(key)])

    def hold(self, names: dict[str, int]) -> None:
        """Names and ids (name -> id) this node may be given without a claim of its own: the
        replicas it keeps (an HA failover makes it their owner before it has their rows; the
        renewal must not drop their keys meanwhile). The set replaces the previous one."""
        for name, number in self._replica_holds.items():
            if names.get(name) != number:
                self._held.discard(name)
                self._held_ids.discard(number)
        self._held |= set(names)
        self._held_ids |= set(names.values())
        self._replica_holds = dict(names)

    async def guard_new(self, name: str, instance_id: int | None, work: Awaitable[T]) -> T:
        """A create/clone/restore's (or rename's) work: what was claimed goes back if it fails."""
        try:
            result = await work
        except BaseException:
            await self.abandon(name, instance_id)
            raise
        self.nics.done(name)
        self._held.discard(name)
        if instance_id is not None:
            self._held_ids.discard(instance_id)
        self.poke()
        return result

    async def abandon(self, name: str, instance_id: int | None) -> None:
        """A new instance's work failed: its name and id go back now, its NICs' keys at the next
        renewal (asked for at once)."""
        self.nics.done(name)
        with contextlib.suppress(CtdError):
            await self.release(name, instance_id)
        self.poke()

    async def guard_destroy(self, name: str, instance_id: int, work: Awaitable[T]) -> T:
        result = await work
        with contextlib.suppress(CtdError):   # the next tick drops them otherwise
            await self.release(name, instance_id)
        return result

    async def remote_instances(self) -> list[dict[str, Any]]:
        """Other nodes' instances as they published them (empty while this node is no member)."""
        if not self.member:
            return []
        try:
            listed = await self.etcd.get_prefix(keys.INSTANCES)
            online = {keys.tail(kv.key, keys.ALIVE) for kv in await self.etcd.get_prefix(keys.ALIVE)}
        except EtcdUnavailable as exc:
            raise EtcdUnavailable(f"{exc.message} (the list of other nodes' instances comes from etcd)") from None
        # an offline node's rows are its last word: node_online says how far to trust them
        return [{**value, "node_online": value.get("node") in online} for value in (kv.json() for kv in listed)
                if value.get("node") != self.name
                and value.get("id") is not None]   # a claim without a summary yet: not an instance

    # ---------------------------------------------------------------- placement

    async def place(self, needs: placement.Needs, pinned: str | None) -> str:
        """The node a new instance is made on (ctd/cluster/placement.py): others as they published
        themselves at their last renewal, this node as it is now."""
        try:
            members = [keys.tail(kv.key, keys.NODES) for kv in await self.etcd.get_prefix(keys.NODES)]
            alive = {keys.tail(kv.key, keys.ALIVE): kv.json() for kv in await self.etcd.get_prefix(keys.ALIVE)}
            listed = [kv.json() for kv in await self.etcd.get_prefix(keys.INSTANCES)]
            evacuating = await self.evacuating()
        except EtcdUnavailable as exc:
            raise EtcdUnavailable(f"{exc.message} (placement reads the nodes' room from etcd)") from None
        per_node: dict[str, list[dict[str, Any]]] = {}
        for value in listed:
            if value.get("id") is not None:   # a claim without a summary yet holds no limits
                per_node.setdefault(str(value.get("node")), []).append(value)
        per_node[self.name] = self.local_views()
        if self.name in alive:
            alive[self.name] = {**alive[self.name], **node_stats(self.settings.storage_root)}
        rooms = [placement.room_of(name, alive.get(name), per_node.get(name, []), name in evacuating)
                 for name in members]
        return placement.choose(needs, rooms, pinned)

    # ---------------------------------------------------------------- other nodes' instances

    def peer_by_fingerprint(self, fingerprint: str) -> str | None:
        """The member whose HTTPS certificate this is (as of the last tick): the remote API lets
        it in as an admin (ctd/remote/api.py), for the requests it forwards."""
        if not self.member:
            return None
        found = self._peer_fingerprints.get(fingerprint)
        if found is None:   # a node that joined since the last tick? the next one reads the members now
            self.poke()     # (failed authentications are rate-limited by the remote API)
        return found

    async def locate(self, ref: str) -> dict[str, Any] | None:
        """Another node's instance by name or numeric id, as it published it; None if no other
        node has one."""
        if not self.member:
            return None
        if ref.isdigit():
            held = await self.etcd.get(keys.instance_id(int(ref)))
            if held is None:
                return None
            ref = str(held.json().get("name"))
        kv = await self.etcd.get(keys.instance(ref))
        found = kv.json() if kv is not None else None
        return found if found and found.get("node") != self.name and found.get("id") is not None else None

    async def forward(self, node: str, method: str, path_and_query: str, body: bytes | None,
                      content_type: str | None) -> PeerReply:
        """A request about one of `node`'s instances, made there (mutual TLS, pinned)."""
        if self.settings.cert is None:
            raise Unavailable(f"this instance is on node {node}, and this node has no HTTPS certificate to ask it "
                              "with: set https_address in ctd.toml, or send the request to that node")
        member = await self.etcd.get(keys.node(node))
        if member is None:
            raise NotFound(f"node {node} is no member of the cluster any more")
        record = member.json()
        if not record.get("address") or not record.get("fingerprint"):
            raise Unavailable(f"node {node} has no HTTPS address (https_address in its ctd.toml): this request "
                              "must be made there")
        if await self.etcd.get(keys.alive(node)) is None:
            raise Unavailable(f"node {node} is offline; its instances cannot be reached until it is back")
        if self._client_context is None:
            self._client_context = client_context(*self.settings.cert)
        for _attempt in range(3):
            reply = await asyncio.to_thread(call, str(record["address"]), str(record["fingerprint"]),
                                            self._client_context, method, path_and_query, body, content_type)
            if reply.status != 401:
                break
            # refused before anything ran: this node joined after the owner's last tick, which the
            # refusal has hastened; ask again after it
            await asyncio.sleep(max(0.5, self.settings.lease_ttl / 3))
        return reply
