"""Find the cgroup hierarchies and our own place in each from /proc/self."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import CgroupError

UNIFIED = "unified"   # key of the cgroup2 hierarchy (pure v2, or hybrid's extra tree)
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Hierarchy:
    """One mounted hierarchy and the directory of our own cgroup in it."""

    key: str                         # "memory", "cpu,cpuacct", "name=systemd" or UNIFIED
    controllers: frozenset[str]      # v1 controllers bound to it; empty for named/unified
    mountpoint: str
    own_path: str                    # our cgroup path, as /proc/self/cgroup says
    own_dir: str                     # mountpoint + own_path below the mount's root
    read_only: bool

    @property
    def is_unified(self) -> bool:
        return self.key == UNIFIED


@dataclass(frozen=True)
class _Mount:
    root: str
    mountpoint: str
    fstype: str
    super_opts: frozenset[str]
    read_only: bool


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def _parse_mountinfo(text: str) -> list[_Mount]:
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf, rf = left.split(), right.split()
        if len(lf) < 6 or len(rf) < 3 or rf[0] not in ("cgroup", "cgroup2"):
            continue
        mount_opts = set(lf[5].split(","))
        mounts.append(_Mount(
            root=_unescape(lf[3]), mountpoint=_unescape(lf[4]), fstype=rf[0],
            super_opts=frozenset(rf[2].split(",")), read_only="ro" in mount_opts,
        ))
    return mounts


def _parse_mounts(text: str) -> list[_Mount]:
    """/proc/self/mounts has no mount root: assume '/' (true outside bind mounts)."""
    mounts = []
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 4 and f[2] in ("cgroup", "cgroup2"):
            opts = frozenset(f[3].split(","))
            mounts.append(_Mount("/", _unescape(f[1]), f[2], opts, "ro" in opts))
    return mounts


def _below(path: str, root: str) -> str | None:
    """path relative to root ('' if equal), or None if path is not inside root."""
    if root == "/":
        return path.lstrip("/")
    if path == root:
        return ""
    if path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")) + 1:]
    return None


def discover(proc_self: str = "/proc/self") -> list[Hierarchy]:
    """Every cgroup hierarchy that is mounted and holds our process, first mount wins."""
    try:
        with open(os.path.join(proc_self, "cgroup"), encoding="utf-8") as f:
            cgroup_text = f.read()
    except OSError as e:
        raise CgroupError(f"cannot read {proc_self}/cgroup: {e.strerror}") from e
    try:
        with open(os.path.join(proc_self, "mountinfo"), encoding="utf-8") as f:
            mounts = _parse_mountinfo(f.read())
    except FileNotFoundError:
        with open(os.path.join(proc_self, "mounts"), encoding="utf-8") as f:
            mounts = _parse_mounts(f.read())

    found: list[Hierarchy] = []
    wanted: frozenset[str]
    for line in cgroup_text.splitlines():
        hid, _, rest = line.partition(":")
        names, _, path = rest.partition(":")
        if not hid or not path.startswith("/"):
            continue
        if hid == "0" and names == "":
            key, wanted, fstype = UNIFIED, frozenset(), "cgroup2"
        else:
            key, wanted, fstype = names, frozenset(names.split(",")), "cgroup"
        for m in mounts:
            if m.fstype != fstype or not wanted <= m.super_opts:
                continue
            rel = _below(path, m.root)
            if rel is None:
                continue
            found.append(Hierarchy(
                key=key,
                controllers=frozenset(c for c in wanted if not c.startswith("name=")),
                mountpoint=m.mountpoint, own_path=path,
                own_dir=os.path.join(m.mountpoint, rel) if rel else m.mountpoint,
                read_only=m.read_only,
            ))
            break
    return found
