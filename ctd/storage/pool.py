"""The embedded default pool: pick the storage driver for a state directory at start-up.

choose_storage(state_dir) decides, in this order:

1. STATE/storage is already a mounted btrfs (ctd's pool from before a daemon restart, or one
   the administrator mounted there)                          -> BtrfsStorage on it, as is;
2. STATE/pool.img exists (ctd made it before; the host rebooted or the pool was released)
                                                              -> attach it to a loop device
   (reusing one that already backs it), mount it at STATE/storage -> BtrfsStorage;
3. STATE/storage is on a btrfs filesystem                    -> BtrfsStorage there;
4. mkfs.btrfs, losetup, the kernel's btrfs and the btrfsutil module are all there, loops are
   allowed and STATE/storage holds no data yet              -> create a sparse STATE/pool.img
   (pool_size, default 20 % of the free space, 2..100 GiB), mkfs.btrfs it once, mount it;
5. otherwise                                                  -> DirStorage (reason recorded).

ctd's own pool gets direct I/O on its loop device (ctd.storage.loopdio): a new attach asks
losetup for it, a loop found attached (a daemon restart) has it switched on in place; where the
kernel refuses, the pool works without and the driver's direct_io_reason says why.
The daemon leaves the pool mounted when it exits (containers that outlive it keep their roots);
release_pool() unmounts and detaches it and is for tests and uninstallers.
Only loop devices whose backing file is this state directory's pool.img are ever touched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ctd.errors import OperationFailed
from ctd.storage import loopdio
from ctd.storage.base import StorageDriver
from ctd.storage.btrfs.quota import QuotaMode
from ctd.storage.dir import DirStorage

log = logging.getLogger(__name__)

GiB = 1 << 30
MiB = 1 << 20
MIN_POOL = 2 * GiB
MAX_POOL = 100 * GiB
POOL_FRACTION = 0.20
SMALLEST_POOL = 256 * MiB  # an explicit pool_size below this is refused
IMAGE_NAME = "pool.img"
STORAGE_NAME = "storage"
BTRFS_SUPER_MAGIC = 0x9123683E


# -- pure helpers -------------------------------------------------------------------------------

def default_pool_size(free_bytes: int) -> int:
    """20 % of the free space, at least 2 GiB and at most 100 GiB, rounded down to a MiB."""
    size = int(free_bytes * POOL_FRACTION)
    size = max(MIN_POOL, min(MAX_POOL, size))
    return size - size % MiB


@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    mount_point: str
    fstype: str
    source: str
    options: str


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        entries.append(MountEntry(int(fields[0]), _unescape(fields[4]), fields[sep + 1],
                                  _unescape(fields[sep + 2]), fields[sep + 3] if len(fields) > sep + 3 else ""))
    return entries


def find_mount(path: Path, mountinfo: str | None = None) -> MountEntry | None:
    """The mount whose mount point is exactly path (the topmost one if stacked), or None."""
    text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    target = os.path.realpath(path) if mountinfo is None else str(path)
    found = None
    for entry in parse_mountinfo(text):
        if entry.mount_point == target:
            found = entry  # later lines are mounted on top of earlier ones
    return found


class _Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 256)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def fs_magic(path: Path) -> int:
    buf = _Statfs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return int(buf.f_type) & 0xFFFFFFFF


def existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def on_btrfs(path: Path) -> bool:
    return fs_magic(existing_ancestor(path)) == BTRFS_SUPER_MAGIC


def has_data(path: Path) -> bool:
    """Does the storage dir hold anything a DirStorage put there (templates, instances)?"""
    if not path.is_dir():
        return False
    for sub in ("templates", "instances"):
        d = path / sub
        if d.is_dir() and any(d.iterdir()):
            return True
    return any(p.name not in ("templates", "instances") for p in path.iterdir())


# -- loop devices -------------------------------------------------------------------------------

def loops_backing(image: Path) -> list[str]:
    """/dev/loopN devices whose backing file is image (read from sysfs, nothing parsed)."""
    want = os.path.realpath(image)
    st = os.stat(want)
    found = []
    for dev in sorted(Path("/sys/block").glob("loop*")):
        try:
            backing = (dev / "loop" / "backing_file").read_text().rstrip("\n")
        except OSError:
            continue
        if backing.endswith(" (deleted)"):
            continue
        try:
            same = backing == want or os.path.samestat(os.stat(backing), st)
        except OSError:
            same = False
        if same and (dev / "loop" / "offset").read_text().strip() in ("", "0"):
            found.append(f"/dev/{dev.name}")
    return found


def _run(args: list[str], what: str) -> str:
    try:
        r = subprocess.run(args, capture_output=True, text=True)
    except FileNotFoundError:
        raise OperationFailed(f"{what}: {args[0]} is missing (install util-linux / btrfs-progs)") from None
    if r.returncode != 0:
        raise OperationFailed(f"{what} failed: {(r.stderr or r.stdout).strip()}")
    return r.stdout


def attach_loop(image: Path) -> str:
    """A loop device backing image: one that already does (after a crash between attach and
    mount), else a new one from `losetup --find --show` (LOOP_CTL_GET_FREE, race-safe), with
    direct I/O where the backing filesystem can do it (losetup then takes its block size), else
    without (losetup refuses the attach outright when the file cannot be opened O_DIRECT)."""
    existing = loops_backing(image)
    if existing:
        return existing[0]
    args = ["losetup", "--find", "--show", "--nooverlap", str(image)]
    try:
        return _run([*args[:-1], "--direct-io=on", args[-1]], f"attaching {image} to a loop device").strip()
    except OperationFailed as exc:
        log.debug("attaching %s with direct I/O failed (%s); attaching it without", image, exc.message)
    return _run(args, f"attaching {image} to a loop device").strip()


def detach_loop(device: str) -> None:
    _run(["losetup", "--detach", device], f"detaching {device}")


def make_image(image: Path, size: int) -> None:
    """A sparse file of size bytes, formatted btrfs; removed again if anything fails."""
    fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        _run(["mkfs.btrfs", "--quiet", "--label", "ctd-pool", str(image)], f"formatting {image}")
    except BaseException:
        image.unlink(missing_ok=True)
        raise


def mount_image(image: Path, target: Path) -> str:
    """Attach image and mount it at target; returns the loop device. Undoes its own attach
    when the mount fails."""
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    had = loops_backing(image)
    device = attach_loop(image)
    try:
        _run(["mount", "-t", "btrfs", device, str(target)], f"mounting {image} ({device}) at {target}")
    except BaseException:
        if device not in had:
            try:
                detach_loop(device)
            except OperationFailed:
                log.warning("could not detach %s after a failed mount", device)
        raise
    return device


def _device_of(entry: MountEntry, image: Path) -> str | None:
    return entry.source if entry.source in loops_backing(image) else None


# -- the choice ---------------------------------------------------------------------------------

def _btrfs_tools_reason() -> str:
    """Why ctd cannot make a loop pool here, or "" when it can."""
    from ctd.storage import btrfs as btrfs_mod
    if btrfs_mod.btrfsutil is None:
        return f"the btrfsutil Python module is missing ({btrfs_mod.IMPORT_ERROR})"
    for tool in ("mkfs.btrfs", "btrfs", "losetup", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (install btrfs-progs)"
    try:
        kernel_fs = Path("/proc/filesystems").read_text()
    except OSError:
        kernel_fs = ""
    if "btrfs" not in kernel_fs and not _module_available("btrfs"):
        return "the kernel has no btrfs"
    return ""


def _module_available(name: str) -> bool:
    release = os.uname().release
    try:
        return name in Path(f"/lib/modules/{release}/modules.dep").read_text()
    except OSError:
        return False


def _btrfs_driver(storage: Path, *, enable_quota: bool, reason: str, image: Path | None = None,
                  device: str | None = None, quota_mode: QuotaMode = QuotaMode.FULL) -> StorageDriver:
    """A BtrfsStorage on storage; on ctd's own pool (image and device given) with direct I/O
    switched on for its loop device where the kernel allows it."""
    from ctd.storage.btrfs import BtrfsStorage
    driver = BtrfsStorage(storage, enable_quota=enable_quota, quota_mode=quota_mode)
    driver.image, driver.device, driver.reason = image, device, reason
    if image is not None and device is not None:
        dio = loopdio.switch_on(device, image)
        driver.direct_io, driver.direct_io_reason = dio.on, dio.reason
    return driver


def choose_storage(state_dir: Path, *, pool_size: int | None = None, allow_loop: bool = True,
                   enable_quota: bool = True, quota_mode: QuotaMode = QuotaMode.FULL) -> StorageDriver:
    """The storage driver for state_dir (see the module doc). Mounts ctd's pool when there is
    one; call the driver's prepare() afterwards. allow_loop=False never creates a pool image
    (an existing one is still mounted: the data lives there). enable_quota turns btrfs quota
    on for ctd's own pool image (a btrfs that is not ctd's gets quota at the first limit),
    in quota_mode when it was off (ctd.toml quota_mode; full qgroups unless opted in)."""
    state_dir = Path(state_dir)
    storage = state_dir / STORAGE_NAME
    image = state_dir / IMAGE_NAME

    mounted = find_mount(storage)
    if mounted is not None and mounted.fstype == "btrfs":
        own = image.exists() and _device_of(mounted, image) is not None
        return _btrfs_driver(storage, enable_quota=enable_quota and own,
                             reason="btrfs already mounted at the storage path",
                             image=image if own else None, device=mounted.source if own else None,
                             quota_mode=quota_mode)
    if mounted is not None:
        log.info("%s is a %s mount: using it as plain directories", storage, mounted.fstype)
        return _dir(storage, f"{storage} is a {mounted.fstype} mount")

    if image.exists():
        device = mount_image(image, storage)
        log.info("mounted pool %s (%s) at %s", image, device, storage)
        return _btrfs_driver(storage, enable_quota=enable_quota, reason="ctd's pool image re-attached",
                             image=image, device=device, quota_mode=quota_mode)

    missing = _btrfs_tools_reason()
    if on_btrfs(storage):
        if missing.startswith("the btrfsutil"):
            return _dir(storage, f"{storage} is on btrfs but {missing}")
        return _btrfs_driver(storage, enable_quota=False, reason=f"{existing_ancestor(storage)} is on btrfs")

    if not allow_loop:
        return _dir(storage, "not on btrfs and loop pools are disabled")
    if missing:
        return _dir(storage, f"not on btrfs and no loop pool possible: {missing}")
    if has_data(storage):
        return _dir(storage, f"{storage} already holds dir-driver data; not hiding it under a new pool")

    state_dir.mkdir(parents=True, exist_ok=True)
    if pool_size is None:
        st = os.statvfs(state_dir)
        pool_size = default_pool_size(st.f_bavail * st.f_frsize)
    elif pool_size < SMALLEST_POOL:
        raise OperationFailed(f"a pool of {pool_size} bytes is too small (at least {SMALLEST_POOL})")
    try:
        make_image(image, pool_size)
        device = mount_image(image, storage)
    except OperationFailed as exc:
        image.unlink(missing_ok=True)
        log.warning("could not make a btrfs pool (%s); using plain directories", exc)
        return _dir(storage, f"making a btrfs pool failed: {exc.message}")
    log.info("created pool %s (%d bytes, sparse) on %s, mounted at %s", image, pool_size, device, storage)
    return _btrfs_driver(storage, enable_quota=enable_quota, reason="ctd's pool image created",
                         image=image, device=device, quota_mode=quota_mode)


def _dir(storage: Path, reason: str) -> StorageDriver:
    driver = DirStorage(storage)
    driver.reason = reason
    return driver


def release_pool(state_dir: Path, *, timeout: float = 10.0) -> bool:
    """Unmount STATE/storage if ctd's pool image is mounted there and detach every loop device
    backing the image. Returns whether anything was done. For tests and uninstalls: the daemon
    leaves its pool mounted across restarts."""
    state_dir = Path(state_dir)
    storage, image = state_dir / STORAGE_NAME, state_dir / IMAGE_NAME
    if not image.exists():
        return False
    did = False
    deadline = time.monotonic() + timeout
    while True:
        mounted = find_mount(storage)
        if mounted is None or _device_of(mounted, image) is None:
            break
        r = subprocess.run(["umount", str(storage)], capture_output=True, text=True)
        did = True
        if r.returncode != 0:
            if time.monotonic() > deadline:
                raise OperationFailed(f"unmounting {storage} failed: {r.stderr.strip()}")
            time.sleep(0.1)
    for device in loops_backing(image):
        try:
            detach_loop(device)
        except OperationFailed as exc:
            if "No such device" not in exc.message:
                raise
        did = True
    # losetup -d on a busy device only sets autoclear; wait for it to go
    while loops_backing(image) and time.monotonic() < deadline:
        time.sleep(0.05)
    return did


__all__ = ["choose_storage", "release_pool", "default_pool_size", "find_mount", "loops_backing",
           "parse_mountinfo", "on_btrfs"]
