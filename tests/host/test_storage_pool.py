"""ctd/storage/pool.py on the real kernel: the embedded loop-backed btrfs pool is created on a
non-btrfs state dir (tmp, ext4 here), mounted, reused while mounted, and re-attached with its
data after release (what a host reboot does). Every pool is released in a finally block."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctd.storage.dir import DirStorage
from ctd.storage.pool import (choose_storage, find_mount, loops_backing, on_btrfs,
                              release_pool)

if os.geteuid() != 0:
    print("tests/host/test_storage_pool.py: skipped, needs root for loop devices and mounts",
          file=sys.stderr)
    pytest.skip("needs root for loop devices and mounts", allow_module_level=True)

pytest.importorskip("btrfsutil", reason="pip install btrfsutil==6.10 (setup.sh does)")
from ctd.storage.btrfs import BtrfsStorage  # noqa: E402
from tests.host.test_storage_btrfs import loop_btrfs, make_template  # noqa: E402

GiB = 1 << 30
MiB = 1 << 20


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """A state dir on the tmp filesystem (not btrfs); its pool is released afterwards."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    if on_btrfs(state_dir):
        pytest.skip("the tmp dir is on btrfs already; the loop pool would not be made")
    try:
        yield state_dir
    finally:
        release_pool(state_dir)
        assert find_mount(state_dir / "storage") is None
        if (state_dir / "pool.img").exists():
            assert loops_backing(state_dir / "pool.img") == []


def test_pool_created_mounted_reused_and_reattached(state: Path) -> None:
    image, storage = state / "pool.img", state / "storage"
    d = choose_storage(state, pool_size=1 * GiB)
    assert isinstance(d, BtrfsStorage), d.reason
    assert d.image == image and d.device is not None
    mnt = find_mount(storage)
    assert mnt is not None and mnt.fstype == "btrfs" and mnt.source == d.device
    assert loops_backing(image) == [d.device]
    st = image.stat()
    assert st.st_size == 1 * GiB and st.st_blocks * 512 < 64 * MiB  # sparse
    assert st.st_mode & 0o777 == 0o600
    d.prepare()
    assert d.quota_enabled()
    assert oct(storage.stat().st_mode & 0o777) == "0o700"
    make_template(d)
    (d.create_instance("web", "base") / "data").write_text("kept")
    d.set_quota("web", 200 * MiB)
    info = d.pool_info()
    assert info["driver"] == "btrfs" and info["image"] == str(image) and info["device"] == d.device
    assert 0.9 * GiB < info["size"] <= 1 * GiB and info["quota"] is True

    # daemon restart while the pool is mounted: reuse it, attach nothing new
    again = choose_storage(state, pool_size=1 * GiB)
    assert isinstance(again, BtrfsStorage) and again.device == d.device
    assert loops_backing(image) == [d.device]

    # host reboot (or release): nothing mounted, no loop device; the image stays
    assert release_pool(state)
    assert find_mount(storage) is None and loops_backing(image) == []
    assert image.exists()

    third = choose_storage(state)
    assert isinstance(third, BtrfsStorage) and third.image == image
    third.prepare()
    assert (third.rootfs("web") / "data").read_text() == "kept"
    assert third.instance_names() == ["web"]
    assert third.quota("web") == 200 * MiB
    assert image.stat().st_size == 1 * GiB  # the pool_size of the first call, not a new one


def test_reattach_reuses_a_loop_left_attached(state: Path) -> None:
    d = choose_storage(state, pool_size=1 * GiB)
    assert isinstance(d, BtrfsStorage)
    subprocess.run(["umount", str(state / "storage")], check=True)  # crash between attach and mount
    again = choose_storage(state)
    assert again.device == d.device
    assert loops_backing(state / "pool.img") == [d.device]


def test_dir_data_is_never_hidden_under_a_new_pool(state: Path) -> None:
    old = DirStorage(state / "storage")
    old.prepare()
    (old.root / "instances/web").mkdir()
    d = choose_storage(state, pool_size=1 * GiB)
    assert isinstance(d, DirStorage) and "dir-driver data" in d.reason
    assert not (state / "pool.img").exists()


def test_no_loop_when_disallowed(state: Path) -> None:
    d = choose_storage(state, allow_loop=False)
    assert isinstance(d, DirStorage) and "disabled" in d.reason
    assert not (state / "pool.img").exists()


def test_too_small_pool_refused(state: Path) -> None:
    from ctd.errors import OperationFailed
    with pytest.raises(OperationFailed, match="too small"):
        choose_storage(state, pool_size=16 * MiB)
    assert not (state / "pool.img").exists()


def test_state_dir_on_btrfs_uses_it_directly(tmp_path: Path) -> None:
    with loop_btrfs(tmp_path) as mnt:
        state = mnt / "state"
        d = choose_storage(state)
        assert isinstance(d, BtrfsStorage) and d.image is None
        assert not (state / "pool.img").exists()
        d.prepare()
        assert not d.quota_enabled()  # not ctd's filesystem: quota waits for the first limit
        make_template(d)
        d.create_instance("web", "base")
        d.set_quota("web", 64 * MiB)
        assert d.quota_enabled() and d.quota("web") == 64 * MiB
