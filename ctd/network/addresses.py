"""Live changes to an instance's first NIC: --ipadd, --ipdel and --rate (`ctctl set`).

check_change refuses everything change would refuse before anything is changed; change writes
the state in one transaction, then (when the instance runs) the host side and the filters, and
returns what to apply inside; restore_nics puts NIC 0 back as it was (a set that failed half-way).
"""

from __future__ import annotations

import dataclasses
from typing import cast

from ctd.errors import Conflict, InvalidRequest
from ctd.network import ipam, nics, tc
from ctd.network.netlink import InsideNic
from ctd.network.networks import Networks
from ctd.network.plumbing import Plumbing
from ctd.state import InstanceRecord, NicMode, NicRecord, StateDB

Rate = int | None | str  # bytes per second, None (no limit) or "keep" (leave it as it is)


class AddressChanges:
    """--ipadd/--ipdel/--rate on NIC 0 of an instance."""

    def __init__(self, db: StateDB, networks: Networks, plumbing: Plumbing) -> None:
        self.db = db
        self.networks = networks
        self.plumbing = plumbing

    def check_change(self, rec: InstanceRecord, ipadd: list[str], ipdel: list[str], rate: Rate,
                     running: bool) -> None:
        """Everything change() would refuse, refused before anything is changed."""
        records = self.db.nics_of(rec.id)
        if not records:
            if not ipadd:
                raise InvalidRequest(f"{rec.name} has no network interface; add addresses with --ipadd")
            if running:
                raise Conflict(f"{rec.name} has no NIC yet; stop it, add addresses, start it again")
            if ipdel:
                raise InvalidRequest(f"{ipdel[0]} is not an address of {rec.name}")
        nic = records[0] if records else None
        net = self.db.get_network(nic.network) if nic and nic.network else None
        for text in ipdel:
            if str(ipam.parse_address(text)) not in (nic.addresses if nic else []):
                raise InvalidRequest(f"{text} is not an address of {rec.name}")
        seen: set[str] = set()
        for text in ipadd:
            address = ipam.parse_address(text)
            if str(address) in seen:
                raise InvalidRequest(f"{address} is given twice")
            seen.add(str(address))
            if net is not None:
                nics.check_in_network(net, address)
            owner = self.db.address_owner(str(address))
            if owner is not None and not (owner == rec.name and str(address) in ipdel):
                raise Conflict(f"address {address} is already used by another instance; choose another")

    def restore_nics(self, rec: InstanceRecord, before: list[NicRecord], running: bool) -> list[InsideNic]:
        """NIC 0 back to its addresses and rate of before (a set that failed half-way); a NIC
        that change() made goes again. Returns what to apply inside when running."""
        now = self.db.nics_of(rec.id)
        if not before:
            with self.db.transaction():
                for nic in now:
                    self.db.delete_nic(rec.id, nic.idx)
            return []
        if not now:
            return []
        old, cur = before[0], now[0]
        return self.change(rec, [a for a in old.addresses if a not in cur.addresses],
                           [a for a in cur.addresses if a not in old.addresses], old.rate, running)

    def change(self, rec: InstanceRecord, ipadd: list[str], ipdel: list[str], rate: Rate,
               running: bool) -> list[InsideNic]:
        """--ipadd/--ipdel/--rate on NIC 0; returns what to apply inside when running."""
        self.check_change(rec, ipadd, ipdel, rate, running)
        records = self.db.nics_of(rec.id)
        if not records:
            with self.db.transaction():
                first = nics.NicRequest(None, NicMode.ROUTED, ipadd, True, None if rate == "keep" else _rate(rate))
                nics.allocate(self.db, self.networks, rec.id, [first])
            return []
        nic = records[0]
        removed = self._write(rec, nic, ipadd, ipdel, rate)
        if not running:
            return []
        self.plumbing.host_side(nic, removed)
        if rate != "keep" and nic.rate is None:
            tc.set_rate(self.plumbing.host_name(nic), None)
        self.plumbing.refilter([nic], add=True)
        return [dataclasses.replace(self.plumbing.inside(nic), own_link_local=nics.own_link_local(rec))]

    def _write(self, rec: InstanceRecord, nic: NicRecord, ipadd: list[str], ipdel: list[str],
               rate: Rate) -> list[str]:
        """The change in the state, one transaction; returns the addresses taken away."""
        net = self.db.get_network(nic.network) if nic.network else None
        removed = []
        with self.db.transaction():
            for text in ipdel:
                address = str(ipam.parse_address(text))
                if address not in nic.addresses:
                    raise InvalidRequest(f"{address} is not an address of {rec.name}")
                self.db.delete_address(address)
                nic.addresses.remove(address)
                removed.append(address)
            for text in ipadd:
                parsed = ipam.parse_address(text)
                if net is not None:
                    nics.check_in_network(net, parsed)
                self.db.add_address(str(parsed), rec.id, nic.idx, nic.network)
                nic.addresses.append(str(parsed))
            if rate != "keep":
                nic.rate = _rate(rate)
                self.db.update_nic(nic)
        return removed


def _rate(rate: Rate) -> int | None:
    """A rate the caller has found not to be "keep": bytes per second or None (no limit)."""
    return cast(int | None, rate)
