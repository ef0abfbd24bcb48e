"""Rate limits with tc: egress shaping on the host end, ingress through an ifb device."""

from __future__ import annotations

import re
import subprocess

from ctd.errors import InvalidRequest, OperationFailed
from ctd.network import netlink

_RATE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)$", re.IGNORECASE)
_BITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9,
         "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9}


def parse_rate(text: str) -> int:
    """'10mbit' -> 10000000 bits per second (tc's units: bit, kbit, mbit, gbit, bps …)."""
    match = _RATE.match(str(text).strip())
    if not match:
        raise InvalidRequest(f"invalid rate {text!r}: use a number with bit, kbit, mbit or gbit, e.g. 10mbit")
    bits = int(float(match.group(1)) * _BITS[match.group(2).lower()])
    if bits < 8000:
        raise InvalidRequest(f"invalid rate {text!r}: at least 8kbit")
    return bits


def _tc(*args: str, check: bool = True) -> None:
    result = subprocess.run(["tc", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise OperationFailed(f"tc {' '.join(args)}: {result.stderr.strip()}")


def _tbf(dev: str, bits: int) -> None:
    # burst: enough for the rate at a 250 Hz tick, and never below a few full frames
    burst = max(bits // 8 // 250, 16 * 1514)
    _tc("qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{bits}bit", "burst", str(burst), "latency", "50ms")


def ifb_name(host_name: str) -> str:
    """'ve101.0' -> 'vei101.0': the ifb that shapes what the container sends."""
    return host_name[:2] + "i" + host_name[2:]


def set_rate(host_name: str, bits: int | None) -> None:
    """Limit both directions of a NIC to bits/s, or remove the limit (None)."""
    ifb = ifb_name(host_name)
    if bits is None:
        _tc("qdisc", "del", "dev", host_name, "root", check=False)
        _tc("qdisc", "del", "dev", host_name, "ingress", check=False)
        netlink.delete_link(ifb)
        return
    _tbf(host_name, bits)  # host -> container
    netlink.ensure_ifb(ifb)
    _tbf(ifb, bits)  # container -> host, redirected through the ifb
    _tc("qdisc", "replace", "dev", host_name, "handle", "ffff:", "ingress")
    # u32 matching everything: present in every kernel that has tc at all (matchall may not be)
    _tc("filter", "replace", "dev", host_name, "parent", "ffff:", "protocol", "all", "prio", "1",
        "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", ifb)
