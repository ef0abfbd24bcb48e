"""Writes to /proc/sys for the host's end of networks and NICs (this network namespace)."""

from __future__ import annotations

import logging

log = logging.getLogger("ctd.network")
IP_FORWARD = "net/ipv4/ip_forward"


def write(key: str, value: str) -> None:
    """Write /proc/sys/<key> (e.g. 'net/ipv6/conf/ctbr0/accept_ra')."""
    with open(f"/proc/sys/{key}", "w") as fh:
        fh.write(value)


def enable_ipv4_forwarding() -> None:
    """The host (this network namespace) routes IPv4 between its interfaces."""
    with open(f"/proc/sys/{IP_FORWARD}") as fh:
        if fh.read().strip() == "1":
            return
    write(IP_FORWARD, "1")
    log.info("IPv4 forwarding enabled (a NAT network needs it)")
