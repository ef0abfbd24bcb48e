"""NICs added to and removed from an instance after create (`ctctl nic add/remove`,
POST/DELETE /1.0/instances/{ref}/nics).

Contract: the request is checked like a NIC of a create request (nics.check_nic) before anything
changes. A stopped instance gets or loses the NIC in the state only; its next start plugs it. A
running container gets it at once: the veth, its host side and filters, then the interface
inside with its addresses (eth<n>, n the lowest free number); removal takes the host end (the
container's end goes with it), the filters, the shaping and the addresses back to the pool.
A failure half-way leaves neither a link nor a state row. A running VM is refused (QEMU's NIC
hot-plug is not wired): stop it first. The guest's network files are written again either way,
so the NIC is kept across restarts.

How a tenant would abuse it: a NIC on a network the operator did not give it (adding NICs is an
operator's, as at create: ctd/remote/policy.py); a NIC without anti-spoofing (filter false is an
admin's); many NICs to exhaust a pool or the host's interfaces (at most MAX_NICS per instance,
addresses from ctd's IPAM only); an MTU above the network's (400).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

from ctd.errors import Conflict, InvalidRequest, NotFound
from ctd.instance.rollback import Rollback
from ctd.network import nics
from ctd.state import InstanceRecord, InstanceType, NicRecord

if TYPE_CHECKING:
    from ctd.instance.manager import InstanceManager

log = logging.getLogger(__name__)
NIC_NAME = re.compile(r"^eth([0-9]{1,2})$")


def _running_pid(instances: InstanceManager, rec: InstanceRecord) -> int | None:
    """The init pid of a running container; None when rec is stopped; a running VM: 409."""
    if not instances.is_running(rec):
        return None
    if rec.type is InstanceType.VM:
        raise Conflict(f"{rec.name} is a running VM: NICs of a VM change while it is stopped "
                       f"('ctctl stop {rec.name}' first)")
    pid = instances.kinds.container.init_pid(rec)
    if pid is None:
        raise Conflict(f"{rec.name} is not running")
    return pid


def _view(instances: InstanceManager, rec: InstanceRecord, idx: int) -> dict[str, Any]:
    return next(n for n in instances.network.counters(rec) if n["name"] == f"eth{idx}")


async def _write_guest(instances: InstanceManager, rec: InstanceRecord) -> None:
    """The guest's network files (busybox's network.sh, networkd's, a VM's seed) as the NICs now are."""
    await instances.kind_of(rec).write_guest(rec, rec, None, [], Rollback(rec.name))


async def add_nic(instances: InstanceManager, ref: str, body: Any) -> dict[str, Any]:
    """Add a NIC; returns it as `status` shows it."""
    network, db = instances.network, instances.db
    rec = instances.get(ref)
    async with instances.lock(rec):
        rec = instances.get(rec.id)
        req = network.check_nic(body)
        records = db.nics_of(rec.id)
        if len(records) >= nics.MAX_NICS:
            raise Conflict(f"{rec.name} has {nics.MAX_NICS} NICs already, the most an instance may have")
        pid = _running_pid(instances, rec)
        await asyncio.to_thread(network.prepare, [req])
        if network.claim is not None:   # in a cluster: its MAC and addresses taken cluster-wide first
            try:
                await network.claim(rec.name, rec.id, [req], nics.free_idx(records))
            finally:
                network.claimed(rec.name)   # kept by the next renewal if the NIC is written below
        with db.transaction():
            nic = network.allocate(rec.id, [req], nics.free_idx(records))[0]
        await asyncio.to_thread(network.dhcp.refresh)
        try:
            if pid is not None:
                inside = await asyncio.to_thread(network.plumbing.plug, rec, nic, pid)
                try:
                    await instances.kinds.container.configure_nics(rec, [inside])
                except BaseException:
                    await asyncio.to_thread(network.plumbing.unplug, rec, nic)
                    raise
        except BaseException:
            with db.transaction():
                db.delete_nic(rec.id, nic.idx)
            raise
        await _write_guest(instances, rec)
        await asyncio.to_thread(network.forwards.apply)
        return _view(instances, rec, nic.idx)


def find_nic(db_nics: list[NicRecord], rec: InstanceRecord, which: str) -> NicRecord:
    """A NIC by its name inside (eth1)."""
    match = NIC_NAME.match(which)
    if match is None:
        raise InvalidRequest(f"invalid NIC {which!r}: name it as inside, e.g. eth1 ('ctctl status {rec.name}')")
    for nic in db_nics:
        if nic.idx == int(match.group(1)):
            return nic
    raise NotFound(f"{rec.name} has no NIC {which}; 'ctctl status {rec.name}' shows its NICs")


async def remove_nic(instances: InstanceManager, ref: str, which: str) -> None:
    """Remove a NIC: from the running container at once, its addresses back to the pool."""
    network, db = instances.network, instances.db
    rec = instances.get(ref)
    async with instances.lock(rec):
        rec = instances.get(rec.id)
        nic = find_nic(db.nics_of(rec.id), rec, which)
        pid = _running_pid(instances, rec)
        if pid is not None:
            last = len(db.nics_of(rec.id)) == 1
            await asyncio.to_thread(network.plumbing.unplug, rec, nic, not last)
        with db.transaction():
            db.delete_nic(rec.id, nic.idx)
        try:
            await _write_guest(instances, rec)
        except Exception:  # noqa: BLE001 — the NIC is gone; the guest's file names it until the next write
            log.exception("%s: writing its network files after removing %s failed", rec.name, which)
        await asyncio.to_thread(network.forwards.apply)  # a forward follows its first IPv4 address
