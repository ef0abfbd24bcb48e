"""Host directories (or files) bound into a container: `--mount /srv/data:/data[:ro][,idmap]`
(Proxmox's bind mount points `mpN: /host/dir,mp=/data`, LXC's `lxc.mount.entry`).

How ids look through the bind (an unprivileged container; its root is host uid BASE):
- default (shifted, as Proxmox's unprivileged containers): a plain bind. Inside, host uid BASE+k
  is k and every other host uid is nobody (65534); what the container writes is owned by
  BASE+k on the host. The admin gives the container a directory by `chown BASE:BASE`.
- `idmap`: an idmapped mount (mount_setattr MOUNT_ATTR_IDMAP) whose map is "host k is k inside"
  for k in 1..65535: a host user's files (uid 1000) are uid 1000 inside, for sharing a
  directory with a host user. Host uid 0 is NOT mapped: root's files show as nobody, and
  nothing inside can create a file owned by host root (EOVERFLOW) — otherwise container root
  could plant a setuid-root program in a directory the host uses.
- a privileged container (no user namespace) gets a plain bind; `idmap` is refused there.
Every bind is nosuid and nodev inside; `ro` makes it read-only.

Abuse considered (the source is a host path chosen by an admin; a tenant of the remote API may not
set mounts at all: ctd/remote/policy.py):
- a symlink as the source, or in its path, swapped in later: the path must be canonical
  (realpath equals it) at create/set and again at every start, and the spawner opens it with
  AT_SYMLINK_NOFOLLOW; the state dir (other containers' roots, ctd's database), any directory
  holding it, / and the kernel's /proc, /sys, /dev are refused as sources;
- the target is made inside the container's root without following symlinks out of it
  (openat2 RESOLVE_IN_ROOT); /, /proc, /sys, /dev and below are refused as targets;
- backups never carry mounts (host paths are not the backup's to choose): a restore has none;
  a clone keeps its source's (it is the admin's copy of the same VPS).

Contract: check(value, state_dir, privileged) -> list[HostMount] (400 naming the entry);
recheck(m, state_dir) at start; from_stored/to_stored for the state column.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctd.errors import InvalidRequest

MAX_MOUNTS = 16
KERNEL_TREES = ("/proc", "/sys", "/dev")


@dataclass(frozen=True)
class HostMount:
    source: str
    target: str
    readonly: bool = False
    idmap: bool = False

    def to_stored(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "readonly": self.readonly, "idmap": self.idmap}

    @property
    def text(self) -> str:
        opts = [o for o, on in (("ro", self.readonly), ("idmap", self.idmap)) if on]
        return f"{self.source}:{self.target}" + (f":{','.join(opts)}" if opts else "")


def from_stored(raw: list[dict[str, Any]]) -> list[HostMount]:
    return [HostMount(str(m["source"]), str(m["target"]), bool(m.get("readonly")), bool(m.get("idmap")))
            for m in raw]


def _under(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def _canonical(path: object, what: str) -> str:
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path or len(path) > 4096:
        raise InvalidRequest(f"{what} must be an absolute path, e.g. /srv/data")
    if os.path.normpath(path) != path or path.startswith("//"):
        raise InvalidRequest(f"{what} {path!r} is not in canonical form (no '..', '.', '//' or trailing '/'); "
                             f"give {os.path.normpath(path)!r}")
    return path


def _parse(item: object) -> HostMount:
    """An entry: "SRC:DST[:OPTS]" (OPTS: ro, idmap, comma-separated) or {"source", "target", ...}."""
    if isinstance(item, str):
        parts = item.split(":")
        if len(parts) not in (2, 3):
            raise InvalidRequest(f"mount {item!r}: use SOURCE:TARGET[:ro][,idmap], e.g. /srv/data:/data:ro")
        opts = [o for o in parts[2].split(",") if o] if len(parts) == 3 else []
        unknown = sorted(set(opts) - {"ro", "rw", "idmap"})
        if unknown:
            raise InvalidRequest(f"mount {item!r}: unknown option(s) {', '.join(unknown)}; known: ro, rw, idmap")
        return HostMount(parts[0], parts[1], "ro" in opts, "idmap" in opts)
    if isinstance(item, dict) and set(item) <= {"source", "target", "readonly", "idmap"}:
        return HostMount(item.get("source"), item.get("target"),  # type: ignore[arg-type]  # checked next
                         item.get("readonly") is True, item.get("idmap") is True)
    raise InvalidRequest("each mount is \"SOURCE:TARGET[:ro][,idmap]\" or "
                         "{\"source\", \"target\", \"readonly\", \"idmap\"}")


def check_source(source: str, state_dir: Path) -> None:
    """The source as it is now: canonical, no symlink anywhere in it, a directory or regular file,
    and nothing of ctd's or the kernel's."""
    _canonical(source, "mount source")
    state = os.path.realpath(state_dir)
    if source == "/" or any(_under(source, t) for t in KERNEL_TREES):
        raise InvalidRequest(f"mount source {source!r}: the host's /, /proc, /sys and /dev are not bound "
                             "into a container")
    if _under(source, state) or _under(state, source):
        raise InvalidRequest(f"mount source {source!r} holds or is inside ctd's state directory {state} "
                             "(other instances' roots and ctd's database): choose a directory outside it")
    if os.path.realpath(source) != source:
        raise InvalidRequest(f"mount source {source!r} is or goes through a symbolic link "
                             f"(it resolves to {os.path.realpath(source)!r}): give the real path")
    try:
        st = os.lstat(source)
    except FileNotFoundError:
        raise InvalidRequest(f"mount source {source!r} does not exist on the host: create it first") from None
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise InvalidRequest(f"mount source {source!r} is neither a directory nor a regular file")


def check(value: object, state_dir: Path, privileged: bool, keep: list[HostMount] | None = None) -> list[HostMount]:
    """A create's (or a set's added) mounts, checked whole, after `keep` (the ones a set keeps)."""
    if not isinstance(value, list):
        raise InvalidRequest("mounts must be a list of \"SOURCE:TARGET[:ro][,idmap]\"")
    mounts = list(keep or [])
    for item in value:
        m = _parse(item)
        check_source(m.source, state_dir)
        target = _canonical(m.target, "mount target")
        if target == "/" or any(_under(target, t) for t in KERNEL_TREES):
            raise InvalidRequest(f"mount target {target!r}: not /, nor in /proc, /sys or /dev (ctd makes those)")
        if m.idmap and privileged:
            raise InvalidRequest(f"mount {m.text}: idmap needs an unprivileged container (a privileged one "
                                 "shares the host's ids: leave idmap out)")
        if any(o.target == target for o in mounts):
            raise InvalidRequest(f"mount target {target!r} is given twice: one mount per target")
        mounts.append(m)
    if len(mounts) > MAX_MOUNTS:
        raise InvalidRequest(f"at most {MAX_MOUNTS} mounts per container")
    return mounts

