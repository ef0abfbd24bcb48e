"""NICs at create: the request checked (check_nics), then written with their MACs and addresses
(allocate, inside the caller's transaction); and how a NIC looks inside its instance (inside).

Pure logic over the state and the networks; nothing here touches a link.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ctd import validate
from ctd.errors import InvalidRequest
from ctd.network import ipam, tc
from ctd.network.netlink import InsideNic
from ctd.network.networks import IPV6_MIN_MTU, Networks
from ctd.state import InstanceRecord, NetworkRecord, NicMode, NicRecord, StateDB

MAX_NICS = 8
ROUTED_GATEWAY4 = "169.254.0.1"
ROUTED_GATEWAY6 = "fe80::1"  # link-local on the host end of a routed NIC: the container's v6 default route


@dataclass
class NicRequest:
    network: str | None
    mode: NicMode
    addresses: list[str]
    filter: bool
    rate: int | None


def v6(addresses: list[str]) -> list[str]:
    return [a for a in addresses if ipaddress.ip_address(a).version == 6]


def own_link_local(rec: InstanceRecord) -> bool:
    """ctd gives a NIC its link-local address (no DAD wait) unless systemd-networkd in the guest
    manages it: networkd fails the link when it finds the address mode changed under it."""
    return bool(rec.options.get("network_style") != "networkd")


def mac_for(instance_id: int, idx: int, salt: int = 0) -> str:
    """A stable locally administered unicast MAC for NIC idx of an instance."""
    digest = hashlib.sha256(f"ctd:{instance_id}:{idx}:{salt}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


def check_nics(raw: Any, default_network: str, network: Callable[[str], object]) -> list[NicRequest]:
    """NICs asked for at create; none given (None): one on the default network, if the daemon
    has one; an empty list: no NIC. network(name) raises NotFound for an unknown network."""
    if raw is None:
        raw = [{}] if default_network else []
    if not isinstance(raw, list) or len(raw) > MAX_NICS:
        raise InvalidRequest(f"nics must be a list of at most {MAX_NICS} objects")
    out = []
    for item in raw:
        item = validate.body_fields(item, {"network", "mode", "addresses", "filter", "rate"})
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
        if name is not None and name != default_network:
            network(name)
        addresses = [str(ipam.parse_address(a)) for a in validate.string_list(item, "addresses")]
        if mode is NicMode.ROUTED and name is None and not addresses:
            raise InvalidRequest("a routed NIC needs addresses (--ipadd) or a network to take them from")
        rate = tc.parse_rate(item["rate"]) if item.get("rate") is not None else None
        out.append(NicRequest(name, mode, addresses, validate.boolean(item, "filter", True), rate))
    return out


def allocate(db: StateDB, networks: Networks, instance_id: int, requests: list[NicRequest]) -> list[NicRecord]:
    """Write the NICs and their addresses (inside the caller's transaction)."""
    nics = []
    macs = db.used_macs()
    for idx, req in enumerate(requests):
        net = None
        if req.network is not None:
            net = networks.ensure_default() if req.network == networks.default_network \
                else networks.network(req.network)
        addresses = _addresses(db, net, req.addresses)
        salt = 0
        while (mac := mac_for(instance_id, idx, salt)) in macs:
            salt += 1
        macs.add(mac)
        nic = NicRecord(instance_id=instance_id, idx=idx, network=net.name if net else None, mode=req.mode,
                        mac=mac, filter=req.filter, rate=req.rate, addresses=addresses)
        db.add_nic(nic)
        nics.append(nic)
    return nics


def _addresses(db: StateDB, net: NetworkRecord | None, asked: list[str]) -> list[str]:
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
                    used = [ipaddress.ip_address(a) for a in db.addresses_in(net.name)]
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
                     has_ipv6=net is None or net.mtu >= IPV6_MIN_MTU)
