"""A cluster node's membership (docs/cluster.md, "Membership"): join tokens, `cluster init`,
`join`, `list`, `remove`, and the evacuation mark. ClusterNode (ctd/cluster/node.py) is made of
this and its lease, publishing and names.

A join token names its node and holds a secret; etcd keeps only the secret's SHA-256 under
`/ctd/join/NODE`, on a lease of the token's lifetime. `join` deletes that hash and writes the
membership in one transaction, so a token works once. `init` and `join` take the node's
instance names and ids in the same transaction as its membership.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctd.cluster import keys
from ctd.cluster.etcd import Compare, Delete, Etcd, Get, KeyValue, Op, put_json
from ctd.errors import Conflict, CtdError, Forbidden, InvalidRequest, NotFound

log = logging.getLogger("ctd.cluster")
TXN_OPS = 100   # operations in one etcd transaction: below etcd's default --max-txn-ops of 128
STAT_FIELDS = ("version", "load1", "cpus", "cpu_free", "ram_total", "ram_free", "ram_promised", "disk_total",
               "disk_free", "disk_promised")   # of a node, as `cluster list` shows them (None: offline)


@dataclass(frozen=True)
class NodeSettings:
    name: str
    address: str           # the HTTPS URL peers reach this node on ("" when HTTPS is off)
    fingerprint: str       # its server certificate's SHA-256 (peers pin it; "" when HTTPS is off)
    lease_ttl: int
    version: str
    storage_root: Path
    cert: tuple[Path, Path] | None = None   # its HTTPS certificate and key: its client certificate for peers
    idmap_size: int = 65536                 # its containers' id ranges' size (published with each range)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).hexdigest().encode()


def encode_token(node: str, secret: str, expires_at: str) -> str:
    data = {"node": node, "secret": secret, "expires_at": expires_at}
    return "ctdjoin_" + base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_token(token: Any) -> tuple[str, str, datetime.datetime]:
    """(node, secret, expiry) of a join token, or InvalidRequest saying it is not one."""
    bad = InvalidRequest("that is not a cluster join token; copy the whole line 'ctctl cluster add NODE' printed")
    if not isinstance(token, str) or not token.startswith("ctdjoin_") or len(token) > 1000:
        raise bad
    raw = token[len("ctdjoin_"):]
    try:
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        node, secret = str(data["node"]), str(data["secret"])
        expires = datetime.datetime.fromisoformat(str(data["expires_at"]))
    except (ValueError, KeyError, TypeError):
        raise bad from None
    return node, secret, expires


class Membership:
    """ClusterNode's membership part (a base class: the attributes below are ClusterNode's)."""

    etcd: Etcd
    settings: NodeSettings
    name: str
    member: bool
    last_error: str
    local_views: Callable[[], list[dict[str, Any]]]

    async def tick(self) -> None:
        raise NotImplementedError   # ClusterNode's: one lease renewal and publishing round

    def _member_record(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.settings.address, "fingerprint": self.settings.fingerprint,
                "joined_at": _now().isoformat()}

    def _names_ops(self) -> tuple[list[Compare], list[Op], list[Op]]:
        """This node's instances' names and ids, taken in the same transaction as its membership."""
        views = sorted(self.local_views(), key=lambda v: str(v["name"]))
        named = [(keys.instance(v["name"]), {"node": self.name, "name": v["name"], "state": "unknown"}) for v in views]
        numbered = [(keys.instance_id(v["id"]), {"node": self.name, "name": v["name"]}) for v in views]
        return ([Compare.missing(k) for k, _ in named + numbered], [put_json(k, v) for k, v in named + numbered],
                [Get(k) for k, _ in named + numbered])

    def _clashes(self, ranges: list[list[KeyValue]]) -> list[str]:
        out = []
        for found in ranges:
            if found:
                key, value = found[0].key, found[0].json()
                what = f"id {keys.tail(key, keys.IDS)}" if key.startswith(keys.IDS) else str(value.get("name"))
                out.append(f"{what} ({value.get('name')} on node {value.get('node')})"
                           if key.startswith(keys.IDS) else f"{what} (node {value.get('node')})")
        return out

    async def init(self) -> dict[str, Any]:
        """The first node: the cluster's marker and this node's membership, in one transaction."""
        if await self._is_member():
            raise Conflict(f"this node ({self.name}) is a member of the cluster already")
        compares, puts, gets = self._names_ops()
        result = await self.etcd.txn(
            [Compare.missing(keys.CLUSTER), Compare.missing(keys.node(self.name)), *compares],
            [put_json(keys.CLUSTER, {"created_at": _now().isoformat(), "first_node": self.name}),
             put_json(keys.node(self.name), self._member_record()), *puts],
            [Get(keys.CLUSTER), *gets])
        if not result.succeeded:
            if result.ranges and result.ranges[0]:
                nodes = [keys.tail(kv.key, keys.NODES) for kv in await self.etcd.get_prefix(keys.NODES)]
                raise Conflict(f"the cluster in etcd exists already (nodes: {', '.join(nodes) or 'none'}); "
                               f"join it: 'ctctl cluster add {self.name}' on one of them, then "
                               f"'ctctl cluster join TOKEN' here")
            raise Conflict("instance names or ids of this node are taken in the cluster already: "
                           f"{', '.join(self._clashes(result.ranges[1:]))}; rename or remove those instances first")
        await self.tick()
        log.info("cluster: made the cluster; %s is its first node", self.name)
        return self.describe()

    async def add_token(self, node: str, lifetime: datetime.timedelta) -> dict[str, Any]:
        """A one-time join token for `node`; etcd keeps the secret's hash until the expiry."""
        self.require_member("make join tokens")
        if await self.etcd.get(keys.node(node)) is not None:
            raise Conflict(f"node {node!r} is a member already; 'ctctl cluster remove {node}' first to add it anew")
        secret = secrets.token_urlsafe(32)
        expires_at = _now() + lifetime
        lease = await self.etcd.grant(max(1, int(lifetime.total_seconds())))
        await self.etcd.put(keys.join(node), _hash(secret), lease)   # a newer token for the node replaces it
        log.info("cluster: join token for node %s made (expires %s)", node, expires_at.isoformat())
        return {"node": node, "token": encode_token(node, secret, expires_at.isoformat()),
                "expires_at": expires_at.isoformat()}

    async def join(self, token: Any) -> dict[str, Any]:
        """Redeem a join token made for this node: its hash is deleted and the membership
        written in one transaction (so a token works once), with this node's instance names."""
        node, secret, expires = decode_token(token)
        if node != self.name:
            raise InvalidRequest(f"this join token is for node {node!r}, but this node is {self.name!r}; "
                                 f"set node_name = \"{node}\" in ctd.toml, or ask for a token for {self.name}")
        if await self._is_member():
            raise Conflict(f"this node ({self.name}) is a member of the cluster already")
        if expires <= _now():
            raise Forbidden(f"this join token expired at {expires.isoformat()}; ask for a new one with "
                            f"'ctctl cluster add {node}' on a member")
        compares, puts, gets = self._names_ops()
        result = await self.etcd.txn(
            [Compare.value_is(keys.join(node), _hash(secret)), Compare.missing(keys.node(node)), *compares],
            [Delete(keys.join(node)), put_json(keys.node(node), self._member_record()), *puts],
            [Get(keys.join(node)), Get(keys.node(node)), *gets])
        if not result.succeeded:
            pending, member = result.ranges[0], result.ranges[1]
            if member:
                raise Conflict(f"node {node!r} is a member of the cluster already")
            if not pending or pending[0].value != _hash(secret):
                raise Forbidden("this join token is not valid (used already, expired, revoked or replaced by a "
                                f"newer one); ask for a new one with 'ctctl cluster add {node}' on a member")
            raise Conflict("instance names or ids of this node are taken in the cluster already: "
                           f"{', '.join(self._clashes(result.ranges[2:]))}; rename or remove those instances first")
        await self.tick()
        log.info("cluster: joined the cluster as %s", self.name)
        return self.describe()

    async def nodes(self) -> list[dict[str, Any]]:
        """Every member with its state (online while its lease lives) and last published stats."""
        self.require_member("list the cluster's nodes")
        members = await self.etcd.get_prefix(keys.NODES)
        alive = {keys.tail(kv.key, keys.ALIVE): kv.json() for kv in await self.etcd.get_prefix(keys.ALIVE)}
        evacuating = await self.evacuating()
        counts: dict[str, int] = {}
        for kv in await self.etcd.get_prefix(keys.INSTANCES):
            owner = str(kv.json().get("node"))
            counts[owner] = counts.get(owner, 0) + 1
        out = []
        for kv in members:
            record = kv.json()
            name = keys.tail(kv.key, keys.NODES)
            stats = alive.get(name)
            out.append({**record, "name": name, "state": "online" if stats else "offline",
                        "instances": counts.get(name, 0), "self": name == self.name,
                        "evacuating": name in evacuating,
                        **{k: stats.get(k) if stats else None for k in STAT_FIELDS}})
        return sorted(out, key=lambda n: str(n["name"]))

    async def evacuating(self) -> set[str]:
        """The nodes marked by `cluster evacuate` (placement skips them)."""
        return {keys.tail(kv.key, keys.EVACUATING) for kv in await self.etcd.get_prefix(keys.EVACUATING)}

    async def remove(self, node: str, force: bool) -> dict[str, Any]:
        """Drop a member: its membership, liveness, pending token and its instances' names.
        An online node is refused without force (its instances' names would become free while
        they run); with force it notices at its next tick and runs standalone."""
        self.require_member("remove nodes")
        if await self.etcd.get(keys.node(node)) is None:
            raise NotFound(f"no node {node!r} in the cluster; 'ctctl cluster list' shows them")
        alive = await self.etcd.get(keys.alive(node))
        if alive is not None and not force:
            raise Conflict(f"node {node!r} is online; stop its ctd first (or remove it anyway with --force: "
                           "its instances keep running but their names are freed in the cluster)")
        owned = [kv for kv in await self.etcd.get_prefix(keys.INSTANCES) if kv.json().get("node") == node]
        numbers = [kv for kv in await self.etcd.get_prefix(keys.IDS) if kv.json().get("node") == node]
        for prefix in (keys.MACS, keys.ADDRESSES, keys.IDMAPS):
            numbers += [kv for kv in await self.etcd.get_prefix(prefix) if kv.json().get("node") == node]
        await self.etcd.txn([], [Delete(keys.node(node)), Delete(keys.alive(node)), Delete(keys.join(node)),
                                 Delete(keys.evacuating(node))])
        released: list[Op] = [Delete(kv.key) for kv in owned + numbers]
        for start in range(0, len(released), TXN_OPS):   # etcd's --max-txn-ops (128 by default)
            await self.etcd.txn([], released[start:start + TXN_OPS])
        if alive is not None:
            with contextlib.suppress(CtdError, ValueError):
                await self.etcd.revoke(int(alive.json().get("lease", 0)))
        if node == self.name:
            await self.tick()
        log.info("cluster: node %s removed (%d instance names released)", node, len(owned))
        return {"node": node, "released_names": sorted(keys.tail(kv.key, keys.INSTANCES) for kv in owned)}

    def describe(self) -> dict[str, Any]:
        return {"enabled": True, "node": self.name, "member": self.member, "address": self.settings.address,
                "fingerprint": self.settings.fingerprint, "etcd_endpoints": list(self.etcd.endpoints),
                "lease_ttl": self.settings.lease_ttl, "error": self.last_error or None}

    async def _is_member(self) -> bool:
        """Asked of etcd now (the tick's answer may be a few seconds old: a removal just made)."""
        return await self.etcd.get(keys.node(self.name)) is not None

    def require_member(self, what: str) -> None:
        if not self.member:
            raise Conflict(f"this node ({self.name}) is no member of a cluster, so it cannot {what}; "
                           "'ctctl cluster init' makes a cluster, 'ctctl cluster join TOKEN' joins one")
