"""Device allow-lists: the rule type, the v1 writes (fake kernel), the v2 BPF program
(assembled, then interpreted here; loaded by the real kernel in tests/host)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from cgroups import CgroupError, DeviceRule, DeviceType, V1Manager, V2Manager, detect_manager
from cgroups import devices_bpf as bpf
from cgroups.fake import fake_v1_host, fake_v2_host
from cgroups.v1 import DEVICES_LEAF
from ctd.instance.container import devices, spec

C, B, A = DeviceType.CHAR, DeviceType.BLOCK, DeviceType.ALL
R, W, M = bpf.BPF_DEVCG_ACC_READ, bpf.BPF_DEVCG_ACC_WRITE, bpf.BPF_DEVCG_ACC_MKNOD
CHAR, BLOCK = bpf.BPF_DEVCG_DEV_CHAR, bpf.BPF_DEVCG_DEV_BLOCK


def test_rule_lines_and_validation() -> None:
    assert DeviceRule(C, 1, 3, "rwm").v1_line() == "c 1:3 rwm"
    assert DeviceRule(B, None, None, "m").v1_line() == "b *:* m"
    assert DeviceRule(C, 136, None, "rw").v1_line() == "c 136:* rw"
    assert DeviceRule("a", None, None, "r").v1_line() == "a *:* r"
    for bad in (dict(access=""), dict(access="rx"), dict(access="rr"), dict(major=-1), dict(major=4096),
                dict(minor=1 << 20), dict(major=True)):
        with pytest.raises(CgroupError):
            DeviceRule(**{"type": C, "major": 1, "minor": 3, "access": "rw", **bad})  # type: ignore[arg-type]
    with pytest.raises(CgroupError, match="no major or minor"):
        DeviceRule(A, 1, None, "r")
    with pytest.raises(CgroupError, match="use 'c', 'b' or 'a'"):
        DeviceRule("x", 1, 3, "r")  # type: ignore[arg-type]


def test_container_list_matches_its_dev() -> None:
    """Every node ctd binds into /dev is allowed read-write; the host's console (c 5:1), memory,
    virtual consoles, loop and disk devices are not."""
    prog = bpf.assemble(devices.ALLOWED)
    for name in spec.DEVICES:
        rdev = os.stat(f"/dev/{name}").st_rdev
        assert bpf.run(prog, CHAR, R | W, os.major(rdev), os.minor(rdev)) == 1, name
    for major, minor in ((5, 1), (1, 1), (1, 2), (4, 0), (4, 1), (10, 229), (10, 200), (10, 232)):
        assert bpf.run(prog, CHAR, R, major, minor) == 0, (major, minor)
    for major, minor in ((7, 0), (8, 0), (253, 0), (259, 0)):
        assert bpf.run(prog, BLOCK, R, major, minor) == 0, (major, minor)
    assert "c 5:1 rwm" not in [r.v1_line() for r in devices.ALLOWED]


def test_program_logic() -> None:
    prog = bpf.assemble([DeviceRule(C, None, None, "m"), DeviceRule(B, 7, 0, "r"),
                         DeviceRule(C, 136, None, "rw"), DeviceRule(C, 1, 3, "rwm")])
    cases = [
        ((CHAR, M, 4, 0), 1),          # mknod of any char node
        ((BLOCK, M, 8, 0), 0),         # not of a block node
        ((BLOCK, R, 7, 0), 1),
        ((BLOCK, R | W, 7, 0), 0),     # more access than the rule gives
        ((BLOCK, R, 7, 1), 0),         # another minor
        ((CHAR, R, 7, 0), 0),          # same numbers, other type
        ((CHAR, R | W, 136, 9), 1),    # any minor
        ((CHAR, R | W | M, 136, 9), 0),
        ((CHAR, R | W | M, 1, 3), 1),
        ((CHAR, R, 1, 5), 0),
    ]
    for args, want in cases:
        assert bpf.run(prog, *args) == want, args
    assert bpf.run(bpf.assemble([]), CHAR, R, 1, 3) == 0    # empty list: nothing
    assert bpf.run(bpf.assemble([DeviceRule(A, None, None, "rwm")]), BLOCK, R | W | M, 8, 0) == 1


def test_instruction_encoding() -> None:
    prog = bpf.assemble([DeviceRule(C, 1, 3, "rw")])
    # r2 = *(u32 *)(r1 + 0): opcode 0x61, dst 2 in the low nibble, src 1 in the high one
    assert prog[0].pack() == bytes([0x61, 0x12, 0, 0, 0, 0, 0, 0])
    assert prog[-1].pack() == bytes([0x95, 0, 0, 0, 0, 0, 0, 0])  # exit
    assert prog[-2] == bpf.Insn(0xB7, 0, imm=0)                   # r0 = 0: refuse
    for i, insn in enumerate(prog):  # every jump lands inside the program
        if insn.code == 0x55:
            assert 0 <= i + 1 + insn.off < len(prog)


def test_v1_deny_all_then_allow(tmp_path: Path) -> None:
    fs, proc = fake_v1_host(tmp_path)
    mgr = detect_manager("ctd", proc_self=proc, fs=fs)
    assert isinstance(mgr, V1Manager)
    grp = mgr.group("ct1")
    grp.create()
    fs.writes.clear()
    grp.restrict_devices(devices.ALLOWED)
    d = grp.dirs()["devices"]
    assert fs.writes[0] == (os.path.join(d, "devices.deny"), "a")
    assert [data for _, data in fs.writes[1:]] == [r.v1_line() for r in devices.ALLOWED]
    assert all(path == os.path.join(d, "devices.allow") for path, _ in fs.writes[1:])
    assert not os.path.isdir(os.path.join(d, DEVICES_LEAF))
    assert os.path.join(d, "cgroup.procs") in grp.procs_files()


def test_v1_sealed_group_puts_processes_one_level_down(tmp_path: Path) -> None:
    fs, proc = fake_v1_host(tmp_path)
    mgr = detect_manager("ctd", proc_self=proc, fs=fs)
    grp = mgr.group("ct1")
    grp.create()
    grp.restrict_devices(devices.ALLOWED, seal=True)
    d = grp.dirs()["devices"]
    leaf = os.path.join(d, DEVICES_LEAF)
    assert os.path.isdir(leaf)
    files = grp.procs_files()
    assert os.path.join(leaf, "cgroup.procs") in files and os.path.join(d, "cgroup.procs") not in files
    assert sum("/devices/" in f for f in files) == 1 and len(files) == 10  # the others unchanged
    grp.attach(77)
    assert Path(leaf, "cgroup.procs").read_text().split() == ["77"]
    assert grp.pids() == {77}
    assert grp.kill_all() == 1 and grp.pids() == set()
    grp.destroy()
    assert not grp.exists()


def test_v1_without_devices_controller_refuses(tmp_path: Path) -> None:
    fs, proc = fake_v1_host(tmp_path, omit=frozenset({"devices.deny"}))
    mgr = detect_manager("ctd", proc_self=proc, fs=fs)
    grp = mgr.group("ct1")
    grp.create()
    with pytest.raises(CgroupError, match="device allow-list: this kernel has no devices.deny"):
        grp.restrict_devices(devices.ALLOWED)


def test_v2_attaches_a_program_to_the_group(tmp_path: Path) -> None:
    fs, proc = fake_v2_host(tmp_path)
    mgr = detect_manager("ctd", proc_self=proc, fs=fs)
    assert isinstance(mgr, V2Manager)
    grp = mgr.group("ct1")
    with pytest.raises(CgroupError, match="does not exist"):
        grp.restrict_devices(devices.ALLOWED)
    grp.create()
    grp.restrict_devices(devices.ALLOWED, seal=True)
    assert fs.device_filters == {grp.dir: [list(devices.ALLOWED)]}
    assert grp.procs_files() == [os.path.join(grp.dir, "cgroup.procs")]  # no leaf on v2


def test_start_refuses_a_host_that_cannot_confine_devices(tmp_path: Path) -> None:
    """No container runs without its device list: the start fails with a clear message and
    the group it made is gone."""
    import contextlib
    from ctd.errors import OperationFailed
    from ctd.instance.container.driver import ContainerDriver
    from ctd.state.records import InstanceRecord, InstanceType
    from cgroups import Resources

    class Spawner:  # the driver only registers callbacks on it here
        pass

    fs, proc = fake_v1_host(tmp_path, omit=frozenset({"devices.deny"}))
    mgr = detect_manager("ctd", proc_self=proc, fs=fs)
    driver = ContainerDriver(Spawner(), mgr)  # type: ignore[arg-type]
    rec = InstanceRecord(id=1, name="web", type=InstanceType.CONTAINER, template="busybox", hostname="web",
                         privileged=False, idmap_base=1000000)
    with pytest.raises(OperationFailed, match="cannot confine its devices on this host: device allow-list: "
                                              "this kernel has no devices.deny"):
        with contextlib.ExitStack() as undo:
            driver._make_group(rec, Resources(), undo)
    assert mgr.list_groups() == []
