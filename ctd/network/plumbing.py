"""The host side of NICs while their instance runs: veths (containers) and taps (VMs) plugged
into bridges, the host end's addresses, routes, NDP proxies and rate, the anti-spoofing filters,
the network namespace held for the counters, and the counters themselves.

setup/setup_taps undo what they did when they fail; teardown saves the counters before the
links go. Runs in threads (netlink, sysctl, nft): the filter set is guarded by a lock.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any, cast

from ctd import faults
from ctd.network import fwstore, netlink, nft, nics, sysctl, tc
from ctd.network.firewall import NicFirewall
from ctd.network.netlink import InsideNic
from ctd.network.networks import Networks
from ctd.state import InstanceRecord, NicMode, NicRecord, StateDB


class Plumbing:
    """Links, filters and held namespaces of the running instances' NICs."""

    def __init__(self, db: StateDB, networks: Networks, prefix: str, nft_table: str) -> None:
        self.db = db
        self.networks = networks
        self.prefix = prefix
        self.netns: dict[int, int] = {}  # instance id -> netns fd held while it runs
        self.filters: dict[str, nft.NicFilter] = {}
        self.firewalls: dict[str, NicFirewall] = {}   # host NIC name -> its instance's firewall, when on
        self.nft = nft.Filters(nft_table)
        self._filter_lock = threading.Lock()

    # ------------------------------------------------------------- interface names

    def host_name(self, nic: NicRecord) -> str:
        """The host end: 've<ID>.<n>' (at most 14 characters for ids below 2**31)."""
        return f"{self.prefix}{nic.instance_id}.{nic.idx}"

    def temp_name(self, nic: NicRecord) -> str:
        """The container end until it is renamed inside (names are per namespace, but it is
        born on the host)."""
        return f"{self.prefix}p{nic.instance_id}.{nic.idx}"

    def inside(self, nic: NicRecord) -> InsideNic:
        """How nic looks inside its instance."""
        net = None
        if nic.mode is not NicMode.ROUTED and nic.network:
            net = self.networks.network(nic.network)
        return nics.inside(nic, net, self.temp_name(nic))

    # ------------------------------------------------------------- containers

    def setup(self, rec: InstanceRecord, pid: int) -> list[InsideNic]:
        """Host side of every NIC of rec, whose init is pid; returns what to apply inside."""
        records = self.db.nics_of(rec.id)
        if not records:
            return []
        self.netns[rec.id] = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            for nic in records:
                self._veth(nic, pid)
            self.refilter(records, add=True)
        except BaseException:
            self.teardown(rec)
            raise
        return [dataclasses.replace(self.inside(n), fresh=True, own_link_local=nics.own_link_local(rec))
                for n in records]

    def _veth(self, nic: NicRecord, pid: int) -> None:
        bridge, mtu = self._bridge_for(nic)
        netlink.create_veth(self.host_name(nic), f"eth{nic.idx}", nic.mac, pid, bridge, mtu)
        faults.point("network.after_veth")
        self._port_vlan(nic, bridge)
        self.host_side(nic)

    def _port_vlan(self, nic: NicRecord, bridge: str | None) -> None:
        if nic.vlan is not None and bridge is not None:
            netlink.set_port_vlan(bridge, self.host_name(nic), nic.vlan)

    def plug(self, rec: InstanceRecord, nic: NicRecord, pid: int) -> InsideNic:
        """A NIC added to a running container (init pid): its veth, host side and filters;
        returns what to apply inside. Nothing of it stays when a step fails."""
        held = rec.id in self.netns
        if not held:
            self.netns[rec.id] = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._veth(nic, pid)
            self.refilter([nic], add=True)
        except BaseException:
            self.unplug(rec, nic, keep_netns=held)
            raise
        return dataclasses.replace(self.inside(nic), fresh=True, own_link_local=nics.own_link_local(rec))

    def unplug(self, rec: InstanceRecord, nic: NicRecord, keep_netns: bool = True) -> None:
        """A NIC taken from a running instance: its host end (the container's end goes with it),
        shaping, NDP proxies and filters."""
        netlink.delete_link(self.host_name(nic))
        if nic.rate:
            netlink.delete_link(tc.ifb_name(self.host_name(nic)))
        self._ndp_proxies(nic, [], nics.v6(nic.addresses))
        self.refilter([nic], add=False)
        if not keep_netns:
            fd = self.netns.pop(rec.id, None)
            if fd is not None and fd >= 0:
                os.close(fd)

    def _bridge_for(self, nic: NicRecord) -> tuple[str | None, int]:
        """The bridge a bridged NIC plugs into, brought up (after a reboot it may be gone), and
        the MTU of its network."""
        if nic.mode is not NicMode.BRIDGED:
            return None, nic.mtu or 1500
        net = self.networks.network(cast(str, nic.network))  # a bridged NIC always has a network
        if not os.path.exists(f"/sys/class/net/{net.bridge}"):  # ~1 ms of netlink saved per start
            self.networks.bring_up(net)
        return net.bridge, nic.mtu or net.mtu

    def host_side(self, nic: NicRecord, removed: list[str] | None = None) -> None:
        """Host end of a plugged NIC; removed: addresses just taken away (live --ipdel)."""
        if nic.mode is NicMode.ROUTED:
            host = self.host_name(nic)
            netlink.add_address(host, f"{nics.ROUTED_GATEWAY4}/32")
            # The host end must answer ARP for the gateway only: no proxy for anyone else.
            for key, value in (("proxy_arp", "0"), ("rp_filter", "1")):
                sysctl.write(f"net/ipv4/conf/{host}/{key}", value)
            if nics.v6(nic.addresses):
                sysctl.write(f"net/ipv6/conf/{host}/accept_ra", "0")
                netlink.add_address(host, f"{nics.ROUTED_GATEWAY6}/64")
            netlink.replace_host_routes(host, nic.addresses)
            self._ndp_proxies(nic, nics.v6(nic.addresses), nics.v6(removed or []))
        if nic.rate:
            tc.set_rate(self.host_name(nic), nic.rate)

    def _ndp_proxies(self, nic: NicRecord, add: list[str], remove: list[str]) -> None:
        """A routed NIC that took its addresses from a network: the host answers NDP on that
        network's bridge for the container's own v6 addresses (and only those), so the LAN finds
        them at the host, which routes them to the veth (once the admin enables forwarding)."""
        if nic.mode is not NicMode.ROUTED or nic.network is None or not (add or remove):
            return
        net = self.db.get_network(nic.network)
        if net is None:
            return
        bridge = net.bridge
        if add:
            # proxy NDP answers only on an interface that forwards; per-interface forwarding on
            # IPv6 makes it a router for NDP, it does not switch on forwarding for the host.
            for key in ("forwarding", "proxy_ndp"):
                sysctl.write(f"net/ipv6/conf/{bridge}/{key}", "1")
        netlink.set_ndp_proxies(bridge, add, remove)

    # ------------------------------------------------------------- anti-spoofing filters

    def refilter(self, records: list[NicRecord], add: bool) -> None:
        """Drop the filters of records' NICs, add them again when add (and the NIC filters),
        and write the table."""
        with self._filter_lock:  # starts and stops run in threads of their own
            settings = fwstore.settings(self.db, records[0].instance_id) if records and add else None
            rules = tuple(fwstore.rules(self.db, records[0].instance_id)) if settings and settings.enabled else ()
            for nic in records:
                self.filters.pop(self.host_name(nic), None)
                self.firewalls.pop(self.host_name(nic), None)
                if add and nic.filter:
                    self.filters[self.host_name(nic)] = nft.NicFilter(
                        self.host_name(nic), nic.mac, tuple(nic.addresses), nic.mode is NicMode.BRIDGED)
                if settings and settings.enabled:
                    self.firewalls[self.host_name(nic)] = NicFirewall(
                        self.host_name(nic), nic.mode is NicMode.BRIDGED, nic.instance_id, settings, rules)
            self.nft.apply(self.filters, self.firewalls)

    def refirewall(self, instance_id: int) -> None:
        """Write an instance's firewall again after a change (nothing to do while it is stopped:
        its start writes it)."""
        if instance_id in self.netns:
            self.refilter(self.db.nics_of(instance_id), add=True)

    def remove_filters(self) -> None:
        """No container runs any more: the anti-spoofing table goes (made again at next start)."""
        self.filters.clear()
        self.firewalls.clear()
        self.nft.remove()

    # ------------------------------------------------------------- adopt and stop

    def adopt(self, rec: InstanceRecord, pid: int) -> None:
        """A container that kept running across a ctd restart: hold its netns, filter it again."""
        records = self.db.nics_of(rec.id)
        if records:
            try:
                self.netns[rec.id] = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return
            self.refilter(records, add=True)

    def teardown(self, rec: InstanceRecord, gone: bool = False) -> None:
        """Save the counters, then let the NICs go with the namespace we held. gone: the
        container has exited, so its veths vanish with the namespace (deleting them ourselves
        costs ~20 ms a NIC)."""
        records = self.db.nics_of(rec.id)
        for nic in records:
            stats = netlink.link_stats(self.host_name(nic))
            if stats:
                # The host end receives what the container sends: swap to the container's view.
                nic.tx_bytes += stats["rx_bytes"]
                nic.rx_bytes += stats["tx_bytes"]
                nic.tx_packets += stats["rx_packets"]
                nic.rx_packets += stats["tx_packets"]
                self.db.update_nic(nic)
            if not gone:
                netlink.delete_link(self.host_name(nic))
            if nic.rate:
                netlink.delete_link(tc.ifb_name(self.host_name(nic)))
            self._ndp_proxies(nic, [], nics.v6(nic.addresses))
        fd = self.netns.pop(rec.id, None)
        if fd is not None and fd >= 0:
            os.close(fd)
        if records:
            self.refilter(records, add=False)

    # ------------------------------------------------------------- VM taps

    def setup_taps(self, rec: InstanceRecord) -> None:
        """A tap per NIC of a VM, on its bridge, filtered and shaped like a container's veth."""
        records = self.db.nics_of(rec.id)
        try:
            for nic in records:
                bridge, mtu = self._bridge_for(nic)
                netlink.create_tap(self.host_name(nic), nic.mac, bridge, mtu)
                self._port_vlan(nic, bridge)
                self.host_side(nic)
            self.refilter(records, add=True)
            self.netns[rec.id] = -1  # counters are live while the taps exist
        except BaseException:
            self.teardown(rec)
            raise

    def adopt_taps(self, rec: InstanceRecord) -> None:
        records = self.db.nics_of(rec.id)
        if records:
            self.netns[rec.id] = -1
            self.refilter(records, add=True)

    # ------------------------------------------------------------- counters

    def counters(self, rec: InstanceRecord) -> list[dict[str, Any]]:
        return [nic_counters(nic, host, netlink.link_stats(host) if live else None)
                for nic, host, live in self.counter_sources(rec)]

    def counter_sources(self, rec: InstanceRecord) -> list[tuple[NicRecord, str, bool]]:
        """Per NIC: its row, its host end's name, whether that end exists now (its live counters
        are then read from sysfs, which a thread may do: nic_counters)."""
        live = rec.id in self.netns
        return [(nic, self.host_name(nic), live) for nic in self.db.nics_of(rec.id)]


def nic_counters(nic: NicRecord, host: str, live: dict[str, int] | None) -> dict[str, Any]:
    """How a NIC is shown: its row, and the counters of past runs plus this run's (live)."""
    live = live or {"rx_bytes": 0, "tx_bytes": 0, "rx_packets": 0, "tx_packets": 0}
    return {
        "name": f"eth{nic.idx}", "host_name": host, "network": nic.network,
        "mode": nic.mode.value,
        "mac": nic.mac, "addresses": nic.addresses, "filter": nic.filter, "rate": nic.rate,
        "mtu": nic.mtu, "vlan": nic.vlan,
        "rx_bytes": nic.rx_bytes + live["tx_bytes"], "tx_bytes": nic.tx_bytes + live["rx_bytes"],
        "rx_packets": nic.rx_packets + live["tx_packets"], "tx_packets": nic.tx_packets + live["rx_packets"],
        # drops of this run only (not kept across stops): the host end's, seen from inside
        "rx_dropped": live.get("tx_dropped", 0), "tx_dropped": live.get("rx_dropped", 0),
    }
