"""cgroups/ v1 backend on the real kernel (root). Every cgroup made here lives below this
process' own cgroup under a unique base and is removed in a fixture, even on failure."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cgroups import UNLIMITED, CgroupError, CgroupGroup, CgroupManager, IoLimit, Resources, detect_manager, parse_size

if os.geteuid() != 0:
    print("tests/host/test_cgroups_v1.py: skipped, needs root to create cgroups",
          file=sys.stderr)
    pytest.skip("needs root to create cgroups", allow_module_level=True)

M = 1 << 20
# The child joins every hierarchy itself, the way the container spawner does before it
# unshares its cgroup namespace.
PRELUDE = """\
import os, sys
for _f in sys.argv[1:]:
    with open(_f, "w") as _fh:
        _fh.write(str(os.getpid()))
"""


def ctrl_dir(grp, controller: str) -> str:
    """The group's directory in the hierarchy holding controller: "cpu" and "cpuacct" are
    one hierarchy ("cpu,cpuacct") on many hosts and two on others."""
    return grp.dirs()[grp.manager.hierarchy(controller).key]


@pytest.fixture(scope="module")
def mgr() -> Iterator[CgroupManager]:
    m = detect_manager(base_name=f"ctd-test-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    if m.version != 1:
        print("host is not cgroup v1: the v2 backend is tested in tests/vm", file=sys.stderr)
        pytest.skip("host is not cgroup v1 (v2 is tested in tests/vm)")
    try:
        yield m
    finally:
        for name in m.list_groups():          # only ever our own unique base
            g = m.group(name)
            g.kill_all()
            g.destroy()
        m.remove_base()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Children started by a test; killed by their own PID and reaped afterwards."""
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)


@pytest.fixture
def grp(mgr: CgroupManager) -> Iterator[CgroupGroup]:
    g = mgr.group(f"ct-{uuid.uuid4().hex[:8]}")
    g.create()
    try:
        yield g
    finally:
        g.kill_all()
        g.destroy()


def spawn(grp: CgroupGroup, procs: list[subprocess.Popen[str]], body: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", PRELUDE + textwrap.dedent(body),
                          *grp.procs_files()],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    procs.append(p)
    return p


def test_layout_and_attach_from_outside(mgr: CgroupManager, grp: CgroupGroup,
                                        procs: list[subprocess.Popen[str]]) -> None:
    assert {"cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "freezer",
            "devices"} <= mgr.controllers
    assert grp.name in mgr.list_groups() and grp.exists()
    assert set(mgr.host_cpus()) <= set(os.sched_getaffinity(0))
    # v1 cpusets start empty; create() must have copied the parent's
    assert Path(ctrl_dir(grp, "cpuset"), "cpuset.cpus").read_text().strip()
    p = subprocess.Popen(["sleep", "30"])
    procs.append(p)   # type: ignore[arg-type]
    grp.attach(p.pid)
    assert grp.pids() == {p.pid}
    lines = Path(f"/proc/{p.pid}/cgroup").read_text().splitlines()
    suffix = f"/{mgr.base_name}/{grp.name}"
    assert len(lines) == len(grp.procs_files())
    assert all(line.endswith(suffix) for line in lines), lines
    assert grp.kill_all() == 1
    assert p.wait(timeout=5) == -signal.SIGKILL


def _swap_active() -> bool:
    return len(Path("/proc/swaps").read_text().splitlines()) > 1


def test_memory_limit_oom_kills(grp: CgroupGroup, procs: list[subprocess.Popen[str]]) -> None:
    # Without swap the memory limit alone decides. With swap, memsw must be capped too, and
    # then this kernel (6.18) counts refusals in neither failcnt: only oom_kill rises.
    swap = _swap_active()
    grp.apply(Resources(memory_max=parse_size("64M"), swap_max=0 if swap else None))
    p = spawn(grp, procs, """\
        data = b"x" * (200 << 20)
        print("survived", len(data))
    """)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL, out
    u = grp.usage()
    assert u.oom_kills is not None and u.oom_kills >= 1
    assert u.memory_peak is not None and u.memory_peak <= 64 * M
    phys = {b.name: b for b in grp.beancounters()}["physpages"]
    assert phys.limit == 64 * M and phys.maxheld <= 64 * M
    if not swap:
        assert u.memory_failcnt is not None and u.memory_failcnt > 0
        assert phys.failcnt == u.memory_failcnt


def test_pids_limit_stops_fork_loop(grp: CgroupGroup,
                                    procs: list[subprocess.Popen[str]]) -> None:
    grp.apply(Resources(pids_max=20))
    p = spawn(grp, procs, """\
        import time
        made, err = 0, None
        for _ in range(50):
            try:
                pid = os.fork()
            except OSError as e:
                err = e.errno
                break
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            made += 1
        print(made, err, flush=True)
        time.sleep(30)
    """)
    assert p.stdout is not None
    made, err = p.stdout.readline().split()
    assert int(made) == 19                        # 20 minus the child itself
    assert err == str(errno.EAGAIN)
    u = grp.usage()
    assert u.pids_current == 20 and u.pids_failcnt is not None and u.pids_failcnt >= 1
    numproc = {b.name: b for b in grp.beancounters()}["numproc"]
    assert (numproc.held, numproc.barrier, numproc.limit) == (20, 20, 20)
    assert numproc.failcnt >= 1 and numproc.maxheld == 20
    assert grp.kill_all() == 20 and grp.pids() == set()


def test_cpu_quota_holds_a_busy_loop(grp: CgroupGroup,
                                     procs: list[subprocess.Popen[str]]) -> None:
    grp.apply(Resources(cpu_quota_pct=50))
    usage_file = Path(ctrl_dir(grp, "cpuacct"), "cpuacct.usage")
    p = spawn(grp, procs, """\
        import time
        print("go", flush=True)
        end = time.monotonic() + 6
        while time.monotonic() < end:
            pass
    """)
    assert p.stdout is not None and p.stdout.readline().strip() == "go"
    time.sleep(0.2)
    c0, t0 = int(usage_file.read_text()), time.monotonic()
    time.sleep(3)
    c1, t1 = int(usage_file.read_text()), time.monotonic()
    share = (c1 - c0) / 1e9 / (t1 - t0)
    assert 0.1 < share <= 0.55, f"busy loop used {share:.0%} of one cpu"
    u = grp.usage()
    assert u.cpu_seconds is not None and u.cpu_seconds >= (c1 - c0) / 1e9
    # a period is throttled once the loop ran its 50 ms in it: on a busy host that can take a while
    deadline = time.monotonic() + 2.5  # the loop runs 6 s from "go"
    while not grp.usage().cpu_nr_throttled and time.monotonic() < deadline:
        time.sleep(0.2)
    u = grp.usage()
    assert u.cpu_nr_throttled and u.cpu_throttled_seconds and u.cpu_throttled_seconds > 0
    cpu = {b.name: b for b in grp.beancounters()}["cpu"]
    assert cpu.limit == 50 and cpu.failcnt > 0


def test_cpuset_pins_the_child(mgr: CgroupManager, grp: CgroupGroup,
                               procs: list[subprocess.Popen[str]]) -> None:
    grp.apply(Resources(cpuset="0"))
    p = spawn(grp, procs, """\
        print(sorted(os.sched_getaffinity(0)), flush=True)
        sys.stdin.readline()
    """)
    assert p.stdout is not None and p.stdout.readline().strip() == "[0]"
    if 1 in mgr.host_cpus():
        grp.apply(Resources(cpuset="1"))          # live move
        assert os.sched_getaffinity(p.pid) == {1}
    assert grp.read_limits().cpuset in ("0", "1")
    with pytest.raises(CgroupError, match="cpuset"):
        grp.apply(Resources(cpuset="4095"))


def test_memory_limit_applied_live(grp: CgroupGroup,
                                   procs: list[subprocess.Popen[str]]) -> None:
    grp.apply(Resources(memory_max=256 * M, swap_max=0))
    p = spawn(grp, procs, """\
        first = b"x" * (100 << 20)
        print("holding", flush=True)
        sys.stdin.readline()
        second = b"y" * (100 << 20)
        print("survived", flush=True)
    """)
    assert p.stdout is not None and p.stdin is not None
    assert p.stdout.readline().strip() == "holding"
    assert (grp.usage().memory_current or 0) >= 100 * M
    # Below what the child holds, with no swap: v1 cannot reclaim and says EBUSY.
    with pytest.raises(CgroupError) as e:
        grp.apply(Resources(memory_max=64 * M))
    assert e.value.errno == errno.EBUSY and "memory_max" in str(e.value)
    assert grp.read_limits().memory_max == 256 * M
    grp.apply(Resources(memory_max=160 * M))     # live, above current use
    assert grp.read_limits().memory_max == 160 * M
    assert grp.read_limits().swap_max == 0       # swap allowance kept through the change
    p.stdin.write("more\n")
    p.stdin.flush()
    out, _ = p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL and "survived" not in out
    assert (grp.usage().oom_kills or 0) >= 1


def test_destroy_right_after_kill(mgr: CgroupManager, procs: list[subprocess.Popen[str]]
                                  ) -> None:
    g = mgr.group(f"ct-{uuid.uuid4().hex[:8]}")
    g.create()
    try:
        p = spawn(g, procs, """\
            import time
            kids = []
            for _ in range(5):
                pid = os.fork()
                if pid == 0:
                    time.sleep(30)
                    os._exit(0)
                kids.append(pid)
            print(*kids, flush=True)
            time.sleep(30)
        """)
        assert p.stdout is not None
        kid = int(p.stdout.readline().split()[0])
        # a nested cgroup, as a container's own systemd would make, holding one process
        for key in ("memory", "pids", "name=systemd"):
            inner = os.path.join(ctrl_dir(g, key) if key != "name=systemd" else g.dirs()[key], "init.scope")
            os.mkdir(inner)
            Path(inner, "cgroup.procs").write_text(str(kid))
        assert len(g.pids()) == 6
        assert g.kill_all() == 6
        started = time.monotonic()
        g.destroy()          # the child is not reaped yet: a zombie must not block rmdir
        assert time.monotonic() - started < 2
        assert not g.exists()
        assert not any(os.path.exists(d) for d in g.dirs().values())
        assert p.wait(timeout=5) == -signal.SIGKILL
        g.destroy()          # idempotent
    finally:
        g.kill_all()
        g.destroy()


def test_swap_io_and_weights(grp: CgroupGroup) -> None:
    memsw = Path(ctrl_dir(grp, "memory"), "memory.memsw.limit_in_bytes").exists()
    if memsw:
        grp.apply(Resources(memory_max=64 * M, swap_max=32 * M))
        assert grp.read_limits().swap_max == 32 * M
    else:
        with pytest.raises(CgroupError, match="swapaccount"):
            grp.apply(Resources(memory_max=64 * M, swap_max=32 * M))
    grp.apply(Resources(cpu_weight=200, memory_high=32 * M))
    assert Path(ctrl_dir(grp, "cpu"), "cpu.shares").read_text().strip() == "2048"
    assert grp.read_limits().memory_high == 32 * M
    blkio = ctrl_dir(grp, "blkio")
    if Path(blkio, "blkio.bfq.weight").exists() or Path(blkio, "blkio.weight").exists():
        grp.apply(Resources(io_weight=500))
        assert grp.read_limits().io_weight == 500
    else:
        with pytest.raises(CgroupError, match="io_weight"):
            grp.apply(Resources(io_weight=500))
    dev = next((Path(b, "dev").read_text().strip() for b in sorted(Path("/sys/block").iterdir())
                if Path(b, "dev").exists()), None)
    if dev is not None:
        grp.apply(Resources(io_limits=(IoLimit(dev, rbps=M, wiops=100),)))
        assert grp.read_limits().io_limits == (IoLimit(dev, rbps=M, wiops=100),)
        grp.apply(Resources(io_limits=(IoLimit(dev, rbps=UNLIMITED, wiops=UNLIMITED),)))
        assert grp.read_limits().io_limits == ()
    with pytest.raises(CgroupError, match=r"io_limits\[250:250\]"):
        grp.apply(Resources(io_limits=(IoLimit("250:250", rbps=M),)))


def test_freeze_and_thaw(grp: CgroupGroup, procs: list[subprocess.Popen[str]]) -> None:
    p = spawn(grp, procs, "import time; print('up', flush=True); time.sleep(30)\n")
    assert p.stdout is not None and p.stdout.readline().strip() == "up"
    grp.freeze()
    state = Path(ctrl_dir(grp, "freezer"), "freezer.state")
    assert state.read_text().strip() == "FROZEN"
    grp.thaw()
    assert state.read_text().strip() == "THAWED"
    assert grp.kill_all() == 1
