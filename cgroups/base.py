"""What both backends share: the manager and group interfaces and their common logic."""
from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import ClassVar

from .beancounters import build_beancounters
from .errors import CgroupError
from .fs import CgroupFS
from .model import Beancounter, DeviceRule, Resources, Usage

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:+-]{0,127}$")
_POLL = 0.02


def check_name(name: str, what: str = "group name") -> str:
    if not _NAME_RE.match(name) or name.startswith("cgroup."):
        raise CgroupError(
            f"invalid {what} {name!r}: use letters, digits and _.@:+- (not first), at most 128"
        )
    return name


class CgroupManager(ABC):
    """ctd's part of the cgroup tree: <own cgroup>/<base_name> in each hierarchy."""

    version: ClassVar[int]

    def __init__(self, base_name: str, fs: CgroupFS | None = None) -> None:
        self.base_name = check_name(base_name, "base name")
        self.fs = fs or CgroupFS()
        # maxheld for counters the kernel has no peak file for; survives new group handles.
        self._peaks: dict[tuple[str, str], int] = {}

    @property
    @abstractmethod
    def controllers(self) -> frozenset[str]:
        """Controllers ctd can use below its base."""

    @abstractmethod
    def base_dirs(self) -> dict[str, str]:
        """Hierarchy key -> absolute directory of the base cgroup."""

    @abstractmethod
    def host_cpus(self) -> list[int]:
        """CPUs the base cgroup may use."""

    @abstractmethod
    def ensure_base(self) -> None:
        """Create the base cgroup(s) and prepare them for children (idempotent)."""

    @abstractmethod
    def group(self, name: str, fixed: dict[str, str] | None = None) -> CgroupGroup:
        """A handle on <base>/<name>; no side effect. fixed: hierarchy key -> the group's name
        there, where it is not name (see CgroupGroup.rename)."""

    @abstractmethod
    def io_weight_file(self) -> str | None:
        """The io weight file a group gets (blkio.bfq.weight, io.weight …), looked up now in
        ctd's base cgroup, or None: this host cannot weight io (no bfq scheduler loaded, no
        iocost, io controller off). Weight files come and go with the scheduler: never cached."""

    def renames_in(self, key: str) -> bool:
        """Whether a group's directory in this hierarchy can be renamed (cgroup v1 only)."""
        return False

    def guest_mounts(self) -> list[tuple[str, str, str]]:
        """(path below /sys/fs/cgroup, fstype, mount options) a guest that runs its own cgroup
        manager (systemd) mounts inside its cgroup namespace: the same layout as the host's.
        A path of "" means /sys/fs/cgroup itself (a pure v2 host)."""
        return []

    def protect_host(self, pids_max: int, memory_max: int | None) -> None:
        """Limits on the base itself, so all containers together leave the host a reserve
        (a fork bomb or a memory hog in a container without limits of its own)."""
        self.ensure_base()
        base = self.group("base-limits")
        base.name = ""  # the base itself: dirs() joins "" onto the base directories
        base.apply(Resources(pids_max=pids_max, memory_max=memory_max))

    def list_groups(self) -> list[str]:
        names: set[str] = set()
        for d in self.base_dirs().values():
            if self.fs.isdir(d):
                names.update(self.fs.subdirs(d))
        return sorted(names)

    def remove_base(self, timeout: float = 5.0) -> None:
        """rmdir the (empty) base everywhere; refuses while groups remain."""
        left = self.list_groups()
        if left:
            raise CgroupError(f"cannot remove base {self.base_name!r}: groups remain: {left}")
        deadline = time.monotonic() + timeout
        for d in self.base_dirs().values():
            rmdir_tree(self.fs, d, deadline)

    def _track_peak(self, group: str, key: str, value: int | None) -> int | None:
        if value is None:
            return None
        peak = max(value, self._peaks.get((group, key), value))
        self._peaks[(group, key)] = peak
        return peak

    def _forget(self, group: str) -> None:
        for k in [k for k in self._peaks if k[0] == group]:
            del self._peaks[k]


class CgroupGroup(ABC):
    """One container's cgroup(s)."""

    def __init__(self, manager: CgroupManager, name: str, fixed: dict[str, str] | None = None) -> None:
        self.manager = manager
        self.name = check_name(name)
        self.fixed = {k: check_name(v) for k, v in (fixed or {}).items()}
        self.fs = manager.fs

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} v{self.manager.version}>"

    def dirs(self) -> dict[str, str]:
        """Hierarchy key -> absolute directory of this group."""
        return {k: os.path.join(d, self.fixed.get(k, self.name)) for k, d in self.manager.base_dirs().items()}

    def rename(self, new_name: str) -> CgroupGroup:
        """The group under a new name, with its processes and limits: made ahead under a name
        of its own, a group gets its owner's name without moving a process (a move waits for an
        RCU grace period, milliseconds). Hierarchies that cannot rename (cgroup2) keep the old
        directory: the new handle's `fixed` says which; keep it to find the group again."""
        check_name(new_name)
        done: list[tuple[str, str]] = []
        fixed: dict[str, str] = {}
        try:
            for key, d in self.dirs().items():
                if not self.manager.renames_in(key):
                    fixed[key] = os.path.basename(d)
                    continue
                target = os.path.join(os.path.dirname(d), new_name)
                self.fs.rename(d, target)
                done.append((target, d))
        except OSError as exc:
            for target, d in reversed(done):
                try:
                    self.fs.rename(target, d)
                except OSError:
                    pass
            raise CgroupError(f"renaming cgroup {self.name!r} to {new_name!r}: {exc.strerror or exc}") from None
        return self.manager.group(new_name, fixed)

    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.dirs().values()]

    def exists(self) -> bool:
        # Any hierarchy counts, so a half-created group still gets destroyed.
        return any(self.fs.isdir(d) for d in self.dirs().values())

    @abstractmethod
    def create(self) -> None: ...

    @abstractmethod
    def apply(self, res: Resources) -> None: ...

    @abstractmethod
    def usage(self) -> Usage: ...

    @abstractmethod
    def restrict_devices(self, allow: Sequence[DeviceRule], seal: bool = False) -> None:
        """Deny every device to the group's processes except those `allow` lists (open and
        mknod; an fd already open is not checked again). Call it on a new group, before it
        has sub-cgroups; CgroupError if this host cannot confine devices. seal: the list must
        hold against root inside with CAP_SYS_ADMIN over the host (a privileged container)."""

    @abstractmethod
    def read_limits(self) -> Resources:
        """The limits the kernel holds now (UNLIMITED where none)."""

    @abstractmethod
    def _set_frozen(self, frozen: bool) -> bool:
        """Freeze/thaw; False when the host cannot freeze."""

    @abstractmethod
    def freezer_state(self) -> str | None:
        """What the kernel says now: "thawed", "freezing" (asked, not every task stopped yet)
        or "frozen"; None when the group or the host has no freezer."""

    @abstractmethod
    def _kill_atomic(self) -> bool:
        """SIGKILL the whole subtree in one kernel call (cgroup.kill); False if unsupported."""

    def _require(self) -> dict[str, str]:
        dirs = self.dirs()
        if not all(self.fs.isdir(d) for d in dirs.values()):
            raise CgroupError(f"cgroup {self.name!r} does not exist (call create() first)")
        return dirs

    # Files of a cgroup its delegate must own to run a cgroup manager in it (the same list
    # systemd and LXC hand over); the limits stay root's.
    DELEGATED_FILES = ("cgroup.procs", "tasks", "cgroup.subtree_control", "cgroup.threads", "cgroup.clone_children")

    def delegate(self, uid: int, gid: int) -> None:
        """Give the group to uid:gid (a container's root), so it can make sub-cgroups."""
        for d in self._require().values():
            os.chown(d, uid, gid)
            for name in self.DELEGATED_FILES:
                path = os.path.join(d, name)
                if os.path.exists(path):
                    os.chown(path, uid, gid)

    def attach(self, pid: int) -> None:
        for f in self.procs_files():
            self.fs.write_checked(f, str(pid), f"attach pid {pid}")

    def _walk(self) -> Iterator[str]:
        """Every directory of the group in every hierarchy, nested ones included."""
        stack = [d for d in self.dirs().values() if self.fs.isdir(d)]
        while stack:
            d = stack.pop()
            yield d
            try:
                stack.extend(os.path.join(d, s) for s in self.fs.subdirs(d))
            except FileNotFoundError:
                pass

    def pids(self) -> set[int]:
        """Processes in the group or any cgroup the container made below it."""
        found: set[int] = set()
        for d in self._walk():
            text = self.fs.read_opt(os.path.join(d, "cgroup.procs")) or ""
            found.update(int(p) for p in text.split())
        return found

    def kill_all(self, sig: int = signal.SIGKILL, timeout: float = 5.0) -> int:
        """Signal every process in the group; for SIGKILL also wait (up to timeout) until
        the group is empty. Returns how many processes were seen."""
        seen = self.pids()
        if not seen:
            return 0
        if sig == signal.SIGKILL and self._kill_atomic():
            self._thaw_subtree()   # a frozen task acts on its SIGKILL only once thawed
        else:
            # Frozen, nothing can fork between reading the list and signalling it.
            frozen = sig == signal.SIGKILL and self._set_frozen(True)
            try:
                _signal_all(self.fs, seen, sig)
            finally:
                if frozen:
                    self._set_frozen(False)
        if sig != signal.SIGKILL:
            return len(seen)
        deadline = time.monotonic() + timeout
        while (left := self.pids()) and time.monotonic() < deadline:
            seen |= left
            _signal_all(self.fs, left, sig)
            self._thaw_subtree()
            time.sleep(_POLL)
        return len(seen)

    def _thaw_subtree(self) -> None:
        """Thaw the group and every cgroup below it: one its tenant froze (a privileged root, or a
        delegated sub-cgroup) would otherwise keep killed tasks alive and the group busy."""
        for d in self._walk():
            for name, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
                path = os.path.join(d, name)
                if self.fs.exists(path):
                    with contextlib.suppress(OSError, CgroupError):
                        self.fs.write_checked(path, value, "thaw")

    def freeze(self) -> None:
        """Stop every process in the group (v1 freezer / v2 cgroup.freeze)."""
        self._require()
        if not self._set_frozen(True):
            raise CgroupError("freeze: this host has no cgroup freezer")

    def wait_frozen(self, timeout: float) -> bool:
        """True once the kernel reports every task of the group frozen (within timeout)."""
        deadline = time.monotonic() + timeout
        while (state := self.freezer_state()) != "frozen":
            if state is None or time.monotonic() > deadline:
                return False
            time.sleep(_POLL)
        return True

    def thaw(self) -> None:
        self._require()
        if not self._set_frozen(False):
            raise CgroupError("thaw: this host has no cgroup freezer")

    def destroy(self, timeout: float = 5.0) -> None:
        """rmdir everywhere, nested cgroups first; EBUSY is retried until timeout."""
        deadline = time.monotonic() + timeout
        for d in self.dirs().values():
            rmdir_tree(self.fs, d, deadline)
        self.manager._forget(self.name)

    def beancounters(self, res: Resources | None = None) -> list[Beancounter]:
        """OpenVZ's /proc/user_beancounters rows; barrier/limit from `res` where it sets
        them (what the user asked for), else what the kernel holds."""
        limits = self.read_limits()
        if res is not None:
            limits = limits.merged(res)
        return build_beancounters(self.usage(), limits)


def make_dirs(fs: CgroupFS, dirs: list[str]) -> list[str]:
    """mkdir each that is missing; returns the ones made. Undoes them on failure."""
    made: list[str] = []
    try:
        for d in dirs:
            try:
                fs.mkdir(d)
                made.append(d)
            except FileExistsError:
                if not fs.isdir(d):
                    raise CgroupError(f"cannot create cgroup {d}: a file has that name") from None
            except OSError as e:
                raise CgroupError(f"cannot create cgroup {d}: {e.strerror}",
                                  errno=e.errno, path=d) from e
    except CgroupError:
        undo_dirs(fs, made)
        raise
    return made


def undo_dirs(fs: CgroupFS, made: list[str]) -> None:
    for d in reversed(made):
        try:
            fs.rmdir(d)
        except OSError:
            pass


def _signal_all(fs: CgroupFS, pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            fs.kill(pid, sig)
        except ProcessLookupError:
            pass


def rmdir_tree(fs: CgroupFS, top: str, deadline: float) -> None:
    """Remove a cgroup directory and the cgroups below it; gone already is fine."""
    try:
        children = fs.subdirs(top)
    except FileNotFoundError:
        return
    for c in children:
        rmdir_tree(fs, os.path.join(top, c), deadline)
    while True:
        try:
            fs.rmdir(top)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                left = (fs.read_opt(os.path.join(top, "cgroup.procs")) or "").split()
                raise CgroupError(
                    f"cannot remove cgroup {top}: {e.strerror}"
                    + (f" (processes left: {' '.join(left)})" if left else ""),
                    errno=e.errno, path=top,
                ) from e
            time.sleep(_POLL)
