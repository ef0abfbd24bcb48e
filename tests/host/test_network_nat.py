"""NAT networks switch on forwarding — tested with a ctd that runs in a network namespace the
test made, so the host's own ip_forward is never touched."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctd.storage.pool import release_pool
from tests.conftest import Daemon, needs_root

FORWARD = "/proc/sys/net/ipv4/ip_forward"


def in_netns(ns: str, *argv: str) -> subprocess.CompletedProcess:
    # nsenter --net only (not `ip netns exec`): /sys keeps its cgroup mounts for the daemon
    return subprocess.run(["nsenter", f"--net=/run/netns/{ns}", *argv], capture_output=True, text=True)


@pytest.fixture
def netns() -> Iterator[str]:
    needs_root()
    name = f"ctdnat-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    # a new namespace copies the host's IPv4 settings (net.core.devconf_inherit_init_net = 0):
    # start this one of the test's own without forwarding, whatever the host has
    in_netns(name, "sh", "-c", f"echo 0 > {FORWARD}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def netns_ctd(tmp_path: Path, netns: str) -> Iterator[tuple[Daemon, str]]:
    """A ctd whose network namespace is the test's (its bridges and sysctls live there)."""
    d = Daemon(tmp_path / "state", tmp_path / "ctd.sock", f"ctd-test-{uuid.uuid4().hex[:8]}",
               launcher=["nsenter", f"--net=/run/netns/{netns}"])
    d.start()
    try:
        yield d, netns
    finally:
        try:
            d.destroy_all()
        finally:
            d.stop()
            release_pool(d.state_dir)


def test_nat_network_enables_forwarding_in_its_namespace_only(netns_ctd):
    ctd, ns = netns_ctd
    host_before = Path(FORWARD).read_text()
    assert in_netns(ns, "cat", FORWARD).stdout.strip() == "0"  # as the fixture made it

    ctd.ok("network", "create", "natnet", "--nat", "--subnet", "10.98.0.0/24")
    assert in_netns(ns, "cat", FORWARD).stdout.strip() == "1"
    rules = in_netns(ns, "nft", "list", "ruleset").stdout
    assert "masquerade" in rules and "10.98.0.0/24" in rules
    assert Path(FORWARD).read_text() == host_before  # the host's own stays as it was

    # The last NAT network gone: its masquerade goes, forwarding stays as the admin now has it
    # (other routing may rely on it by then; docs/networking.md says so).
    ctd.ok("network", "delete", "natnet")
    assert "masquerade" not in in_netns(ns, "nft", "list", "ruleset").stdout
    assert in_netns(ns, "cat", FORWARD).stdout.strip() == "1"
    assert Path(FORWARD).read_text() == host_before


def test_network_without_nat_leaves_forwarding_off(netns_ctd):
    ctd, ns = netns_ctd
    ctd.ok("network", "create", "plain0", "--subnet", "10.97.0.0/24")
    assert in_netns(ns, "cat", FORWARD).stdout.strip() == "0"
    assert "masquerade" not in in_netns(ns, "nft", "list", "ruleset").stdout
    ctd.ok("network", "delete", "plain0")
