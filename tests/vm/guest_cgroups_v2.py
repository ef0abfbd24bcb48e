"""cgroups/ v2 backend on a real cgroup2 kernel (root): the twin of test_cgroups_v1.py.

This host is v1 hybrid, so here the module skips; tests/vm/test_cgroup_v2_guest.py boots a
QEMU guest whose /sys/fs/cgroup is cgroup2 and runs this module inside it, as root.
Every cgroup made here lives below this process' own cgroup under a unique base and is
removed in a fixture, even on failure."""
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

from cgroups import (UNLIMITED, Beancounter, CgroupError, IoLimit, Resources, V2Group, V2Manager, detect_manager,
                     format_beancounters, parse_size)

CGROUP_ROOT = "/sys/fs/cgroup"


def _fstype(mountpoint: str) -> str | None:
    """Filesystem type of the last mount on mountpoint (what a path lookup reaches)."""
    found = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if left.split()[4] == mountpoint and right:
            found = right.split()[0]
    return found


_why = None
if os.geteuid() != 0:
    _why = "needs root to create cgroups"
elif (_fs := _fstype(CGROUP_ROOT)) != "cgroup2":
    _why = (f"{CGROUP_ROOT} is {_fs or 'not mounted'}, not cgroup2 (a v1 or hybrid host): "
            "the v2 backend runs for real in a QEMU guest, tests/vm/test_cgroup_v2_guest.py")
if _why is not None:
    print(f"tests/host/test_cgroups_v2.py: skipped, {_why}", file=sys.stderr)
    pytest.skip(_why, allow_module_level=True)

M = 1 << 20
# The child joins the group itself, the way the container spawner does before it
# unshares its cgroup namespace.
PRELUDE = """\
import os, sys
for _f in sys.argv[1:]:
    with open(_f, "w") as _fh:
        _fh.write(str(os.getpid()))
"""


@pytest.fixture(scope="module")
def mgr() -> Iterator[V2Manager]:
    m = detect_manager(base_name=f"ctd-test-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    assert isinstance(m, V2Manager), f"{CGROUP_ROOT} is cgroup2 but detect() chose v{m.version}"
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
def grp(mgr: V2Manager) -> Iterator[V2Group]:
    g = mgr.group(f"ct-{uuid.uuid4().hex[:8]}")
    g.create()
    try:
        yield g
    finally:
        g.kill_all()
        g.destroy()


def spawn(grp: V2Group, procs: list[subprocess.Popen[str]], body: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", PRELUDE + textwrap.dedent(body),
                          *grp.procs_files()],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    procs.append(p)
    return p


def _rows(grp: V2Group) -> dict[str, Beancounter]:
    return {b.name: b for b in grp.beancounters()}


def test_layout_and_attach_from_outside(mgr: V2Manager, grp: V2Group,
                                        procs: list[subprocess.Popen[str]]) -> None:
    assert {"cpuset", "cpu", "io", "memory", "pids", "freezer"} <= mgr.controllers
    assert grp.name in mgr.list_groups() and grp.exists()
    assert grp.procs_files() == [os.path.join(grp.dir, "cgroup.procs")]   # one hierarchy
    # every wanted controller is switched on for the group's files
    enabled = set(Path(grp.dir, "cgroup.controllers").read_text().split())
    assert {"cpuset", "cpu", "io", "memory", "pids"} <= enabled
    assert set(mgr.host_cpus()) <= set(os.sched_getaffinity(0))
    assert Path(grp.dir, "cpuset.cpus.effective").read_text().strip()
    p = subprocess.Popen(["sleep", "30"])
    procs.append(p)   # type: ignore[arg-type]
    grp.attach(p.pid)
    assert grp.pids() == {p.pid}
    lines = Path(f"/proc/{p.pid}/cgroup").read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("0::"), lines
    assert lines[0].endswith(f"/{mgr.base_name}/{grp.name}"), lines
    assert grp.kill_all() == 1
    assert p.wait(timeout=5) == -signal.SIGKILL


def _swap_active() -> bool:
    return len(Path("/proc/swaps").read_text().splitlines()) > 1


def test_memory_limit_oom_kills(grp: V2Group, procs: list[subprocess.Popen[str]]) -> None:
    swap = _swap_active()
    grp.apply(Resources(memory_max=parse_size("64M"), swap_max=0 if swap else None))
    assert Path(grp.dir, "memory.max").read_text().strip() == str(64 * M)
    p = spawn(grp, procs, """\
        data = b"x" * (200 << 20)
        print("survived", len(data))
    """)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL, out
    u = grp.usage()
    assert u.oom_kills is not None and u.oom_kills >= 1
    assert u.memory_peak is not None and u.memory_peak <= 64 * M
    # memory.events "max": times usage hit memory.max (v1's failcnt)
    assert u.memory_failcnt is not None and u.memory_failcnt > 0
    phys = _rows(grp)["physpages"]
    assert phys.limit == 64 * M and phys.maxheld <= 64 * M
    assert phys.failcnt == u.memory_failcnt


def test_pids_limit_stops_fork_loop(grp: V2Group, procs: list[subprocess.Popen[str]]) -> None:
    grp.apply(Resources(pids_max=20))
    assert Path(grp.dir, "pids.max").read_text().strip() == "20"
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
                time.sleep(60)
                os._exit(0)
            made += 1
        print(made, err, flush=True)
        time.sleep(60)
    """)
    assert p.stdout is not None
    made, err = p.stdout.readline().split()
    assert int(made) == 19                        # 20 minus the child itself
    assert err == str(errno.EAGAIN)
    u = grp.usage()
    assert u.pids_current == 20 and u.pids_failcnt is not None and u.pids_failcnt >= 1
    numproc = _rows(grp)["numproc"]
    assert (numproc.held, numproc.barrier, numproc.limit) == (20, 20, 20)
    assert numproc.failcnt >= 1 and numproc.maxheld == 20
    assert grp.kill_all() == 20 and grp.pids() == set()


def _usage_usec(grp: V2Group) -> int:
    for line in Path(grp.dir, "cpu.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value)
    raise AssertionError("cpu.stat has no usage_usec")


def test_cpu_quota_holds_a_busy_loop(grp: V2Group, procs: list[subprocess.Popen[str]]) -> None:
    grp.apply(Resources(cpu_quota_pct=50))
    assert Path(grp.dir, "cpu.max").read_text().split() == ["50000", "100000"]
    p = spawn(grp, procs, """\
        import time
        print("go", flush=True)
        end = time.monotonic() + 8
        while time.monotonic() < end:
            pass
    """)
    assert p.stdout is not None and p.stdout.readline().strip() == "go"
    time.sleep(0.3)
    c0, t0 = _usage_usec(grp), time.monotonic()
    time.sleep(3)
    c1, t1 = _usage_usec(grp), time.monotonic()
    share = (c1 - c0) / 1e6 / (t1 - t0)
    assert 0.2 < share <= 0.55, f"busy loop used {share:.0%} of one cpu"
    u = grp.usage()
    assert u.cpu_seconds is not None and u.cpu_seconds >= (c1 - c0) / 1e6
    assert u.cpu_nr_throttled and u.cpu_throttled_seconds and u.cpu_throttled_seconds > 0
    cpu = _rows(grp)["cpu"]
    assert cpu.limit == 50 and cpu.failcnt > 0
    assert grp.read_limits().cpu_quota_pct == 50
    grp.apply(Resources(cpu_quota_pct=UNLIMITED))
    assert Path(grp.dir, "cpu.max").read_text().split() == ["max", "100000"]
    assert grp.read_limits().cpu_quota_pct == UNLIMITED


def test_cpuset_pins_the_child(mgr: V2Manager, grp: V2Group,
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


def test_memory_limit_applied_live(grp: V2Group, procs: list[subprocess.Popen[str]]) -> None:
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
    grp.apply(Resources(memory_max=160 * M))     # live, above current use
    assert grp.read_limits().memory_max == 160 * M
    assert Path(grp.dir, "memory.max").read_text().strip() == str(160 * M)
    assert grp.read_limits().swap_max == 0       # swap allowance kept through the change
    p.stdin.write("more\n")
    p.stdin.flush()
    out, _ = p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL and "survived" not in out
    assert (grp.usage().oom_kills or 0) >= 1


def test_memory_limit_below_use_reclaims_then_oom_kills(
        grp: V2Group, procs: list[subprocess.Popen[str]]) -> None:
    # Where v1 refuses a limit below current use (EBUSY), v2 takes it, reclaims, and with
    # nothing to reclaim (anonymous memory, no swap allowed) OOM-kills inside the group.
    grp.apply(Resources(memory_max=256 * M, swap_max=0))
    p = spawn(grp, procs, """\
        held = b"x" * (100 << 20)
        print("holding", flush=True)
        sys.stdin.readline()
    """)
    assert p.stdout is not None and p.stdout.readline().strip() == "holding"
    grp.apply(Resources(memory_max=64 * M))
    assert grp.read_limits().memory_max == 64 * M
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    u = grp.usage()
    assert (u.oom_kills or 0) >= 1 and (u.memory_current or 0) <= 64 * M


def test_destroy_right_after_kill(mgr: V2Manager, procs: list[subprocess.Popen[str]]) -> None:
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
        inner = os.path.join(g.dir, "init.scope")
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


def test_swap_io_and_weights(grp: V2Group) -> None:
    if Path(grp.dir, "memory.swap.max").exists():
        grp.apply(Resources(memory_max=64 * M, swap_max=32 * M))
        assert grp.read_limits().swap_max == 32 * M
        assert Path(grp.dir, "memory.swap.max").read_text().strip() == str(32 * M)
    else:
        with pytest.raises(CgroupError, match="swap_max"):
            grp.apply(Resources(memory_max=64 * M, swap_max=32 * M))
    grp.apply(Resources(cpu_weight=200, memory_high=32 * M))
    assert Path(grp.dir, "cpu.weight").read_text().strip() == "200"      # v2: no shares
    assert grp.read_limits().cpu_weight == 200
    assert grp.read_limits().memory_high == 32 * M
    grp.apply(Resources(memory_high=UNLIMITED))
    assert Path(grp.dir, "memory.high").read_text().strip() == "max"
    weight_files = [n for n in ("io.weight", "io.bfq.weight") if Path(grp.dir, n).exists()]
    if weight_files:
        grp.apply(Resources(io_weight=500))
        assert grp.read_limits().io_weight == 500
        text = Path(grp.dir, weight_files[0]).read_text().split()
        assert text[:2] == ["default", "500"], (weight_files[0], text)
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


def test_freeze_and_thaw(grp: V2Group, procs: list[subprocess.Popen[str]]) -> None:
    p = spawn(grp, procs, "import time; print('up', flush=True); time.sleep(30)\n")
    assert p.stdout is not None and p.stdout.readline().strip() == "up"
    grp.freeze()
    events = Path(grp.dir, "cgroup.events")
    assert "frozen 1" in events.read_text().splitlines()
    assert Path(grp.dir, "cgroup.freeze").read_text().strip() == "1"
    grp.thaw()
    assert "frozen 0" in events.read_text().splitlines()
    assert grp.kill_all() == 1


def test_suspend_state_and_a_tenant_cannot_thaw_its_own_root(grp: V2Group,
                                                               procs: list[subprocess.Popen[str]]) -> None:
    """What ctd's suspend reads (freezer_state), and the tenant's side: its root (an id range's
    uid, the group delegated to it) cannot write cgroup.freeze of its own cgroup, but can freeze
    a sub-cgroup it made; kill_all still ends everything (it thaws the subtree after SIGKILL)."""
    tenant = 100000
    assert grp.freezer_state() == "thawed"
    grp.delegate(tenant, tenant)
    p = spawn(grp, procs, f"""
        import os, time
        os.setgid({tenant}); os.setuid({tenant})
        me = os.path.dirname(sys.argv[1])
        for value in ("0", "1"):
            try:
                with open(os.path.join(me, "cgroup.freeze"), "w") as fh:
                    fh.write(value)
                print("WROTE", flush=True)
            except OSError as e:
                print("refused", e.errno, flush=True)
        child = os.path.join(me, "own")
        os.mkdir(child)
        kid = os.fork()
        if kid == 0:
            with open(os.path.join(child, "cgroup.procs"), "w") as fh:
                fh.write(str(os.getpid()))
            time.sleep(60)
            os._exit(0)
        time.sleep(0.3)
        with open(os.path.join(child, "cgroup.freeze"), "w") as fh:
            fh.write("1")
        print("child frozen", flush=True)
        time.sleep(60)
    """)
    assert p.stdout is not None
    lines = [p.stdout.readline().strip() for _ in range(3)]
    assert lines[:2] == [f"refused {errno.EACCES}"] * 2 and lines[2] == "child frozen", (lines, p.stderr)
    grp.freeze()
    assert grp.wait_frozen(5) and grp.freezer_state() == "frozen"
    grp.thaw()
    assert grp.freezer_state() == "thawed"
    assert "frozen 1" in Path(grp.dir, "own", "cgroup.events").read_text().splitlines()
    assert grp.kill_all(timeout=5) == 2 and not grp.pids(), "a task frozen by its tenant outlived SIGKILL"


def test_beancounter_rows(grp: V2Group, procs: list[subprocess.Popen[str]]) -> None:
    grp.apply(Resources(memory_max=128 * M, pids_max=50, cpu_quota_pct=150))
    p = spawn(grp, procs, "import time; print('up', flush=True); time.sleep(30)\n")
    assert p.stdout is not None and p.stdout.readline().strip() == "up"
    rows = grp.beancounters()
    assert [r.name for r in rows] == ["physpages", "swappages", "numproc", "cpu", "io"]
    by = {r.name: r for r in rows}
    assert 0 < by["physpages"].held <= by["physpages"].maxheld <= 128 * M
    assert by["physpages"].limit == by["physpages"].barrier == 128 * M
    assert (by["numproc"].held, by["numproc"].limit) == (1, 50)
    assert by["cpu"].limit == 150
    text = format_beancounters(rows, 101)
    assert text.splitlines()[1].split()[:2] == ["101:", "physpages"]
    assert "9223372036854775807" in text          # unlimited io row, OpenVZ style


def test_device_allow_list(grp: V2Group, procs: list[subprocess.Popen[str]], tmp_path: Path) -> None:
    """The BPF device program on a pure cgroup2 kernel: only listed devices open, whatever
    node is used; mknod is judged too; a sub-cgroup (a guest's systemd) gets no more."""
    from cgroups import DeviceRule, DeviceType
    grp.restrict_devices([DeviceRule(DeviceType.CHAR, 1, 3, "rwm"), DeviceRule(DeviceType.CHAR, 1, 5, "m")])
    p = spawn(grp, procs, f"""\
        import stat
        def attempt(what, call):
            try:
                call()
                print(what, "ok", flush=True)
            except OSError as e:
                print(what, e.errno, flush=True)
        attempt("null", lambda: os.close(os.open("/dev/null", os.O_RDWR)))
        attempt("zero", lambda: os.close(os.open("/dev/zero", os.O_RDONLY)))
        attempt("mknod-zero", lambda: os.mknod("{tmp_path}/zero", stat.S_IFCHR | 0o600, os.makedev(1, 5)))
        attempt("open-made-zero", lambda: os.close(os.open("{tmp_path}/zero", os.O_RDONLY)))
        attempt("mknod-full", lambda: os.mknod("{tmp_path}/full", stat.S_IFCHR | 0o600, os.makedev(1, 7)))
        inner = os.path.join(os.path.dirname(sys.argv[1]), "inner")
        os.mkdir(inner)
        with open(os.path.join(inner, "cgroup.procs"), "w") as fh:
            fh.write(str(os.getpid()))
        attempt("inner-zero", lambda: os.close(os.open("/dev/zero", os.O_RDONLY)))
        attempt("inner-null", lambda: os.close(os.open("/dev/null", os.O_RDWR)))
    """)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    got = dict(line.split() for line in out.splitlines())
    eperm = str(errno.EPERM)
    assert got == {"null": "ok", "zero": eperm, "mknod-zero": "ok", "open-made-zero": eperm,
                   "mknod-full": eperm, "inner-zero": eperm, "inner-null": "ok"}, out
