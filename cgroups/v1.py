"""cgroup v1: one hierarchy per controller (or co-mounted group), as on this build host."""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Final

from .base import CgroupGroup, CgroupManager, make_dirs, undo_dirs
from .discovery import UNIFIED, Hierarchy
from .errors import CgroupError
from .fs import CgroupFS
from .model import CPU_PERIOD_US, DeviceRule, IoLimit, Resources, Usage, cpu_shares_to_weight, cpu_weight_to_shares
from .units import UNLIMITED, parse_cpulist

# The page counter's "no limit" reads back as 9223372036854771712, not -1.
_V1_UNLIMITED_FLOOR: Final = 1 << 62
_THROTTLE: Final = {
    "rbps": "blkio.throttle.read_bps_device",
    "wbps": "blkio.throttle.write_bps_device",
    "riops": "blkio.throttle.read_iops_device",
    "wiops": "blkio.throttle.write_iops_device",
}
_WEIGHT_FILES: Final = ("blkio.weight", "blkio.bfq.weight")
_FREEZE_WAIT: Final = 1.0
# A sealed group's processes live here in the devices hierarchy (see restrict_devices).
DEVICES_LEAF: Final = "payload"

Plan = list[tuple[str, str, str]]   # (file, data, setting name for the error message)


def _limit_from(text: int | None) -> int | None:
    if text is None:
        return None
    return UNLIMITED if text < 0 or text >= _V1_UNLIMITED_FLOOR else text


def _limit_or_unlimited(value: int | None) -> int:
    limit = _limit_from(value)
    return UNLIMITED if limit is None else limit


def _v1_value(v: int) -> str:
    return "-1" if v == UNLIMITED else str(v)


def _memsw_for(res: Resources, cur_mem: int, cur_memsw: int) -> int | None:
    """The memory+swap limit that gives `res`; None = leave memsw alone."""
    new_mem = res.memory_max if res.memory_max is not None else cur_mem
    if res.swap_max is not None:
        if res.swap_max == UNLIMITED:
            return UNLIMITED
        if new_mem == UNLIMITED:
            raise CgroupError("swap_max: cgroup v1 limits memory+swap as one counter, "
                              "so a swap limit needs a memory_max")
        return new_mem + res.swap_max
    if UNLIMITED in (cur_mem, cur_memsw):
        return None
    # swap_max not given: keep today's swap allowance on top of the new memory limit.
    return UNLIMITED if new_mem == UNLIMITED else new_mem + (cur_memsw - cur_mem)


def _sum(a: int | None, b: int | None) -> int | None:
    return None if a is None and b is None else (a or 0) + (b or 0)


class V1Manager(CgroupManager):
    version = 1

    def guest_mounts(self) -> list[tuple[str, str, str]]:
        mounts = []
        for h in self.hierarchies:
            path = os.path.basename(h.mountpoint.rstrip("/"))
            if h.is_unified:
                mounts.append((path, "cgroup2", ""))
            else:
                mounts.append((path, "cgroup", h.key))
        return mounts

    def __init__(self, base_name: str, hierarchies: list[Hierarchy],
                 fs: CgroupFS | None = None) -> None:
        super().__init__(base_name, fs)
        # Only hierarchies we may write below our own cgroup (a read-only name=systemd in a
        # container is skipped). Hybrid's cgroup2 tree is kept: processes must leave its
        # root too, or a container's cgroup namespace would see the host's whole tree.
        self.hierarchies = [h for h in hierarchies
                            if not h.read_only and self.fs.writable(h.own_dir)]

    def hierarchy(self, controller: str) -> Hierarchy | None:
        return next((h for h in self.hierarchies if controller in h.controllers), None)

    @property
    def controllers(self) -> frozenset[str]:
        return frozenset().union(*(h.controllers for h in self.hierarchies))

    def base_dirs(self) -> dict[str, str]:
        return {h.key: os.path.join(h.own_dir, self.base_name) for h in self.hierarchies}

    def host_cpus(self) -> list[int]:
        h = self.hierarchy("cpuset")
        if h is not None:
            for d in (os.path.join(h.own_dir, self.base_name), h.own_dir):
                text = self.fs.read_opt(os.path.join(d, "cpuset.effective_cpus"))
                if text and text.strip():
                    return parse_cpulist(text)
        return sorted(os.sched_getaffinity(0))

    def ensure_base(self) -> None:
        made = make_dirs(self.fs, list(self.base_dirs().values()))
        try:
            self._init_cpuset(self.base_name)
        except CgroupError:
            undo_dirs(self.fs, made)
            raise

    def _init_cpuset(self, rel: str) -> None:
        """v1 cpusets start with empty cpus/mems (no task can join): copy the parent's."""
        h = self.hierarchy("cpuset")
        if h is None:
            return
        d = os.path.join(h.own_dir, rel)
        parent = os.path.dirname(d)
        for f in ("cpuset.cpus", "cpuset.mems"):
            if (self.fs.read_opt(os.path.join(d, f)) or "").strip():
                continue
            value = (self.fs.read_opt(os.path.join(parent, f)) or "").strip()
            if not value:
                eff = "cpuset.effective_cpus" if f == "cpuset.cpus" else "cpuset.effective_mems"
                value = (self.fs.read_opt(os.path.join(parent, eff)) or "").strip()
            self.fs.write_checked(os.path.join(d, f), value, f"initialise {f}")

    def io_weight_file(self) -> str | None:
        h = self.hierarchy("blkio")
        if h is None:
            return None
        # bfq's weight is not on a hierarchy's root: look in our base (or own) cgroup.
        for d in (os.path.join(h.own_dir, self.base_name), h.own_dir):
            for name in _WEIGHT_FILES:
                if self.fs.exists(os.path.join(d, name)):
                    return name
        return None

    def group(self, name: str, fixed: dict[str, str] | None = None) -> V1Group:
        return V1Group(self, name, fixed)

    def renames_in(self, key: str) -> bool:
        return key != UNIFIED


class V1Group(CgroupGroup):
    manager: V1Manager

    def _file(self, controller: str, name: str) -> str | None:
        h = self.manager.hierarchy(controller)
        return None if h is None else os.path.join(self.dirs()[h.key], name)

    def _need(self, controller: str, name: str, what: str) -> str:
        """The control file for a setting, or a CgroupError saying why it cannot be set."""
        path = self._file(controller, name)
        if path is None:
            raise CgroupError(f"{what}: the {controller} controller is not mounted (cgroup v1)")
        if not self.fs.exists(path):
            raise CgroupError(f"{what}: this kernel has no {name} (cgroup v1)")
        return path

    def procs_files(self) -> list[str]:
        """cgroup.procs in each hierarchy; in the devices one, the leaf's of a sealed group."""
        h = self.manager.hierarchy("devices")
        files = []
        for key, d in self.dirs().items():
            if h is not None and key == h.key and self.fs.isdir(os.path.join(d, DEVICES_LEAF)):
                d = os.path.join(d, DEVICES_LEAF)
            files.append(os.path.join(d, "cgroup.procs"))
        return files

    def restrict_devices(self, allow: Sequence[DeviceRule], seal: bool = False) -> None:
        """devices.deny "a", then each rule to devices.allow (the kernel copies a new cgroup's
        list from its parent, so sub-cgroups the guest makes get no more). seal: processes
        then join a sub-cgroup of the group in the devices hierarchy. A v1 cgroup may take back
        anything its parent allows, and root of a privileged container (CAP_SYS_ADMIN over the
        host) can write its own cgroup's devices.allow; not its parent's, which its cgroup
        namespace hides."""
        d = os.path.dirname(self._need("devices", "devices.deny", "device allow-list"))
        self.fs.write_checked(os.path.join(d, "devices.deny"), "a", "device allow-list")
        for rule in allow:
            self.fs.write_checked(os.path.join(d, "devices.allow"), rule.v1_line(),
                                  f"device allow-list ({rule.v1_line()})")
        if seal:
            make_dirs(self.fs, [os.path.join(d, DEVICES_LEAF)])

    def create(self) -> None:
        self.manager.ensure_base()
        made = make_dirs(self.fs, list(self.dirs().values()))
        try:
            self.manager._init_cpuset(os.path.join(self.manager.base_name, self.name))
        except CgroupError:
            undo_dirs(self.fs, made)
            raise

    # --- limits -----------------------------------------------------------------------

    def apply(self, res: Resources) -> None:
        """Check every setting first, then write; a kernel refusal stops at that file."""
        self._require()
        plan: Plan = []
        if res.cpuset is not None:
            plan.append((self._need("cpuset", "cpuset.cpus", "cpuset"), res.cpuset, "cpuset"))
        if res.cpu_quota_pct is not None:
            period = self._need("cpu", "cpu.cfs_period_us", "cpu_quota_pct")
            quota = self._need("cpu", "cpu.cfs_quota_us", "cpu_quota_pct")
            value = (-1 if res.cpu_quota_pct == UNLIMITED
                     else res.cpu_quota_pct * CPU_PERIOD_US // 100)
            plan += [(period, str(CPU_PERIOD_US), "cpu_quota_pct"),
                     (quota, str(value), "cpu_quota_pct")]
        if res.cpu_weight is not None:
            plan.append((self._need("cpu", "cpu.shares", "cpu_weight"),
                         str(cpu_weight_to_shares(res.cpu_weight)), "cpu_weight"))
        self._plan_memory(res, plan)
        if res.memory_high is not None:
            plan.append((self._need("memory", "memory.soft_limit_in_bytes", "memory_high"),
                         _v1_value(res.memory_high), "memory_high"))
        if res.pids_max is not None:
            plan.append((self._need("pids", "pids.max", "pids_max"),
                         "max" if res.pids_max == UNLIMITED else str(res.pids_max), "pids_max"))
        if res.io_weight is not None:
            plan.append((self._weight_file(), str(res.io_weight), "io_weight"))
        for lim in res.io_limits:
            for kind, v in lim.items():
                what = f"io_limits[{lim.device}].{kind}"
                # v1 has no "max": writing 0 removes the rule.
                plan.append((self._need("blkio", _THROTTLE[kind], what),
                             f"{lim.device} {0 if v == UNLIMITED else v}", what))
        for path, data, what in plan:
            self.fs.write_checked(path, data, what)

    def _weight_file(self) -> str:
        for name in _WEIGHT_FILES:
            path = self._file("blkio", name)
            if path is not None and self.fs.exists(path):
                return path
        if self.manager.hierarchy("blkio") is None:
            raise CgroupError("io_weight: the blkio controller is not mounted (cgroup v1)")
        raise CgroupError("io_weight: neither blkio.weight nor blkio.bfq.weight exists; "
                          "weights need the bfq I/O scheduler (modprobe bfq; "
                          "echo bfq > /sys/block/DEV/queue/scheduler)")

    def _plan_memory(self, res: Resources, plan: Plan) -> None:
        """v1 keeps memory+swap in one counter (memsw) that must stay >= memory, so the
        two writes are ordered by whether the limits grow or shrink."""
        if res.memory_max is None and res.swap_max is None:
            return
        mem = self._need("memory", "memory.limit_in_bytes",
                         "memory_max" if res.memory_max is not None else "swap_max")
        memsw = self._file("memory", "memory.memsw.limit_in_bytes")
        if memsw is not None and not self.fs.exists(memsw):
            memsw = None
        if res.swap_max is not None and memsw is None:
            raise CgroupError("swap_max: this kernel does not account swap "
                              "(no memory.memsw.limit_in_bytes; boot with swapaccount=1)")
        mem_writes: Plan = []
        if res.memory_max is not None:
            mem_writes.append((mem, _v1_value(res.memory_max), "memory_max"))
        if memsw is None:
            plan.extend(mem_writes)
            return
        cur_mem = _limit_or_unlimited(self.fs.read_int(mem))
        cur_memsw = _limit_or_unlimited(self.fs.read_int(memsw))
        new_memsw = _memsw_for(res, cur_mem, cur_memsw)
        if new_memsw is None:
            plan.extend(mem_writes)
            return
        memsw_write = (memsw, _v1_value(new_memsw), "swap_max")
        growing = new_memsw == UNLIMITED or (cur_memsw != UNLIMITED and new_memsw >= cur_memsw)
        plan.extend([memsw_write, *mem_writes] if growing else [*mem_writes, memsw_write])

    def read_limits(self) -> Resources:
        self._require()
        fs = self.fs

        def opt(controller: str, name: str) -> str | None:
            path = self._file(controller, name)
            return None if path is None else fs.read_opt(path)

        def num(controller: str, name: str) -> int | None:
            text = opt(controller, name)
            return None if text is None else int(text.split()[0])

        cpuset = (opt("cpuset", "cpuset.cpus") or "").strip() or None
        quota, period = num("cpu", "cpu.cfs_quota_us"), num("cpu", "cpu.cfs_period_us")
        pct = None
        if quota is not None and period:
            pct = UNLIMITED if quota < 0 else max(1, round(quota * 100 / period))
        shares = num("cpu", "cpu.shares")
        mem = _limit_from(num("memory", "memory.limit_in_bytes"))
        memsw = _limit_from(num("memory", "memory.memsw.limit_in_bytes"))
        swap = None
        if memsw is not None:
            swap = UNLIMITED if UNLIMITED in (memsw, mem) or mem is None else memsw - mem
        pids = opt("pids", "pids.max")
        weight = None
        for name in _WEIGHT_FILES:
            text = opt("blkio", name)
            if text:
                tokens = text.split()
                weight = int(tokens[1] if tokens[0] == "default" else tokens[0])
                break
        return Resources(
            cpuset=cpuset, cpu_quota_pct=pct,
            cpu_weight=None if shares is None else cpu_shares_to_weight(shares),
            memory_max=mem,
            memory_high=_limit_from(num("memory", "memory.soft_limit_in_bytes")),
            swap_max=swap,
            pids_max=None if pids is None else
            (UNLIMITED if pids.strip() == "max" else int(pids)),
            io_weight=weight, io_limits=self._read_io_limits(),
        )

    def _read_io_limits(self) -> tuple[IoLimit, ...]:
        per_dev: dict[str, dict[str, int]] = {}
        for kind, name in _THROTTLE.items():
            path = self._file("blkio", name)
            for line in ((self.fs.read_opt(path) or "") if path else "").splitlines():
                dev, _, value = line.partition(" ")
                if value.strip().isdigit():
                    per_dev.setdefault(dev, {})[kind] = int(value)
        return tuple(IoLimit(dev, **kinds) for dev, kinds in sorted(per_dev.items()))

    # --- counters ---------------------------------------------------------------------

    def _int(self, controller: str, name: str) -> int | None:
        path = self._file(controller, name)
        return None if path is None else self.fs.read_int(path)

    def _keyed(self, controller: str, name: str) -> dict[str, int]:
        path = self._file(controller, name)
        return (None if path is None else self.fs.read_keyed(path)) or {}

    def usage(self) -> Usage:
        self._require()
        peak = self.manager._track_peak
        cpu_ns = self._int("cpuacct", "cpuacct.usage")
        stat = self._keyed("cpu", "cpu.stat")
        mem = self._int("memory", "memory.usage_in_bytes")
        memsw = self._int("memory", "memory.memsw.usage_in_bytes")
        swap = None if memsw is None or mem is None else max(0, memsw - mem)
        # A charge is checked against memsw first when that is limited, so a refusal lands
        # in at most one of the two counters: their sum is "memory charges refused".
        # (Kernel 6.18 does not count memsw refusals at all; oom_kills still does.)
        mem_fail = self._int("memory", "memory.failcnt")
        swap_fail = self._int("memory", "memory.memsw.failcnt")
        pids_now = self._int("pids", "pids.current")
        pids_peak = self._int("pids", "pids.peak")
        rbytes, wbytes = self._blkio_sum("blkio.throttle.io_service_bytes")
        rios, wios = self._blkio_sum("blkio.throttle.io_serviced")
        return Usage(
            cpu_seconds=None if cpu_ns is None else cpu_ns / 1e9,
            cpu_throttled_seconds=(stat["throttled_time"] / 1e9
                                   if "throttled_time" in stat else None),
            cpu_nr_throttled=stat.get("nr_throttled"),
            memory_current=mem,
            memory_peak=self._int("memory", "memory.max_usage_in_bytes"),
            memory_failcnt=_sum(mem_fail, swap_fail),
            oom_kills=self._keyed("memory", "memory.oom_control").get("oom_kill"),
            swap_current=swap,
            swap_peak=peak(self.name, "swap", swap),
            swap_failcnt=swap_fail,
            pids_current=pids_now,
            pids_peak=pids_peak if pids_peak is not None else peak(self.name, "pids", pids_now),
            pids_failcnt=self._keyed("pids", "pids.events").get("max"),
            io_read_bytes=rbytes, io_write_bytes=wbytes,
            io_read_ios=rios, io_write_ios=wios,
        )

    def _blkio_sum(self, stem: str) -> tuple[int | None, int | None]:
        """Sum 'MAJ:MIN Read N' / 'Write N' lines over devices, the subtree included."""
        text = None
        for name in (stem + "_recursive", stem):
            p = self._file("blkio", name)
            if p and (text := self.fs.read_opt(p)) is not None:
                break
        if text is None:
            return None, None
        total = {"Read": 0, "Write": 0}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in total:
                total[parts[1]] += int(parts[2])
        return total["Read"], total["Write"]

    # --- teardown helpers ----------------------------------------------------------------

    def _set_frozen(self, frozen: bool) -> bool:
        state = self._file("freezer", "freezer.state")
        if state is None or not self.fs.exists(state):
            return False
        want = "FROZEN" if frozen else "THAWED"
        self.fs.write_checked(state, want, "freeze" if frozen else "thaw")
        deadline = time.monotonic() + _FREEZE_WAIT
        while frozen and (self.fs.read_opt(state) or "").strip() != want:
            if time.monotonic() > deadline:
                break   # FREEZING for long: kill anyway, the loop in kill_all catches stragglers
            time.sleep(0.01)
        return True

    def freezer_state(self) -> str | None:
        state = self._file("freezer", "freezer.state")
        text = None if state is None else self.fs.read_opt(state)
        return None if text is None else text.strip().lower()   # THAWED, FREEZING, FROZEN

    def _kill_atomic(self) -> bool:
        # Hybrid hosts: cgroup.kill on our group in the cgroup2 tree kills the subtree at once.
        d = self.dirs().get(UNIFIED)
        kill = None if d is None else os.path.join(d, "cgroup.kill")
        if kill is None or not self.fs.exists(kill):
            return False
        self.fs.write_checked(kill, "1", "kill")
        return True
