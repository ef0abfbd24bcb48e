"""Idmapped-mount support on the storage pool's filesystem: by kernel version, and a real probe.

The probe (root only) clones the pool's mount with open_tree(OPEN_TREE_CLONE), idmaps the
detached clone with mount_setattr(MOUNT_ATTR_IDMAP) through a throwaway user namespace, and
closes it: the clone is never attached anywhere, so the probe leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .fragment import parse_version
from .model import CheckResult, bad, ok, warn

CATEGORY = "storage"
DEFAULT_POOL = Path("/var/lib/ctd")
MOUNTINFO = Path("/proc/self/mountinfo")
# Kernel release that first let each filesystem be idmapped (FS_ALLOW_IDMAP).
SUPPORT: dict[str, tuple[int, int]] = {
    "ext4": (5, 12), "xfs": (5, 12), "vfat": (5, 12), "btrfs": (5, 15), "ntfs3": (5, 15),
    "f2fs": (5, 18), "overlay": (5, 19), "tmpfs": (6, 3), "ceph": (6, 7), "fuse": (6, 12),
}
# Syscall numbers: the same on x86_64 and every asm-generic architecture (arm64, riscv ...).
NR_OPEN_TREE = 428
NR_MOUNT_SETATTR = 442
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOUNT_ATTR_IDMAP = 0x00100000
CLONE_NEWUSER = 0x10000000


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


@dataclass(frozen=True)
class PoolFs:
    path: Path  # the existing directory examined (pool_path or its nearest existing parent)
    mountpoint: str
    fstype: str


def existing_parent(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def pool_filesystem(pool: Path, mountinfo: Path = MOUNTINFO) -> PoolFs:
    """The filesystem holding pool (longest mount-point prefix; later mounts hide earlier ones)."""
    path = existing_parent(pool).resolve()
    best = ("/", "unknown")
    for line in mountinfo.read_text().splitlines():
        pre, _, post = line.partition(" - ")
        f, p = pre.split(), post.split()
        if len(f) < 5 or not p:
            continue
        point = f[4].replace("\\040", " ")
        inside = path == Path(point) or Path(point) in path.parents
        if inside and len(point) >= len(best[0]):
            best = (point, p[0])
    return PoolFs(path, best[0], best[1])


def supported_by_version(fstype: str, release: tuple[int, int] | None) -> bool | None:
    """Whether this kernel lets fstype be idmapped; None when the table does not know."""
    base = fstype.split(".")[0]  # fuse.lxcfs -> fuse
    if base not in SUPPORT or release is None:
        return None
    return release >= SUPPORT[base]


_CHILD = ("import ctypes, sys\n"
          "libc = ctypes.CDLL(None, use_errno=True)\n"
          f"if libc.unshare({CLONE_NEWUSER}) != 0:\n"
          "    sys.exit(ctypes.get_errno() or 1)\n"
          "print('ready', flush=True)\n"
          "sys.stdin.read()\n")


def probe_idmap(path: Path) -> tuple[bool, str]:
    """Try to idmap a detached clone of path's mount. Needs root. (ok, what happened)."""
    libc = ctypes.CDLL(None, use_errno=True)
    # A throwaway user namespace, owned by a child python (subprocess: no fork of this process).
    child = subprocess.Popen([sys.executable, "-S", "-c", _CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    userns_fd = tree_fd = -1
    try:
        if child.stdout is None or child.stdout.readline().strip() != "ready":
            code = child.wait(timeout=10)
            return False, f"cannot create a user namespace ({os.strerror(code) if code > 0 else code})"
        for kind in ("uid_map", "gid_map"):
            Path(f"/proc/{child.pid}/{kind}").write_text("0 65534 1\n")
        userns_fd = os.open(f"/proc/{child.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        tree_fd = libc.syscall(NR_OPEN_TREE, ctypes.c_int(AT_FDCWD), os.fsencode(str(path)),
                               ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC))
        if tree_fd < 0:
            e = ctypes.get_errno()
            return False, f"open_tree: {errno.errorcode.get(e, e)} ({os.strerror(e)})"
        attr = MountAttr(attr_set=MOUNT_ATTR_IDMAP, userns_fd=userns_fd)
        rc = libc.syscall(NR_MOUNT_SETATTR, ctypes.c_int(tree_fd), b"", ctypes.c_uint(AT_EMPTY_PATH),
                          ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
        if rc != 0:
            e = ctypes.get_errno()
            return False, f"mount_setattr(MOUNT_ATTR_IDMAP): {errno.errorcode.get(e, e)} ({os.strerror(e)})"
        return True, "probe: idmapped a detached clone of the mount"
    except OSError as e:
        return False, f"probe failed: {e}"
    finally:
        for fd in (tree_fd, userns_fd):
            if fd >= 0:
                os.close(fd)  # the detached clone goes away with its last fd
        if child.stdin:
            child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def check_idmapped_mounts(pool_path: Path | None = None, probe: bool | None = None) -> CheckResult:
    pool = pool_path or DEFAULT_POOL
    fs = pool_filesystem(pool)
    release = parse_version(os.uname().release)
    where = f"{fs.fstype} at {fs.mountpoint} (pool {pool})"
    fix = ("put the pool on btrfs, ext4 or xfs (kernel >= 5.15), or upgrade the kernel; "
           "ctd needs idmapped mounts to share one template between containers' id ranges")
    by_version = supported_by_version(fs.fstype, release)
    if probe is None:
        probe = os.geteuid() == 0
    if probe:
        good, what = probe_idmap(fs.path)
        if good:
            return ok("idmapped-mounts", f"{where}: {what}", CATEGORY, True)
        return bad("idmapped-mounts", f"{where}: not supported ({what})", fix, CATEGORY, True)
    if by_version is None:
        return warn("idmapped-mounts", f"{where}: support unknown for this filesystem; "
                    "not probed (needs root)", "run `ctctl check` as root to probe", CATEGORY, True)
    if by_version:
        since = SUPPORT[fs.fstype.split('.')[0]]
        return ok("idmapped-mounts", f"{where}: supported since {since[0]}.{since[1]} "
                  "(by kernel version; run as root to probe)", CATEGORY, True)
    return bad("idmapped-mounts", f"{where}: this kernel cannot idmap {fs.fstype}", fix,
               CATEGORY, True)
