"""Thin ctypes wrappers for the namespace and mount syscalls Python 3.11 lacks.

Each wrapper raises OSError with the errno and the call's arguments on failure.
"""

from __future__ import annotations

import ctypes
import os
import platform

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# Namespace flags (linux/sched.h).
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

# mount(2) flags.
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

# New mount API (linux/mount.h).
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x00000004
MOVE_MOUNT_T_EMPTY_PATH = 0x00000040
AT_SYMLINK_NOFOLLOW = 0x100
MOUNT_ATTR_RDONLY = 0x00000001
MOUNT_ATTR_NOSUID = 0x00000002
MOUNT_ATTR_NODEV = 0x00000004
MOUNT_ATTR_IDMAP = 0x00100000

# The new mount API numbers are shared by every architecture (asm-generic), pivot_root is not.
_NR = {
    "x86_64": {"pivot_root": 155, "open_tree": 428, "move_mount": 429, "mount_setattr": 442},
    "aarch64": {"pivot_root": 41, "open_tree": 428, "move_mount": 429, "mount_setattr": 442},
}[platform.machine()]


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _b(path: str | bytes | None) -> bytes | None:
    if path is None:
        return None
    return os.fsencode(path)


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), f"unshare({flags:#x})")


def setns(fd: int, nstype: int = 0) -> None:
    """Join namespaces; fd may be a pidfd, then nstype selects several at once (Linux 5.8+)."""
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), f"setns({fd}, {nstype:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(
        _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
        f"mount({source!r}, {target!r}, {fstype!r}, {flags:#x}, {data!r})",
    )


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), f"umount2({target!r})")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(_NR["pivot_root"], _b(new_root), _b(put_old)), f"pivot_root({new_root!r})")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), f"sethostname({name!r})")


def open_tree(path: str, flags: int) -> int:
    return _check(
        _libc.syscall(_NR["open_tree"], ctypes.c_int(-100), _b(path), ctypes.c_uint(flags)),
        f"open_tree({path!r})",
    )


def mount_setattr(fd: int, attr_set: int = 0, attr_clr: int = 0, userns_fd: int = 0, recursive: bool = True,
                  propagation: int = 0) -> None:
    attr = _MountAttr(attr_set, attr_clr, propagation, userns_fd)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    _check(
        _libc.syscall(_NR["mount_setattr"], ctypes.c_int(fd), b"", ctypes.c_uint(flags),
                      ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))),
        "mount_setattr",
    )


def move_mount(from_fd: int, to_path: str = "", to_fd: int = -100) -> None:
    """Attach the detached mount from_fd at to_path, or onto what to_fd refers to."""
    flags = MOVE_MOUNT_F_EMPTY_PATH | (MOVE_MOUNT_T_EMPTY_PATH if not to_path else 0)
    _check(
        _libc.syscall(_NR["move_mount"], ctypes.c_int(from_fd), b"", ctypes.c_int(to_fd), _b(to_path),
                      ctypes.c_uint(flags)),
        f"move_mount(-> {to_path or to_fd!r})",
    )


def private_clone(source: str, recursive: bool = True, userns_fd: int = 0, attr_set: int = 0,
                  nofollow: bool = False) -> int:
    """A detached copy of the mount at source (and those below it, if recursive), private: a
    clone of a shared mount would stay in its peer group, and mounts made on it later would
    show on the host. With userns_fd, shown through that user namespace's id mapping; attr_set
    adds MOUNT_ATTR_* flags (e.g. MOUNT_ATTR_NODEV) to every mount of the copy. nofollow: a
    symlink as the last component is refused (ELOOP) instead of followed."""
    fd = open_tree(source, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (AT_RECURSIVE if recursive else 0)
                   | (AT_SYMLINK_NOFOLLOW if nofollow else 0))
    try:
        mount_setattr(fd, attr_set=attr_set | (MOUNT_ATTR_IDMAP if userns_fd else 0), userns_fd=userns_fd,
                      recursive=recursive, propagation=MS_PRIVATE)
    except BaseException:
        os.close(fd)
        raise
    return fd
