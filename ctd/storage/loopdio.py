"""Direct I/O on the default pool's loop device, and why the kernel refused it when it did.

Without direct I/O every block the pool's btrfs reads is cached twice: once by btrfs, once as
the loop's backing file (pool.img). With it the loop reads and writes pool.img with O_DIRECT
and only btrfs's copy stays in memory.

switch_on(device, image) turns it on for a bound loop device (LOOP_SET_DIRECT_IO; safe on a
mounted device in use: the kernel flushes the backing file and freezes the queue for the
switch), drops the backing file's now useless cached pages, and returns a DirectIO saying
whether it is on and, when not, why. It never detaches, re-attaches or resizes anything and
raises nothing: a pool without direct I/O works, only with more page cache.

The kernel refuses when the filesystem holding pool.img cannot do O_DIRECT (ramfs, some FUSE
filesystems) or when the loop's logical block size is below that filesystem's direct I/O
alignment (a 4K-sector host, with the loop attached at 512 bytes before): the next attach
with `losetup --direct-io=on` (after a reboot, or a release of the pool) takes the larger
block size and gets direct I/O.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

LOOP_SET_DIRECT_IO = 0x4C08
_STATX_DIOALIGN = 0x2000
_AT_FDCWD = -100
_STATX_SIZE = 256
_STATX_DIO_OFFSET_ALIGN_AT = 156  # u32 stx_dio_offset_align in struct statx
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class DirectIO:
    """Whether the pool's loop device reads its backing file with direct I/O; why not if not."""
    on: bool
    reason: str = ""


def _sys_block(device: str) -> Path:
    return Path("/sys/block") / os.path.basename(device)


def is_on(device: str) -> bool | None:
    """The kernel's own answer (/sys/block/loopN/loop/dio, losetup's DIO column); None when
    device is no bound loop device."""
    try:
        return (_sys_block(device) / "loop" / "dio").read_text().strip() == "1"
    except OSError:
        return None


def logical_block_size(device: str) -> int:
    return int((_sys_block(device) / "queue" / "logical_block_size").read_text())


def dio_alignment(path: Path) -> int | None:
    """The file offset alignment O_DIRECT needs on path's filesystem (statx STATX_DIOALIGN), or
    None when the filesystem does not say."""
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    statx = getattr(_libc, "statx", None)
    if statx is None or statx(_AT_FDCWD, os.fsencode(path), 0, _STATX_DIOALIGN, buf) != 0:
        return None
    mask = struct.unpack_from("I", buf.raw, 0)[0]
    if not mask & _STATX_DIOALIGN:
        return None
    align = struct.unpack_from("I", buf.raw, _STATX_DIO_OFFSET_ALIGN_AT)[0]
    return align or None


def fstype_of(path: Path) -> str:
    """The type of the filesystem holding path (from /proc/self/mountinfo, by device number)."""
    st = os.stat(path)
    want = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    found = "unknown"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == want and "-" in fields:
            found = fields[fields.index("-") + 1]
    return found


def _opens_direct(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC))
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    return True


def why_refused(device: str, image: Path, err: OSError | None = None) -> str:
    """The reason, as a user can check it, that the kernel keeps direct I/O off for device."""
    try:
        if not _opens_direct(image):
            return (f"the filesystem holding {image} ({fstype_of(image)}) cannot do direct I/O "
                    "(O_DIRECT); move the state directory to ext4, xfs or btrfs to get it")
        align, size = dio_alignment(image), logical_block_size(device)
        if align is not None and size < align:
            return (f"{device}'s logical block size ({size} bytes) is below the {align}-byte direct "
                    f"I/O alignment of the filesystem holding {image}; the pool gets direct I/O at "
                    "its next attach (after a reboot)")
    except OSError as exc:
        return f"direct I/O could not be checked: {exc}"
    said = f" ({os.strerror(err.errno)})" if err is not None and err.errno else ""
    return f"the kernel refused direct I/O on {device}{said}"


def _drop_cached(image: Path) -> None:
    """Release the backing file's cached pages: with direct I/O on they are never read again."""
    fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def set_direct_io(device: str, on: bool) -> None:
    """LOOP_SET_DIRECT_IO on a bound loop device; raises the kernel's OSError."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, LOOP_SET_DIRECT_IO, 1 if on else 0)
    finally:
        os.close(fd)


def switch_on(device: str, image: Path) -> DirectIO:
    """Direct I/O on for ctd's pool loop device (see the module doc); logs one line when it
    stays off, naming why."""
    if is_on(device):
        return DirectIO(True)
    err: OSError | None = None
    try:
        set_direct_io(device, True)
    except OSError as exc:
        err = exc
    if err is None and is_on(device):
        try:
            _drop_cached(image)
        except OSError as exc:  # only memory is at stake
            log.debug("could not drop %s's cached pages: %s", image, exc)
        log.info("pool %s: direct I/O switched on for %s", image, device)
        return DirectIO(True)
    reason = why_refused(device, image, err)
    log.warning("pool %s: direct I/O stays off on %s: %s; every read through the pool is cached "
                "twice (the backing file's page cache and btrfs's)", image, device, reason)
    return DirectIO(False, reason)


__all__ = ["DirectIO", "is_on", "switch_on", "set_direct_io", "why_refused"]
