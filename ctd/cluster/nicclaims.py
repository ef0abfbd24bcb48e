"""MACs and IP addresses unique cluster-wide (docs/cluster.md, "One namespace").

A NIC's MAC and each of its addresses are keys in etcd, held by the node whose instance has them:

    /ctd/macs/MAC                   {"node", "instance"}
    /ctd/addresses/NETWORK/ADDRESS  {"node", "instance"}   (NETWORK "-": a routed NIC without one)

Addresses are keyed by network *name*: a network of one name on several nodes (the bridge an
instance moving between them finds again) is one address space; networks of different names
are not compared. At create and at `nic add`, before the NIC is written, the MAC and addresses
are chosen here and taken in one etcd transaction per NIC (created only if absent): of two
nodes picking the same free address at once one gets it, the other picks the next. An address
the caller asked for that another instance holds is a 409 naming it. The chosen values go into
the NicRequest (its `mac`, its `addresses`), which the local allocation then writes as asked.

What is held for work in progress is kept in `held` until the work ends; each lease renewal
(ClusterNode._publish) makes this node's keys match its instances' NICs: a destroyed instance's,
a removed NIC's or a failed create's keys go, and NICs made without a claim (clone, restore,
--ipadd) are published (a clash with another node's is logged).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

from ctd.cluster import keys
from ctd.cluster.etcd import Compare, Delete, Etcd, Get, Op, put_json
from ctd.errors import Conflict
from ctd.network import ipam
from ctd.network.nics import Foreign, NicRequest, mac_for
from ctd.state import NetworkRecord

ATTEMPTS = 8   # picks per NIC when other nodes take the picked values meanwhile


def nic_keys(network: str | None, mac: str | None, addresses: Iterable[str]) -> list[str]:
    out = [keys.mac(mac)] if mac else []
    return out + [keys.address(network, a) for a in addresses]


def wanted_keys(views: list[dict[str, Any]]) -> dict[str, str]:
    """key -> instance name, for every NIC of this node's instances (their published summaries)."""
    out: dict[str, str] = {}
    for view in views:
        for nic in view.get("nics") or []:
            for key in nic_keys(nic.get("network"), nic.get("mac"), nic.get("addresses") or []):
                out[key] = str(view["name"])
    return out


def foreign_of(kvs: Iterable[Any], node: str) -> Foreign:
    found = Foreign()
    for kv in kvs:
        if kv.json().get("node") == node:
            continue
        if kv.key.startswith(keys.MACS):
            found.macs.add(keys.tail(kv.key, keys.MACS))
        else:
            network, _, address = keys.tail(kv.key, keys.ADDRESSES).partition("/")
            found.addresses.setdefault(network, set()).add(address)
    return found


class NicClaims:
    """Claims of one node (ClusterNode owns it)."""

    def __init__(self, etcd: Etcd, node: str) -> None:
        self.etcd = etcd
        self.node = node
        self.foreign = Foreign()
        self.held: dict[str, set[str]] = {}   # instance name -> keys claimed for its work in progress

    async def claim(self, instance: str, instance_id: int, requests: list[NicRequest], first_idx: int,
                    network: Callable[[str], NetworkRecord], used_macs: set[str],
                    used_addresses: Callable[[str], list[str]]) -> None:
        """Choose and take each NIC's MAC and addresses (module docstring); fills the requests."""
        held = self.held.setdefault(instance, set())
        for idx, req in enumerate(requests, first_idx):
            net = network(req.network) if req.network else None
            asked = list(req.addresses)
            taken_macs: set[str] = set()
            taken: set[str] = set()
            for _attempt in range(ATTEMPTS):
                salt = 0
                while (mac := mac_for(instance_id, idx, salt)) in used_macs | self.foreign.macs | taken_macs:
                    salt += 1
                addresses = asked or self._pick(net, used_addresses, taken)
                wanted = nic_keys(req.network, mac, addresses)
                value = {"node": self.node, "instance": instance}
                result = await self.etcd.txn([Compare.missing(k) for k in wanted], [put_json(k, value) for k in wanted],
                                             [Get(k) for k in wanted])
                if result.succeeded:
                    held.update(wanted)
                    used_macs.add(mac)
                    req.mac, req.addresses = mac, addresses
                    break
                for key, found in zip(wanted, result.ranges, strict=True):
                    if not found:
                        continue
                    holder = found[0].json()
                    if key.startswith(keys.MACS):
                        taken_macs.add(mac)
                        continue
                    address = key.rpartition("/")[2]
                    if address in asked:
                        where = "this node" if holder.get("node") == self.node else f"node {holder.get('node')}"
                        raise Conflict(f"address {address} on network {req.network or '(routed)'} is taken in the "
                                       f"cluster (by {holder.get('instance', '?')} on {where}); choose another "
                                       "or leave it out")
                    taken.add(address)
                if net is not None and not asked:   # others took some: learn all they hold on net at once
                    taken.update(keys.tail(kv.key, keys.address_prefix(net.name))
                                 for kv in await self.etcd.get_prefix(keys.address_prefix(net.name)))
            else:
                raise Conflict(f"no free MAC or address for NIC {idx} of {instance} after {ATTEMPTS} picks: "
                               "other nodes took them meanwhile; try again")

    def _pick(self, net: NetworkRecord | None, used_addresses: Callable[[str], list[str]],
              taken: set[str]) -> list[str]:
        """One free address of each of net's subnets, free here, elsewhere and not refused yet."""
        if net is None:
            return []
        out = []
        own = {k.rpartition("/")[2] for k in self.held_keys() if k.startswith(keys.address_prefix(net.name))}
        busy = set(used_addresses(net.name)) | self.foreign.addresses.get(net.name, set()) | own | taken
        for subnet in (net.subnet4, net.subnet6):
            if subnet:
                used = [ipaddress.ip_address(a) for a in busy]
                out.append(str(ipam.allocate(ipaddress.ip_network(subnet), used)))
        return out

    def done(self, instance: str) -> None:
        """The work ended (made or failed): the next renewal keeps or drops the keys."""
        self.held.pop(instance, None)

    def held_keys(self) -> set[str]:
        return {k for ks in self.held.values() for k in ks}

    def reconcile(self, views: list[dict[str, Any]], kvs: list[Any], held: set[str]) -> list[tuple[Compare, Op]]:
        """What makes this node's keys match its instances' NICs (see the module docstring), each
        change under its own condition: a key another node took meanwhile is not overwritten."""
        wanted = wanted_keys(views)
        mine = {kv.key: kv for kv in kvs if kv.json().get("node") == self.node}
        others = {kv.key for kv in kvs if kv.json().get("node") != self.node}
        out: list[tuple[Compare, Op]] = []
        for key, instance in wanted.items():
            have = mine.get(key)
            if key in others or (have is not None and have.json().get("instance") == instance):
                continue   # held here already, or a clash made without a claim (the caller logs it)
            out.append((Compare.unchanged(key, have.mod_revision) if have else Compare.missing(key),
                        put_json(key, {"node": self.node, "instance": instance})))
        for key, kv in mine.items():
            if key not in wanted and key not in held:
                out.append((Compare.unchanged(key, kv.mod_revision), Delete(key)))
        return out

    @staticmethod
    def clashes(views: list[dict[str, Any]], kvs: list[Any], node: str) -> list[str]:
        others = {kv.key: kv.json() for kv in kvs if kv.json().get("node") != node}
        return [f"{key} ({instance} here, {others[key].get('instance')} on node {others[key].get('node')})"
                for key, instance in wanted_keys(views).items() if key in others]

