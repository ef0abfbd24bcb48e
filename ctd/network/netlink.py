"""Every netlink call ctd makes; the only module that imports pyroute2."""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import os
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NLMSG_ERROR, nlmsg
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_GETLINK, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from ctd.errors import OperationFailed

IFA_F_NODAD = 0x02  # an IPv6 address usable at once: duplicate detection would hold it ~1 s
NTF_PROXY = 0x08    # a proxy neighbour entry (the host answers NDP for that address)


@contextlib.contextmanager
def _ipr(fileno: int | None = None) -> Iterator[IPRoute]:
    """fileno: a netlink socket made in another network namespace (a container's); closed after."""
    try:
        ip = IPRoute(fileno=fileno) if fileno is not None else IPRoute()
    except BaseException:
        if fileno is not None:
            os.close(fileno)
        raise
    try:
        yield ip
    finally:
        ip.close()


def _index(ip: IPRoute, name: str) -> int | None:
    found = ip.link_lookup(ifname=name)
    return found[0] if found else None


def link_exists(name: str) -> bool:
    with _ipr() as ip:
        return _index(ip, name) is not None


def link_names() -> set[str]:
    with _ipr() as ip:
        return {link.get_attr("IFLA_IFNAME") for link in ip.get_links()}


def host_routes() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Destinations the host routes already (to keep a new subnet from colliding)."""
    nets = []
    with _ipr() as ip:
        for family in (2, 10):
            for route in ip.get_routes(family=family):
                dst = route.get_attr("RTA_DST")
                if dst:
                    nets.append(ipaddress.ip_network(f"{dst}/{route['dst_len']}", strict=False))
    return nets


def _add_addr(ip: IPRoute, index: int, cidr: str) -> None:
    """Add an address; IPv6 ones without duplicate detection (ctd's IPAM keeps them unique)."""
    iface = ipaddress.ip_interface(cidr)
    if iface.version == 6:
        extra: dict[str, Any] = {"flags": IFA_F_NODAD}
    else:  # with its broadcast address, as ip(8) and systemd-networkd add it (networkd fails
        # the link, ERANGE, when it finds the address without one)
        extra = {"broadcast": str(iface.network.broadcast_address)} if iface.network.prefixlen < 31 else {}
    ip.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen, **extra)


def ensure_bridge(name: str, addresses: list[str], mtu: int = 1500) -> bool:
    """The bridge with the host's gateway addresses on it, up; created if missing (True)."""
    created = False
    with _ipr() as ip:
        index = _index(ip, name)
        if index is None:
            # an MTU set at creation stays (a bridge otherwise follows its smallest port)
            ip.link("add", ifname=name, kind="bridge", mtu=mtu)
            index = ip.link_lookup(ifname=name)[0]
            created = True
        present = {f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ip.get_addr(index=index)}
        for cidr in addresses:
            if str(ipaddress.ip_interface(cidr)) not in present:
                _add_addr(ip, index, cidr)
        ip.link("set", index=index, state="up")
    return created


@functools.cache
def vlan_filtering_supported() -> bool:
    """Whether the kernel's bridges filter by VLAN (CONFIG_BRIDGE_VLAN_FILTERING): probed once,
    on a bridge in a network namespace of its own (no host bridge is touched)."""
    probe = ["unshare", "--net", "ip", "link", "add", "probe0", "type", "bridge", "vlan_filtering", "1"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def set_port_vlan(bridge: str, port: str, vlan: int) -> None:
    """A bridge port on VLAN vlan only: frames from it get the tag, frames to it leave untagged;
    its default VLAN 1 goes, so it reaches neither untagged ports nor the bridge's own address.
    The bridge filters by VLAN from its first tagged port on (untagged ports and the bridge
    stay on VLAN 1: they forward as before)."""
    with _ipr() as ip:
        bridge_index = ip.link_lookup(ifname=bridge)[0]
        try:
            if open(f"/sys/class/net/{bridge}/bridge/vlan_filtering").read().strip() != "1":
                ip.link("set", index=bridge_index, kind="bridge", br_vlan_filtering=1)
        except (OSError, NetlinkError) as exc:
            raise OperationFailed(f"bridge {bridge} cannot filter by VLAN: {exc} (the host kernel needs "
                                  "CONFIG_BRIDGE_VLAN_FILTERING)") from None
        index = ip.link_lookup(ifname=port)[0]
        ip.vlan_filter("add", index=index, vlan_info={"vid": vlan, "flags": ["pvid", "untagged"]})
        if vlan != 1:
            with contextlib.suppress(NetlinkError):  # absent when the bridge's default pvid is off
                ip.vlan_filter("del", index=index, vlan_info={"vid": 1})


def ensure_ifb(name: str) -> None:
    """An ifb device (ingress traffic redirected to it can be shaped like egress), up."""
    with _ipr() as ip:
        if _index(ip, name) is None:
            ip.link("add", ifname=name, kind="ifb")
        ip.link("set", index=ip.link_lookup(ifname=name)[0], state="up")


def delete_link(name: str) -> None:
    with _ipr() as ip:
        index = _index(ip, name)
        if index is not None:
            with contextlib.suppress(NetlinkError):
                ip.link("del", index=index)


def _plug(ip: IPRoute, name: str, bridge: str | None) -> None:
    """A new host-side interface onto its bridge (if any) and up; removed again on failure."""
    try:
        index = ip.link_lookup(ifname=name)[0]
        if bridge is not None:
            master = _index(ip, bridge)
            if master is None:
                raise OperationFailed(f"bridge {bridge} is missing on the host")
            ip.link("set", index=index, master=master, **_NO_IPV6_AUTOCONF)
        else:
            ip.link("set", index=index, **_NO_IPV6_AUTOCONF)
        ip.link("set", index=index, state="up")
    except BaseException:
        with contextlib.suppress(NetlinkError):
            ip.link("del", ifname=name)
        raise


def create_veth(host_name: str, inside_name: str, mac: str, netns_pid: int, bridge: str | None,
                mtu: int = 1500) -> None:
    """A veth pair in one request: the host end born up (and on bridge, if any) here, the other
    end born inside the container's network namespace (moving it there afterwards costs ~20 ms
    more; enslaving and raising it in further requests ~1 ms). Raw rtnetlink: 1.1 ms against
    2.6 ms through pyroute2's calls."""
    what = f"creating {host_name}"
    with _rtnl_socket() as sock:
        attrs: list[tuple[str, object]] = [("IFLA_IFNAME", host_name), ("IFLA_MTU", mtu)]
        if bridge is not None:
            try:
                attrs.append(("IFLA_MASTER", _link_indexes(sock, [bridge], what)[0]))
            except NetlinkRefused:
                raise OperationFailed(f"bridge {bridge} is missing on the host") from None
        peer = [("IFLA_IFNAME", inside_name), ("IFLA_ADDRESS", mac), ("IFLA_NET_NS_PID", netns_pid), ("IFLA_MTU", mtu)]
        attrs.append(("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "veth"), ("IFLA_INFO_DATA", {
            "attrs": [("VETH_INFO_PEER", {"attrs": peer})]})]}))
        for attempt in range(2):
            batch = _Batch(sock)
            batch.add(_link_msg(0, up=True, **dict(attrs)), RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, what)
            try:
                batch.run()
                return
            except NetlinkRefused as exc:
                if exc.errno != errno.EEXIST or attempt:
                    if exc.errno == errno.EEXIST:
                        raise OperationFailed(f"network interface {host_name} already exists on the host") from None
                    raise
            # The name is this daemon's (its prefix and this instance's id): a veth of an
            # earlier run of it that the kernel has not freed yet. Take it away.
            delete_link(host_name)


def add_address(ifname: str, cidr: str) -> None:
    iface = ipaddress.ip_interface(cidr)
    with _ipr() as ip:
        index = ip.link_lookup(ifname=ifname)[0]
        with contextlib.suppress(NetlinkError):
            _add_addr(ip, index, str(iface))


def set_ndp_proxies(ifname: str, add: list[str], remove: list[str]) -> None:
    """Proxy neighbour entries on ifname: the host answers NDP there for these IPv6 addresses."""
    with _ipr() as ip:
        index = _index(ip, ifname)
        if index is None:
            return
        for address in remove:
            with contextlib.suppress(NetlinkError):
                ip.neigh("del", dst=address, ifindex=index, flags=NTF_PROXY, family=10)
        for address in add:
            ip.neigh("replace", dst=address, ifindex=index, flags=NTF_PROXY, family=10)


def replace_host_routes(ifname: str, addresses: list[str]) -> None:
    """Routed NIC: exactly one host route (/32, /128) per container address via its veth."""
    wanted = {str(ipaddress.ip_interface(a).ip) for a in addresses}
    with _ipr() as ip:
        index = ip.link_lookup(ifname=ifname)[0]
        for family, bits in ((2, 32), (10, 128)):
            for route in ip.get_routes(family=family, oif=index):
                dst = route.get_attr("RTA_DST")
                if dst and route["dst_len"] == bits and dst not in wanted:
                    with contextlib.suppress(NetlinkError):
                        ip.route("del", dst=f"{dst}/{bits}", oif=index)
        for address in wanted:
            bits = 32 if ipaddress.ip_address(address).version == 4 else 128
            ip.route("replace", dst=f"{address}/{bits}", oif=index)


def link_stats(name: str) -> dict[str, int] | None:
    """A host interface's counters, from sysfs: cheap, and safe on the event loop's thread
    (pyroute2's synchronous API refuses to run there)."""
    base = f"/sys/class/net/{name}/statistics"
    try:
        return {key: int(open(f"{base}/{key}").read())
                for key in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_dropped", "tx_dropped")}
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------- inside the container's netns

@dataclass
class InsideNic:
    """How one interface must look inside the container (applied in its network namespace)."""

    temp_name: str
    name: str
    addresses: list[str] = field(default_factory=list)  # CIDRs
    gateway4: str | None = None
    gateway6: str | None = None
    onlink_gateway: bool = False  # routed mode: the gateway is on no subnet of ours
    mac: str | None = None  # for its link-local address (read from the link if not given)
    fresh: bool = False  # just born at start: no address to remove, nothing to look up first
    own_link_local: bool = True  # ctd makes the link-local address (else the kernel, with DAD)
    has_ipv6: bool = True  # False on a link below IPv6's minimum MTU (1280): no IPv6 at all

    @property
    def makes_link_local(self) -> bool:
        return self.own_link_local and self.has_ipv6


def eui64_link_local(mac: str) -> str:
    """fe80::/64 address the kernel would derive from mac (modified EUI-64)."""
    b = [int(x, 16) for x in mac.split(":")]
    b[0] ^= 0x02
    groups = [b[0] << 8 | b[1], b[2] << 8 | 0xff, 0xfe << 8 | b[3], b[4] << 8 | b[5]]
    return str(ipaddress.IPv6Address("fe80::" + ":".join(f"{g:x}" for g in groups)))


_NO_IPV6_AUTOCONF: dict[str, Any] = {
    "IFLA_AF_SPEC": {"attrs": [("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", 1)]})]}}
"""addrgenmode none: the kernel makes no link-local address (and runs no DAD for one) at up."""


def configure_inside(nics: list[InsideNic], netns_socket: int) -> None:
    """Address the container's NICs through netns_socket: a NETLINK_ROUTE socket (SOCK_DGRAM)
    made inside its network namespace, so no process has to join it. Closes the socket."""
    if nics and all(n.fresh and n.mac for n in nics):
        _configure_fresh(nics, netns_socket)
        return
    with _ipr(netns_socket) as ip:
        lo = _index(ip, "lo")
        if lo is not None:
            ip.link("set", index=lo, state="up")
        for nic in nics:
            index = _index(ip, nic.name)  # born with its name; a moved-in one is renamed
            if index is None and (index := _index(ip, nic.temp_name)) is not None:
                ip.link("set", index=index, ifname=nic.name)
            if index is None:
                raise OperationFailed(f"interface {nic.name} is missing in the container")
            wanted = {str(ipaddress.ip_interface(a)) for a in nic.addresses}
            # The link-local address is ours, made without DAD: the kernel's would stay
            # tentative for ~1 s after start, and its NDP probes go nowhere useful.
            if nic.makes_link_local:
                ip.link("set", index=index, **_NO_IPV6_AUTOCONF)
            ip.link("set", index=index, state="up")
            if nic.makes_link_local:
                mac = nic.mac or ip.get_links(index)[0].get_attr("IFLA_ADDRESS")
                wanted.add(f"{eui64_link_local(mac)}/64")
            present = set()
            for addr in ip.get_addr(index=index):
                cidr = f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}"
                if cidr in wanted or cidr.startswith("fe80:"):
                    present.add(cidr)
                else:
                    ip.addr("del", index=index, address=addr.get_attr("IFA_ADDRESS"), prefixlen=addr["prefixlen"])
            for cidr in wanted - present:
                _add_addr(ip, index, cidr)
            for gateway, family in ((nic.gateway4, socket.AF_INET), (nic.gateway6, socket.AF_INET6)):
                if not gateway:
                    continue
                if nic.onlink_gateway:
                    _ensure_route(ip, family, index, gateway, None, scope=253)
                _ensure_route(ip, family, index, None, gateway)


RTPROT_BOOT = 3  # the protocol ctd's own routes carry inside (systemd-networkd's are 'static', 4)


def _ensure_route(ip: IPRoute, family: int, index: int, dst: str | None, gateway: str | None,
                  scope: int = 0) -> None:
    """A route to dst (None: the default route; else a host route) via gateway on link index,
    in a live container. The guest may hold its own beside ctd's (systemd-networkd adds one,
    proto static): a route there already via this gateway is left alone, whoever made it, and
    only ctd's own (proto boot) going elsewhere is replaced. (NLM_F_REPLACE cannot do it: with
    two routes on the prefix the kernel answers EEXIST when the exact match is not the first.)"""
    dst_len = 0 if dst is None else (32 if family == socket.AF_INET else 128)
    present = [r for r in ip.get_routes(family=family, table=254)
               if r["dst_len"] == dst_len and r.get_attr("RTA_OIF") == index and r.get_attr("RTA_DST") == dst]
    if any(r.get_attr("RTA_GATEWAY") == gateway for r in present):
        return
    for route in present:
        if route["proto"] == RTPROT_BOOT:
            with contextlib.suppress(NetlinkError):
                ip.route("del", **_route_key(route, family, index))
    target = f"{dst}/{dst_len}" if dst else ("0.0.0.0/0" if family == socket.AF_INET else "::/0")
    # append: it goes beside a route of the guest's own on the same prefix (add, with
    # NLM_F_EXCL, would be refused with EEXIST)
    try:
        ip.route("append", dst=target, oif=index, proto=RTPROT_BOOT, scope=scope,
                 **({"gateway": gateway} if gateway else {}))
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:  # IPv6 says so for the same next hop in a multipath route
            raise


def _route_key(route: rtmsg, family: int, index: int) -> dict[str, Any]:
    """What names one route for RTM_DELROUTE."""
    dst = route.get_attr("RTA_DST")
    key = {"family": family, "dst_len": route["dst_len"], "oif": index, "proto": route["proto"],
           "table": 254, "priority": route.get_attr("RTA_PRIORITY") or 0}
    if dst:
        key["dst"] = dst
    if route.get_attr("RTA_GATEWAY"):
        key["gateway"] = route.get_attr("RTA_GATEWAY")
    return key


class NetlinkRefused(OperationFailed):
    """The kernel refused one request of a batch; `errno` is why (`code` stays the API's error
    kind: an errno there reached clients as "code": 17)."""

    def __init__(self, what: str, errno_: int) -> None:
        super().__init__(f"{what}: {os.strerror(errno_)}")
        self.errno = errno_


def _rtnl_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)


def _link_indexes(sock: socket.socket, names: list[str], what: str) -> list[int]:
    """Indexes of the named links, in one round trip (NetlinkRefused ENODEV if one is missing)."""
    lookup = _Batch(sock)
    for name in names:
        msg = ifinfmsg()
        msg["attrs"] = [("IFLA_IFNAME", name)]
        lookup.add(msg, RTM_GETLINK, 0, f"{what}: no interface {name}")
    # ifinfomsg after the 16-byte header: family, pad, type (H), index (i); seq at offset 8
    found = {struct.unpack_from("=I", r, 8)[0]: struct.unpack_from("=i", r, 20)[0] for r in lookup.run()}
    return [found[seq] for seq in range(1, len(names) + 1)]


class _Batch:
    """rtnetlink requests sent in one sendmsg and acknowledged one by one: the kernel runs them
    in order. pyroute2's synchronous calls cost ~0.25 ms each (an event loop turn per
    request); at container start, where every NIC needs ~8 of them, that adds up."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parts: list[bytes] = []
        self.what: dict[int, str] = {}

    def add(self, msg: nlmsg, kind: int, flags: int, what: str) -> None:
        seq = len(self.parts) + 1
        msg["header"]["type"], msg["header"]["sequence_number"] = kind, seq
        msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | flags
        msg.encode()
        self.parts.append(bytes(msg.data))
        self.what[seq] = what

    def run(self) -> list[bytes]:
        """Send everything; the replies that are not acks (e.g. RTM_NEWLINK for a get).
        NetlinkRefused (an OperationFailed) naming the first request the kernel refused."""
        self.sock.settimeout(10)  # every request is acked; never wait forever if one is not
        self.sock.send(b"".join(self.parts))
        pending, replies, failed = set(self.what), [], []
        while pending:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise OperationFailed(f"{self.what[min(pending)]}: no answer from the kernel") from None
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _flags, seq = struct.unpack_from("=IHHI", data, offset)
                if kind == NLMSG_ERROR:
                    code = struct.unpack_from("=i", data, offset + 16)[0]
                    if code:
                        failed.append((seq, -code))
                    pending.discard(seq)
                else:
                    replies.append(data[offset:offset + length])
                offset += (length + 3) & ~3
        if failed:
            seq, code = min(failed)
            raise NetlinkRefused(self.what[seq], code)
        return replies


def _link_msg(index: int, up: bool = False, **attrs: object) -> ifinfmsg:
    msg = ifinfmsg()
    msg["index"] = index
    if up:
        msg["flags"] = msg["change"] = 1  # IFF_UP
    msg["attrs"] = list(attrs.items())
    return msg


def _configure_fresh(nics: list[InsideNic], netns_socket: int) -> None:
    """configure_inside for NICs born a moment ago: two round trips in all (their indexes,
    then everything else) instead of ~10 pyroute2 calls a NIC."""
    what = "configuring the container's network"
    with socket.socket(fileno=netns_socket) as sock:
        indexes = dict(enumerate(_link_indexes(sock, [n.name for n in nics], what), 1))
        batch = _Batch(sock)
        batch.add(_link_msg(1, up=True), RTM_NEWLINK, 0, f"{what}: lo up")  # lo is index 1 in every netns
        for seq, nic in enumerate(nics, 1):
            index = indexes[seq]
            # our own link-local address, without DAD (see configure_inside)
            link_local = [f"{eui64_link_local(nic.mac)}/64"] if nic.makes_link_local else []  # type: ignore[arg-type]
            if nic.makes_link_local:
                batch.add(_link_msg(index, **_NO_IPV6_AUTOCONF), RTM_NEWLINK, 0, f"{what}: {nic.name} addrgenmode")
            batch.add(_link_msg(index, up=True), RTM_NEWLINK, 0, f"{what}: {nic.name} up")
            for cidr in [*nic.addresses, *link_local]:
                iface = ipaddress.ip_interface(cidr)
                msg = ifaddrmsg()
                msg["family"] = socket.AF_INET6 if iface.version == 6 else socket.AF_INET
                msg["prefixlen"], msg["index"] = iface.network.prefixlen, index
                msg["attrs"] = [("IFA_LOCAL", str(iface.ip)), ("IFA_ADDRESS", str(iface.ip))]
                if iface.network.prefixlen < 31:  # with its broadcast, as ip(8) and networkd add it
                    msg["attrs"].append(("IFA_BROADCAST", str(iface.network.broadcast_address)))
                if iface.version == 6:
                    msg["attrs"] = [("IFA_ADDRESS", str(iface.ip)), ("IFA_FLAGS", IFA_F_NODAD)]
                batch.add(msg, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, f"{what}: address {cidr} on {nic.name}")
            for gateway, family in ((nic.gateway4, socket.AF_INET), (nic.gateway6, socket.AF_INET6)):
                if not gateway:
                    continue
                bits = 32 if family == socket.AF_INET else 128
                # (dst, dst_len, via, scope): the on-link host route, then the default route
                routes: list[tuple[str | None, int, str | None, int]] = \
                    [(gateway, bits, None, 253)] if nic.onlink_gateway else []
                routes.append((None, 0, gateway, 0))  # the default route
                for dst, dst_len, via, scope in routes:
                    msg = rtmsg()
                    msg["family"], msg["dst_len"], msg["table"], msg["proto"] = family, dst_len, 254, 3
                    msg["scope"], msg["type"] = scope, 1  # RT_TABLE_MAIN, RTPROT_BOOT, RTN_UNICAST
                    msg["attrs"] = [("RTA_OIF", index)] + ([("RTA_DST", dst)] if dst else []) + \
                        ([("RTA_GATEWAY", via)] if via else [])
                    batch.add(msg, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE,
                              f"{what}: route {dst or 'default'}{' via ' + via if via else ''} on {nic.name}")
        batch.run()


def create_tap(name: str, mac: str, bridge: str | None, mtu: int = 1500) -> None:
    """A persistent tap for a VM's NIC (QEMU opens it by name), up, on bridge if given."""
    with _ipr() as ip:
        if _index(ip, name) is not None:
            raise OperationFailed(f"network interface {name} already exists on the host")
        ip.link("add", ifname=name, kind="tuntap", mode="tap", vnet_hdr=True, multi_queue=False)
        if mtu != 1500:
            ip.link("set", index=ip.link_lookup(ifname=name)[0], mtu=mtu)
        _plug(ip, name, bridge)
