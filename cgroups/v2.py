"""cgroup v2: one unified hierarchy; controllers are switched on per subtree."""
from __future__ import annotations

import errno
import os
import time
from collections.abc import Sequence
from typing import Final

from .base import CgroupGroup, CgroupManager, make_dirs
from .discovery import UNIFIED, Hierarchy
from .errors import CgroupError
from .fs import CgroupFS
from .model import CPU_PERIOD_US, DeviceRule, IoLimit, Resources, Usage
from .units import UNLIMITED, parse_cpulist

WANTED: Final = ("cpuset", "cpu", "io", "memory", "pids")
# bfq reads only its own file; io.weight is iocost's (acting where io.cost.qos enables it).
_WEIGHT_FILES: Final = ("io.bfq.weight", "io.weight")
_IO_KINDS: Final = ("rbps", "wbps", "riops", "wiops")
_FREEZE_WAIT: Final = 1.0

Plan = list[tuple[str, str, str]]


def _v2_value(v: int) -> str:
    return "max" if v == UNLIMITED else str(v)


def _v2_limit(text: str | None) -> int | None:
    if text is None:
        return None
    word = text.split()[0]
    return UNLIMITED if word == "max" else int(word)


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        parts = os.uname().release.split(".")
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (ValueError, IndexError):
        return False


class V2Manager(CgroupManager):
    version = 2

    def guest_mounts(self) -> list[tuple[str, str, str]]:
        return [("", "cgroup2", "")]

    def __init__(self, base_name: str, hierarchy: Hierarchy, fs: CgroupFS | None = None,
                 *, move_self: bool = True) -> None:
        super().__init__(base_name, fs)
        self.hierarchy = hierarchy
        self.own_dir = hierarchy.own_dir
        if os.path.basename(self.own_dir) == f"{base_name}-self":
            # We moved ourselves into the leaf earlier (see below): our cgroup is its parent.
            self.own_dir = os.path.dirname(self.own_dir)
        self.base_dir = os.path.join(self.own_dir, base_name)
        # If our own cgroup holds processes (a systemd service with Delegate=yes), v2's
        # "no internal processes" rule forbids enabling controllers in it until we move
        # ourselves into a leaf; systemd's delegation docs prescribe exactly that.
        self.move_self = move_self
        self.self_dir = os.path.join(self.own_dir, f"{base_name}-self")

    def _words(self, path: str) -> set[str]:
        return set((self.fs.read_opt(path) or "").split())

    @property
    def controllers(self) -> frozenset[str]:
        if self.fs.isdir(self.base_dir):
            have = self._words(os.path.join(self.base_dir, "cgroup.subtree_control"))
        else:
            have = self._words(os.path.join(self.own_dir, "cgroup.controllers"))
        found = set(WANTED) & have
        if self._can_freeze():
            found.add("freezer")
        return frozenset(found)

    def _can_freeze(self) -> bool:
        # cgroup.freeze exists in every non-root cgroup since 5.2; the root has none.
        for d in (self.base_dir, self.own_dir):
            if self.fs.exists(os.path.join(d, "cgroup.freeze")):
                return True
        return self.own_dir == self.hierarchy.mountpoint and _kernel_at_least(5, 2)

    def base_dirs(self) -> dict[str, str]:
        return {UNIFIED: self.base_dir}

    def host_cpus(self) -> list[int]:
        for d in (self.base_dir, self.own_dir):
            text = self.fs.read_opt(os.path.join(d, "cpuset.cpus.effective"))
            if text and text.strip():
                return parse_cpulist(text)
        return sorted(os.sched_getaffinity(0))

    def ensure_base(self) -> None:
        make_dirs(self.fs, [self.base_dir])
        available = self._words(os.path.join(self.own_dir, "cgroup.controllers"))
        self._enable(self.own_dir, set(WANTED) & available, own=True)
        passed = self._words(os.path.join(self.base_dir, "cgroup.controllers"))
        self._enable(self.base_dir, set(WANTED) & passed, own=False)

    def io_weight_file(self) -> str | None:
        # Weight files are not on the root cgroup: look in our base (or own) cgroup.
        for d in (self.base_dir, self.own_dir):
            for name in _WEIGHT_FILES:
                if self.fs.exists(os.path.join(d, name)):
                    return name
        return None

    def _enable(self, d: str, names: set[str], *, own: bool) -> None:
        control = os.path.join(d, "cgroup.subtree_control")
        missing = sorted(names - self._words(control))
        if not missing:
            return
        data = " ".join(f"+{n}" for n in missing)
        try:
            self.fs.write(control, data)
            return
        except OSError as e:
            if e.errno != errno.EBUSY or not own or not self.move_self:
                return self._enable_each(control, missing)
        # EBUSY on our own cgroup: processes live in it. Move ourselves out, try again.
        make_dirs(self.fs, [self.self_dir])
        self.fs.write_checked(os.path.join(self.self_dir, "cgroup.procs"), str(self.fs.getpid()),
                              "move ctd into its own leaf cgroup")
        try:
            self.fs.write(control, data)
        except OSError as e:
            if e.errno != errno.EBUSY:
                return self._enable_each(control, missing)
            others = (self.fs.read_opt(os.path.join(d, "cgroup.procs")) or "").split()
            raise CgroupError(
                f"cannot enable {data} in {d}: other processes live in it ({' '.join(others)}); "
                "run ctd in a cgroup of its own (systemd: Delegate=yes)",
                errno=e.errno, path=control) from e

    def _enable_each(self, control: str, names: list[str]) -> None:
        """One at a time, so one refused controller (cpu with RT tasks …) spares the rest;
        what stays off shows in `controllers` and apply() refuses its settings."""
        for n in names:
            try:
                self.fs.write(control, f"+{n}")
            except OSError:
                pass

    def group(self, name: str, fixed: dict[str, str] | None = None) -> V2Group:
        return V2Group(self, name, fixed)


class V2Group(CgroupGroup):
    manager: V2Manager

    @property
    def dir(self) -> str:
        return os.path.join(self.manager.base_dir, self.name)

    def _f(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _need(self, name: str, what: str) -> str:
        path = self._f(name)
        if not self.fs.exists(path):
            controller = name.split(".")[0]
            raise CgroupError(f"{what}: no {name} in {self.dir} (the {controller} controller "
                              "is not enabled for ctd's cgroups, or this kernel lacks it)")
        return path

    def create(self) -> None:
        self.manager.ensure_base()
        make_dirs(self.fs, [self.dir])

    def restrict_devices(self, allow: Sequence[DeviceRule], seal: bool = False) -> None:
        """A BPF device program on the group (cgroup v2 has no devices.allow); it judges the
        group's sub-cgroups too. Sealed as it is: detaching it takes bpf(), which containers
        are denied (seccomp), privileged or not."""
        d = self._require()[UNIFIED]
        try:
            self.fs.attach_device_filter(d, allow)
        except OSError as e:
            hint = (" (this kernel lacks CONFIG_CGROUP_BPF: ctd cannot confine devices on it)"
                    if e.errno == errno.EINVAL else "")
            raise CgroupError(f"device allow-list: attaching its BPF program to {d}: "
                              f"{e.strerror or e}{hint}", errno=e.errno, path=d) from e

    # --- limits -----------------------------------------------------------------------

    def apply(self, res: Resources) -> None:
        """Check every setting first, then write; a kernel refusal stops at that file."""
        self._require()
        plan: Plan = []
        if res.cpuset is not None:
            plan.append((self._need("cpuset.cpus", "cpuset"), res.cpuset, "cpuset"))
        if res.cpu_quota_pct is not None:
            quota = ("max" if res.cpu_quota_pct == UNLIMITED
                     else str(res.cpu_quota_pct * CPU_PERIOD_US // 100))
            plan.append((self._need("cpu.max", "cpu_quota_pct"), f"{quota} {CPU_PERIOD_US}",
                         "cpu_quota_pct"))
        if res.cpu_weight is not None:
            plan.append((self._need("cpu.weight", "cpu_weight"), str(res.cpu_weight),
                         "cpu_weight"))
        for field, name in (("memory_max", "memory.max"), ("memory_high", "memory.high"),
                            ("swap_max", "memory.swap.max"), ("pids_max", "pids.max")):
            value = getattr(res, field)
            if value is not None:
                plan.append((self._need(name, field), _v2_value(value), field))
        if res.io_weight is not None:
            plan.append((self._weight_file(), str(res.io_weight), "io_weight"))
        for lim in res.io_limits:
            what = f"io_limits[{lim.device}]"
            items = " ".join(f"{k}={_v2_value(v)}" for k, v in lim.items())
            if items:
                plan.append((self._need("io.max", what), f"{lim.device} {items}", what))
        for path, data, what in plan:
            self.fs.write_checked(path, data, what)

    def _weight_file(self) -> str:
        for name in _WEIGHT_FILES:
            if self.fs.exists(self._f(name)):
                return self._f(name)
        raise CgroupError("io_weight: neither io.weight nor io.bfq.weight exists (the io "
                          "controller is off, or no iocost/bfq scheduler on this kernel)")

    def read_limits(self) -> Resources:
        self._require()
        fs = self.fs
        cpuset = (fs.read_opt(self._f("cpuset.cpus")) or "").strip() or None
        pct = None
        if (cpu_max := fs.read_opt(self._f("cpu.max"))) is not None:
            quota, _, period = cpu_max.strip().partition(" ")
            pct = UNLIMITED if quota == "max" else max(1, round(int(quota) * 100 / int(period)))
        weight = None
        for name in _WEIGHT_FILES:
            text = fs.read_opt(self._f(name))
            if text:
                tokens = text.split()
                weight = int(tokens[1] if tokens[0] == "default" else tokens[0])
                break
        return Resources(
            cpuset=cpuset, cpu_quota_pct=pct, cpu_weight=fs.read_int(self._f("cpu.weight")),
            memory_max=_v2_limit(fs.read_opt(self._f("memory.max"))),
            memory_high=_v2_limit(fs.read_opt(self._f("memory.high"))),
            swap_max=_v2_limit(fs.read_opt(self._f("memory.swap.max"))),
            pids_max=_v2_limit(fs.read_opt(self._f("pids.max"))),
            io_weight=weight, io_limits=self._read_io_max(),
        )

    def _read_io_max(self) -> tuple[IoLimit, ...]:
        limits: list[IoLimit] = []
        for line in (self.fs.read_opt(self._f("io.max")) or "").splitlines():
            dev, *pairs = line.split()
            kinds: dict[str, int] = {}
            for pair in pairs:
                k, _, v = pair.partition("=")
                if k in _IO_KINDS and v != "max":   # like v1, where "no limit" has no rule
                    kinds[k] = int(v)
            limits.append(IoLimit(dev, **kinds))
        return tuple(limits)

    # --- counters ---------------------------------------------------------------------

    def usage(self) -> Usage:
        self._require()
        fs, peak, name = self.fs, self.manager._track_peak, self.name
        cpu = fs.read_keyed(self._f("cpu.stat")) or {}
        mem_events = fs.read_keyed(self._f("memory.events")) or {}
        swap_events = fs.read_keyed(self._f("memory.swap.events")) or {}
        pids_events = fs.read_keyed(self._f("pids.events")) or {}
        mem = fs.read_int(self._f("memory.current"))
        swap = fs.read_int(self._f("memory.swap.current"))
        pids = fs.read_int(self._f("pids.current"))
        io = self._io_stat()

        def peak_of(file: str, key: str, now: int | None) -> int | None:
            # memory.peak (5.19+), pids.peak (6.1+): else the highest value we have read.
            value = fs.read_int(self._f(file))
            return value if value is not None else peak(name, key, now)

        return Usage(
            cpu_seconds=cpu["usage_usec"] / 1e6 if "usage_usec" in cpu else None,
            cpu_throttled_seconds=(cpu["throttled_usec"] / 1e6
                                   if "throttled_usec" in cpu else None),
            cpu_nr_throttled=cpu.get("nr_throttled"),
            memory_current=mem,
            memory_peak=peak_of("memory.peak", "memory", mem),
            memory_failcnt=mem_events.get("max"),
            oom_kills=mem_events.get("oom_kill"),
            swap_current=swap,
            swap_peak=peak_of("memory.swap.peak", "swap", swap),
            swap_failcnt=swap_events.get("max"),
            pids_current=pids,
            pids_peak=peak_of("pids.peak", "pids", pids),
            pids_failcnt=pids_events.get("max"),
            io_read_bytes=io.get("rbytes"), io_write_bytes=io.get("wbytes"),
            io_read_ios=io.get("rios"), io_write_ios=io.get("wios"),
        )

    def _io_stat(self) -> dict[str, int]:
        text = self.fs.read_opt(self._f("io.stat"))
        if text is None:
            return {}
        total = {"rbytes": 0, "wbytes": 0, "rios": 0, "wios": 0}
        for line in text.splitlines():
            for pair in line.split()[1:]:
                k, _, v = pair.partition("=")
                if k in total and v.isdigit():
                    total[k] += int(v)
        return total

    # --- teardown helpers ----------------------------------------------------------------

    def _set_frozen(self, frozen: bool) -> bool:
        path = self._f("cgroup.freeze")
        if not self.fs.exists(path):
            return False
        self.fs.write_checked(path, "1" if frozen else "0", "freeze" if frozen else "thaw")
        deadline = time.monotonic() + _FREEZE_WAIT
        while frozen and time.monotonic() < deadline:
            if (self.fs.read_keyed(self._f("cgroup.events")) or {}).get("frozen") == 1:
                break
            time.sleep(0.01)
        return True

    def freezer_state(self) -> str | None:
        asked = self.fs.read_opt(self._f("cgroup.freeze"))
        if asked is None:
            return None
        if asked.strip() != "1":
            return "thawed"
        frozen = (self.fs.read_keyed(self._f("cgroup.events")) or {}).get("frozen") == 1
        return "frozen" if frozen else "freezing"

    def _kill_atomic(self) -> bool:
        path = self._f("cgroup.kill")   # 5.14+
        if not self.fs.exists(path):
            return False
        self.fs.write_checked(path, "1", "kill")
        return True

