"""Small helpers shared by the benchmark: statistics, /proc readings, cgroup directories."""

from __future__ import annotations

import contextlib
import os
import statistics
from pathlib import Path
import subprocess
import time
from dataclasses import dataclass


class BenchError(Exception):
    """Something the benchmark cannot go on without; printed as one line."""


def read_text(path: str) -> str:
    """A small file's stripped content, "" if it cannot be read (a sysctl, a cgroup file)."""
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return ""


def summary(samples_ms: list[float]) -> dict:
    """mean / median / p90 / min / max of a list of milliseconds."""
    if not samples_ms:
        return {"n": 0}
    s = sorted(samples_ms)
    p90 = s[min(len(s) - 1, max(0, int(round(0.9 * len(s) + 0.5)) - 1))]
    return {"n": len(s), "mean": statistics.fmean(s), "median": statistics.median(s), "p90": p90,
            "min": s[0], "max": s[-1],
            "stdev": statistics.stdev(s) if len(s) > 1 else 0.0}


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


# ------------------------------------------------------------------ /proc

def meminfo() -> dict[str, int]:
    """/proc/meminfo in kB."""
    out = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0])
    return out


def mem_sample(count: int = 5, interval: float = 0.2) -> dict[str, float]:
    """Median host readings (kB) over a short window, and how much they moved in it."""
    avail, free, used = [], [], []
    for i in range(count):
        m = meminfo()
        avail.append(m["MemAvailable"])
        free.append(m["MemFree"])
        used.append(free_used(m))
        if i + 1 < count:
            time.sleep(interval)
    return {"MemAvailable": statistics.median(avail), "MemFree": statistics.median(free),
            "used": statistics.median(used), "spread_kb": max(avail) - min(avail),
            "spread_used_kb": max(used) - min(used)}


def free_used(m: dict[str, int]) -> int:
    """The "used" column of free(1) (procps 4): all but free memory, buffers, page cache and
    reclaimable slab, which the kernel gives back under pressure."""
    return m["MemTotal"] - m["MemFree"] - m.get("Buffers", 0) - m["Cached"] - m.get("SReclaimable", 0)


BREAKDOWN_FIELDS = ("SUnreclaim", "SReclaimable", "Cached", "AnonPages", "PageTables", "KernelStack", "Percpu")


def host_breakdown() -> dict[str, int]:
    """Where host memory sits (kB): a few /proc/meminfo fields, and every slab cache's bytes
    (as slab:NAME). Deltas of two of these show what a container costs outside any cgroup too."""
    m = meminfo()
    out = {k: m[k] for k in BREAKDOWN_FIELDS if k in m}
    try:
        for line in Path("/proc/slabinfo").read_text().splitlines()[2:]:
            f = line.split()
            out[f"slab:{f[0]}"] = int(f[2]) * int(f[3]) // 1024
    except OSError:
        pass
    return out


def breakdown_delta(before: dict[str, int], after: dict[str, int], n: int, top: int = 6) -> dict[str, float]:
    """Per-container growth of the meminfo fields, and of the `top` slab caches that grew most."""
    delta = {k: (after.get(k, 0) - before.get(k, 0)) / n for k in set(before) | set(after)}
    fields = {k: round(v, 1) for k, v in delta.items() if not k.startswith("slab:")}
    slabs = sorted(((v, k) for k, v in delta.items() if k.startswith("slab:")), reverse=True)[:top]
    return {**fields, **{k: round(v, 1) for v, k in slabs}}


def proc_rss(pid: int) -> dict[str, int]:
    """VmRSS and RssAnon (kB) of a process; zeros if it is gone."""
    out = {"VmRSS": 0, "RssAnon": 0}
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in out:
                    out[key] = int(rest.split()[0])
    return out


def container_shape(init_pid: int | None) -> dict[str, int] | None:
    """Mounts in a container's mount namespace and processes in its pid namespace."""
    if not init_pid:
        return None
    with contextlib.suppress(OSError):
        with open(f"/proc/{init_pid}/mountinfo") as fh:
            mounts = sum(1 for _ in fh)
        pidns = os.readlink(f"/proc/{init_pid}/ns/pid")
        procs = 0
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/ns/pid") == pidns:
                        procs += 1
        return {"mounts": mounts, "processes": procs}
    return None


def pidns_members(init_pid: int) -> list[int]:
    """Every process in the pid namespace of init_pid (as seen from the host)."""
    try:
        pidns = os.readlink(f"/proc/{init_pid}/ns/pid")
    except OSError:
        return []
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/ns/pid") == pidns:
                    out.append(int(pid))
    return out


def rss_pss(pids: list[int]) -> dict[str, int]:
    """Summed VmRSS and Pss (kB, smaps_rollup) of these processes: RSS counts shared pages once per
    process, Pss divides them among the processes sharing them."""
    rss = pss = 0
    for pid in pids:
        rss += proc_rss(pid)["VmRSS"]
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                        break
    return {"rss": rss, "pss": pss}


def children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    return []


def comm(pid: int) -> str:
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    return ""


# ------------------------------------------------------------------ cgroups

@dataclass(frozen=True)
class Hierarchy:
    key: str          # "memory", "cpu", "name=systemd", "unified"
    mountpoint: str   # /sys/fs/cgroup/memory
    own_dir: str      # our own cgroup's directory in it
    unified: bool


def hierarchies() -> list[Hierarchy]:
    """Every mounted cgroup hierarchy and our own cgroup's directory in it."""
    from cgroups.discovery import discover  # ctd's own discovery code (read-only use)
    return [Hierarchy(h.key, h.mountpoint, h.own_dir, h.is_unified) for h in discover()]


def make_cgroup_dir(h: Hierarchy, name: str) -> str:
    """NAME below our own cgroup in hierarchy h (cpuset: inherit cpus and mems)."""
    path = os.path.join(h.own_dir, name)
    os.makedirs(path, exist_ok=True)
    if "cpuset" in h.key.split(",") and not h.unified:
        for f in ("cpuset.cpus", "cpuset.mems"):
            with open(os.path.join(path, f)) as fh:
                if fh.read().strip():
                    continue
            with open(os.path.join(h.own_dir, f)) as src, open(os.path.join(path, f), "w") as dst:
                dst.write(src.read().strip())
    return path


def remove_cgroup_tree(path: str) -> list[str]:
    """rmdir a cgroup directory and everything below it, deepest first; returns what stayed."""
    if not os.path.isdir(path):
        return []
    left = []
    for root, dirs, _files in os.walk(path, topdown=False):
        for d in dirs:
            full = os.path.join(root, d)
            with contextlib.suppress(OSError):
                os.rmdir(full)
            if os.path.isdir(full):
                left.append(full)
    try:
        os.rmdir(path)
    except OSError:
        left.append(path)
    return left


def kill_cgroup_tree(path: str, timeout: float = 10.0) -> list[int]:
    """SIGKILL every process in a cgroup directory *we created* and below, until it is empty
    (the safety net after an interrupted run); returns the pids it killed."""
    import signal
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = set()
        for root, _dirs, files in os.walk(path):
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError):
                    with open(os.path.join(root, "cgroup.procs")) as fh:
                        pids.update(int(x) for x in fh.read().split())
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.1)
    return killed


def memcg(h_list: list[Hierarchy], name: str = "") -> dict[str, int]:
    """v1 memory cgroup counters (bytes, hierarchical) of our own cgroup or our NAME below it:
    usage (user + page cache + kernel memory), kmem, total_rss (anon), total_cache (page cache,
    tmpfs included), total_shmem (tmpfs and shared memory: part of total_cache, not reclaimable
    without swap)."""
    out = {"usage": 0, "kmem": 0, "total_rss": 0, "total_cache": 0, "total_shmem": 0}
    for h in h_list:
        if h.key != "memory":
            continue
        d = os.path.join(h.own_dir, name) if name else h.own_dir
        with contextlib.suppress(OSError):
            with open(os.path.join(d, "memory.usage_in_bytes")) as fh:
                out["usage"] = int(fh.read())
            with open(os.path.join(d, "memory.kmem.usage_in_bytes")) as fh:
                out["kmem"] = int(fh.read())
            with open(os.path.join(d, "memory.stat")) as fh:
                for line in fh:
                    key, _, value = line.partition(" ")
                    if key in ("total_rss", "total_cache", "total_shmem"):
                        out[key] = int(value)
    return out


def theil_sen(ys: list[float]) -> float | None:
    """Robust slope of ys against 0..n-1: the median of all pairwise slopes. A burst of
    somebody else's allocations moves a minority of pairs only."""
    n = len(ys)
    if n < 2:
        return None
    slopes = [(ys[j] - ys[i]) / (j - i) for i in range(n) for j in range(i + 1, n)]
    return statistics.median(slopes)


def mounts_below(path: str) -> list[str]:
    """Mount points at or below path (in our mount namespace)."""
    path = os.path.realpath(path).rstrip("/")
    out = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == path or mp.startswith(path + "/"):
                out.append(mp)
    return out


def run_quiet(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, **kw)
