"""openat2(2) with RESOLVE_IN_ROOT: resolve a path as if root were "/", symlinks included.

Used to build a container's mounts inside a root filesystem the tenant controls, so a
symlink planted in the guest can never send a mount or a write outside it.
"""

from __future__ import annotations

import ctypes
import os

from ctd.linux.syscalls import _check, _libc

_NR_OPENAT2 = 437  # same number on every architecture (asm-generic)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def open_in_root(root_fd: int, path: str, flags: int, mode: int = 0) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    return _check(
        _libc.syscall(_NR_OPENAT2, ctypes.c_int(root_fd), os.fsencode(path.lstrip("/") or "."),
                      ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))),
        f"openat2({path!r})",
    )
