"""--ioprio on hosts with and without an io weight file (bfq, cgroup v2's iocost): the fake
cgroup kernel plays both kinds, so this runs the same on any CI machine."""
from __future__ import annotations

from pathlib import Path

import pytest

from cgroups import CgroupManager, Resources, detect_manager
from cgroups.fake import fake_v1_host, fake_v2_host
from ctd import limits
from ctd.errors import InvalidRequest
from hostcheck import Status
from hostcheck.cgroups import check_io_weight, read_layout

NO_V1_WEIGHT = frozenset({"blkio.bfq.weight", "blkio.weight"})
NO_V2_WEIGHT = frozenset({"io.weight", "io.bfq.weight"})


def manager(tmp_path: Path, version: int, has_weight: bool) -> CgroupManager:
    if version == 1:
        fs, proc = fake_v1_host(tmp_path, omit=frozenset() if has_weight else NO_V1_WEIGHT)
    else:
        fs, proc = fake_v2_host(tmp_path, omit=frozenset() if has_weight else NO_V2_WEIGHT)
    mgr = detect_manager("ctd", proc_self=proc, fs=fs)
    mgr.ensure_base()
    return mgr


@pytest.mark.parametrize("version,expected", [(1, "blkio.bfq.weight"), (2, "io.weight")])
def test_a_host_with_weights_takes_ioprio(tmp_path: Path, version: int, expected: str) -> None:
    mgr = manager(tmp_path, version, has_weight=True)
    assert mgr.io_weight_file() == expected
    wanted = limits.normalise({"ioprio": "7"}, 4)
    limits.check_io_weight(wanted, mgr, None)             # no error
    grp = mgr.group("ct1")
    grp.create()
    grp.apply(limits.to_resources(wanted, [0, 1, 2, 3], 100))
    assert grp.read_limits().io_weight == 1000


@pytest.mark.parametrize("version", [1, 2])
def test_a_host_without_weights_refuses_ioprio_with_the_fix(tmp_path: Path, version: int) -> None:
    mgr = manager(tmp_path, version, has_weight=False)
    assert mgr.io_weight_file() is None
    with pytest.raises(InvalidRequest) as e:
        limits.check_io_weight(limits.normalise({"ioprio": "7", "ram": "64M"}, 4), mgr, None)
    assert e.value.code == "invalid"
    msg = e.value.message
    assert "bfq" in msg and "io.weight" in msg and "modprobe bfq" in msg and "drop --ioprio" in msg, msg
    limits.check_io_weight(limits.normalise({"ram": "64M"}, 4), mgr, None)   # other limits pass


def test_weights_are_asked_at_run_time(tmp_path: Path) -> None:
    """bfq loaded after ctd started: its weight file appears in every cgroup, and counts."""
    mgr = manager(tmp_path, 1, has_weight=False)
    assert mgr.io_weight_file() is None
    base = Path(mgr.base_dirs()["blkio"])
    (base / "blkio.bfq.weight").write_text("100\n")
    assert mgr.io_weight_file() == "blkio.bfq.weight"


def test_the_message_names_the_pool_disk() -> None:
    msg = limits.ioprio_unsupported("7:0")    # loop0, on any Linux with the loop driver
    assert "echo bfq > /sys/block/loop0/queue/scheduler" in msg
    assert "/sys/block/DEV/" in limits.ioprio_unsupported(None)


def _v1_layout(tmp_path: Path, weight_file: str | None):
    (tmp_path / "blkio" / "job").mkdir(parents=True)
    if weight_file:
        (tmp_path / "blkio" / "job" / weight_file).write_text("100\n")
    (tmp_path / "mountinfo").write_text(f"31 25 0:27 / {tmp_path / 'blkio'} rw,relatime - cgroup cgroup rw,blkio\n")
    (tmp_path / "cgroup").write_text("1:blkio:/job\n")
    (tmp_path / "cgroups").write_text("#subsys_name\thierarchy\tnum_cgroups\tenabled\nblkio\t1\t1\t1\n")
    return read_layout(tmp_path / "mountinfo", tmp_path / "cgroup", tmp_path / "cgroups")


def _disks(tmp_path: Path, scheduler: str) -> Path:
    queue = tmp_path / "sys-block" / "vda" / "queue"
    queue.mkdir(parents=True)
    (queue / "scheduler").write_text(scheduler + "\n")
    return tmp_path / "sys-block"


def test_ctctl_check_says_whether_ioprio_works(tmp_path: Path) -> None:
    without = check_io_weight(_v1_layout(tmp_path / "a", None), _disks(tmp_path / "a", "[none] mq-deadline kyber"))
    assert without.status is Status.WARN and "--ioprio is refused" in without.detail
    assert "modprobe bfq" in without.fix
    with_file = check_io_weight(_v1_layout(tmp_path / "b", "blkio.bfq.weight"), _disks(tmp_path / "b", "none"))
    assert with_file.status is Status.OK and "blkio.bfq.weight" in with_file.detail
    # bfq offered by a disk: its weight files exist below the root even if no cgroup is there yet
    by_sched = check_io_weight(_v1_layout(tmp_path / "c", None), _disks(tmp_path / "c", "mq-deadline [bfq] none"))
    assert by_sched.status is Status.OK


def test_v2_with_bfq_writes_bfqs_own_file(tmp_path: Path) -> None:
    """bfq reads io.bfq.weight only; io.weight is iocost's: with both, the weight goes to bfq's."""
    mgr = manager(tmp_path, 2, has_weight=True)
    grp = mgr.group("ct1")
    grp.create()
    Path(grp.dir, "io.bfq.weight").write_text("default 100\n")       # bfq loaded
    Path(mgr.base_dirs()["unified"], "io.bfq.weight").write_text("default 100\n")
    assert mgr.io_weight_file() == "io.bfq.weight"
    grp.apply(Resources(io_weight=871))
    assert Path(grp.dir, "io.bfq.weight").read_text().strip() == "871"
    assert Path(grp.dir, "io.weight").read_text().strip() == "default 100"


def _v2_layout(tmp_path: Path, qos: str | None):
    own = tmp_path / "cg" / "ctd.service"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text("cpu io memory pids\n")
    (own / "io.weight").write_text("default 100\n")
    if qos is not None:
        (tmp_path / "cg" / "io.cost.qos").write_text(qos)
    (tmp_path / "mountinfo").write_text(f"30 25 0:26 / {tmp_path / 'cg'} rw - cgroup2 cgroup2 rw\n")
    (tmp_path / "cgroup").write_text("0::/ctd.service\n")
    (tmp_path / "cgroups").write_text("#subsys_name\thierarchy\tnum_cgroups\tenabled\n")
    return read_layout(tmp_path / "mountinfo", tmp_path / "cgroup", tmp_path / "cgroups")


def test_ctctl_check_on_v2_says_when_io_weight_does_nothing(tmp_path: Path) -> None:
    off = check_io_weight(_v2_layout(tmp_path / "a", "8:0 enable=0 ctrl=auto\n"), _disks(tmp_path / "a", "[none]"))
    assert off.status is Status.WARN and "no effect" in off.detail and "io.cost.qos" in off.fix
    on = check_io_weight(_v2_layout(tmp_path / "b", "8:0 enable=1 ctrl=auto\n"), _disks(tmp_path / "b", "[none]"))
    assert on.status is Status.OK and "io.weight" in on.detail
    bfq = check_io_weight(_v2_layout(tmp_path / "c", None), _disks(tmp_path / "c", "none [bfq]"))
    assert bfq.status is Status.OK
