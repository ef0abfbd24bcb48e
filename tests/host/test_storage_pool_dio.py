"""Direct I/O on the default pool's loop device, on the real kernel (issue #22).

What a user checks: `/sys/block/loopN/loop/dio` (losetup -l's DIO column) is 1 for ctd's pool,
and reading a file in the pool adds its size to the page cache once (btrfs's copy), while the
backing pool.img keeps ~0 pages of it (fincore). Where the kernel refuses direct I/O (a pool
image on ramfs; a loop attached at 512 bytes on a 4K-sector filesystem) the pool still works
and says why. Every pool, loop and mount a test makes is released in a finally block.
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctd.storage.pool import choose_storage, find_mount, loops_backing, on_btrfs, release_pool

if os.geteuid() != 0:
    print("tests/host/test_storage_pool_dio.py: skipped, needs root for loop devices and mounts",
          file=sys.stderr)
    pytest.skip("needs root for loop devices and mounts", allow_module_level=True)

pytest.importorskip("btrfsutil", reason="pip install btrfsutil==6.10 (setup.sh does)")
from ctd.storage.btrfs import BtrfsStorage  # noqa: E402
from ctd.storage.loopdio import set_direct_io  # noqa: E402
from tests.host.test_storage_btrfs import make_template  # noqa: E402

GiB = 1 << 30
MiB = 1 << 20
FILE_SIZE = 96 * MiB


def sysfs_dio(device: str) -> str:
    return (Path("/sys/block") / os.path.basename(device) / "loop/dio").read_text().strip()


def cached(path: Path) -> int:
    """Bytes of path in the page cache, as `fincore` reports them."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def drop_cache(path: Path) -> None:
    """Drop one file's clean pages (only that file's: the machine is shared)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_all(path: Path) -> None:
    with path.open("rb", buffering=0) as fh:
        while fh.read(4 * MiB):
            pass


def release(state: Path) -> None:
    release_pool(state)
    assert find_mount(state / "storage") is None
    if (state / "pool.img").exists():
        assert loops_backing(state / "pool.img") == []


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    if on_btrfs(state_dir):
        pytest.skip("the tmp dir is on btrfs already; the loop pool would not be made")
    try:
        yield state_dir
    finally:
        release(state_dir)


@contextlib.contextmanager
def own_mount(target: Path, *mount_args: str) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", *mount_args, str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_a_new_pool_reads_its_image_with_direct_io(state: Path) -> None:
    d = choose_storage(state, pool_size=1 * GiB)
    assert isinstance(d, BtrfsStorage) and d.device is not None, d.reason
    assert sysfs_dio(d.device) == "1"
    assert d.direct_io is True and d.direct_io_reason == ""
    d.prepare()
    info = d.pool_info()
    assert info["direct_io"] is True and "direct_io_reason" not in info
    # `losetup -l` agrees
    row = subprocess.run(["losetup", "--list", "--noheadings", "--output", "DIO", d.device],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert row == "1"


def read_twice(image: Path, f: Path) -> tuple[int, int]:
    """(file's cached bytes after a read, what pool.img gained over two reads), each read after
    dropping only the file's own cache."""
    drop_cache(f)
    drop_cache(image)
    before = cached(image)
    read_all(f)
    in_btrfs = cached(f)
    drop_cache(f)
    read_all(f)
    return in_btrfs, cached(image) - before


def test_a_read_through_the_pool_is_cached_once_not_twice(state: Path) -> None:
    d = choose_storage(state, pool_size=1 * GiB)
    assert isinstance(d, BtrfsStorage) and d.device is not None and d.image is not None
    d.prepare()
    f = d.root / "big"
    with f.open("wb") as fh:
        for _ in range(FILE_SIZE // MiB):
            fh.write(os.urandom(MiB))

    in_btrfs, in_image = read_twice(d.image, f)
    assert in_btrfs > 0.9 * FILE_SIZE  # the one copy a read must leave
    assert in_image < 0.05 * FILE_SIZE, f"pool.img gained {in_image >> 20} MiB with direct I/O on"

    # the measure itself: with direct I/O off the same reads cache the data a second time
    set_direct_io(d.device, False)
    assert sysfs_dio(d.device) == "0"
    in_btrfs, in_image = read_twice(d.image, f)
    assert in_btrfs > 0.9 * FILE_SIZE and in_image > 0.9 * FILE_SIZE

    # a daemon restart switches it on in place and gives the backing file's pages back
    again = choose_storage(state)
    assert again.device == d.device and sysfs_dio(d.device) == "1" and again.direct_io is True
    assert cached(d.image) < 0.05 * FILE_SIZE


def test_restart_switches_it_on_under_a_root_in_use(state: Path) -> None:
    d = choose_storage(state, pool_size=1 * GiB)
    assert isinstance(d, BtrfsStorage) and d.device is not None
    d.prepare()
    make_template(d)
    root = d.create_instance("web", "base")
    with (root / "log").open("w") as held:  # a running container's open file
        held.write("before\n")
        held.flush()
        set_direct_io(d.device, False)  # a pool attached by a ctd without this change
        again = choose_storage(state)
        assert again.device == d.device and loops_backing(state / "pool.img") == [d.device]
        assert sysfs_dio(d.device) == "1" and again.pool_info()["direct_io"] is True
        held.write("after\n")
    os.sync()
    assert (root / "log").read_text() == "before\nafter\n"

    # attached but not mounted (a crash between attach and mount): the same loop, switched on
    subprocess.run(["umount", str(state / "storage")], check=True)
    set_direct_io(d.device, False)
    third = choose_storage(state)
    assert third.device == d.device and sysfs_dio(d.device) == "1"
    assert (third.rootfs("web") / "log").read_text() == "before\nafter\n"


def test_status_tells_when_it_was_switched_off_later(state: Path) -> None:
    d = choose_storage(state, pool_size=1 * GiB)
    assert d.device is not None
    set_direct_io(d.device, False)
    info = d.pool_info()
    assert info["direct_io"] is False and "next start" in info["direct_io_reason"]


def test_a_pool_on_ramfs_works_without_direct_io_and_says_why(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    # ramfs cannot open a file O_DIRECT (tmpfs can, since Linux 6.6)
    with own_mount(tmp_path / "ram", "-t", "ramfs", "-o", "mode=0700", "ramfs") as ram:
        state = ram / "state"
        try:
            with caplog.at_level(logging.INFO, logger="ctd.storage.loopdio"):
                d = choose_storage(state, pool_size=256 * MiB)
            assert isinstance(d, BtrfsStorage) and d.device is not None, d.reason
            assert sysfs_dio(d.device) == "0" and d.direct_io is False
            assert "ramfs" in d.direct_io_reason and "O_DIRECT" in d.direct_io_reason
            said = [r.getMessage() for r in caplog.records if "direct I/O stays off" in r.getMessage()]
            assert len(said) == 1 and "ramfs" in said[0]
            d.prepare()
            make_template(d)
            (d.create_instance("web", "base") / "data").write_text("kept")
            info = d.pool_info()
            assert info["direct_io"] is False and "ramfs" in info["direct_io_reason"]
            assert (d.rootfs("web") / "data").read_text() == "kept"
        finally:
            release(state)


def test_4k_sector_filesystem_refuses_a_512_byte_loop_then_gets_it_at_reattach(tmp_path: Path) -> None:
    disk = tmp_path / "disk4k.img"
    with open(disk, "wb") as fh:
        fh.truncate(1 * GiB)
    dev4k = subprocess.run(["losetup", "--find", "--show", "--sector-size", "4096", str(disk)],
                           capture_output=True, text=True, check=True).stdout.strip()
    try:
        subprocess.run(["mkfs.ext4", "-q", dev4k], check=True)
        with own_mount(tmp_path / "fs4k", dev4k) as fs:
            state = fs / "state"
            try:
                d = choose_storage(state, pool_size=512 * MiB)
                assert d.device is not None and sysfs_dio(d.device) == "1"
                assert (Path("/sys/block") / os.path.basename(d.device) / "queue/logical_block_size"
                        ).read_text().strip() == "4096"
                d.prepare()
                make_template(d)
                d.create_instance("web", "base")
                release(state)

                # as a ctd without direct I/O attached it: 512-byte sectors on a 4K filesystem
                old = subprocess.run(["losetup", "--find", "--show", str(state / "pool.img")],
                                     capture_output=True, text=True, check=True).stdout.strip()
                subprocess.run(["mount", "-t", "btrfs", old, str(state / "storage")], check=True)
                kept = choose_storage(state)
                assert kept.device == old and sysfs_dio(old) == "0" and kept.direct_io is False
                assert "512" in kept.direct_io_reason and "4096" in kept.direct_io_reason
                assert "next attach" in kept.direct_io_reason or "reboot" in kept.direct_io_reason
                kept.prepare()
                assert kept.instance_names() == ["web"]
                release(state)

                fixed = choose_storage(state)  # after a reboot
                assert fixed.device is not None and sysfs_dio(fixed.device) == "1"
                fixed.prepare()
                assert fixed.instance_names() == ["web"]
            finally:
                release(state)
    finally:
        subprocess.run(["losetup", "--detach", dev4k], check=True)


def test_daemon_pool_has_direct_io_and_keeps_it_across_a_restart(fresh_ctd) -> None:  # type: ignore[no-untyped-def]
    ctd = fresh_ctd
    info = ctd.client.get("/1.0/storage")["storage"]
    assert info["direct_io"] is True and sysfs_dio(info["device"]) == "1"
    assert "dio:     on" in ctd.ok("storage").splitlines()

    name = ctd.unique("dio")
    ctd.ok("create", name, "--template", "busybox")
    ctd.ok("start", name)
    pid = ctd.instance(name)["pid"]
    ctd.kill9()  # the container outlives the daemon and its root stays mounted
    set_direct_io(info["device"], False)  # as the pool of a ctd without this change
    ctd.start()
    assert sysfs_dio(info["device"]) == "1"
    again = ctd.client.get("/1.0/storage")["storage"]
    assert again["device"] == info["device"] and again["direct_io"] is True
    inst = ctd.instance(name)
    assert inst["pid"] == pid and inst["state"] == "running"
    assert ctd.sh(name, "echo ok > /root/f && cat /root/f").out.strip() == "ok"
