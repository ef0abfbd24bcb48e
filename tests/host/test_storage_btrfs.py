"""ctd/storage: the btrfs driver on a real btrfs, and the dir driver through the same
behavioural tests (snapshot, rollback, clone, delete). The btrfs is a loop file this test makes
under its tmp dir; it is unmounted and detached in finally blocks, even on failure. Nothing
here touches the host's own filesystems, mounts or loop devices."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctd.errors import Conflict, InvalidRequest, NotFound, NotSupported
from ctd.storage.base import StorageDriver
from ctd.storage.dir import DirStorage

if os.geteuid() != 0:
    print("tests/host/test_storage_btrfs.py: skipped, needs root for loop devices and mounts",
          file=sys.stderr)
    pytest.skip("needs root for loop devices and mounts", allow_module_level=True)

btrfsutil = pytest.importorskip("btrfsutil", reason="pip install btrfsutil==6.10 (setup.sh does)")
from ctd.storage.btrfs import BtrfsStorage  # noqa: E402
from ctd.storage.btrfs.quota import QuotaMode, kernel_has_simple_quota  # noqa: E402
from tests.helpers.btrfs import _run, loop_btrfs  # noqa: E402,F401

MiB = 1 << 20
GiB = 1 << 30


@pytest.fixture
def btrfs_mount(tmp_path: Path) -> Iterator[Path]:
    with loop_btrfs(tmp_path) as mnt:
        yield mnt


@pytest.fixture
def bt(btrfs_mount: Path) -> BtrfsStorage:
    """ctd's own new pool with the default quota_mode: full qgroups."""
    driver = BtrfsStorage(btrfs_mount / "storage", enable_quota=True)
    driver.prepare()
    assert driver.quota_mode() is QuotaMode.FULL
    return driver


@pytest.fixture
def bt_simple(btrfs_mount: Path) -> BtrfsStorage:
    """ctd's own new pool opted in to simple quotas (quota_mode = "simple"; Linux >= 6.7)."""
    if not kernel_has_simple_quota():
        pytest.skip(f"kernel {os.uname().release} has no btrfs simple quotas (Linux 6.7)")
    driver = BtrfsStorage(btrfs_mount / "storage", enable_quota=True, quota_mode=QuotaMode.SIMPLE)
    driver.prepare()
    assert driver.quota_mode() is QuotaMode.SIMPLE
    return driver


@pytest.fixture
def bt_full(btrfs_mount: Path) -> BtrfsStorage:
    """A pool whose quota an older ctd turned on: full qgroups, kept as they are."""
    _run("btrfs", "quota", "enable", str(btrfs_mount))
    driver = BtrfsStorage(btrfs_mount / "storage", enable_quota=True)
    driver.prepare()
    assert driver.quota_mode() is QuotaMode.FULL
    return driver


@pytest.fixture(params=["simple", "full"])
def qbt(request: pytest.FixtureRequest) -> BtrfsStorage:
    """Both accounting modes: the default (full) and opted-in simple quotas where the kernel has them."""
    return request.getfixturevalue("bt_simple" if request.param == "simple" else "bt")


@pytest.fixture(params=["btrfs", "dir"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> StorageDriver:
    if request.param == "btrfs":
        return request.getfixturevalue("bt")
    d = DirStorage(tmp_path / "dirstore")
    d.prepare()
    return d


def make_template(driver: StorageDriver, name: str = "base", big: int = 0) -> Path:
    """Through the driver's own build interface, the way TemplateManager does it."""
    staging = driver.new_template_dir(name)
    root = staging / "rootfs"
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("template\n")
    (root / "bin").mkdir()
    os.symlink("busybox", root / "bin/sh")
    if big:
        with (root / "big").open("wb") as fh:
            for _ in range(big // MiB):
                fh.write(os.urandom(MiB))
    return driver.commit_template(name, staging)


def fs_used(path: Path) -> int:
    btrfsutil.sync(path)
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


# -- both drivers -------------------------------------------------------------------------------

def test_template_commit_and_delete(driver: StorageDriver) -> None:
    path = make_template(driver)
    assert path == driver.template_path("base")
    assert (path / "rootfs/etc/hostname").read_text() == "template\n"
    assert not list((driver.root / "templates").glob(".build-*"))
    if isinstance(driver, BtrfsStorage):
        assert btrfsutil.is_subvolume(path / "rootfs")
        assert btrfsutil.get_subvolume_read_only(path / "rootfs")
        with pytest.raises(OSError) as exc:
            (path / "rootfs/new").write_text("x")
        assert exc.value.errno == errno.EROFS
    driver.delete_template("base")
    assert not path.exists()
    driver.delete_template("base")  # missing is fine


def test_instances_from_one_template_are_independent(driver: StorageDriver) -> None:
    make_template(driver)
    a = driver.create_instance("a", "base")
    b = driver.create_instance("b", "base")
    assert a == driver.rootfs("a") and b == driver.rootfs("b")
    (a / "etc/hostname").write_text("a\n")
    (a / "only-a").write_text("x")
    assert (b / "etc/hostname").read_text() == "template\n"
    assert not (b / "only-a").exists()
    assert (driver.template_path("base") / "rootfs/etc/hostname").read_text() == "template\n"
    assert driver.instance_names() == ["a", "b"]
    if isinstance(driver, BtrfsStorage):
        assert btrfsutil.is_subvolume(a) and not btrfsutil.get_subvolume_read_only(a)
        # (DirStorage.create_instance raises FileExistsError / OperationFailed here)
        with pytest.raises(Conflict):
            driver.create_instance("a", "base")
        with pytest.raises(NotFound):
            driver.create_instance("c", "missing")
        assert not driver.instance_path("c").exists()


def test_snapshot_change_rollback_restores(driver: StorageDriver) -> None:
    make_template(driver)
    root = driver.create_instance("web", "base")
    (root / "data").write_text("one")
    snap = driver.snapshot_instance("web", "s1")
    assert (snap / "data").read_text() == "one"
    (root / "data").write_text("two")
    (root / "added").write_text("later")
    (root / "etc/hostname").unlink()
    assert driver.list_snapshots("web") == ["s1"]

    driver.rollback("web", "s1")
    root = driver.rootfs("web")
    assert (root / "data").read_text() == "one"
    assert not (root / "added").exists()
    assert (root / "etc/hostname").read_text() == "template\n"
    assert driver.list_snapshots("web") == ["s1"]  # the snapshot stays
    (root / "data").write_text("three")  # the new root is writable
    assert (driver.snapshot_path("web", "s1") / "data").read_text() == "one"
    assert sorted(p.name for p in driver.instance_path("web").iterdir()) == ["rootfs", "snapshots"]
    if isinstance(driver, BtrfsStorage):
        assert btrfsutil.get_subvolume_read_only(snap)
        assert not btrfsutil.get_subvolume_read_only(root)


def test_snapshot_errors(driver: StorageDriver) -> None:
    make_template(driver)
    driver.create_instance("web", "base")
    driver.snapshot_instance("web", "s1")
    with pytest.raises(Conflict):
        driver.snapshot_instance("web", "s1")
    with pytest.raises(NotFound):
        driver.rollback("web", "nope")
    with pytest.raises(NotFound):
        driver.delete_snapshot("web", "nope")
    with pytest.raises(NotFound):
        driver.snapshot_instance("ghost", "s1")
    for bad in ("../x", "a/b", ".hidden", "", "..", "."):
        with pytest.raises(InvalidRequest):
            driver.snapshot_instance("web", bad)
        with pytest.raises(InvalidRequest):
            driver.clone_instance("web", bad)
    driver.snapshot_instance("web", "s2")
    assert driver.list_snapshots("web") == ["s1", "s2"]
    driver.delete_snapshot("web", "s1")
    assert driver.list_snapshots("web") == ["s2"]


def test_clone_is_independent(driver: StorageDriver) -> None:
    make_template(driver)
    src = driver.create_instance("src", "base")
    (src / "data").write_text("v1")
    driver.snapshot_instance("src", "s1")
    (src / "data").write_text("v2")

    clone = driver.clone_instance("src", "copy")
    assert (clone / "data").read_text() == "v2"
    (clone / "data").write_text("changed in clone")
    (src / "more").write_text("x")
    assert (src / "data").read_text() == "v2"
    assert not (clone / "more").exists()
    assert driver.list_snapshots("copy") == []  # snapshots are not carried over

    old = driver.clone_instance("src", "old", from_snapshot="s1")
    assert (old / "data").read_text() == "v1"
    (old / "data").write_text("w")
    assert (driver.snapshot_path("src", "s1") / "data").read_text() == "v1"

    with pytest.raises(Conflict):
        driver.clone_instance("src", "copy")
    with pytest.raises(NotFound):
        driver.clone_instance("src", "x", from_snapshot="nope")
    with pytest.raises(NotFound):
        driver.clone_instance("ghost", "y")
    assert driver.instance_names() == ["copy", "old", "src"]


def test_delete_instance_removes_everything(driver: StorageDriver) -> None:
    make_template(driver)
    driver.create_instance("keep", "base")
    driver.create_instance("gone", "base")
    driver.snapshot_instance("gone", "s1")
    driver.snapshot_instance("gone", "s2")
    driver.delete_instance("gone")
    assert not driver.instance_path("gone").exists()
    assert driver.instance_names() == ["keep"]
    driver.delete_instance("gone")  # missing is not an error
    assert (driver.rootfs("keep") / "etc/hostname").exists()


def test_recover_partial_finishes_an_interrupted_rollback(driver: StorageDriver) -> None:
    make_template(driver)
    root = driver.create_instance("web", "base")
    (root / "data").write_text("old")
    driver.snapshot_instance("web", "s1")
    base = driver.instance_path("web")
    # crash after the new root was made and the old one renamed away, before the second rename
    driver._copy_root(driver.snapshot_path("web", "s1"), base / ".rootfs-new", read_only=False)
    (base / ".rootfs-new" / "data").write_text("new")
    root.rename(base / ".rootfs-old")
    assert driver.recover_partial() == ["web: rollback completed", "web: removed .rootfs-old"]
    assert (driver.rootfs("web") / "data").read_text() == "new"
    assert sorted(p.name for p in base.iterdir()) == ["rootfs", "snapshots"]
    # crash before anything was swapped: the half-made new root goes
    driver._copy_root(driver.snapshot_path("web", "s1"), base / ".rootfs-new", read_only=False)
    assert driver.recover_partial("web") == ["web: removed .rootfs-new"]
    assert (driver.rootfs("web") / "data").read_text() == "new"


def test_usage_counts_the_root(driver: StorageDriver) -> None:
    make_template(driver)
    root = driver.create_instance("web", "base")
    before = driver.usage("web", fresh=True)
    (root / "blob").write_bytes(os.urandom(8 * MiB))
    os.sync()
    after = driver.usage("web", fresh=True)
    assert 7 * MiB < after - before < 10 * MiB, (before, after)


# -- dir only -----------------------------------------------------------------------------------

def test_dir_has_no_quota(tmp_path: Path) -> None:
    d = DirStorage(tmp_path / "s")
    d.prepare()
    make_template(d)
    d.create_instance("web", "base")
    with pytest.raises(NotSupported, match="btrfs"):
        d.set_quota("web", 100 * MiB)
    d.set_quota("web", None)  # lifting a limit that cannot exist is fine
    assert d.quota("web") is None
    info = d.pool_info()
    assert info["driver"] == "dir" and info["size"] > 0 and info["quota"] is False


# -- btrfs only ---------------------------------------------------------------------------------

def test_create_is_a_snapshot_not_a_copy(qbt: BtrfsStorage) -> None:
    bt = qbt
    make_template(bt, big=20 * MiB)
    tmpl_q = bt.subvolume_usage(bt.template_path("base") / "rootfs")
    assert tmpl_q is not None and tmpl_q["referenced"] >= 20 * MiB
    used_before = fs_used(bt.root)
    started = time.perf_counter()
    for i in range(10):
        bt.create_instance(f"i{i}", "base")
    elapsed = time.perf_counter() - started
    growth = fs_used(bt.root) - used_before
    print(f"\n10 btrfs instances ({bt.quota_mode()}): {elapsed * 1000 / 10:.1f} ms each, "
          f"pool grew {growth // 1024} KiB")
    assert growth < 4 * MiB, f"10 instances of a 20 MB template took {growth} bytes"
    for i in range(10):
        q = bt.subvolume_usage(bt.rootfs(f"i{i}"), sync=False)
        assert q is not None
        if bt.quota_mode() is QuotaMode.FULL:
            assert q["referenced"] >= 20 * MiB  # it sees the template's data …
        else:
            assert q["referenced"] < 256 * 1024  # simple quotas: only what it wrote
        assert q["exclusive"] < 256 * 1024  # … and owns a few metadata blocks
        assert bt.usage(f"i{i}", fresh=True) == q["referenced"]
    ids = {sid for _, sid in bt.subvolumes()}
    assert len(ids) == 11


def test_quota_stops_dd_with_edquot(qbt: BtrfsStorage) -> None:
    bt = qbt
    make_template(bt, big=20 * MiB)
    root = bt.create_instance("web", "base")
    assert bt.quota("web") is None
    limit = 64 * MiB
    bt.set_quota("web", limit)
    assert bt.quota("web") == limit
    r = subprocess.run(["dd", "if=/dev/zero", f"of={root / 'fill'}", "bs=1M", "count=200",
                        "conv=fsync"], capture_output=True, text=True)
    assert r.returncode != 0
    assert "Disk quota exceeded" in r.stderr, r.stderr
    used = bt.usage("web", fresh=True)
    assert limit - 8 * MiB <= used <= limit, used
    written = (root / "fill").stat().st_size
    if bt.quota_mode() is QuotaMode.FULL:
        assert written < 50 * MiB  # 64 MiB minus the 20 MB template file it sees
    else:
        assert 56 * MiB <= written <= 64 * MiB  # only what it wrote counts

    bt.set_quota("web", None)
    assert bt.quota("web") is None
    subprocess.run(["dd", "if=/dev/zero", f"of={root / 'more'}", "bs=1M", "count=20", "conv=fsync"],
                   check=True, capture_output=True)
    assert bt.usage("web", fresh=True) > limit
    with pytest.raises(InvalidRequest):
        bt.set_quota("web", 0)
    with pytest.raises(NotFound):
        bt.set_quota("ghost", limit)


def test_rollback_and_quota_survive_together(qbt: BtrfsStorage) -> None:
    bt = qbt
    make_template(bt)
    bt.create_instance("web", "base")
    bt.set_quota("web", 32 * MiB)
    bt.snapshot_instance("web", "s1")
    bt.rollback("web", "s1")
    assert bt.quota("web") == 32 * MiB  # the new root carries the limit
    r = subprocess.run(["dd", "if=/dev/zero", f"of={bt.rootfs('web') / 'fill'}", "bs=1M", "count=64"],
                       capture_output=True, text=True)
    assert "Disk quota exceeded" in r.stderr


def test_rollback_does_not_reset_the_limit_under_full_qgroups(qbt: BtrfsStorage) -> None:
    """The hostile tenant: write to the limit, snapshot, roll back, write again. Full qgroups
    (the default) charge the rolled-back root with all it can see, so the second write hits
    EDQUOT. Simple quotas charge the first write to the old root's subvolume: the limit then
    counts almost nothing and the second write goes through -- the documented reason they
    are opt-in (docs/storage.md, "Simple quotas")."""
    bt = qbt
    make_template(bt)
    root = bt.create_instance("web", "base")
    bt.set_quota("web", 32 * MiB)
    assert _fill(root, 24).returncode == 0
    bt.snapshot_instance("web", "s1")
    bt.rollback("web", "s1")
    again = subprocess.run(["dd", "if=/dev/urandom", f"of={bt.rootfs('web') / 'more'}", "bs=1M", "count=24",
                            "conv=fsync"], capture_output=True, text=True)
    if bt.quota_mode() is QuotaMode.FULL:
        assert "Disk quota exceeded" in again.stderr, again
        assert bt.usage("web", fresh=True) <= 32 * MiB
    else:
        assert again.returncode == 0, again.stderr  # the bypass simple quotas allow
        assert bt.usage("web", fresh=True) < 25 * MiB  # the first 24 MiB are charged to no instance


def test_simple_quota_counts_what_each_root_wrote(bt_simple: BtrfsStorage) -> None:
    """Simple quotas charge data to the subvolume that wrote it: a clone, a rolled-back root
    and a restored-from-snapshot root start at what they write themselves (docs/storage.md)."""
    bt = bt_simple
    info = bt.pool_info()
    assert info["quota_mode"] == "simple" and "opted in (quota_mode)" in info["quota_mode_reason"]
    make_template(bt)
    root = bt.create_instance("web", "base")
    (root / "blob").write_bytes(os.urandom(8 * MiB))
    assert 8 * MiB <= bt.usage("web", fresh=True) < 9 * MiB
    bt.snapshot_instance("web", "s1")
    bt.clone_instance("web", "copy")
    assert bt.usage("copy", fresh=True) < 256 * 1024  # the blob stays charged to web
    (bt.rootfs("copy") / "own").write_bytes(os.urandom(2 * MiB))
    assert 2 * MiB <= bt.usage("copy", fresh=True) < 3 * MiB
    bt.rollback("web", "s1")
    assert bt.usage("web", fresh=True) < 256 * 1024  # the blob is the snapshot's old root's
    assert (bt.rootfs("web") / "blob").stat().st_size == 8 * MiB
    bt.delete_instance("web")
    bt.delete_instance("copy")
    bt.wait_cleanup()
    assert bt._read_pending() == []  # every qgroup went with its data
    assert bt.quota_consistent() is True


def test_delete_removes_subvolumes_snapshots_and_qgroups(bt: BtrfsStorage) -> None:
    make_template(bt)
    bt.create_instance("keep", "base")
    root = bt.create_instance("gone", "base")
    btrfsutil.create_subvolume(root / "nested")  # a guest may make subvolumes in its root
    (root / "nested/f").write_text("x")
    bt.snapshot_instance("gone", "s1")
    bt.snapshot_instance("gone", "s2")
    bt.set_quota("gone", 100 * MiB)
    clone = bt.clone_instance("gone", "clone")
    assert (clone / "nested/f").read_text() == "x"  # a writable clone takes nested ones along

    ids = {path: sid for path, sid in bt.subvolumes() if path.startswith("instances/gone/")}
    assert set(ids) == {"instances/gone/rootfs", "instances/gone/rootfs/nested",
                        "instances/gone/snapshots/s1", "instances/gone/snapshots/s2"}
    qgroups = Path("/sys/fs/btrfs") / _fsid(bt) / "qgroups"
    assert all((qgroups / f"0_{sid}").is_dir() for sid in ids.values())

    bt.delete_instance("gone")
    assert not bt.instance_path("gone").exists()
    remaining = [path for path, _ in bt.subvolumes()]
    assert sorted(remaining) == ["instances/clone/rootfs", "instances/clone/rootfs/nested",
                                 "instances/keep/rootfs", "templates/base/rootfs"]
    bt.wait_cleanup()
    assert not [sid for sid in ids.values() if (qgroups / f"0_{sid}").exists()]
    assert not (bt.root / ".qgroups-pending.json").exists()
    assert (bt.rootfs("keep") / "etc/hostname").exists()


def test_discard_staging_removes_half_built_templates(bt: BtrfsStorage) -> None:
    staging = bt.new_template_dir("half")
    (staging / "rootfs/file").write_text("x")
    assert btrfsutil.is_subvolume(staging / "rootfs")
    assert bt.discard_staging() == [staging.name]
    assert not staging.exists()
    assert bt.subvolumes() == []


def test_template_made_as_plain_dir_still_snapshots(bt: BtrfsStorage) -> None:
    staging = bt.root / "templates" / ".build-x"
    (staging / "rootfs/etc").mkdir(parents=True)
    (staging / "rootfs/etc/os").write_text("plain")
    bt.commit_template("plain", staging)
    tmpl = bt.template_path("plain") / "rootfs"
    assert btrfsutil.is_subvolume(tmpl) and btrfsutil.get_subvolume_read_only(tmpl)
    root = bt.create_instance("web", "plain")
    assert (root / "etc/os").read_text() == "plain"


def test_pool_info_and_probe(bt: BtrfsStorage, tmp_path: Path) -> None:
    info = bt.pool_info()
    assert info["driver"] == "btrfs" and info["quota"] is True and info["quota_consistent"] is True
    assert info["quota_mode"] == "full" and info["quota_mode_reason"] == "full qgroups: the default (quota_mode)"
    assert bt.repair_quota() is False
    assert 2 * GiB < info["size"] <= 3 * GiB and 0 < info["free"] < info["size"]
    assert bt.info().usable
    elsewhere = BtrfsStorage(tmp_path / "not-btrfs")
    probe = elsewhere.info()
    assert not probe.usable and "not on btrfs" in probe.reason


def _fsid(bt: BtrfsStorage) -> str:
    from ctd.storage.btrfs import fs_uuid
    return fs_uuid(bt.root)


def _qgroups_dir(bt: BtrfsStorage) -> Path:
    return Path("/sys/fs/btrfs") / _fsid(bt) / "qgroups"


def _fill(root: Path, mib: int) -> subprocess.CompletedProcess:
    return subprocess.run(["dd", "if=/dev/urandom", f"of={root / 'fill'}", "bs=1M", f"count={mib}",
                           "conv=fsync"], capture_output=True, text=True)


def test_deleting_instances_keeps_qgroup_numbers_consistent(bt_full: BtrfsStorage) -> None:
    """The kernel marks every qgroup inconsistent (and then accounts nothing: no limit holds)
    when a qgroup is destroyed with bytes still on it, or a tall dropped subtree is not
    traced. Deleting instances and purging their qgroups as eagerly as ctd can must do
    neither. (Full qgroups only: simple quotas are never inconsistent.)"""
    bt = bt_full
    assert (_qgroups_dir(bt) / "drop_subtree_threshold").read_text().strip() == "8"
    make_template(bt, big=4 * MiB)
    for i in range(8):
        root = bt.create_instance(f"i{i}", "base")
        assert _fill(root, 2).returncode == 0
    for i in range(8):
        bt.delete_instance(f"i{i}")
        deadline = time.monotonic() + 1
        while bt.purge_qgroups() and time.monotonic() < deadline:
            time.sleep(0.002)  # the cleaner drops the subvolume, its accounting waits for a commit
        bt.wait_cleanup()
        assert bt.quota_consistent() is True, f"inconsistent after deleting i{i}"
    assert not (bt.root / ".qgroups-pending.json").exists()
    root = bt.create_instance("web", "base")
    bt.set_quota("web", 16 * MiB)
    assert "Disk quota exceeded" in _fill(root, 32).stderr


def test_a_limit_set_on_inconsistent_numbers_waits_for_the_rescan(bt_full: BtrfsStorage,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    bt = bt_full
    make_template(bt)
    root = bt.create_instance("gone", "base")
    for i in range(3000):  # a tree of more than one level, so its drop walks shared subtrees
        (root / f"f{i}").write_text(str(i))
    bt.snapshot_instance("gone", "s1")
    knob = _qgroups_dir(bt) / "drop_subtree_threshold"
    knob.write_text("0")  # every drop now gives up on its accounting
    try:
        bt.delete_instance("gone")
        bt.wait_cleanup()
    finally:
        knob.write_text("8")
    assert any("inconsistent" in line for line in caplog.messages)
    # wait_cleanup's purge started a rescan; whether it is done yet or not, the limit holds
    root = bt.create_instance("web", "base")
    bt.set_quota("web", 16 * MiB)
    assert bt.quota_consistent() is True
    assert "Disk quota exceeded" in _fill(root, 32).stderr


# -- which accounting mode a pool gets ------------------------------------------------------------

def test_a_pool_on_full_qgroups_stays_on_them(btrfs_mount: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No silent switch: a pool an older ctd put on full qgroups keeps them across restarts,
    and says so (with where to read how to convert) when the kernel could do better."""
    _run("btrfs", "quota", "enable", str(btrfs_mount))
    old = BtrfsStorage(btrfs_mount / "storage", enable_quota=True)
    old.prepare()
    make_template(old)
    old.create_instance("web", "base")
    old.set_quota("web", 16 * MiB)
    caplog.clear()
    # the next ctd start, opted in to simple quotas: too late for this pool
    again = BtrfsStorage(btrfs_mount / "storage", enable_quota=True, quota_mode=QuotaMode.SIMPLE)
    again.prepare()
    info = again.pool_info()
    assert info["quota_mode"] == "full" and info["quota_mode_reason"] == "full qgroups: quota was on before"
    if kernel_has_simple_quota():
        assert any("full qgroup accounting" in m and "Converting a pool" in m for m in caplog.messages)
    assert again.quota("web") == 16 * MiB
    assert "Disk quota exceeded" in _fill(again.rootfs("web"), 32).stderr


def test_without_simple_quotas_a_new_pool_gets_full_qgroups(btrfs_mount: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A kernel before 6.7 (its /sys/fs/btrfs/features has no simple_quota): full qgroups, one
    log line saying why, and limits as before. A pool holding data gets them too."""
    from ctd.storage.btrfs import quota
    monkeypatch.setattr(quota, "SIMPLE_QUOTA_FEATURE", btrfs_mount / "no-such-feature")
    bt = BtrfsStorage(btrfs_mount / "storage", enable_quota=True, quota_mode=QuotaMode.SIMPLE)
    bt.prepare()
    assert bt.quota_mode() is QuotaMode.FULL
    assert "no btrfs simple quotas" in caplog.text and "Linux 6.7" in caplog.text
    assert bt.pool_info()["quota_mode_reason"] == "full qgroups: this kernel has no simple quotas (Linux 6.7)"
    monkeypatch.undo()
    _run("btrfs", "quota", "disable", str(btrfs_mount))
    make_template(bt)  # data written while quota is off
    again = BtrfsStorage(btrfs_mount / "storage", enable_quota=True, quota_mode=QuotaMode.SIMPLE)
    again.prepare()
    assert again.quota_mode() is QuotaMode.FULL  # simple quotas would charge it to no one
    assert "held data" in again.pool_info()["quota_mode_reason"]


def test_a_simple_pool_under_the_default_setting_says_it_can_be_bypassed(
        bt_simple: BtrfsStorage, caplog: pytest.LogCaptureFixture) -> None:
    """A pool on simple quotas (opted in before, or made by the ctd that had them on by default)
    keeps them when quota_mode is back to full -- converting needs a rescan and new limits --
    but ctctl storage and the log say a tenant can exceed their limit, and where to read how
    to go back."""
    again = BtrfsStorage(bt_simple.root, enable_quota=True)
    again.prepare()
    info = again.pool_info()
    assert info["quota_mode"] == "simple" and "can exceed their limit" in info["quota_mode_reason"]
    assert any("though quota_mode is full" in m and "Back to full qgroups" in m for m in caplog.messages)
