"""The v2 backend's controller-free paths on this hybrid host's real cgroup2 tree
(/sys/fs/cgroup/unified has no controllers, but cgroup.procs/kill/freeze/events are real).
Limits on v2 need a v2 host: tests/vm runs those in a QEMU guest."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cgroups import CgroupError, CgroupManager, Resources, V2Manager

if os.geteuid() != 0:
    print("tests/host/test_cgroups_v2_core.py: skipped, needs root", file=sys.stderr)
    pytest.skip("needs root to create cgroups", allow_module_level=True)


@pytest.fixture
def mgr() -> Iterator[V2Manager]:
    try:
        m = CgroupManager.detect(base_name=f"ctd-test-{os.getpid()}-{uuid.uuid4().hex[:6]}",
                                 version=2)
    except CgroupError as e:
        print(f"no cgroup2 tree holds this process: {e}", file=sys.stderr)
        pytest.skip(f"no cgroup2 tree holds this process: {e}")
    assert isinstance(m, V2Manager)
    try:
        yield m
    finally:
        for name in m.list_groups():
            m.group(name).kill_all()
            m.group(name).destroy()
        m.remove_base()


def test_v2_lifecycle_on_real_cgroup2(mgr: V2Manager) -> None:
    g = mgr.group("ct1")
    g.create()
    p = subprocess.Popen(["sleep", "30"])
    try:
        g.attach(p.pid)
        assert g.pids() == {p.pid}
        unified = [line for line in Path(f"/proc/{p.pid}/cgroup").read_text().splitlines()
                   if line.startswith("0::")]
        assert unified[0].endswith(f"/{mgr.base_name}/ct1")
        if "freezer" in mgr.controllers:
            g.freeze()
            assert "frozen 1" in Path(g.dir, "cgroup.events").read_text()
            g.thaw()
            assert "frozen 0" in Path(g.dir, "cgroup.events").read_text()
        if "memory" not in mgr.controllers:
            with pytest.raises(CgroupError, match="memory_max: no memory.max"):
                g.apply(Resources(memory_max=1 << 20))
        assert g.usage().cpu_seconds is not None        # cpu.stat is core in v2
        assert g.kill_all() == 1                        # cgroup.kill where present
        assert p.wait(timeout=5) == -signal.SIGKILL
        g.destroy()
        assert not g.exists() and mgr.list_groups() == []
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        g.kill_all()
        g.destroy()
