"""lxcfs under a memory limit of its own: what tenants make it hold is bounded and charged to
its cgroup, not to the host's; at the limit the kernel kills it, and ctd brings the views back
to every running container at once."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cgroups import detect_manager
from tests.conftest import REPO, Daemon, _start_daemon, _teardown

LIMIT = 24 << 20


@pytest.fixture
def lxcfs_ctd(tmp_path: Path) -> Iterator[Daemon]:
    if shutil.which("lxcfs") is None:
        pytest.fail("lxcfs is missing: ./setup.sh installs it")
    d = _start_daemon(tmp_path, "lxcfs", 'lxcfs_memory = "24M"\n')
    yield d
    _teardown(d)


def container(d: Daemon, probe: Path) -> str:
    name = d.unique()
    d.ok("create", name, "--template", "busybox", "--ram", "256M")  # lxcfs shows that as MemTotal
    target = d.rootfs(name) / "usr/local/bin/probe"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(probe, target)
    d.ok("start", name)
    return name


def lxcfs_pid(d: Daemon) -> int:
    return int((d.state_dir / "lxcfs" / "lxcfs.pid").read_text())


def memtotal(d: Daemon, name: str) -> str:
    return d.sh(name, "grep MemTotal /proc/meminfo 2>&1").out.strip()


LXCFS_VIEW = "MemTotal:         262144 kB"  # the container's 256M, not the host's RAM


def test_lxcfs_is_bounded_and_comes_back(lxcfs_ctd, probe):
    d = lxcfs_ctd
    greedy, neighbour = container(d, probe), container(d, probe)
    assert memtotal(d, neighbour) == LXCFS_VIEW
    first = lxcfs_pid(d)
    memory_line = next(line for line in Path(f"/proc/{first}/cgroup").read_text().splitlines()
                       if ":memory:" in line)
    assert memory_line.endswith(f"/{d.cgroup_name}/lxcfs"), memory_line
    group = detect_manager(base_name=d.cgroup_name).group("lxcfs")
    assert group.read_limits().memory_max == LIMIT
    # 57,000 handles would take lxcfs ~120 MB: far past its 24 MB.
    holders = [subprocess.Popen([sys.executable, "-m", "ctctl.main", "--socket", str(d.socket), "exec", greedy,
                                 "--", "probe", "openhold", "/proc/meminfo", "19000", "5"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
               for _ in range(3)]
    try:
        reports = [h.stdout.readline().strip() for h in holders if h.stdout]
    finally:
        for h in holders:
            h.wait(60)
    assert any("ECONNABORTED" in r or "ENOTCONN" in r for r in reports), reports  # it was killed
    usage = group.usage()
    assert usage.memory_peak is not None and usage.memory_peak <= LIMIT, usage
    # A new lxcfs, and the neighbour's view is back without a restart of the neighbour.
    deadline = time.monotonic() + 15
    while memtotal(d, neighbour) != LXCFS_VIEW and time.monotonic() < deadline:
        time.sleep(0.2)
    assert memtotal(d, neighbour) == LXCFS_VIEW
    assert lxcfs_pid(d) != first
    assert memtotal(d, greedy) == LXCFS_VIEW
    assert memtotal(d, container(d, probe)) == LXCFS_VIEW
