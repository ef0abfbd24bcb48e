"""Which backend runs this host: `detect_manager` reads /proc/self/cgroup and the mount table and
returns a V1Manager or a V2Manager for ctd's base below the current process' cgroup.

It lives apart from base.py so that base.py (the interface) needs neither backend and the
backends import base.py without an import circle.
"""
from __future__ import annotations

from .base import CgroupManager
from .discovery import discover
from .errors import CgroupError
from .fs import CgroupFS
from .v1 import V1Manager
from .v2 import V2Manager


def detect_manager(base_name: str = "ctd", *, proc_self: str = "/proc/self",
                   fs: CgroupFS | None = None, version: int | None = None) -> CgroupManager:
    """Pick the backend for this host: v1 when any v1 controller is mounted, else v2.

    version forces one (1 or 2); a host without it raises CgroupError saying what is missing."""
    hierarchies = discover(proc_self)
    if not hierarchies:
        raise CgroupError("no cgroup hierarchy holds this process "
                          "(is /sys/fs/cgroup mounted?)")
    has_v1 = any(h.controllers for h in hierarchies)
    unified = [h for h in hierarchies if h.is_unified]
    if version is None:
        version = 1 if has_v1 else 2
    if version == 1:
        if not has_v1:
            raise CgroupError("no cgroup v1 controller is mounted")
        return V1Manager(base_name, hierarchies, fs=fs)
    if version == 2:
        if not unified:
            raise CgroupError("no cgroup2 filesystem holds this process")
        return V2Manager(base_name, unified[0], fs=fs)
    raise CgroupError(f"cgroup version {version}: use 1 or 2")
