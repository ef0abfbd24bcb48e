"""Address management: pick free addresses from a network's pool; pure functions."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Iterator

from ctd.errors import Conflict, InvalidRequest

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Private ranges tried for the default network, in order: 10.x.y.0/24 blocks first.
DEFAULT_CANDIDATES = ("10.{a}.{b}.0/24",)


def parse_subnet(text: str, what: str = "subnet") -> Network:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise InvalidRequest(f"invalid {what} {text!r}: use CIDR notation like 10.20.0.0/24") from None
    if net.version == 4 and net.prefixlen > 30:
        raise InvalidRequest(f"invalid {what} {text!r}: too small; use /30 or larger")
    if net.version == 6 and net.prefixlen > 126:
        raise InvalidRequest(f"invalid {what} {text!r}: too small; use /126 or larger")
    return net


def parse_address(text: str) -> Address:
    try:
        return ipaddress.ip_address(text.split("/")[0])
    except ValueError:
        raise InvalidRequest(f"invalid address {text!r}: use a plain IPv4 or IPv6 address") from None


def gateway_of(net: Network) -> Address:
    hosts: Iterator[Address] = net.hosts()
    return next(hosts)


def allocate(net: Network, used: Iterable[Address]) -> Address:
    """The lowest free host address after the gateway."""
    taken = set(used) | {gateway_of(net)}
    hosts: Iterator[Address] = net.hosts()
    for count, candidate in enumerate(hosts):
        if candidate not in taken:
            return candidate
        if count > 1_000_000:  # a huge IPv6 pool: don't walk it all
            break
    raise Conflict(f"no free address left in {net}; remove unused instances or use a larger subnet")


def check_in(net: Network, address: Address) -> None:
    if address not in net or address in (net.network_address, net.broadcast_address) or address == gateway_of(net):
        raise InvalidRequest(f"address {address} is not a usable host address of {net}")


def overlaps(net: Network, others: Iterable[Network]) -> Network | None:
    for other in others:
        if other.version == net.version and net.overlaps(other) and other.prefixlen > 0:
            return other
    return None


def free_private_subnet(taken: list[Network], seed: int | None = None) -> ipaddress.IPv4Network:
    """A 10.x.y.0/24 that overlaps no route or network the host has."""
    rng = random.Random(seed)
    for _ in range(2000):
        candidate = ipaddress.IPv4Network(f"10.{rng.randint(1, 254)}.{rng.randint(0, 255)}.0/24")
        if overlaps(candidate, taken) is None:
            return candidate
    raise Conflict("no free private /24 found; create a network with --subnet")
