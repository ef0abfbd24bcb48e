"""A VM disk's snapshot on btrfs shares its extents: the disk is nodatacow (+C, rootdisk.py) and
btrfs clones only between files of the same flag, so the copy gets +C first (storage/base.py
_reflink). Before, `cp --reflink=auto` fell back to a byte copy without a word: a live VM
snapshot then paused the guest for seconds."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.btrfs import loop_btrfs

pytest.importorskip("btrfsutil", reason="pip install btrfsutil==6.10 (setup.sh does)")
from ctd.storage.btrfs import BtrfsStorage  # noqa: E402

MiB = 1 << 20


@pytest.fixture
def bt(tmp_path: Path) -> Iterator[BtrfsStorage]:
    with loop_btrfs(tmp_path) as mnt:
        driver = BtrfsStorage(mnt / "storage", enable_quota=False)
        driver.prepare()
        yield driver
        for name in driver.instance_names():
            driver.delete_instance(name)


def exclusive_bytes(path: Path) -> int:
    out = subprocess.run(["btrfs", "filesystem", "du", "--raw", "-s", str(path)], capture_output=True,
                         text=True, check=True).stdout.splitlines()[-1].split()
    return int(out[1])   # Total, Exclusive, Set shared, Filename


def test_a_nocow_vm_disk_snapshot_shares_its_extents_and_rolls_back(bt: BtrfsStorage) -> None:
    bt.new_vm_dir("vm1")
    disk = bt.instance_path("vm1") / "disk.raw"
    disk.touch()
    subprocess.run(["chattr", "+C", str(disk)], check=True)
    with disk.open("r+b") as fh:
        fh.truncate(512 * MiB)
        for _ in range(64):
            fh.write(os.urandom(MiB))
        fh.flush()
        os.fsync(fh.fileno())
    start = time.monotonic()
    bt.snapshot_vm_disk("vm1", "s1")
    took = time.monotonic() - start
    snap = bt.snapshot_path("vm1", "s1") / "disk.raw"
    assert snap.read_bytes()[:MiB] == disk.read_bytes()[:MiB]
    assert "C" in subprocess.run(["lsattr", str(snap)], capture_output=True, text=True).stdout.split()[0]
    subprocess.run(["sync"], check=True)
    # shared, not copied: neither file holds its 64 MiB alone
    assert exclusive_bytes(bt.instance_path("vm1")) < 8 * MiB, "the snapshot copied the disk's bytes"
    assert took < 5, took
    with disk.open("r+b") as fh:
        fh.write(b"changed")
    bt.rollback_vm_disk("vm1", "s1")
    assert disk.read_bytes()[:7] == snap.read_bytes()[:7] != b"changed"
