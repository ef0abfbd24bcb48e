"""ctd/storage/pool.py pieces that need no root: pool size, mountinfo parsing, the choice
when no loop pool may be made."""
from __future__ import annotations

from pathlib import Path

import pytest

from ctd.storage.dir import DirStorage
from ctd.storage.pool import (GiB, MAX_POOL, MIN_POOL, choose_storage, default_pool_size,
                              find_mount, has_data, parse_mountinfo)

MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
66 22 0:47 / /var/lib/ctd/storage rw,relatime shared:30 - btrfs /dev/loop3 rw,discard=async
67 22 0:48 / /srv/with\\040space rw - tmpfs tmpfs rw
68 66 0:49 / /var/lib/ctd/storage rw - btrfs /dev/loop4 rw
"""


@pytest.mark.parametrize("free,expected", [
    (0, MIN_POOL),
    (5 * GiB, MIN_POOL),               # 20 % is 1 GiB: raised to 2 GiB
    (80 * GiB, 16 * GiB),
    (10_000 * GiB, MAX_POOL),          # capped at 100 GiB
])
def test_default_pool_size(free: int, expected: int) -> None:
    assert default_pool_size(free) == expected


def test_default_pool_size_is_whole_mib() -> None:
    assert default_pool_size(12_345_678_901) % (1 << 20) == 0


def test_parse_mountinfo() -> None:
    entries = parse_mountinfo(MOUNTINFO)
    assert [e.fstype for e in entries] == ["ext4", "btrfs", "tmpfs", "btrfs"]
    assert entries[1].source == "/dev/loop3" and entries[1].options == "rw,discard=async"
    assert entries[2].mount_point == "/srv/with space"


def test_find_mount_takes_the_top_of_a_stack() -> None:
    top = find_mount(Path("/var/lib/ctd/storage"), MOUNTINFO)
    assert top is not None and top.source == "/dev/loop4"
    assert find_mount(Path("/var/lib/ctd"), MOUNTINFO) is None
    assert find_mount(Path("/srv/with space"), MOUNTINFO).fstype == "tmpfs"


def test_has_data(tmp_path: Path) -> None:
    s = tmp_path / "storage"
    assert not has_data(s)
    (s / "templates").mkdir(parents=True)
    (s / "instances").mkdir()
    assert not has_data(s)
    (s / "instances" / "web").mkdir()
    assert has_data(s)


def test_no_loop_allowed_gives_dir(tmp_path: Path) -> None:
    from ctd.storage.pool import on_btrfs
    if on_btrfs(tmp_path):
        pytest.skip("tmp is on btrfs")
    d = choose_storage(tmp_path / "state", allow_loop=False)
    assert isinstance(d, DirStorage) and d.reason
    assert not (tmp_path / "state" / "pool.img").exists()
