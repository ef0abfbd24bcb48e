"""The v1 backend against a fake cgroup v1 tree (cgroups.fake plays the kernel)."""
from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest

from cgroups import UNLIMITED, CgroupError, IoLimit, Resources, V1Group, V1Manager, detect_manager
from cgroups.fake import FakeKernelFS, fake_v1_host

M = 1 << 20


def _mgr(tmp_path: Path, **kw: object) -> tuple[V1Manager, FakeKernelFS]:
    fs, proc = fake_v1_host(tmp_path, **kw)  # type: ignore[arg-type]
    mgr = detect_manager("ctd", proc_self=proc, fs=fs)
    assert isinstance(mgr, V1Manager)
    return mgr, fs


@pytest.fixture
def v1(tmp_path: Path) -> tuple[V1Manager, V1Group, FakeKernelFS]:
    mgr, fs = _mgr(tmp_path)
    grp = mgr.group("ct1")
    grp.create()
    return mgr, grp, fs


def read(grp: V1Group, key: str, name: str) -> str:
    return Path(grp.dirs()[key], name).read_text().strip()


def test_create_copies_cpuset_and_is_idempotent(v1: tuple) -> None:
    mgr, grp, fs = v1
    assert all(os.path.isdir(d) for d in grp.dirs().values())
    assert read(grp, "cpuset", "cpuset.cpus") == "0-3"
    assert read(grp, "cpuset", "cpuset.mems") == "0"
    grp.create()
    assert grp.exists() and mgr.list_groups() == ["ct1"]
    assert len(grp.procs_files()) == 10    # 8 controllers + name=systemd + cgroup2 tree
    assert mgr.host_cpus() == [0, 1, 2, 3]


def test_group_handle_has_no_side_effect(tmp_path: Path) -> None:
    mgr, fs = _mgr(tmp_path)
    grp = mgr.group("ct2")
    assert not grp.exists() and fs.writes == [] and mgr.list_groups() == []
    with pytest.raises(CgroupError, match="does not exist"):
        grp.apply(Resources(pids_max=1))
    with pytest.raises(CgroupError, match="invalid group name"):
        mgr.group("a/b")


def test_apply_writes_every_field(v1: tuple) -> None:
    mgr, grp, fs = v1
    grp.apply(Resources(
        cpuset="0-1", cpu_quota_pct=150, cpu_weight=200, memory_max=64 * M,
        memory_high=32 * M, swap_max=16 * M, pids_max=20, io_weight=300,
        io_limits=(IoLimit("8:0", rbps=1000, wiops=50),)))
    assert read(grp, "cpuset", "cpuset.cpus") == "0-1"
    assert read(grp, "cpu", "cpu.cfs_period_us") == "100000"
    assert read(grp, "cpu", "cpu.cfs_quota_us") == "150000"
    assert read(grp, "cpu", "cpu.shares") == "2048"
    assert read(grp, "memory", "memory.limit_in_bytes") == str(64 * M)
    assert read(grp, "memory", "memory.memsw.limit_in_bytes") == str(80 * M)
    assert read(grp, "memory", "memory.soft_limit_in_bytes") == str(32 * M)
    assert read(grp, "pids", "pids.max") == "20"
    assert read(grp, "blkio", "blkio.bfq.weight") == "300"
    assert read(grp, "blkio", "blkio.throttle.read_bps_device") == "8:0 1000"
    assert read(grp, "blkio", "blkio.throttle.write_iops_device") == "8:0 50"
    assert read(grp, "blkio", "blkio.throttle.write_bps_device") == ""
    lim = grp.read_limits()
    assert lim == Resources(cpuset="0-1", cpu_quota_pct=150, cpu_weight=200,
                            memory_max=64 * M, memory_high=32 * M, swap_max=16 * M,
                            pids_max=20, io_weight=300,
                            io_limits=(IoLimit("8:0", rbps=1000, wiops=50),))


def test_apply_none_fields_write_nothing(v1: tuple) -> None:
    mgr, grp, fs = v1
    fs.writes.clear()
    grp.apply(Resources())
    assert fs.writes == []


def test_unlimited_values(v1: tuple) -> None:
    mgr, grp, fs = v1
    grp.apply(Resources(cpu_quota_pct=50, memory_max=64 * M, pids_max=5,
                        io_limits=(IoLimit("8:0", rbps=1000),)))
    grp.apply(Resources(cpu_quota_pct=UNLIMITED, memory_max=UNLIMITED, memory_high=UNLIMITED,
                        pids_max=UNLIMITED, io_limits=(IoLimit("8:0", rbps=UNLIMITED),)))
    assert read(grp, "cpu", "cpu.cfs_quota_us") == "-1"
    assert read(grp, "pids", "pids.max") == "max"
    assert read(grp, "blkio", "blkio.throttle.read_bps_device") == ""   # "8:0 0" drops it
    lim = grp.read_limits()
    assert (lim.cpu_quota_pct, lim.memory_max, lim.memory_high, lim.swap_max, lim.pids_max,
            lim.io_limits) == (UNLIMITED,) * 5 + ((),)


def test_memory_and_memsw_are_written_in_a_safe_order(v1: tuple) -> None:
    # The fake refuses memory > memsw, like the kernel; each step must pass.
    mgr, grp, fs = v1
    grp.apply(Resources(memory_max=64 * M, swap_max=0))
    grp.apply(Resources(memory_max=1024 * M))                 # grow: memsw first
    assert read(grp, "memory", "memory.memsw.limit_in_bytes") == str(1024 * M)
    assert read(grp, "memory", "memory.limit_in_bytes") == str(1024 * M)
    grp.apply(Resources(memory_max=32 * M, swap_max=8 * M))   # shrink: memory first
    assert grp.read_limits().swap_max == 8 * M
    grp.apply(Resources(memory_max=128 * M))                  # swap allowance kept
    assert grp.read_limits().swap_max == 8 * M
    grp.apply(Resources(swap_max=UNLIMITED))
    assert grp.read_limits().swap_max == UNLIMITED
    grp.apply(Resources(swap_max=4 * M))                      # swap only, memory as is
    assert read(grp, "memory", "memory.memsw.limit_in_bytes") == str(132 * M)
    grp.apply(Resources(memory_max=UNLIMITED))                # both lifted
    assert grp.read_limits().memory_max == UNLIMITED
    assert grp.read_limits().swap_max == UNLIMITED


def test_swap_limit_needs_memory_limit(v1: tuple) -> None:
    mgr, grp, fs = v1
    with pytest.raises(CgroupError, match="needs a memory_max"):
        grp.apply(Resources(swap_max=64 * M))


def test_swap_without_memsw_is_refused(tmp_path: Path) -> None:
    mgr, fs = _mgr(tmp_path, omit=frozenset({"memory.memsw.limit_in_bytes"}))
    grp = mgr.group("ct1")
    grp.create()
    with pytest.raises(CgroupError, match="swapaccount=1"):
        grp.apply(Resources(memory_max=64 * M, swap_max=0))
    grp.apply(Resources(memory_max=64 * M))          # memory alone still works
    assert grp.read_limits().swap_max is None


def test_io_weight_file_choice(tmp_path: Path) -> None:
    mgr, fs = _mgr(tmp_path, omit=frozenset({"blkio.bfq.weight"}))
    grp = mgr.group("ct1")
    grp.create()
    fs.writes.clear()
    # checked before anything is written: pids.max stays untouched
    with pytest.raises(CgroupError, match="bfq"):
        grp.apply(Resources(pids_max=5, io_weight=100))
    assert fs.writes == []
    Path(grp.dirs()["blkio"], "blkio.weight").write_text("500\n")   # a CFQ-era kernel
    grp.apply(Resources(io_weight=100))
    assert read(grp, "blkio", "blkio.weight") == "100"


def test_kernel_refusal_is_a_clear_error(v1: tuple) -> None:
    mgr, grp, fs = v1
    fs.refuse["cpuset.cpus"] = errno.ERANGE
    with pytest.raises(CgroupError) as e:
        grp.apply(Resources(cpuset="7"))
    assert "cpuset" in str(e.value) and "'7'" in str(e.value)
    assert e.value.errno == errno.ERANGE
    assert e.value.path is not None and e.value.path.endswith("cpuset.cpus")
    assert isinstance(e.value, ValueError)


def test_missing_controller_is_refused(tmp_path: Path) -> None:
    mgr, fs = _mgr(tmp_path)
    mgr.hierarchies = [h for h in mgr.hierarchies if "pids" not in h.controllers]
    grp = mgr.group("ct1")
    grp.create()
    with pytest.raises(CgroupError, match="pids controller is not mounted"):
        grp.apply(Resources(pids_max=5))


def test_create_undoes_itself_on_failure(v1: tuple) -> None:
    mgr, grp, fs = v1
    fs.refuse["ct2/cpuset.cpus"] = errno.EACCES
    other = mgr.group("ct2")
    with pytest.raises(CgroupError):
        other.create()
    assert not other.exists() and mgr.list_groups() == ["ct1"]


def test_attach_pids_and_kill_via_cgroup_kill(v1: tuple) -> None:
    mgr, grp, fs = v1
    grp.attach(111)
    grp.attach(222)
    for f in grp.procs_files():
        assert Path(f).read_text().split() == ["111", "222"]
    assert grp.pids() == {111, 222}
    assert grp.kill_all() == 2
    assert grp.pids() == set()
    assert any(p.endswith("unified/ctd/ct1/cgroup.kill") for p, _ in fs.writes)
    assert sorted(fs.kills) == [(111, signal.SIGKILL), (222, signal.SIGKILL)]


def test_kill_without_cgroup_kill_freezes_first(tmp_path: Path) -> None:
    mgr, fs = _mgr(tmp_path, hybrid=False)
    grp = mgr.group("ct1")
    grp.create()
    grp.attach(333)
    Path(grp.dirs()["freezer"], "freezer.state").write_text("FROZEN\n")   # instant freeze
    assert grp.kill_all() == 1 and grp.pids() == set()
    states = [d for p, d in fs.writes if p.endswith("freezer.state")]
    assert states == ["FROZEN", "THAWED"]
    assert fs.kills == [(333, signal.SIGKILL)]


def test_attach_refused_when_cpuset_is_empty(v1: tuple) -> None:
    mgr, grp, fs = v1
    Path(grp.dirs()["cpuset"], "cpuset.cpus").write_text("\n")
    with pytest.raises(CgroupError, match="cpuset has no cpus"):
        grp.attach(444)


def test_sigterm_is_sent_without_waiting(v1: tuple) -> None:
    mgr, grp, fs = v1
    grp.attach(555)
    assert grp.kill_all(signal.SIGTERM) == 1
    assert fs.kills == [(555, signal.SIGTERM)] and grp.pids() == {555}


def test_destroy_nested_and_idempotent(v1: tuple) -> None:
    mgr, grp, fs = v1
    # what a container's systemd makes inside its cgroup namespace
    for key in ("memory", "name=systemd"):
        fs.mkdir(os.path.join(grp.dirs()[key], "init.scope"))
        fs.mkdir(os.path.join(grp.dirs()[key], "system.slice"))
        fs.mkdir(os.path.join(grp.dirs()[key], "system.slice", "cron.service"))
    fs.write(os.path.join(grp.dirs()["memory"], "init.scope", "cgroup.procs"), "666")
    assert grp.pids() == {666}
    with pytest.raises(CgroupError, match="processes left: 666"):
        grp.destroy(timeout=0.05)
    grp.kill_all()
    grp.destroy()
    assert not grp.exists() and not any(os.path.exists(d) for d in grp.dirs().values())
    grp.destroy()                                    # gone already: fine
    mgr.remove_base()
    assert not any(os.path.exists(d) for d in mgr.base_dirs().values())


def test_remove_base_refuses_with_groups(v1: tuple) -> None:
    mgr, grp, fs = v1
    with pytest.raises(CgroupError, match="groups remain"):
        mgr.remove_base()


def test_usage_and_beancounters(v1: tuple) -> None:
    mgr, grp, fs = v1
    d = grp.dirs()
    files = {
        ("cpuacct", "cpuacct.usage"): "2500000000",
        ("cpu", "cpu.stat"): "nr_periods 10\nnr_throttled 4\nthrottled_time 300000000\n",
        ("memory", "memory.usage_in_bytes"): str(10 * M),
        ("memory", "memory.max_usage_in_bytes"): str(20 * M),
        ("memory", "memory.failcnt"): "7",
        ("memory", "memory.memsw.usage_in_bytes"): str(12 * M),
        ("memory", "memory.memsw.failcnt"): "1",
        ("memory", "memory.oom_control"): "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        ("pids", "pids.current"): "3", ("pids", "pids.peak"): "9",
        ("pids", "pids.events"): "max 5",
        ("blkio", "blkio.throttle.io_service_bytes_recursive"):
            "8:0 Read 100\n8:0 Write 50\n8:0 Total 150\n8:16 Read 1\n8:16 Write 2\nTotal 153\n",
        ("blkio", "blkio.throttle.io_serviced_recursive"): "8:0 Read 3\n8:0 Write 4\nTotal 7\n",
    }
    for (key, name), text in files.items():
        Path(d[key], name).write_text(text)
    u = grp.usage()
    assert u.cpu_seconds == 2.5 and u.cpu_throttled_seconds == 0.3 and u.cpu_nr_throttled == 4
    # memory.failcnt + memory.memsw.failcnt: a refused charge trips one of the two
    assert (u.memory_current, u.memory_peak, u.memory_failcnt, u.oom_kills) == (
        10 * M, 20 * M, 8, 2)
    assert (u.swap_current, u.swap_peak, u.swap_failcnt) == (2 * M, 2 * M, 1)
    assert (u.pids_current, u.pids_peak, u.pids_failcnt) == (3, 9, 5)
    assert (u.io_read_bytes, u.io_write_bytes, u.io_read_ios, u.io_write_ios) == (101, 52, 3, 4)
    Path(d["memory"], "memory.memsw.usage_in_bytes").write_text(str(11 * M))
    assert grp.usage().swap_peak == 2 * M          # tracked maximum survives a drop
    assert mgr.group("ct1").usage().swap_peak == 2 * M   # ... and a new handle
    grp.apply(Resources(memory_max=64 * M, swap_max=0, pids_max=20))
    rows = {b.name: b for b in grp.beancounters(Resources(memory_high=48 * M))}
    assert (rows["physpages"].held, rows["physpages"].maxheld, rows["physpages"].barrier,
            rows["physpages"].limit, rows["physpages"].failcnt) == (
        10 * M, 20 * M, 48 * M, 64 * M, 8)
    assert (rows["numproc"].held, rows["numproc"].limit, rows["numproc"].failcnt) == (3, 20, 5)
    assert rows["cpu"].held == 2_500_000 and rows["cpu"].failcnt == 4
    assert rows["swappages"].limit == 0      # memsw == memory: no swap allowed


def test_usage_of_missing_group_raises(tmp_path: Path) -> None:
    mgr, fs = _mgr(tmp_path)
    with pytest.raises(CgroupError, match="does not exist"):
        mgr.group("nope").usage()


def test_rename_keeps_processes_and_limits_and_fixes_the_unified_name(tmp_path: Path) -> None:
    """A group made ahead (for a standby init) takes its container's name: v1 directories are
    renamed in place; hybrid's cgroup2 tree cannot rename and keeps its directory."""
    mgr, fs = _mgr(tmp_path)
    staged = mgr.group("standby-77")
    staged.create()
    staged.attach(77)
    renamed = staged.rename("ct-web")
    assert renamed.name == "ct-web" and renamed.fixed == {"unified": "standby-77"}
    for key, d in renamed.dirs().items():
        assert os.path.basename(d) == ("standby-77" if key == "unified" else "ct-web"), key
        assert Path(d, "cgroup.procs").read_text().split() == ["77"], key
    assert not any(os.path.isdir(d) for k, d in staged.dirs().items() if k != "unified")
    renamed.apply(Resources(memory_max=64 * M))
    assert read(renamed, "memory", "memory.limit_in_bytes") == str(64 * M)
    # found again from its name and the fixed part, as ctd keeps them
    again = mgr.group("ct-web", dict(renamed.fixed))
    assert again.dirs() == renamed.dirs() and again.pids() == {77}
    fs.kill(77, signal.SIGKILL)
    again.destroy()
    assert not any(os.path.isdir(d) for d in again.dirs().values())


def test_rename_onto_an_existing_group_undoes_itself(tmp_path: Path) -> None:
    mgr, fs = _mgr(tmp_path)
    staged = mgr.group("standby-78")
    staged.create()
    taken = mgr.group("ct-web")
    taken.create()
    for key, d in taken.dirs().items():  # left in one late hierarchy: the rename fails part-way
        if key != "name=systemd":
            fs.rmdir(d)
    with pytest.raises(CgroupError, match="renaming cgroup 'standby-78' to 'ct-web'"):
        staged.rename("ct-web")
    assert all(os.path.isdir(d) for d in staged.dirs().values())


@pytest.mark.parametrize("joined", [False, True])
def test_cpu_and_cpuacct_joined_or_apart(tmp_path: Path, joined: bool) -> None:
    """systemd mounts cpu,cpuacct as one hierarchy; some hosts have two: both work alike."""
    mgr, fs = _mgr(tmp_path, joined_cpu=joined)
    cpu_key = "cpu,cpuacct" if joined else "cpu"
    assert mgr.hierarchy("cpu").key == cpu_key
    assert mgr.hierarchy("cpuacct").key == ("cpu,cpuacct" if joined else "cpuacct")
    grp = mgr.group("ct1")
    grp.create()
    grp.apply(Resources(cpu_weight=200, cpu_quota_pct=50))
    assert read(grp, cpu_key, "cpu.shares") == "2048" and read(grp, cpu_key, "cpu.cfs_quota_us") == "50000"
    Path(grp.dirs()[mgr.hierarchy("cpuacct").key], "cpuacct.usage").write_text("1500000000")
    assert grp.usage().cpu_seconds == 1.5
    assert grp.read_limits().cpu_weight == 200
    assert len(grp.procs_files()) == (9 if joined else 10)


def test_freezer_state_and_kill_all_thaws_what_a_tenant_froze(tmp_path: Path) -> None:
    """suspend reads the kernel's word; a SIGKILLed task frozen (by ctd or by its tenant, in a
    sub-cgroup too) only dies once thawed, so kill_all thaws the whole subtree."""
    mgr, fs = _mgr(tmp_path, hybrid=True)
    grp = mgr.group("ct1")
    grp.create()
    state = Path(grp.dirs()["freezer"], "freezer.state")
    assert grp.freezer_state() == "thawed"
    state.write_text("FREEZING\n")
    assert grp.freezer_state() == "freezing" and not grp.wait_frozen(0.05)
    state.write_text("FROZEN\n")
    assert grp.freezer_state() == "frozen" and grp.wait_frozen(0.05)
    child = Path(grp.dirs()["freezer"], "tenant")
    child.mkdir()
    (child / "freezer.state").write_text("FROZEN\n")
    grp.attach(555)
    assert grp.kill_all() == 1
    thawed = {p for p, d in fs.writes if p.endswith("freezer.state") and d == "THAWED"}
    assert {str(state), str(child / "freezer.state")} <= thawed
