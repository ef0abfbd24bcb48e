"""A throwaway btrfs on a sparse loop file, for storage tests (nothing on the host's disks)."""

from __future__ import annotations

import contextlib
import struct
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


def _crc32c(data: bytes) -> int:
    """btrfs send's command checksum: CRC-32C (Castagnoli), seed 0, no final inversion."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc


def send_command(cmd: int, attrs: list[tuple[int, bytes]]) -> bytes:
    """One btrfs send stream command (type-length-value attributes, v1 layout) with the checksum
    btrfs receive verifies, for crafting hostile streams."""
    body = b"".join(struct.pack("<HH", kind, len(value)) + value for kind, value in attrs)
    crc = _crc32c(struct.pack("<IHI", len(body), cmd, 0) + body)
    return struct.pack("<IHI", len(body), cmd, crc) + body
