"""The v2 backend against a fake unified tree (the real run is in a QEMU guest, tests/vm)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from cgroups import UNLIMITED, CgroupError, IoLimit, Resources, V2Manager, detect_manager
from cgroups.fake import FakeKernelFS, fake_v2_host

M = 1 << 20


def _mgr(tmp_path: Path, **kw: object) -> tuple[V2Manager, FakeKernelFS]:
    fs, proc = fake_v2_host(tmp_path, **kw)  # type: ignore[arg-type]
    mgr = detect_manager("ctd", proc_self=proc, fs=fs)
    assert isinstance(mgr, V2Manager)
    return mgr, fs


def words(path: str) -> list[str]:
    return sorted(Path(path).read_text().split())


def test_create_enables_controllers_down_to_the_group(tmp_path: Path) -> None:
    mgr, fs = _mgr(tmp_path)
    grp = mgr.group("ct1")
    assert not grp.exists()
    grp.create()
    grp.create()                                               # idempotent
    all5 = ["cpu", "cpuset", "io", "memory", "pids"]
    assert words(os.path.join(mgr.own_dir, "cgroup.subtree_control")) == all5
    assert words(os.path.join(mgr.base_dir, "cgroup.subtree_control")) == all5
    assert words(os.path.join(grp.dir, "cgroup.controllers")) == all5
    assert grp.procs_files() == [os.path.join(grp.dir, "cgroup.procs")]
    assert mgr.list_groups() == ["ct1"]
    assert mgr.controllers == frozenset(all5) | {"freezer"}
    assert mgr.host_cpus() == [0, 1, 2, 3]


def test_service_cgroup_moves_itself_into_a_leaf(tmp_path: Path) -> None:
    mgr, fs = _mgr(tmp_path, own_path="/system.slice/ctd.service", occupied=True)
    mgr.group("ct1").create()
    assert Path(mgr.self_dir, "cgroup.procs").read_text().split() == [str(fs.pid)]
    assert Path(mgr.own_dir, "cgroup.procs").read_text().split() == []
    assert "memory" in words(os.path.join(mgr.base_dir, "cgroup.subtree_control"))
    assert mgr.list_groups() == ["ct1"]                        # the leaf is not a group
    # detect() again from inside the leaf: same base, not one below the leaf
    proc_cgroup = Path(tmp_path, "proc/self/cgroup")
    proc_cgroup.write_text("0::/system.slice/ctd.service/ctd-self\n")
    again = detect_manager("ctd", proc_self=str(proc_cgroup.parent), fs=fs)
    assert isinstance(again, V2Manager) and again.base_dir == mgr.base_dir
    assert again.list_groups() == ["ct1"]


def test_service_cgroup_shared_with_others_is_a_clear_error(tmp_path: Path) -> None:
    mgr, fs = _mgr(tmp_path, own_path="/user.slice/session-1.scope", occupied=True)
    fs.write(os.path.join(mgr.own_dir, "cgroup.procs"), "999")    # someone else's shell
    fs.write(os.path.join(mgr.own_dir, "cgroup.procs"), str(fs.pid))
    with pytest.raises(CgroupError, match=r"other processes live in it \(999\).*Delegate"):
        mgr.group("ct1").create()


def test_unavailable_controller_is_refused_by_apply(tmp_path: Path) -> None:
    mgr, fs = _mgr(tmp_path, controllers=("memory", "pids"))
    assert mgr.controllers == frozenset({"memory", "pids", "freezer"})
    grp = mgr.group("ct1")
    grp.create()
    with pytest.raises(CgroupError, match="cpu_quota_pct: no cpu.max .* cpu controller"):
        grp.apply(Resources(cpu_quota_pct=50))
    grp.apply(Resources(memory_max=64 * M))


def test_apply_writes_every_field(tmp_path: Path) -> None:
    mgr, fs = _mgr(tmp_path)
    grp = mgr.group("ct1")
    grp.create()
    res = Resources(cpuset="1-2", cpu_quota_pct=150, cpu_weight=200, memory_max=64 * M,
                    memory_high=48 * M, swap_max=0, pids_max=20, io_weight=300,
                    io_limits=(IoLimit("8:0", rbps=1000, wiops=50), IoLimit("8:16", wbps=7)))
    grp.apply(res)

    def f(name: str) -> str:
        return Path(grp.dir, name).read_text().strip()

    assert f("cpuset.cpus") == "1-2"
    assert f("cpu.max") == "150000 100000"
    assert f("cpu.weight") == "200"
    assert (f("memory.max"), f("memory.high"), f("memory.swap.max")) == (
        str(64 * M), str(48 * M), "0")
    assert f("pids.max") == "20"
    assert f("io.weight") == "default 300"
    assert f("io.max").splitlines() == ["8:0 rbps=1000 wbps=max riops=max wiops=50",
                                        "8:16 rbps=max wbps=7 riops=max wiops=max"]
    assert grp.read_limits() == res
    # only the given fields of an IoLimit change; the rest of the rule stays
    grp.apply(Resources(io_limits=(IoLimit("8:0", rbps=UNLIMITED),)))
    assert f("io.max").splitlines()[0] == "8:0 rbps=max wbps=max riops=max wiops=50"


def test_unlimited_is_written_as_max(tmp_path: Path) -> None:
    mgr, fs = _mgr(tmp_path)
    grp = mgr.group("ct1")
    grp.create()
    grp.apply(Resources(cpu_quota_pct=50, memory_max=M, pids_max=3,
                        io_limits=(IoLimit("8:0", rbps=5),)))
    grp.apply(Resources(cpu_quota_pct=UNLIMITED, memory_max=UNLIMITED, memory_high=UNLIMITED,
                        swap_max=UNLIMITED, pids_max=UNLIMITED,
                        io_limits=(IoLimit("8:0", rbps=UNLIMITED),)))
    assert Path(grp.dir, "cpu.max").read_text().strip() == "max 100000"
    assert Path(grp.dir, "io.max").read_text() == ""
    lim = grp.read_limits()
    assert (lim.cpu_quota_pct, lim.memory_max, lim.memory_high, lim.swap_max,
            lim.pids_max, lim.io_limits) == (UNLIMITED,) * 5 + ((),)
    assert lim.cpuset is None                 # empty cpuset.cpus = inherit the parent's


def test_missing_files_are_refused_before_any_write(tmp_path: Path) -> None:
    mgr, fs = _mgr(tmp_path, omit=frozenset({"memory.swap.max", "io.weight"}))
    grp = mgr.group("ct1")
    grp.create()
    fs.writes.clear()
    with pytest.raises(CgroupError, match="swap_max: no memory.swap.max"):
        grp.apply(Resources(pids_max=5, swap_max=0))
    with pytest.raises(CgroupError, match="io_weight: neither io.weight nor io.bfq.weight"):
        grp.apply(Resources(pids_max=5, io_weight=100))
    assert fs.writes == []
    Path(grp.dir, "io.bfq.weight").write_text("default 100\n")
    grp.apply(Resources(io_weight=100))
    assert Path(grp.dir, "io.bfq.weight").read_text().strip() == "100"
    assert grp.read_limits().io_weight == 100


def test_usage_and_beancounters(tmp_path: Path) -> None:
    mgr, fs = _mgr(tmp_path, omit=frozenset({"memory.peak", "pids.peak", "memory.swap.peak"}))
    grp = mgr.group("ct1")
    grp.create()
    grp.apply(Resources(memory_max=64 * M, pids_max=20, cpu_quota_pct=50))
    d = Path(grp.dir)
    (d / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 1\nsystem_usec 2\n"
                                "nr_periods 9\nnr_throttled 4\nthrottled_usec 300000\n")
    (d / "memory.current").write_text(f"{30 * M}\n")
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 1\noom_kill 2\n")
    (d / "memory.swap.current").write_text("4096\n")
    (d / "pids.current").write_text("12\n")
    (d / "pids.events").write_text("max 5\n")
    (d / "io.stat").write_text("8:0 rbytes=100 wbytes=50 rios=3 wios=4 dbytes=0 dios=0\n"
                               "8:16 rbytes=1 wbytes=2 rios=0 wios=1 dbytes=0 dios=0\n")
    u = grp.usage()
    assert u.cpu_seconds == 2.5 and u.cpu_throttled_seconds == 0.3 and u.cpu_nr_throttled == 4
    assert (u.memory_current, u.memory_peak, u.memory_failcnt, u.oom_kills) == (
        30 * M, 30 * M, 7, 2)
    assert (u.swap_current, u.pids_current, u.pids_failcnt) == (4096, 12, 5)
    assert (u.io_read_bytes, u.io_write_bytes, u.io_read_ios, u.io_write_ios) == (101, 52, 3, 5)
    (d / "memory.current").write_text(f"{10 * M}\n")
    (d / "pids.current").write_text("2\n")
    u = grp.usage()
    assert (u.memory_current, u.memory_peak, u.pids_peak) == (10 * M, 30 * M, 12)
    rows = {b.name: b for b in grp.beancounters()}
    assert (rows["physpages"].held, rows["physpages"].maxheld, rows["physpages"].barrier,
            rows["physpages"].limit, rows["physpages"].failcnt) == (10 * M, 30 * M, 64 * M,
                                                                    64 * M, 7)
    assert (rows["numproc"].maxheld, rows["numproc"].limit) == (12, 20)
    assert (rows["cpu"].limit, rows["cpu"].failcnt) == (50, 4)
    grp.destroy()
    mgr.group("ct1").create()                     # a new group starts a new maximum
    assert mgr.group("ct1").usage().memory_peak == 0


def test_peak_files_are_used_when_present(tmp_path: Path) -> None:
    mgr, fs = _mgr(tmp_path)
    grp = mgr.group("ct1")
    grp.create()
    Path(grp.dir, "memory.peak").write_text(f"{99 * M}\n")
    Path(grp.dir, "pids.peak").write_text("17\n")
    u = grp.usage()
    assert (u.memory_peak, u.pids_peak) == (99 * M, 17)


def test_kill_all_with_cgroup_kill(tmp_path: Path) -> None:
    mgr, fs = _mgr(tmp_path)
    grp = mgr.group("ct1")
    grp.create()
    fs.mkdir(os.path.join(grp.dir, "init.scope"))
    fs.write(os.path.join(grp.dir, "init.scope", "cgroup.procs"), "77")
    assert grp.pids() == {77}
    assert grp.kill_all() == 1 and grp.pids() == set()
    assert fs.kills == [(77, signal.SIGKILL)]
    assert any(p.endswith("ct1/cgroup.kill") for p, _ in fs.writes)
    grp.destroy()
    assert not os.path.exists(grp.dir)


def test_kill_all_without_cgroup_kill_freezes(tmp_path: Path) -> None:
    mgr, fs = _mgr(tmp_path, omit=frozenset({"cgroup.kill"}))
    grp = mgr.group("ct1")
    grp.create()
    grp.attach(88)
    assert grp.kill_all() == 1 and grp.pids() == set()
    assert [d for p, d in fs.writes if p.endswith("cgroup.freeze")] == ["1", "0"]
    grp.freeze()
    assert Path(grp.dir, "cgroup.freeze").read_text().strip() == "1"
    grp.thaw()
    assert Path(grp.dir, "cgroup.freeze").read_text().strip() == "0"


def test_destroy_busy_then_idempotent(tmp_path: Path) -> None:
    mgr, fs = _mgr(tmp_path)
    grp = mgr.group("ct1")
    grp.create()
    grp.attach(99)
    with pytest.raises(CgroupError, match="processes left: 99"):
        grp.destroy(timeout=0.05)
    grp.kill_all()
    grp.destroy()
    grp.destroy()
    assert not grp.exists()
    mgr.remove_base()
    assert not os.path.exists(mgr.base_dir)
