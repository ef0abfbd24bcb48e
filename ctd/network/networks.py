"""Host networks: a bridge each, with its IPv4/IPv6 subnets, MTU and optional NAT.

`Networks` validates a create request (check_create_network, before anything is made), makes a
network so that a failure half-way leaves no bridge, NAT table or row behind, deletes one
nobody uses, and brings every network back after a reboot. It knows nothing of NICs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from ctd import validate
from ctd.errors import Conflict, InvalidRequest, NotFound, OperationFailed
from ctd.network import ipam, netlink, nft, sysctl
from ctd.network.dhcp import DhcpServers, dnsmasq_path
from ctd.state import NetworkRecord, StateDB

log = logging.getLogger(__name__)
DEFAULT_NETWORK = "ctbr0"
IFNAME = re.compile(r"^[a-z][a-z0-9-]{0,14}$")
IPV6_MIN_MTU = 1280  # below it, the kernel gives a link no IPv6 at all
MIN_MTU = 576        # IPv4's minimum datagram every host must take


@dataclass(frozen=True)
class NetworkRequest:
    """A network create request, checked: a free name, subnets that overlap nothing, an MTU."""

    name: str
    subnet4: str
    subnet6: str | None
    nat: bool
    mtu: int
    dhcp: bool = False   # ctd runs dnsmasq on the bridge (dhcp.py)


class Networks:
    """The networks of one ctd (rows in its state, bridges and NAT tables on the host)."""

    def __init__(self, db: StateDB, nft_table: str, default_network: str, dhcp: DhcpServers) -> None:
        self.db = db
        self.nft_table = nft_table
        self.default_network = default_network  # "" : no NIC unless create asks for one
        self.dhcp = dhcp

    def network(self, name: str) -> NetworkRecord:
        rec = self.db.get_network(name)
        if rec is None:
            raise NotFound(f"no network named {name!r}; 'ctctl network list' shows them")
        return rec

    def view(self, net: NetworkRecord) -> dict[str, Any]:
        return {"name": net.name, "bridge": net.bridge, "subnet": net.subnet4, "ipv6": net.subnet6,
                "gateway": str(ipam.gateway_of(ipaddress.ip_network(net.subnet4))) if net.subnet4 else None,
                "gateway6": str(ipam.gateway_of(ipaddress.ip_network(net.subnet6))) if net.subnet6 else None,
                "nat": net.nat, "mtu": net.mtu, "created_at": net.created_at,
                "dhcp": net.dhcp, "dhcp_server": self.dhcp.view(net.name) if net.dhcp else None,
                "used_by": self.db.network_users(net.name),
                "addresses_used": len(self.db.addresses_in(net.name))}

    def check_create_network(self, body: Any) -> NetworkRequest:
        body = validate.body_fields(body, {"name", "subnet", "ipv6", "nat", "mtu", "dhcp"}, {"name"})
        name = self._check_name(body["name"])
        nat = validate.boolean(body, "nat")
        # on by default, as on Incus' managed bridges, where dnsmasq is installed (setup.sh does)
        dhcp = validate.boolean(body, "dhcp", dnsmasq_path() is not None)
        if dhcp and dnsmasq_path() is None:
            raise InvalidRequest("dhcp needs dnsmasq, which this host lacks: apt-get install dnsmasq-base "
                                 "(or create the network with --no-dhcp)")
        networks = self.db.list_networks()
        taken = netlink.host_routes() + [ipaddress.ip_network(n.subnet4) for n in networks if n.subnet4] \
            + [ipaddress.ip_network(n.subnet6) for n in networks if n.subnet6]
        subnet4 = self._check_subnet4(body.get("subnet"), taken)
        subnet6 = self._check_subnet6(body.get("ipv6"), taken)
        mtu = body.get("mtu", 1500)
        low = IPV6_MIN_MTU if subnet6 else MIN_MTU
        if not isinstance(mtu, int) or isinstance(mtu, bool) or not low <= mtu <= 65535:
            raise InvalidRequest(f"invalid mtu {mtu!r}: a number from {low} to 65535")
        return NetworkRequest(name=name, subnet4=str(subnet4), subnet6=str(subnet6) if subnet6 else None, nat=nat,
                              mtu=mtu, dhcp=dhcp)

    def _check_name(self, name: Any) -> str:
        if not isinstance(name, str) or not IFNAME.match(name):
            raise InvalidRequest(f"invalid network name {name!r}: 1-15 lowercase letters, digits and '-', "
                                 "starting with a letter (it names the bridge)")
        if name == "none":
            raise InvalidRequest("'none' is not a network name: 'create --net none' means no NIC")
        if self.db.get_network(name):
            raise Conflict(f"network {name!r} exists already")
        if name in netlink.link_names():
            raise Conflict(f"the host already has an interface named {name!r}; choose another name")
        return name

    @staticmethod
    def _check_subnet4(raw: Any, taken: list[ipam.Network]) -> ipam.Network:
        if raw is not None:
            if not isinstance(raw, str):
                raise InvalidRequest("subnet must be a string like 10.20.0.0/24")
            subnet4 = ipam.parse_subnet(raw)
            if subnet4.version != 4:
                raise InvalidRequest("subnet must be IPv4; give the IPv6 one as ipv6")
        else:
            subnet4 = ipam.free_private_subnet(taken)
        clash = ipam.overlaps(subnet4, taken)
        if clash is not None:
            raise Conflict(f"subnet {subnet4} overlaps {clash}, which the host or another network uses")
        return subnet4

    @staticmethod
    def _check_subnet6(raw: Any, taken: list[ipam.Network]) -> ipam.Network | None:
        if raw is None:
            return None
        if not isinstance(raw, str):
            raise InvalidRequest("ipv6 must be a string like fd42:1::/64")
        subnet6 = ipam.parse_subnet(raw, "ipv6 subnet")
        if subnet6.version != 6:
            raise InvalidRequest("ipv6 must be an IPv6 subnet like fd42:1::/64")
        clash = ipam.overlaps(subnet6, taken)
        if clash is not None:
            raise Conflict(f"ipv6 subnet {subnet6} overlaps {clash}")
        return subnet6

    def create_network(self, checked: NetworkRequest) -> dict[str, Any]:
        net = NetworkRecord(name=checked.name, bridge=checked.name, subnet4=checked.subnet4,
                            subnet6=checked.subnet6, nat=checked.nat, mtu=checked.mtu,
                            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                            dhcp=checked.dhcp)
        try:
            self.bring_up(net)
            self.db.add_network(net)
            if net.dhcp:
                self.dhcp.start(net)
        except BaseException:  # nothing of a half-made network stays (a bridge once did)
            with contextlib.suppress(Exception):
                self.dhcp.forget(net.name)
            with contextlib.suppress(Exception):
                self.db.delete_network(net.name)
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
            sysctl.write(f"net/ipv6/conf/{net.bridge}/accept_ra", "0")
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
            sysctl.enable_ipv4_forwarding()

    def delete_network(self, name: str) -> None:
        net = self.network(name)
        users = self.db.network_users(name)
        if users:
            raise Conflict(f"network {name!r} is used by {', '.join(users)}; remove their NICs or destroy them first")
        self.dhcp.forget(name)
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
        """After a reboot bridges are gone: bring every network back up, with its dnsmasq."""
        for net in self.db.list_networks():
            self.bring_up(net)
            if net.dhcp:
                try:
                    self.dhcp.start(net)
                except OSError as exc:  # the other networks must still come up
                    log.error("network %s: dnsmasq did not start: %s", net.name, exc)
