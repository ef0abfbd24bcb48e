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

from cgroups import CgroupError, Resources, V2Manager, detect_manager

if os.geteuid() != 0:
    print("tests/host/test_cgroups_v2_core.py: skipped, needs root", file=sys.stderr)
    pytest.skip("needs root to create cgroups", allow_module_level=True)


@pytest.fixture
def mgr() -> Iterator[V2Manager]:
    try:
        m = detect_manager(base_name=f"ctd-test-{os.getpid()}-{uuid.uuid4().hex[:6]}",
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


OPEN_PROBE = """\
import os, sys
with open(sys.argv[1], "w") as fh:
    fh.write(str(os.getpid()))
for path in sys.argv[2:]:
    try:
        os.close(os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK))
        print(path, "ok")
    except OSError as e:
        print(path, os.strerror(e.errno))
"""


def test_device_program_on_real_cgroup2(mgr: V2Manager, tmp_path: Path) -> None:
    """The BPF device program, loaded by this kernel's verifier and attached to a real cgroup2
    directory: a process in the group opens only what the list allows. (On this hybrid host
    the kernel asks both the v1 devices cgroup and the cgroup2 program: our v1 cgroup allows
    everything.)"""
    from cgroups import DeviceRule, DeviceType
    g = mgr.group("ct-dev")
    g.create()
    try:
        g.restrict_devices([DeviceRule(DeviceType.CHAR, 1, 3, "rw"),      # null
                            DeviceRule(DeviceType.CHAR, None, None, "m")])
        # a node of /dev/zero made where nodev does not apply: refused by the program alone
        os.mknod(tmp_path / "zero", 0o600 | 0o020000, os.makedev(1, 5))
        r = subprocess.run([sys.executable, "-c", OPEN_PROBE, os.path.join(g.dir, "cgroup.procs"),
                            "/dev/null", "/dev/zero", str(tmp_path / "zero"), "/dev/full"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split("\n")[:4] == ["/dev/null ok", "/dev/zero Operation not permitted",
                                            f"{tmp_path / 'zero'} Operation not permitted",
                                            "/dev/full Operation not permitted"], r.stdout
        # outside the group nothing changed
        os.close(os.open("/dev/zero", os.O_RDONLY))
    finally:
        g.kill_all()
        g.destroy()
