"""cgroup layout (v1, hybrid or v2) and which controllers ctd can use below its own cgroup."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .fragment import FRAGMENT_REF
from .model import CheckResult, bad, ok

CATEGORY = "cgroups"
MOUNTINFO = Path("/proc/self/mountinfo")
PROC_CGROUP = Path("/proc/self/cgroup")
PROC_CGROUPS = Path("/proc/cgroups")
V1_CONTROLLERS = {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
                  "net_cls", "net_prio", "perf_event", "hugetlb", "rdma", "misc"}
# ctd's controllers: (v1 name, v2 name, required, what ctd uses it for)
WANTED: list[tuple[str, str, bool, str]] = [
    ("memory", "memory", True, "memory limits, beancounters"),
    ("cpu", "cpu", True, "cpu weight and --cpulimit"),
    ("pids", "pids", True, "--numproc"),
    ("devices", "devices", True, "device allow-list"),
    ("cpuacct", "cpu", False, "cpu usage accounting"),
    ("cpuset", "cpuset", False, "--cpus pinning"),
    ("blkio", "io", False, "--iolimit, --iopslimit; --ioprio needs bfq too"),
    ("freezer", "freezer", False, "freeze/thaw"),
]


@dataclass(frozen=True)
class Mount:
    point: str
    root: str  # root of the mount within its hierarchy
    fstype: str
    options: frozenset[str]  # mount + super options


@dataclass
class Layout:
    v1: dict[str, Mount] = field(default_factory=dict)  # controller -> mount
    v2: Mount | None = None
    own: dict[str, str] = field(default_factory=dict)  # controller (or "" for v2) -> our cgroup path
    enabled: dict[str, bool] = field(default_factory=dict)  # from /proc/cgroups

    @property
    def version(self) -> str:
        """v2 when cgroup2 is the main (or only) hierarchy; v1 (incl. hybrid) when v1 has controllers."""
        if self.v2 and (self.v2.point == "/sys/fs/cgroup" or not self.v1):
            return "v2"
        return "v1" if self.v1 else "none"

    def own_dir(self, key: str) -> Path | None:
        """Our own cgroup's directory in the hierarchy of controller key ("" = v2)."""
        mount = self.v2 if key == "" else self.v1.get(key)
        if mount is None or key not in self.own:
            return None
        path = self.own[key]
        if mount.root != "/" and path.startswith(mount.root):
            path = path[len(mount.root):]
        return Path(mount.point) / path.lstrip("/")


def read_layout(mountinfo: Path = MOUNTINFO, proc_cgroup: Path = PROC_CGROUP,
                proc_cgroups: Path = PROC_CGROUPS) -> Layout:
    layout = Layout()
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        pre, _, post = line.partition(" - ")
        f, p = pre.split(), post.split()
        if len(f) < 6 or len(p) < 3:
            continue
        opts = frozenset(f[5].split(",")) | frozenset(p[2].split(","))
        m = Mount(f[4].replace("\\040", " "), f[3], p[0], opts)
        if m.fstype == "cgroup2":
            if layout.v2 is None or m.point == "/sys/fs/cgroup":
                layout.v2 = m
        elif m.fstype == "cgroup":
            for c in opts & V1_CONTROLLERS:
                layout.v1.setdefault(c, m)
    try:
        for line in proc_cgroup.read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            for c in ctrls.split(",") if ctrls else [""]:
                layout.own[c] = path
    except (OSError, ValueError):
        pass
    try:
        for line in proc_cgroups.read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) == 4:
                layout.enabled[parts[0]] = parts[3] == "1"
    except OSError:
        pass
    return layout


def _v2_controllers(d: Path | None) -> set[str]:
    try:
        return set((d / "cgroup.controllers").read_text().split()) if d else set()
    except OSError:
        return set()


def _has_file(d: Path | None, name: str) -> bool:
    """name exists in d or, since the root cgroup lacks many files, in one of its children."""
    if d is None or not d.is_dir():
        return False
    if (d / name).exists():
        return True
    try:
        return any((c / name).exists() for c in d.iterdir() if c.is_dir())
    except OSError:
        return False


def _writable(m: Mount, d: Path | None) -> bool:
    return "ro" not in m.options and d is not None and d.is_dir() and os.access(d, os.W_OK)


def check_version(layout: Layout) -> CheckResult:
    v = layout.version
    if v == "none":
        return bad("cgroup-version", "no cgroup filesystem mounted",
                   "mount cgroup2 on /sys/fs/cgroup (or let systemd do it)", CATEGORY, True)
    if v == "v2" and layout.v2:
        return ok("cgroup-version", f"v2 (unified hierarchy at {layout.v2.point}); ctd uses its "
                  "v2 backend", CATEGORY, True)
    extra = ""
    if layout.v2:
        ctrls = " ".join(sorted(_v2_controllers(Path(layout.v2.point)))) or "none"
        extra = f"; hybrid: cgroup2 at {layout.v2.point} (controllers: {ctrls}) is not used"
    return ok("cgroup-version", f"v1 (per-controller hierarchies under /sys/fs/cgroup){extra}; "
              "ctd uses its v1 backend", CATEGORY, True)


def _check_v1(layout: Layout, v1: str, required: bool, use: str) -> CheckResult:
    name = f"cgroup:{v1}"
    m = layout.v1.get(v1)
    if not layout.enabled.get(v1, m is not None):
        return bad(name, f"disabled on the kernel command line ({use})",
                   f"remove cgroup_disable={v1} from the kernel command line", CATEGORY, required)
    if m is None:
        return bad(name, f"v1 hierarchy not mounted ({use})",
                   f"mount -t cgroup -o {v1} cgroup /sys/fs/cgroup/{v1}", CATEGORY, required)
    d = layout.own_dir(v1)
    if os.geteuid() != 0:  # only root (ctd) writes cgroups: say what we can see
        return ok(name, f"mounted at {m.point} (writability not checked: not root) ({use})",
                  CATEGORY, required)
    if not _writable(m, d):
        return bad(name, f"mounted at {m.point} but our cgroup {d} is not writable ({use})",
                   "run ctd as root with a writable cgroup filesystem", CATEGORY, required)
    return ok(name, f"usable: v1 at {m.point}, below {d} ({use})", CATEGORY, required)


def _check_v2(layout: Layout, v1: str, v2: str, required: bool, use: str) -> CheckResult:
    name = f"cgroup:{v2 if v1 != 'cpuacct' else 'cpuacct'}"
    d = layout.own_dir("")
    if v1 in ("devices", "freezer", "cpuacct"):  # built into cgroup v2 (BPF, cgroup.freeze, cpu.stat)
        how = {"devices": "BPF device programs", "freezer": "cgroup.freeze",
               "cpuacct": "cpu.stat"}[v1]
        return ok(name, f"usable: built into cgroup v2 ({how}) ({use})", CATEGORY, required)
    avail = _v2_controllers(d)
    if v2 not in avail:
        return bad(name, f"not in {d}/cgroup.controllers ({use})",
                   f"delegate the {v2} controller to ctd's cgroup (systemd: Delegate=yes in "
                   "ctd.service), or enable it in the parent's cgroup.subtree_control",
                   CATEGORY, required)
    return ok(name, f"usable: v2 below {d} ({use})", CATEGORY, required)


def check_features(layout: Layout) -> list[CheckResult]:
    """memcg swap accounting and CFS bandwidth, as the cgroup files show them."""
    if layout.version == "v2":
        d = layout.own_dir("")
        swap, swap_d = "memory.swap.max", d
        quota, quota_d = "cpu.max", d
    else:
        swap, swap_d = "memory.memsw.limit_in_bytes", layout.own_dir("memory")
        quota, quota_d = "cpu.cfs_quota_us", layout.own_dir("cpu")
    results = []
    if _has_file(swap_d, swap):
        results.append(ok("cgroup:memory-swap", f"swap accounting on ({swap}): --swap limits work",
                          CATEGORY))
    else:
        results.append(bad("cgroup:memory-swap", f"no {swap}: --swap limits unavailable",
                           "build the kernel with CONFIG_MEMCG and CONFIG_SWAP and do not boot with "
                           "swapaccount=0 (kernels before 6.1: boot with swapaccount=1)",
                           CATEGORY, False))
    if _has_file(quota_d, quota):
        results.append(ok("cgroup:cpu-bandwidth", f"CFS bandwidth control ({quota}): --cpulimit works",
                          CATEGORY, True))
    else:
        results.append(bad("cgroup:cpu-bandwidth", f"no {quota}: --cpulimit unavailable",
                           f"rebuild the kernel with CONFIG_CFS_BANDWIDTH=y (see {FRAGMENT_REF})",
                           CATEGORY, True))
    return results


def _schedulers(sys_block: Path) -> set[str]:
    """Every I/O scheduler some disk offers ("[none] mq-deadline kyber bfq")."""
    found: set[str] = set()
    try:
        for disk in sys_block.iterdir():
            try:
                found.update((disk / "queue" / "scheduler").read_text().replace("[", "").replace("]", "").split())
            except OSError:
                continue
    except OSError:
        pass
    return found


def check_io_weight(layout: Layout, sys_block: Path = Path("/sys/block")) -> CheckResult:
    """--ioprio writes a weight file that only bfq (or cgroup v2's iocost) provides."""
    if layout.version == "v2":
        names, d = ("io.bfq.weight", "io.weight"), layout.own_dir("")
    else:
        names, d = ("blkio.bfq.weight", "blkio.weight"), layout.own_dir("blkio")
    found = [n for n in names if _has_file(d, n)]
    bfq = "bfq" in _schedulers(sys_block)
    if layout.version == "v2" and found and not bfq and layout.v2 is not None:
        qos = Path(layout.v2.point) / "io.cost.qos"
        try:
            enabled = "enable=1" in qos.read_text()
        except OSError:
            enabled = False
        if not enabled:
            return bad("cgroup:io-weight", "io.weight exists but iocost is off for every disk and no disk "
                       "offers bfq: --ioprio is accepted and has no effect",
                       f"echo 'MAJ:MIN enable=1' > {qos} for the pool's disk, or use bfq "
                       "(modprobe bfq; echo bfq > /sys/block/DEV/queue/scheduler)", CATEGORY, False)
    if found or bfq:
        what = found[0] if found else names[0]
        return ok("cgroup:io-weight", f"{what}: --ioprio works", CATEGORY)
    return bad("cgroup:io-weight", f"no {' or '.join(names)} (no bfq I/O scheduler): --ioprio is refused",
               "modprobe bfq; echo bfq > /sys/block/DEV/queue/scheduler (for the disk of ctd's storage pool)",
               CATEGORY, False)


def check_cgroups(layout: Layout | None = None) -> list[CheckResult]:
    layout = layout or read_layout()
    results = [check_version(layout)]
    if layout.version == "none":
        return results
    for v1, v2, required, use in WANTED:
        if layout.version == "v2":
            results.append(_check_v2(layout, v1, v2, required, use))
        else:
            results.append(_check_v1(layout, v1, required, use))
    return results + check_features(layout) + [check_io_weight(layout)]
