"""A throwaway btrfs on a sparse loop file, for storage tests (nothing on the host's disks)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

GiB = 1 << 30


def _run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def _umount(path: Path) -> None:
    deadline = time.monotonic() + 10
    while True:
        r = subprocess.run(["umount", str(path)], capture_output=True, text=True)
        if r.returncode == 0:
            return
        if time.monotonic() > deadline:
            subprocess.run(["umount", "--lazy", str(path)], capture_output=True)
            return
        time.sleep(0.1)


@contextlib.contextmanager
def loop_btrfs(tmp: Path, size: int = 3 * GiB) -> Iterator[Path]:
    """A fresh btrfs on a sparse loop file under tmp, mounted at tmp/mnt; yields the mount."""
    image, mnt = tmp / "btrfs.img", tmp / "mnt"
    mnt.mkdir(exist_ok=True)
    with image.open("wb") as fh:
        fh.truncate(size)
    device = None
    mounted = False
    try:
        _run("mkfs.btrfs", "--quiet", str(image))
        device = _run("losetup", "--find", "--show", str(image)).strip()
        _run("mount", "-t", "btrfs", device, str(mnt))
        mounted = True
        yield mnt
    finally:
        try:
            if mounted:
                _umount(mnt)
        finally:
            if device:
                subprocess.run(["losetup", "--detach", device], capture_output=True)
            image.unlink(missing_ok=True)
