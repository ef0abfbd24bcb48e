"""Anti-spoofing with nftables: one table, rebuilt whole and atomically on every change."""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass

from ctd.errors import OperationFailed


@dataclass(frozen=True)
class NicFilter:
    host_name: str      # the host end of the veth
    mac: str
    addresses: tuple[str, ...]  # plain addresses, v4 and v6
    bridged: bool


def _chain(nic: NicFilter) -> str:
    return "nic_" + nic.host_name.replace(".", "_").replace("-", "_")


def ruleset(table: str, nics: list[NicFilter]) -> str:
    """The nft script: flush and recreate table TABLE in the bridge and inet families.

    Bridged NICs are checked on the bridge (layer 2: MAC, ARP, IP, NDP); routed NICs on the
    host's own input/forward path (layer 3: source IP).
    """
    lines = [f"table bridge {table} {{}}", f"delete table bridge {table}",
             f"table inet {table} {{}}", f"delete table inet {table}"]
    bridged = [n for n in nics if n.bridged]
    routed = [n for n in nics if not n.bridged]
    lines.append(f"table bridge {table} {{")
    lines.append("  chain prerouting {\n    type filter hook prerouting priority -300; policy accept;")
    for nic in bridged:
        lines.append(f'    iifname "{nic.host_name}" jump {_chain(nic)}')
    lines.append("  }")
    for nic in bridged:
        v4 = [a for a in nic.addresses if ipaddress.ip_address(a).version == 4]
        v6 = [a for a in nic.addresses if ipaddress.ip_address(a).version == 6]
        lines.append(f"  chain {_chain(nic)} {{")
        lines.append(f"    ether saddr != {nic.mac} drop")
        lines.append(f"    ether type arp arp saddr ether != {nic.mac} drop")
        lines.append("    ether type arp arp saddr ip != { " + ", ".join(v4 or ["0.0.0.0"]) + " } drop")
        lines.append("    ether type ip ip saddr != { " + ", ".join(v4 or ["0.0.0.0"]) + " } drop")
        allowed6 = ", ".join(["fe80::/10", "::"] + v6)
        lines.append("    ether type ip6 ip6 saddr != { " + allowed6 + " } drop")
        lines.append("  }")
    lines.append("}")
    lines.append(f"table inet {table} {{")
    lines.append("  chain prerouting {\n    type filter hook prerouting priority -300; policy accept;")
    for nic in routed:
        v4 = [a for a in nic.addresses if ipaddress.ip_address(a).version == 4]
        v6 = [a for a in nic.addresses if ipaddress.ip_address(a).version == 6]
        lines.append(f'    iifname "{nic.host_name}" meta nfproto ipv4 ip saddr != {{ {", ".join(v4 or ["0.0.0.0"])} }} drop')
        lines.append(f'    iifname "{nic.host_name}" meta nfproto ipv6 ip6 saddr != {{ {", ".join(["fe80::/10"] + v6)} }} drop')
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def apply(table: str, nics: list[NicFilter]) -> None:
    result = subprocess.run(["nft", "-f", "-"], input=ruleset(table, nics), capture_output=True, text=True)
    if result.returncode != 0:
        raise OperationFailed(f"nftables refused the anti-spoofing rules: {result.stderr.strip()}")


def remove(table: str) -> None:
    for family in ("bridge", "inet"):
        subprocess.run(["nft", "delete", "table", family, table], capture_output=True)
