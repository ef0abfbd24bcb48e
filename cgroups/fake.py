"""A fake cgroup kernel over a plain directory tree, for unit tests without root.

    fs, proc_self = fake_v1_host(tmp_path)        # or fake_v2_host(tmp_path)
    mgr = detect_manager("ctd", proc_self=proc_self, fs=fs)

It plays the parts of the kernel the backends rely on: mkdir fills in control files, rmdir
refuses populated groups, cgroup.procs moves pids, v1 keeps memory <= memsw and refuses to
let a task join an empty cpuset, v2 enforces subtree_control and "no internal processes".
Signals are recorded, never sent. `refuse[suffix] = errno` makes the next writes to files
ending in suffix fail, to test error paths.
"""
from __future__ import annotations

import errno as E
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .fs import CgroupFS
from .model import DeviceRule

V1_NO_LIMIT = "9223372036854771712"
_V1_CORE = {"cgroup.procs": "", "tasks": "", "cgroup.clone_children": "0",
            "notify_on_release": "0"}
_V1_FILES: dict[str, dict[str, str]] = {
    "cpu": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "-1", "cpu.shares": "1024",
            "cpu.stat": "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n"},
    "cpuacct": {"cpuacct.usage": "0"},
    "cpuset": {"cpuset.cpus": "", "cpuset.mems": "", "cpuset.effective_cpus": "",
               "cpuset.effective_mems": ""},
    "memory": {"memory.limit_in_bytes": V1_NO_LIMIT, "memory.soft_limit_in_bytes": V1_NO_LIMIT,
               "memory.memsw.limit_in_bytes": V1_NO_LIMIT, "memory.usage_in_bytes": "0",
               "memory.max_usage_in_bytes": "0", "memory.failcnt": "0",
               "memory.memsw.usage_in_bytes": "0", "memory.memsw.failcnt": "0",
               "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"},
    "pids": {"pids.max": "max", "pids.current": "0", "pids.events": "max 0", "pids.peak": "0"},
    "blkio": {"blkio.bfq.weight": "100", "blkio.throttle.read_bps_device": "",
              "blkio.throttle.write_bps_device": "", "blkio.throttle.read_iops_device": "",
              "blkio.throttle.write_iops_device": "",
              "blkio.throttle.io_service_bytes_recursive": "Total 0\n",
              "blkio.throttle.io_serviced_recursive": "Total 0\n"},
    "freezer": {"freezer.state": "THAWED"},
    "devices": {"devices.list": "a *:* rwm", "devices.allow": "", "devices.deny": ""},
}
_V2_CORE = {"cgroup.procs": "", "cgroup.controllers": "", "cgroup.subtree_control": "",
            "cgroup.events": "populated 0\nfrozen 0\n", "cgroup.freeze": "0",
            "cgroup.kill": "", "cgroup.type": "domain",
            "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"}
_V2_FILES: dict[str, dict[str, str]] = {
    "cpu": {"cpu.max": "max 100000", "cpu.weight": "100",
            "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\nnr_periods 0\n"
                        "nr_throttled 0\nthrottled_usec 0\n"},
    "cpuset": {"cpuset.cpus": "", "cpuset.mems": "", "cpuset.cpus.effective": "0-3",
               "cpuset.mems.effective": "0"},
    "memory": {"memory.current": "0", "memory.max": "max", "memory.high": "max",
               "memory.peak": "0", "memory.swap.max": "max", "memory.swap.current": "0",
               "memory.swap.peak": "0", "memory.swap.events": "high 0\nmax 0\nfail 0\n",
               "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n"},
    "pids": {"pids.max": "max", "pids.current": "0", "pids.events": "max 0",
             "pids.peak": "0"},
    "io": {"io.max": "", "io.weight": "default 100", "io.stat": ""},
}
V2_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "pids")


@dataclass
class _Mount:
    controllers: frozenset[str]
    v2: bool
    omit: frozenset[str]          # control files this "kernel" lacks


@dataclass
class FakeKernelFS(CgroupFS):
    mounts: dict[str, _Mount] = field(default_factory=dict)
    pid: int = 4242                                      # what getpid() answers
    writes: list[tuple[str, str]] = field(default_factory=list)
    kills: list[tuple[int, int]] = field(default_factory=list)
    refuse: dict[str, int] = field(default_factory=dict)
    device_filters: dict[str, list[list[object]]] = field(default_factory=dict)  # v2 dir -> rules attached

    def attach_device_filter(self, path: str, allow: Sequence[DeviceRule]) -> None:
        if not os.path.isdir(path):
            raise OSError(E.EBADF, os.strerror(E.EBADF), path)
        self.device_filters.setdefault(path, []).append(list(allow))

    # --- plumbing ------------------------------------------------------------------

    def _mount_of(self, path: str) -> tuple[str, _Mount]:
        best = max((mp for mp in self.mounts if path == mp or path.startswith(mp + "/")),
                   key=len, default=None)
        if best is None:
            raise OSError(E.ENOENT, "not in a fake cgroup mount", path)
        return best, self.mounts[best]

    def _put(self, path: str, text: str) -> None:
        Path(path).write_text(text)

    def _get(self, path: str) -> str:
        return Path(path).read_text()

    def add_mount(self, mountpoint: str, controllers: frozenset[str], *, v2: bool,
                  omit: frozenset[str] = frozenset(), v2_available: tuple[str, ...] = ()) -> None:
        os.makedirs(mountpoint, exist_ok=True)
        self.mounts[mountpoint] = _Mount(controllers, v2, omit)
        self._populate(mountpoint, root=True, available=v2_available)

    def _populate(self, d: str, *, root: bool = False,
                  available: tuple[str, ...] = ()) -> None:
        _, m = self._mount_of(d)
        files: dict[str, str] = {}
        if m.v2:
            files.update(_V2_CORE)
            enabled = (list(available) if root else
                       self._get(os.path.join(os.path.dirname(d), "cgroup.subtree_control")).split())
            files["cgroup.controllers"] = " ".join(enabled)
            if not root:   # the root has no limit files, like the real one
                for c in enabled:
                    files.update(_V2_FILES.get(c, {}))
            if root:
                for k in ("cgroup.freeze", "cgroup.kill", "cgroup.type"):
                    files.pop(k)
                files["cpuset.cpus.effective"] = "0-3"
        else:
            files.update(_V1_CORE)
            for c in m.controllers:
                files.update(_V1_FILES.get(c, {}))
            if root and "cpuset" in m.controllers:
                files.update({"cpuset.cpus": "0-3", "cpuset.mems": "0",
                              "cpuset.effective_cpus": "0-3", "cpuset.effective_mems": "0"})
        for name, text in files.items():
            if name not in m.omit:
                self._put(os.path.join(d, name), text)

    def _procs_in_mount(self, mountpoint: str) -> list[str]:
        return [os.path.join(dp, "cgroup.procs") for dp, _, fns in os.walk(mountpoint)
                if "cgroup.procs" in fns]

    # --- CgroupFS ------------------------------------------------------------------

    def mkdir(self, path: str) -> None:
        self._mount_of(path)
        os.mkdir(path)
        self._populate(path)

    def rmdir(self, path: str) -> None:
        if self._get(os.path.join(path, "cgroup.procs")).split() or self.subdirs(path):
            raise OSError(E.EBUSY, os.strerror(E.EBUSY), path)
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        os.rmdir(path)

    def rename(self, path: str, new_path: str) -> None:
        _, m = self._mount_of(path)
        if m.v2:  # the kernel's cgroup2 has no rename
            raise OSError(E.EPERM, os.strerror(E.EPERM), path)
        if os.path.dirname(path) != os.path.dirname(new_path):
            raise OSError(E.EIO, os.strerror(E.EIO), path)
        if os.path.exists(new_path):
            raise OSError(E.EEXIST, os.strerror(E.EEXIST), new_path)
        os.rename(path, new_path)

    def kill(self, pid: int, sig: int) -> None:
        self.kills.append((pid, sig))
        if sig == signal.SIGKILL:
            for mp in self.mounts:
                self._drop_pid(mp, pid)

    def getpid(self) -> int:
        return self.pid

    def _drop_pid(self, mountpoint: str, pid: int) -> None:
        for procs in self._procs_in_mount(mountpoint):
            pids = self._get(procs).split()
            if str(pid) in pids:
                pids.remove(str(pid))
                self._put(procs, "".join(p + "\n" for p in pids))

    def write(self, path: str, data: str) -> None:
        for suffix, err in self.refuse.items():
            if path.endswith(suffix):
                raise OSError(err, os.strerror(err), path)
        if not os.path.isfile(path):
            raise OSError(E.ENOENT, os.strerror(E.ENOENT), path)
        self.writes.append((path, data))
        d, name = os.path.split(path)
        mp, m = self._mount_of(path)
        handler = getattr(self, "_w_" + name.replace(".", "_"), None)
        if handler is not None:
            handler(d, mp, m, data.strip())
        else:
            self._put(path, data.strip() + "\n")

    # --- kernel rules, one per control file ----------------------------------------

    def _w_cgroup_procs(self, d: str, mp: str, m: _Mount, data: str) -> None:
        pid = self.pid if data == "0" else int(data)
        if m.v2 and d != mp and self._get(os.path.join(d, "cgroup.subtree_control")).strip():
            raise OSError(E.EBUSY, "no internal processes", d)
        if not m.v2 and "cpuset" in m.controllers and \
                not self._get(os.path.join(d, "cpuset.cpus")).strip():
            raise OSError(E.ENOSPC, os.strerror(E.ENOSPC), d)
        self._drop_pid(mp, pid)
        procs = os.path.join(d, "cgroup.procs")
        self._put(procs, self._get(procs) + f"{pid}\n")

    def _w_cgroup_subtree_control(self, d: str, mp: str, m: _Mount, data: str) -> None:
        available = set(self._get(os.path.join(d, "cgroup.controllers")).split())
        enabled = set(self._get(os.path.join(d, "cgroup.subtree_control")).split())
        if d != mp and self._get(os.path.join(d, "cgroup.procs")).split():
            raise OSError(E.EBUSY, "no internal processes", d)
        for token in data.split():
            name = token[1:]
            if name not in available:
                raise OSError(E.ENOENT, f"controller {name} not available", d)
            (enabled.add if token[0] == "+" else enabled.discard)(name)
        self._put(os.path.join(d, "cgroup.subtree_control"), " ".join(sorted(enabled)) + "\n")
        # Like the kernel, existing children gain/lose the interface files at once.
        for child in self.subdirs(d):
            cd = os.path.join(d, child)
            self._put(os.path.join(cd, "cgroup.controllers"), " ".join(sorted(enabled)) + "\n")
            for c, files in _V2_FILES.items():
                for name, text in files.items():
                    path = os.path.join(cd, name)
                    if c in enabled and name not in m.omit and not os.path.exists(path):
                        self._put(path, text)
                    elif c not in enabled and os.path.exists(path) and name not in _V2_CORE:
                        os.unlink(path)

    def _w_cgroup_kill(self, d: str, mp: str, m: _Mount, data: str) -> None:
        for procs in self._procs_in_mount(d):
            for pid in self._get(procs).split():
                self.kills.append((int(pid), signal.SIGKILL))
                for other in self.mounts:
                    self._drop_pid(other, int(pid))

    def _w_cgroup_freeze(self, d: str, mp: str, m: _Mount, data: str) -> None:
        self._put(os.path.join(d, "cgroup.freeze"), data + "\n")
        self._put(os.path.join(d, "cgroup.events"), f"populated 0\nfrozen {data}\n")

    def _w_memory_limit_in_bytes(self, d: str, mp: str, m: _Mount, data: str) -> None:
        value = _v1_bytes(data)
        memsw = os.path.join(d, "memory.memsw.limit_in_bytes")
        if os.path.exists(memsw) and value > int(self._get(memsw)):
            raise OSError(E.EINVAL, "memory limit above memsw limit", d)
        self._put(os.path.join(d, "memory.limit_in_bytes"), f"{value}\n")

    def _w_memory_memsw_limit_in_bytes(self, d: str, mp: str, m: _Mount, data: str) -> None:
        value = _v1_bytes(data)
        if value < int(self._get(os.path.join(d, "memory.limit_in_bytes"))):
            raise OSError(E.EINVAL, "memsw limit below memory limit", d)
        self._put(os.path.join(d, "memory.memsw.limit_in_bytes"), f"{value}\n")

    def _w_memory_soft_limit_in_bytes(self, d: str, mp: str, m: _Mount, data: str) -> None:
        self._put(os.path.join(d, "memory.soft_limit_in_bytes"), f"{_v1_bytes(data)}\n")

    def _v1_throttle(self, d: str, name: str, data: str) -> None:
        dev, value = data.split()
        rules = dict(line.split() for line in self._get(os.path.join(d, name)).splitlines())
        if value == "0":
            rules.pop(dev, None)
        else:
            rules[dev] = value
        self._put(os.path.join(d, name), "".join(f"{k} {v}\n" for k, v in sorted(rules.items())))

    def _w_blkio_throttle_read_bps_device(self, d: str, mp: str, m: _Mount, data: str) -> None:
        self._v1_throttle(d, "blkio.throttle.read_bps_device", data)

    def _w_blkio_throttle_write_bps_device(self, d: str, mp: str, m: _Mount, data: str) -> None:
        self._v1_throttle(d, "blkio.throttle.write_bps_device", data)

    def _w_blkio_throttle_read_iops_device(self, d: str, mp: str, m: _Mount, data: str) -> None:
        self._v1_throttle(d, "blkio.throttle.read_iops_device", data)

    def _w_blkio_throttle_write_iops_device(self, d: str, mp: str, m: _Mount, data: str) -> None:
        self._v1_throttle(d, "blkio.throttle.write_iops_device", data)

    def _w_io_max(self, d: str, mp: str, m: _Mount, data: str) -> None:
        dev, *pairs = data.split()
        rules: dict[str, dict[str, str]] = {}
        for line in self._get(os.path.join(d, "io.max")).splitlines():
            ldev, *lpairs = line.split()
            rules[ldev] = dict(p.split("=") for p in lpairs)
        rule = rules.setdefault(dev, {k: "max" for k in ("rbps", "wbps", "riops", "wiops")})
        for p in pairs:
            k, v = p.split("=")
            if k not in rule:
                raise OSError(E.EINVAL, os.strerror(E.EINVAL), d)
            rule[k] = v
        if all(v == "max" for v in rule.values()):
            rules.pop(dev)
        self._put(os.path.join(d, "io.max"), "".join(
            f"{k} " + " ".join(f"{a}={b}" for a, b in r.items()) + "\n"
            for k, r in sorted(rules.items())))

    def _w_io_weight(self, d: str, mp: str, m: _Mount, data: str) -> None:
        self._put(os.path.join(d, "io.weight"), f"default {data.split()[-1]}\n")


def _v1_bytes(data: str) -> int:
    return int(V1_NO_LIMIT) if data == "-1" else int(data)


def _write_proc(root: Path, mountinfo: list[str], cgroup: list[str]) -> str:
    proc_self = root / "proc" / "self"
    proc_self.mkdir(parents=True, exist_ok=True)
    (proc_self / "mountinfo").write_text("".join(line + "\n" for line in mountinfo))
    (proc_self / "cgroup").write_text("".join(line + "\n" for line in cgroup))
    return str(proc_self)


def _make_own(fs: FakeKernelFS, mountpoint: str, own_path: str) -> None:
    d = mountpoint
    for part in [p for p in own_path.split("/") if p]:
        d = os.path.join(d, part)
        fs.mkdir(d)


def fake_v1_host(root: Path | str, *, own_memory_path: str = "/process_api/abc",
                 hybrid: bool = True, omit: frozenset[str] = frozenset(),
                 readonly_systemd: bool = False, joined_cpu: bool = False) -> tuple[FakeKernelFS, str]:
    """A host laid out like the build machine: one hierarchy per controller, name=systemd,
    and (hybrid) an empty cgroup2 tree; our memory cgroup is not the root. joined_cpu: cpu
    and cpuacct share one hierarchy ("cpu,cpuacct"), as systemd mounts them on most hosts."""
    root = Path(root)
    fs = FakeKernelFS()
    base = root / "sys" / "fs" / "cgroup"
    names = ["cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids"]
    if joined_cpu:
        names = ["cpu,cpuacct", *names[2:]]
    mountinfo, cgroup = [], []
    for i, name in enumerate(names, start=1):
        mp = str(base / name)
        fs.add_mount(mp, frozenset(name.split(",")), v2=False, omit=omit)
        mountinfo.append(f"{30 + i} 20 0:{30 + i} / {mp} rw,relatime - cgroup cgroup rw,{name}")
        own = own_memory_path if name == "memory" else "/"
        cgroup.append(f"{i}:{name}:{own}")
        _make_own(fs, mp, own)
    mp = str(base / "systemd")
    fs.add_mount(mp, frozenset(), v2=False)
    ro = "ro" if readonly_systemd else "rw"
    mountinfo.append(f"50 20 0:50 / {mp} {ro},relatime - cgroup cgroup {ro},name=systemd")
    cgroup.append("9:name=systemd:/")
    if hybrid:
        mp = str(base / "unified")
        fs.add_mount(mp, frozenset(), v2=True)
        mountinfo.append(f"51 20 0:51 / {mp} rw,relatime - cgroup2 cgroup2 rw")
        cgroup.append("0::/")
    return fs, _write_proc(root, mountinfo, cgroup)


def fake_v2_host(root: Path | str, *, own_path: str = "/",
                 controllers: tuple[str, ...] = V2_CONTROLLERS,
                 omit: frozenset[str] = frozenset(), occupied: bool = False
                 ) -> tuple[FakeKernelFS, str]:
    """A pure cgroup2 host. `occupied` puts our pid in our own (non-root) cgroup, as under
    a systemd service, so enabling controllers there needs the move-self dance."""
    root = Path(root)
    fs = FakeKernelFS()
    mp = str(root / "sys" / "fs" / "cgroup")
    fs.add_mount(mp, frozenset(), v2=True, omit=omit, v2_available=controllers)
    d = mp
    for part in [p for p in own_path.split("/") if p]:
        fs.write(os.path.join(d, "cgroup.subtree_control"),
                 " ".join("+" + c for c in controllers))
        d = os.path.join(d, part)
        fs.mkdir(d)
    if occupied:
        fs.write(os.path.join(d, "cgroup.procs"), str(fs.pid))
    fs.writes.clear()
    mountinfo = [f"40 20 0:40 / {mp} rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 "
                 "rw,nsdelegate,memory_recursiveprot"]
    return fs, _write_proc(root, mountinfo, [f"0::{own_path}"])
