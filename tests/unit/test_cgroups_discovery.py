"""Finding hierarchies and choosing the backend from a fake /proc/self."""
from __future__ import annotations

from pathlib import Path

import pytest

from cgroups import CgroupError, V1Manager, V2Manager, detect_manager, discover
from cgroups.fake import fake_v1_host, fake_v2_host

# This build host, verbatim (trimmed to the cgroup lines that matter plus a non-cgroup one).
HOST_MOUNTINFO = """\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HOST_CGROUP = """\
9:name=systemd:/
4:memory:/process_api/53cb
2:cpuacct:/
1:cpu:/
0::/
"""


def _proc(tmp_path: Path, mountinfo: str, cgroup: str) -> str:
    d = tmp_path / "proc"
    d.mkdir()
    (d / "mountinfo").write_text(mountinfo)
    (d / "cgroup").write_text(cgroup)
    return str(d)


def test_discover_hybrid_host(tmp_path: Path) -> None:
    hs = {h.key: h for h in discover(_proc(tmp_path, HOST_MOUNTINFO, HOST_CGROUP))}
    assert set(hs) == {"name=systemd", "memory", "cpuacct", "cpu", "unified"}
    assert hs["memory"].own_dir == "/sys/fs/cgroup/memory/process_api/53cb"
    assert hs["memory"].controllers == frozenset({"memory"})
    assert hs["name=systemd"].controllers == frozenset()
    assert hs["unified"].is_unified and hs["unified"].own_dir == "/sys/fs/cgroup/unified"


def test_discover_comounted_and_mount_root(tmp_path: Path) -> None:
    # Inside a container: cpu,cpuacct co-mounted; the memory mount shows only our subtree
    # (its root is /lxc/ct1) and our path is below it; a mount whose root does not hold
    # us is skipped.
    mountinfo = (
        "1 0 0:1 / /cg/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "2 0 0:2 /other /cg/memory rw - cgroup cgroup rw,memory\n"
        "3 0 0:2 /lxc/ct1 /cg/memory2 ro - cgroup cgroup rw,memory\n"
        "4 0 0:3 / /cg/space\\040dir rw - cgroup cgroup rw,pids\n"
    )
    cgroup = "3:cpu,cpuacct:/a\n2:memory:/lxc/ct1/sub\n1:pids:/\n"
    hs = {h.key: h for h in discover(_proc(tmp_path, mountinfo, cgroup))}
    assert hs["cpu,cpuacct"].controllers == frozenset({"cpu", "cpuacct"})
    assert hs["cpu,cpuacct"].own_dir == "/cg/cpu,cpuacct/a"
    assert hs["memory"].own_dir == "/cg/memory2/sub" and hs["memory"].read_only
    assert hs["pids"].own_dir == "/cg/space dir"


def test_discover_falls_back_to_proc_mounts(tmp_path: Path) -> None:
    d = tmp_path / "proc"
    d.mkdir()
    (d / "mounts").write_text("cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n")
    (d / "cgroup").write_text("0::/system.slice/ctd.service\n")
    (h,) = discover(str(d))
    assert h.own_dir == "/sys/fs/cgroup/system.slice/ctd.service"


def test_detect_picks_v1_on_hybrid(tmp_path: Path) -> None:
    fs, proc = fake_v1_host(tmp_path)
    mgr = detect_manager("ctd", proc_self=proc, fs=fs)
    assert isinstance(mgr, V1Manager) and mgr.version == 1
    assert mgr.controllers == frozenset(
        {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids"})
    # every hierarchy incl. name=systemd and hybrid's cgroup2 tree gets a base
    assert set(mgr.base_dirs()) == {"cpu", "cpuacct", "cpuset", "memory", "devices",
                                    "freezer", "blkio", "pids", "name=systemd", "unified"}
    assert mgr.base_dirs()["memory"].endswith("/memory/process_api/abc/ctd")


def test_detect_skips_readonly_hierarchy(tmp_path: Path) -> None:
    fs, proc = fake_v1_host(tmp_path, readonly_systemd=True, hybrid=False)
    mgr = detect_manager("ctd", proc_self=proc, fs=fs)
    assert "name=systemd" not in mgr.base_dirs() and "unified" not in mgr.base_dirs()


def test_detect_picks_v2(tmp_path: Path) -> None:
    fs, proc = fake_v2_host(tmp_path, own_path="/system.slice/ctd.service")
    mgr = detect_manager("ctd", proc_self=proc, fs=fs)
    assert isinstance(mgr, V2Manager) and mgr.version == 2
    assert mgr.controllers == frozenset({"cpu", "cpuset", "io", "memory", "pids", "freezer"})
    assert mgr.base_dirs() == {
        "unified": str(tmp_path / "sys/fs/cgroup/system.slice/ctd.service/ctd")}


def test_detect_forced_version_and_errors(tmp_path: Path) -> None:
    fs, proc = fake_v2_host(tmp_path)
    with pytest.raises(CgroupError, match="no cgroup v1"):
        detect_manager("ctd", proc_self=proc, fs=fs, version=1)
    with pytest.raises(CgroupError, match="use 1 or 2"):
        detect_manager("ctd", proc_self=proc, fs=fs, version=3)
    with pytest.raises(CgroupError, match="base name"):
        detect_manager("../evil", proc_self=proc, fs=fs)
    (tmp_path / "x").mkdir()
    with pytest.raises(CgroupError, match="is /sys/fs/cgroup mounted"):
        detect_manager("ctd", proc_self=_proc(tmp_path / "x", "", ""))
