"""The guest's own network files written from a container's NICs (IPv4 and IPv6)."""

from __future__ import annotations

from pathlib import Path

from ctd import guest
from ctd.network.netlink import InsideNic, eui64_link_local

BRIDGED = InsideNic("vep1.0", "eth0", ["10.20.0.2/24", "fd42:20::2/64"], "10.20.0.1", "fd42:20::1")
ROUTED = InsideNic("vep2.0", "eth0", ["192.0.2.10/32", "2001:db8::10/128"], "169.254.0.1", "fe80::1",
                   onlink_gateway=True)


def networkd(tmp_path: Path, nic: InsideNic) -> str:
    guest.write_networkd(tmp_path, [nic], ["10.20.0.1"])
    return (tmp_path / "etc/systemd/network/10-ctd-eth0.network").read_text()


def test_networkd_bridged_dual_stack(tmp_path: Path) -> None:
    text = networkd(tmp_path, BRIDGED)
    assert "Address=10.20.0.2/24" in text and "Gateway=10.20.0.1" in text and "Gateway=fd42:20::1" in text
    # IPv6 addresses get their own section: no duplicate detection holding them after boot
    assert "[Address]\nAddress=fd42:20::2/64\nDuplicateAddressDetection=none" in text
    assert "IPv6AcceptRA=no" in text


def test_networkd_routed_gateways_on_link(tmp_path: Path) -> None:
    text = networkd(tmp_path, ROUTED)
    assert "[Route]\nGateway=fe80::1\nGatewayOnLink=yes" in text
    assert "[Route]\nGateway=169.254.0.1\nGatewayOnLink=yes" in text
    assert "Address=2001:db8::10/128" in text
    # sections after [Network] only: no [Network] key may follow an [Address] or [Route]
    assert text.index("[Network]") < text.index("[Address]") < text.index("[Route]")


def test_ip_script_for_busybox(tmp_path: Path) -> None:
    guest.write_ip_script(tmp_path, [ROUTED])
    lines = (tmp_path / "etc/ctd/network.sh").read_text().splitlines()
    assert "ip -6 addr add 2001:db8::10/128 dev eth0 2>/dev/null" in lines
    assert lines.index("ip -6 route add fe80::1 dev eth0 2>/dev/null") < \
        lines.index("ip -6 route replace default via fe80::1 dev eth0")
    assert "ip route replace default via 169.254.0.1 dev eth0" in lines


def test_eui64_link_local_matches_the_kernels() -> None:
    assert eui64_link_local("02:92:9b:b3:db:90") == "fe80::92:9bff:feb3:db90"
