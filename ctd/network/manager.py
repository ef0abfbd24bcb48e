"""Host networks (bridges), per-instance NICs, addresses, anti-spoofing, rate limits, counters."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import ipaddress
import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import Any

from ctd import validate
from ctd import faults
from ctd.errors import Conflict, InvalidRequest, NotFound, OperationFailed
from ctd.network import ipam, netlink, nft, tc
from ctd.network.netlink import InsideNic
from ctd.state import InstanceRecord, NetworkRecord, NicMode, NicRecord, StateDB

log = logging.getLogger("ctd.network")
DEFAULT_NETWORK = "ctbr0"
ROUTED_GATEWAY4 = "169.254.0.1"
ROUTED_GATEWAY6 = "fe80::1"  # link-local on the host end of a routed NIC: the container's v6 default route
_IFNAME = re.compile(r"^[a-z][a-z0-9-]{0,14}$")
MAX_NICS = 8


@dataclass
class NicRequest:
    network: str | None
    mode: NicMode
    addresses: list[str]
    filter: bool
    rate: int | None


IPV6_MIN_MTU = 1280  # below it, the kernel gives a link no IPv6 at all


def _sysctl(key: str, value: str) -> None:
    """Write /proc/sys/<key> (e.g. 'net/ipv6/conf/ctbr0/accept_ra')."""
    with open(f"/proc/sys/{key}", "w") as fh:
        fh.write(value)


IP_FORWARD = "net/ipv4/ip_forward"


def enable_ipv4_forwarding() -> None:
    """The host (this network namespace) routes IPv4 between its interfaces."""
    with open(f"/proc/sys/{IP_FORWARD}") as fh:
        if fh.read().strip() == "1":
            return
    _sysctl(IP_FORWARD, "1")
    log.info("IPv4 forwarding enabled (a NAT network needs it)")


def _v6(addresses: list[str]) -> list[str]:
    return [a for a in addresses if ipaddress.ip_address(a).version == 6]


def _own_link_local(rec: InstanceRecord) -> bool:
    """ctd gives a NIC its link-local address (no DAD wait) unless systemd-networkd in the guest
    manages it: networkd fails the link when it finds the address mode changed under it."""
    return rec.options.get("network_style") != "networkd"


def mac_for(instance_id: int, idx: int, salt: int = 0) -> str:
    """A stable locally administered unicast MAC for NIC idx of an instance."""
    digest = hashlib.sha256(f"ctd:{instance_id}:{idx}:{salt}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


class NetworkManager:
    def __init__(self, db: StateDB, nft_table: str, nic_prefix: str = "ve",
                 default_network: str = DEFAULT_NETWORK) -> None:
        self.db = db
        self.default_network = default_network  # made on first use
        self.nft_table = nft_table
        if not re.fullmatch(r"[a-z]{2}", nic_prefix):
            raise InvalidRequest(f"nic_prefix must be two lowercase letters, not {nic_prefix!r}")
        if not isinstance(default_network, str) or (default_network and not _IFNAME.match(default_network)):
            raise InvalidRequest(f"default_network must be a network name (1-15 lowercase letters, digits and "
                                 f"'-') or \"\" for none, not {default_network!r}")
        self.default_network = default_network  # "" : no NIC unless create asks for one
        self.prefix = nic_prefix
        self.netns: dict[int, int] = {}  # instance id -> netns fd held while it runs
        self.filters: dict[str, nft.NicFilter] = {}
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

    # ------------------------------------------------------------- networks

    def network(self, name: str) -> NetworkRecord:
        rec = self.db.get_network(name)
        if rec is None:
            raise NotFound(f"no network named {name!r}; 'ctctl network list' shows them")
        return rec

    def view(self, net: NetworkRecord) -> dict[str, Any]:
        return {"name": net.name, "bridge": net.bridge, "subnet": net.subnet4, "ipv6": net.subnet6,
                "gateway": str(ipam.gateway_of(ipaddress.ip_network(net.subnet4))) if net.subnet4 else None,
                "gateway6": str(ipam.gateway_of(ipaddress.ip_network(net.subnet6))) if net.subnet6 else None,
                "nat": net.nat, "mtu": net.mtu, "created_at": net.created_at, "used_by": self.db.network_users(net.name),
                "addresses_used": len(self.db.addresses_in(net.name))}

    def check_create_network(self, body: Any) -> dict[str, Any]:
        body = validate.body_fields(body, {"name", "subnet", "ipv6", "nat", "mtu"}, {"name"})
        name = body["name"]
        if not isinstance(name, str) or not _IFNAME.match(name):
            raise InvalidRequest(f"invalid network name {name!r}: 1-15 lowercase letters, digits and '-', "
                                 "starting with a letter (it names the bridge)")
        if name == "none":
            raise InvalidRequest("'none' is not a network name: 'create --net none' means no NIC")
        if self.db.get_network(name):
            raise Conflict(f"network {name!r} exists already")
        if name in netlink.link_names():
            raise Conflict(f"the host already has an interface named {name!r}; choose another name")
        nat = validate.boolean(body, "nat")
        taken = netlink.host_routes() + [ipaddress.ip_network(n.subnet4) for n in self.db.list_networks() if n.subnet4] \
            + [ipaddress.ip_network(n.subnet6) for n in self.db.list_networks() if n.subnet6]
        if body.get("subnet") is not None:
            if not isinstance(body["subnet"], str):
                raise InvalidRequest("subnet must be a string like 10.20.0.0/24")
            subnet4 = ipam.parse_subnet(body["subnet"])
            if subnet4.version != 4:
                raise InvalidRequest("subnet must be IPv4; give the IPv6 one as ipv6")
        else:
            subnet4 = ipam.free_private_subnet(taken)
        clash = ipam.overlaps(subnet4, taken)
        if clash is not None:
            raise Conflict(f"subnet {subnet4} overlaps {clash}, which the host or another network uses")
        subnet6 = None
        if body.get("ipv6") is not None:
            if not isinstance(body["ipv6"], str):
                raise InvalidRequest("ipv6 must be a string like fd42:1::/64")
            subnet6 = ipam.parse_subnet(body["ipv6"], "ipv6 subnet")
            if subnet6.version != 6:
                raise InvalidRequest("ipv6 must be an IPv6 subnet like fd42:1::/64")
            clash = ipam.overlaps(subnet6, taken)
            if clash is not None:
                raise Conflict(f"ipv6 subnet {subnet6} overlaps {clash}")
        mtu = body.get("mtu", 1500)
        low = IPV6_MIN_MTU if subnet6 else 576
        if not isinstance(mtu, int) or isinstance(mtu, bool) or not low <= mtu <= 65535:
            raise InvalidRequest(f"invalid mtu {mtu!r}: a number from {low} to 65535")
        return {"name": name, "subnet4": str(subnet4), "subnet6": str(subnet6) if subnet6 else None, "nat": nat,
                "mtu": mtu}

    def create_network(self, checked: dict[str, Any]) -> dict[str, Any]:
        net = NetworkRecord(name=checked["name"], bridge=checked["name"], subnet4=checked["subnet4"],
                            subnet6=checked["subnet6"], nat=checked["nat"], mtu=checked["mtu"],
                            created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        try:
            self.bring_up(net)
            self.db.add_network(net)
        except BaseException:  # nothing of a half-made network stays (a bridge once did)
            if net.nat:
                with contextlib.suppress(Exception):
                    self._nat(net, False)
            with contextlib.suppress(Exception):
                netlink.delete_link(net.bridge)
            raise
        return self.view(net)

    def bring_up(self, net: NetworkRecord) -> None:
        addresses = []
        for subnet in (net.subnet4, net.subnet6):
            if subnet:
                network = ipaddress.ip_network(subnet)
                addresses.append(f"{ipam.gateway_of(network)}/{network.prefixlen}")
        netlink.ensure_bridge(net.bridge, addresses, net.mtu)
        # Router advertisements from a tenant must never configure the host. (A link with an
        # MTU below 1280, IPv6's minimum, has no IPv6 at all.)
        if os.path.isdir(f"/proc/sys/net/ipv6/conf/{net.bridge}"):
            _sysctl(f"net/ipv6/conf/{net.bridge}/accept_ra", "0")
        if net.nat:
            self._nat(net, True)

    def _nat(self, net: NetworkRecord, on: bool) -> None:
        """Masquerade the network's subnet toward the outside (off unless asked for)."""
        table = f"{self.nft_table}_nat_{net.name.replace('-', '_')}"
        # made (empty) first so the delete never fails: one transaction either way
        script = f"table ip {table} {{}}\ndelete table ip {table}\n"
        if on:
            script += (f"table ip {table} {{\n chain post {{ type nat hook postrouting priority 100;\n"
                       f"  ip saddr {net.subnet4} ip daddr != {net.subnet4} masquerade\n }}\n}}\n")
        try:
            nft.run(script)
        except OSError as exc:
            raise OperationFailed(f"nftables refused the NAT rules of {net.name}: {exc}") from None
        if on:
            # Masquerading needs the host to forward. ip_forward is per network namespace, and
            # it stays on when the last NAT network goes: other routing on the host may rely
            # on it by then (README: Networking).
            enable_ipv4_forwarding()

    def delete_network(self, name: str) -> None:
        net = self.network(name)
        users = self.db.network_users(name)
        if users:
            raise Conflict(f"network {name!r} is used by {', '.join(users)}; remove their NICs or destroy them first")
        if net.nat:
            self._nat(net, False)
        netlink.delete_link(net.bridge)
        self.db.delete_network(name)

    def ensure_default(self) -> NetworkRecord:
        """The default network, made on first use (a free private /24, no NAT)."""
        net = self.db.get_network(self.default_network)
        if net is None:
            self.create_network(self.check_create_network({"name": self.default_network}))
            net = self.network(self.default_network)
        return net

    def restore(self) -> None:
        """After a reboot bridges are gone: bring every network back up."""
        for net in self.db.list_networks():
            self.bring_up(net)

    # ------------------------------------------------------------- NICs at create

    def check_nics(self, raw: Any) -> list[NicRequest]:
        """NICs asked for at create; none given (None): one on the default network, if the
        daemon has one; an empty list: no NIC."""
        if raw is None:
            raw = [{}] if self.default_network else []
        if not isinstance(raw, list) or len(raw) > MAX_NICS:
            raise InvalidRequest(f"nics must be a list of at most {MAX_NICS} objects")
        out = []
        for item in raw:
            item = validate.body_fields(item, {"network", "mode", "addresses", "filter", "rate"})
            mode_text = item.get("mode", "bridged")
            if mode_text not in ("bridged", "routed"):
                raise InvalidRequest(f"invalid NIC mode {mode_text!r}: use bridged or routed")
            mode = NicMode(mode_text)
            network = item.get("network")
            if network is not None and not isinstance(network, str):
                raise InvalidRequest("network must be a network name")
            if mode is NicMode.BRIDGED and network is None:
                if not self.default_network:
                    raise InvalidRequest("this ctd has no default network (default_network in ctd.toml): "
                                         "name the NIC's network, e.g. --net lan0")
                network = self.default_network
            if network is not None and network != self.default_network:
                self.network(network)
            addresses = [str(ipam.parse_address(a)) for a in validate.string_list(item, "addresses")]
            if mode is NicMode.ROUTED and network is None and not addresses:
                raise InvalidRequest("a routed NIC needs addresses (--ipadd) or a network to take them from")
            rate = tc.parse_rate(item["rate"]) if item.get("rate") is not None else None
            out.append(NicRequest(network, mode, addresses, validate.boolean(item, "filter", True), rate))
        return out

    def prepare(self, requests: list[NicRequest]) -> None:
        """Make the default network if a NIC needs it and it is not there yet (netlink: call it
        in a thread, before allocate, which runs on the event loop)."""
        if any(r.network and r.network == self.default_network for r in requests):
            self.ensure_default()

    def allocate(self, instance_id: int, requests: list[NicRequest]) -> list[NicRecord]:
        """Write the NICs and their addresses (inside the caller's transaction)."""
        nics = []
        macs = self.db.used_macs()
        for idx, req in enumerate(requests):
            net = None
            if req.network is not None:
                net = self.ensure_default() if req.network == self.default_network else self.network(req.network)
            addresses = list(req.addresses)
            if net is not None:
                for text in addresses:
                    address = ipaddress.ip_address(text)
                    subnet = net.subnet4 if address.version == 4 else net.subnet6
                    if subnet is None:
                        raise InvalidRequest(f"network {net.name} has no IPv{address.version} subnet for {text}")
                    ipam.check_in(ipaddress.ip_network(subnet), address)
                if not addresses:
                    for subnet in (net.subnet4, net.subnet6):
                        if subnet:
                            used = [ipaddress.ip_address(a) for a in self.db.addresses_in(net.name)]
                            addresses.append(str(ipam.allocate(ipaddress.ip_network(subnet), used)))
            salt = 0
            while (mac := mac_for(instance_id, idx, salt)) in macs:
                salt += 1
            macs.add(mac)
            nic = NicRecord(instance_id=instance_id, idx=idx, network=net.name if net else None, mode=req.mode,
                            mac=mac, filter=req.filter, rate=req.rate, addresses=addresses)
            self.db.add_nic(nic)
            nics.append(nic)
        return nics

    # ------------------------------------------------------------- at start and stop

    def _inside(self, nic: NicRecord) -> InsideNic:
        name = f"eth{nic.idx}"
        if nic.mode is NicMode.ROUTED:
            cidrs = [f"{a}/{32 if ipaddress.ip_address(a).version == 4 else 128}" for a in nic.addresses]
            has4 = any(ipaddress.ip_address(a).version == 4 for a in nic.addresses)
            return InsideNic(self.temp_name(nic), name, cidrs, ROUTED_GATEWAY4 if has4 else None,
                             ROUTED_GATEWAY6 if _v6(nic.addresses) else None, onlink_gateway=True, mac=nic.mac)
        net = self.network(nic.network) if nic.network else None
        cidrs, gw4, gw6 = [], None, None
        for address in nic.addresses:
            version = ipaddress.ip_address(address).version
            subnet = (net.subnet4 if version == 4 else net.subnet6) if net else None
            prefix = ipaddress.ip_network(subnet).prefixlen if subnet else (32 if version == 4 else 128)
            cidrs.append(f"{address}/{prefix}")
            if subnet and version == 4:
                gw4 = str(ipam.gateway_of(ipaddress.ip_network(subnet)))
            if subnet and version == 6:
                gw6 = str(ipam.gateway_of(ipaddress.ip_network(subnet)))
        return InsideNic(self.temp_name(nic), name, cidrs, gw4, gw6, mac=nic.mac,
                         has_ipv6=net is None or net.mtu >= IPV6_MIN_MTU)

    def inside_config(self, rec: InstanceRecord) -> list[InsideNic]:
        """How the instance's NICs look inside (for the guest's own network files)."""
        return [self._inside(n) for n in self.db.nics_of(rec.id)]

    def setup(self, rec: InstanceRecord, pid: int) -> list[InsideNic]:
        """Host side of every NIC of rec, whose init is pid; returns what to apply inside."""
        nics = self.db.nics_of(rec.id)
        if not nics:
            return []
        self.netns[rec.id] = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            for nic in nics:
                netlink.create_veth(self.host_name(nic), f"eth{nic.idx}", nic.mac, pid, *self._bridge_for(nic))
                faults.point("network.after_veth")
                self._host_side(nic)
            self._refilter(nics, add=True)
        except BaseException:
            self.teardown(rec)
            raise
        return [dataclasses.replace(self._inside(n), fresh=True, own_link_local=_own_link_local(rec)) for n in nics]

    def _bridge_for(self, nic: NicRecord) -> tuple[str | None, int]:
        """The bridge a bridged NIC plugs into, brought up (after a reboot it may be gone), and
        the MTU of its network."""
        if nic.mode is not NicMode.BRIDGED:
            return None, 1500
        net = self.network(nic.network)  # type: ignore[arg-type]
        if not os.path.exists(f"/sys/class/net/{net.bridge}"):  # ~1 ms of netlink saved per start
            self.bring_up(net)
        return net.bridge, net.mtu

    def _host_side(self, nic: NicRecord, removed: list[str] | None = None) -> None:
        """Host end of a plugged NIC; removed: addresses just taken away (live --ipdel)."""
        if nic.mode is NicMode.ROUTED:
            host = self.host_name(nic)
            netlink.add_address(host, f"{ROUTED_GATEWAY4}/32")
            # The host end must answer ARP for the gateway only: no proxy for anyone else.
            for key, value in (("proxy_arp", "0"), ("rp_filter", "1")):
                _sysctl(f"net/ipv4/conf/{host}/{key}", value)
            if _v6(nic.addresses):
                _sysctl(f"net/ipv6/conf/{host}/accept_ra", "0")
                netlink.add_address(host, f"{ROUTED_GATEWAY6}/64")
            netlink.replace_host_routes(host, nic.addresses)
            self._ndp_proxies(nic, _v6(nic.addresses), _v6(removed or []))
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
                _sysctl(f"net/ipv6/conf/{bridge}/{key}", "1")
        netlink.set_ndp_proxies(bridge, add, remove)

    def refilter(self) -> None:
        """The anti-spoofing table made again from the filters held (after a restart: those of
        adopted instances' NICs; the rest, of NICs whose instance died meanwhile, go)."""
        self._refilter([], False)

    def _refilter(self, nics: list[NicRecord], add: bool) -> None:
        with self._filter_lock:  # starts and stops run in threads of their own
            self._refilter_locked(nics, add)

    def _refilter_locked(self, nics: list[NicRecord], add: bool) -> None:
        for nic in nics:
            self.filters.pop(self.host_name(nic), None)
            if add and nic.filter:
                self.filters[self.host_name(nic)] = nft.NicFilter(self.host_name(nic), nic.mac, tuple(nic.addresses),
                                                            nic.mode is NicMode.BRIDGED)
        self.nft.apply(self.filters)

    def remove_filters(self) -> None:
        """No container runs any more: the anti-spoofing table goes (made again at next start)."""
        self.filters.clear()
        self.nft.remove()

    def adopt(self, rec: InstanceRecord, pid: int) -> None:
        """A container that kept running across a ctd restart: hold its netns, filter it again."""
        nics = self.db.nics_of(rec.id)
        if nics:
            try:
                self.netns[rec.id] = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return
            self._refilter(nics, add=True)

    def teardown(self, rec: InstanceRecord, gone: bool = False) -> None:
        """Save the counters, then let the NICs go with the namespace we held. gone: the
        container has exited, so its veths vanish with the namespace (deleting them ourselves
        costs ~20 ms a NIC)."""
        nics = self.db.nics_of(rec.id)
        for nic in nics:
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
            self._ndp_proxies(nic, [], _v6(nic.addresses))
        fd = self.netns.pop(rec.id, None)
        if fd is not None and fd >= 0:
            os.close(fd)
        if nics:
            self._refilter(nics, add=False)

    # ------------------------------------------------------------- VM taps

    def setup_taps(self, rec: InstanceRecord) -> None:
        """A tap per NIC of a VM, on its bridge, filtered and shaped like a container's veth."""
        nics = self.db.nics_of(rec.id)
        try:
            for nic in nics:
                netlink.create_tap(self.host_name(nic), nic.mac, *self._bridge_for(nic))
                self._host_side(nic)
            self._refilter(nics, add=True)
            self.netns[rec.id] = -1  # counters are live while the taps exist
        except BaseException:
            self.teardown_taps(rec)
            raise

    def adopt_taps(self, rec: InstanceRecord) -> None:
        nics = self.db.nics_of(rec.id)
        if nics:
            self.netns[rec.id] = -1
            self._refilter(nics, add=True)

    def teardown_taps(self, rec: InstanceRecord) -> None:
        self.teardown(rec)

    def counters(self, rec: InstanceRecord) -> list[dict[str, Any]]:
        out = []
        for nic in self.db.nics_of(rec.id):
            live = netlink.link_stats(self.host_name(nic)) if rec.id in self.netns else None
            live = live or {"rx_bytes": 0, "tx_bytes": 0, "rx_packets": 0, "tx_packets": 0}
            out.append({
                "name": f"eth{nic.idx}", "host_name": self.host_name(nic), "network": nic.network, "mode": nic.mode.value,
                "mac": nic.mac, "addresses": nic.addresses, "filter": nic.filter, "rate": nic.rate,
                "rx_bytes": nic.rx_bytes + live["tx_bytes"], "tx_bytes": nic.tx_bytes + live["rx_bytes"],
                "rx_packets": nic.rx_packets + live["tx_packets"], "tx_packets": nic.tx_packets + live["rx_packets"],
                # drops of this run only (not kept across stops): the host end's, seen from inside
                "rx_dropped": live.get("tx_dropped", 0), "tx_dropped": live.get("rx_dropped", 0),
            })
        return out

    # ------------------------------------------------------------- live changes

    def check_change(self, rec: InstanceRecord, ipadd: list[str], ipdel: list[str], rate: int | None | str,
                     running: bool) -> None:
        """Everything change() would refuse, refused before anything is changed."""
        nics = self.db.nics_of(rec.id)
        if not nics:
            if not ipadd:
                raise InvalidRequest(f"{rec.name} has no network interface; add addresses with --ipadd")
            if running:
                raise Conflict(f"{rec.name} has no NIC yet; stop it, add addresses, start it again")
            if ipdel:
                raise InvalidRequest(f"{ipdel[0]} is not an address of {rec.name}")
        nic = nics[0] if nics else None
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
                subnet = net.subnet4 if address.version == 4 else net.subnet6
                if subnet is None:
                    raise InvalidRequest(f"network {net.name} has no IPv{address.version} subnet")
                ipam.check_in(ipaddress.ip_network(subnet), address)
            owner = self.db.address_owner(str(address))
            if owner is not None and not (owner == rec.name and str(address) in ipdel):
                raise Conflict(f"address {address} is already used by {owner}")

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

    def change(self, rec: InstanceRecord, ipadd: list[str], ipdel: list[str], rate: int | None | str,
               running: bool) -> list[InsideNic]:
        """--ipadd/--ipdel/--rate on NIC 0; returns what to apply inside when running."""
        self.check_change(rec, ipadd, ipdel, rate, running)
        nics = self.db.nics_of(rec.id)
        if not nics:
            with self.db.transaction():
                self.allocate(rec.id, [NicRequest(None, NicMode.ROUTED, ipadd, True,
                                                  None if rate == "keep" else rate)])  # type: ignore[arg-type]
            return []
        nic = nics[0]
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
                address = ipam.parse_address(text)
                if net is not None:
                    subnet = net.subnet4 if address.version == 4 else net.subnet6
                    if subnet is None:
                        raise InvalidRequest(f"network {net.name} has no IPv{address.version} subnet")
                    ipam.check_in(ipaddress.ip_network(subnet), address)
                self.db.add_address(str(address), rec.id, nic.idx, nic.network)
                nic.addresses.append(str(address))
            if rate != "keep":
                nic.rate = rate  # type: ignore[assignment]
                self.db.update_nic(nic)
        if not running:
            return []
        self._host_side(nic, removed)
        if rate != "keep" and nic.rate is None:
            tc.set_rate(self.host_name(nic), None)
        self._refilter([nic], add=True)
        return [dataclasses.replace(self._inside(nic), own_link_local=_own_link_local(rec))]
