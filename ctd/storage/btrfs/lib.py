"""What the btrfs driver and btrfs backups share: the btrfsutil module (None when it cannot be
imported; IMPORT_ERROR says why), the filesystem's id, the `btrfs` command, and errors() that
turns a btrfsutil failure into OperationFailed naming what failed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

from ctd.errors import OperationFailed

try:  # libbtrfsutil's Python binding (PyPI btrfsutil==6.10)
    import btrfsutil as btrfsutil  # (re-exported: the driver, quota and backups use it)
except ImportError as exc:  # pragma: no cover - depends on the host
    btrfsutil = None
    IMPORT_ERROR = str(exc)
else:
    IMPORT_ERROR = ""

# _IOR(BTRFS_IOCTL_MAGIC 0x94, 31, struct btrfs_ioctl_fs_info_args /* 1024 bytes */)
BTRFS_IOC_FS_INFO = (2 << 30) | (1024 << 16) | (0x94 << 8) | 31


def fs_uuid(path: Path) -> str:
    """The filesystem's fsid, which names its /sys/fs/btrfs/ directory."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        buf = bytearray(1024)
        fcntl.ioctl(fd, BTRFS_IOC_FS_INFO, buf, True)
    finally:
        os.close(fd)
    return str(uuid.UUID(bytes=bytes(buf[16:32])))


def is_btrfs(path: Path) -> bool:
    """Whether path is on btrfs (False without btrfsutil)."""
    if btrfsutil is None:
        return False
    try:
        btrfsutil.subvolume_id(path)
        return True
    except btrfsutil.BtrfsUtilError:
        return False


@contextlib.contextmanager
def errors(what: str) -> Iterator[None]:
    """btrfsutil's errors as OperationFailed("WHAT failed: ...")."""
    try:
        yield
    except btrfsutil.BtrfsUtilError as exc:
        raise OperationFailed(f"{what} failed: {exc}") from exc


def run_btrfs(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The `btrfs` command with args; with check, a non-zero exit is OperationFailed."""
    try:
        result = subprocess.run(["btrfs", *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise OperationFailed("the btrfs command is missing; install btrfs-progs") from None
    if check and result.returncode != 0:
        raise OperationFailed(f"btrfs {' '.join(args)} failed: "
                              f"{(result.stderr or result.stdout).strip()}")
    return result
