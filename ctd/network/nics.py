"""NICs at create: the request checked (check_nics), then written with their MACs and addresses
(allocate, inside the caller's transaction); and how a NIC looks inside its instance (inside).

Pure logic over the state and the networks; nothing here touches a link.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ctd import validate
from ctd.errors import InvalidRequest, NotFound
from ctd.network import ipam, netlink, tc
from ctd.network.netlink import InsideNic
from ctd.network.networks import IPV6_MIN_MTU, MIN_MTU, Networks
from ctd.state import InstanceRecord, NetworkRecord, NicMode, NicRecord, StateDB

MAX_NICS = 8
MAX_MTU = 65535
ROUTED_GATEWAY4 = "169.254.0.1"
ROUTED_GATEWAY6 = "fe80::1"  # link-local on the host end of a routed NIC: the container's v6 default route


@dataclass
class NicRequest:
    network: str | None
    mode: NicMode
    addresses: list[str]
    filter: bool
    rate: int | None
    mtu: int | None = None
    vlan: int | None = None
    mac: str | None = None   # chosen before allocate (a cluster's claim, ctd/cluster/nicclaims.py); None: here


def v6(addresses: list[str]) -> list[str]:
    return [a for a in addresses if ipaddress.ip_address(a).version == 6]


def own_link_local(rec: InstanceRecord) -> bool:
    """ctd gives a NIC its link-local address (no DAD wait) unless systemd-networkd in the guest
    manages it: networkd fails the link when it finds the address mode changed under it."""
    return bool(rec.options.network_style != "networkd")


def mac_for(instance_id: int, idx: int, salt: int = 0) -> str:
    """A stable locally administered unicast MAC for NIC idx of an instance."""
    digest = hashlib.sha256(f"ctd:{instance_id}:{idx}:{salt}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


def check_nics(raw: Any, default_network: str, network: Callable[[str], NetworkRecord]) -> list[NicRequest]:
    """NICs asked for at create; none given (None): one on the default network, if the daemon
    has one; an empty list: no NIC. network(name) raises NotFound for an unknown network."""
    if raw is None:
        raw = [{}] if default_network else []
    if not isinstance(raw, list) or len(raw) > MAX_NICS:
        raise InvalidRequest(f"nics must be a list of at most {MAX_NICS} objects")
    return [check_nic(item, default_network, network) for item in raw]


def check_nic(item: Any, default_network: str, network: Callable[[str], NetworkRecord]) -> NicRequest:
    """One NIC of a create request, or one added later (POST .../nics)."""
    item = validate.body_fields(item, {"network", "mode", "addresses", "filter", "rate", "mtu", "vlan"})
    mode_text = item.get("mode", "bridged")
    if mode_text not in ("bridged", "routed"):
        raise InvalidRequest(f"invalid NIC mode {mode_text!r}: use bridged or routed")
    mode = NicMode(mode_text)
    name = item.get("network")
    if name is not None and not isinstance(name, str):
        raise InvalidRequest("network must be a network name")
    if mode is NicMode.BRIDGED and name is None:
        if not default_network:
            raise InvalidRequest("this ctd has no default network (default_network in ctd.toml): "
                                 "name the NIC's network, e.g. --net lan0")
        name = default_network
    net: NetworkRecord | None = None  # None for the default network before its first use (MTU 1500)
    if name is not None and name != default_network:
        net = network(name)
    elif name is not None:
        with contextlib.suppress(NotFound):
            net = network(name)
    addresses = [str(ipam.parse_address(a)) for a in validate.string_list(item, "addresses")]
    if mode is NicMode.ROUTED and name is None and not addresses:
        raise InvalidRequest("a routed NIC needs addresses (--ipadd) or a network to take them from")
    rate = tc.parse_rate(item["rate"]) if item.get("rate") is not None else None
    mtu = None if item.get("mtu") is None else \
        _mtu(item["mtu"], net.mtu if net else 1500, name, bool(v6(addresses) or (net and net.subnet6)))
    vlan = item.get("vlan")
    if vlan is not None:
        if not isinstance(vlan, int) or isinstance(vlan, bool) or not 1 <= vlan <= 4094:
            raise InvalidRequest(f"invalid vlan {vlan!r}: a VLAN id from 1 to 4094")
        if mode is not NicMode.BRIDGED:
            raise InvalidRequest("vlan is for bridged NICs (a routed NIC has no layer 2 to tag)")
        if not netlink.vlan_filtering_supported():
            raise InvalidRequest("vlan: this host's kernel has no bridge VLAN filtering "
                                 "(CONFIG_BRIDGE_VLAN_FILTERING); leave out vlan")
    return NicRequest(name, mode, addresses, validate.boolean(item, "filter", True), rate, mtu, vlan)


def _mtu(raw: Any, net_mtu: int, network: str | None, ipv6: bool) -> int | None:
    """A NIC's own MTU: at most its network's (frames larger than the bridge's are dropped)."""
    if raw is None:
        return None
    low = IPV6_MIN_MTU if ipv6 else MIN_MTU
    high = net_mtu if network is not None else MAX_MTU
    if not isinstance(raw, int) or isinstance(raw, bool) or not low <= raw <= high:
        where = f" (network {network}'s MTU)" if network is not None else ""
        raise InvalidRequest(f"invalid mtu {raw!r}: a number from {low} to {high}{where}")
    return raw


@dataclass
class Foreign:
    """In a cluster: other nodes' MACs and addresses (by network name), as of the last look
    (ctd/cluster/nicclaims.py); what this node picks by itself avoids them."""

    macs: set[str] = field(default_factory=set)
    addresses: dict[str, set[str]] = field(default_factory=dict)


def allocate(db: StateDB, networks: Networks, instance_id: int, requests: list[NicRequest],
             first_idx: int = 0, foreign: Foreign | None = None) -> list[NicRecord]:
    """Write the NICs and their addresses (inside the caller's transaction), numbered from
    first_idx (a NIC added later takes the lowest free number)."""
    foreign = foreign or Foreign()
    nics = []
    macs = db.used_macs()
    for idx, req in enumerate(requests, first_idx):
        net = None
        if req.network is not None:
            net = networks.ensure_default() if req.network == networks.default_network \
                else networks.network(req.network)
        addresses = _addresses(db, net, req.addresses, foreign)
        salt = 0
        mac = req.mac
        while mac is None or mac in macs:
            mac = mac_for(instance_id, idx, salt)
            salt += 1
            if mac in foreign.macs:
                mac = None
        macs.add(mac)
        nic = NicRecord(instance_id=instance_id, idx=idx, network=net.name if net else None, mode=req.mode,
                        mac=mac, filter=req.filter, rate=req.rate, mtu=req.mtu, vlan=req.vlan, addresses=addresses)
        db.add_nic(nic)
        nics.append(nic)
    return nics


def free_idx(records: list[NicRecord]) -> int:
    """The lowest NIC number an instance does not use (its name inside is eth<n>)."""
    used = {n.idx for n in records}
    return next(i for i in range(MAX_NICS + 1) if i not in used)


def _addresses(db: StateDB, net: NetworkRecord | None, asked: list[str], foreign: Foreign) -> list[str]:
    """The addresses asked for, checked against net's subnets; none asked: one free address
    from each of net's subnets."""
    addresses = list(asked)
    if net is not None:
        for text in addresses:
            address = ipaddress.ip_address(text)
            check_in_network(net, address, f" for {text}")
        if not addresses:
            for subnet in (net.subnet4, net.subnet6):
                if subnet:
                    used = [ipaddress.ip_address(a) for a in
                            (*db.addresses_in(net.name), *foreign.addresses.get(net.name, ()))]
                    addresses.append(str(ipam.allocate(ipaddress.ip_network(subnet), used)))
    return addresses


def check_in_network(net: NetworkRecord, address: ipam.Address, tail: str = "") -> None:
    """address belongs to one of net's subnets (tail ends the message when net has no subnet
    of address's version)."""
    subnet = net.subnet4 if address.version == 4 else net.subnet6
    if subnet is None:
        raise InvalidRequest(f"network {net.name} has no IPv{address.version} subnet{tail}")
    ipam.check_in(ipaddress.ip_network(subnet), address)


def inside(nic: NicRecord, net: NetworkRecord | None, temp_name: str) -> InsideNic:
    """How nic looks inside: eth<idx> with its addresses, gateways and MAC; net is its network
    (None for a routed NIC without one); temp_name its name on the host until it moves in."""
    name = f"eth{nic.idx}"
    if nic.mode is NicMode.ROUTED:
        cidrs = [f"{a}/{32 if ipaddress.ip_address(a).version == 4 else 128}" for a in nic.addresses]
        has4 = any(ipaddress.ip_address(a).version == 4 for a in nic.addresses)
        return InsideNic(temp_name, name, cidrs, ROUTED_GATEWAY4 if has4 else None,
                         ROUTED_GATEWAY6 if v6(nic.addresses) else None, onlink_gateway=True, mac=nic.mac)
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
    return InsideNic(temp_name, name, cidrs, gw4, gw6, mac=nic.mac,
                     has_ipv6=(nic.mtu or (net.mtu if net else 1500)) >= IPV6_MIN_MTU)
