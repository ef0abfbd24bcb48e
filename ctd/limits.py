"""User-facing limits (vzctl names and forms) -> normalised values -> cgroups.Resources.

Normalised limits are what the state keeps: {"ram": bytes, "cpus": n, ...}; a missing key
means unlimited. In a change, UNLIMITED for a key means "remove this limit".
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

from cgroups import UNLIMITED as UNLIMITED  # re-exported: the daemon reads limits through this module
from cgroups import CgroupManager, IoLimit, Resources, parse_count, parse_size
from ctd.errors import InvalidRequest
from ctd.instance.container.spec import DEFAULT_NUMPTY, MAX_NUMPTY

# name -> one-line help shown in errors and the API schema.
LIMITS: dict[str, str] = {
    "ram": "memory limit, e.g. 512M or 1G; OpenVZ's barrier:limit form sets the soft and the hard limit",
    "swap": "swap on top of ram, e.g. 512M (needs ram)",
    "cpus": "number of CPUs the container may run on (a cpuset), 1 up to the host's count",
    "cpulimit": "CPU time in percent of one CPU, e.g. 50, or 200 for two CPUs' worth",
    "cpuunits": "relative CPU weight, OpenVZ scale: 8 to 500000, default 1000",
    "numproc": "maximum number of processes and threads, e.g. 100 or 90:100",
    "numfile": "maximum open files per process (RLIMIT_NOFILE of init and its children)",
    "numpty": f"pseudo-terminals the container may have open at once (its devpts' max=), "
              f"1 to {MAX_NUMPTY}, default {DEFAULT_NUMPTY}",
    "iolimit": "disk bandwidth on the storage pool's device, bytes per second, e.g. 10M",
    "iopslimit": "disk operations per second on the storage pool's device",
    "ioprio": "disk priority 0 (lowest) to 7 (highest), default 4",
    "diskspace": "disk space of the root filesystem, e.g. 10G (btrfs quota)",
}
MIN_RAM = 4 * 1024 * 1024
# The kernel keeps memory limits as page counts below LONG_MAX bytes and qgroup/io limits as
# u64: 8388607T (just under 2^63 bytes) is the largest size every one of them takes. Far
# beyond any host (x86-64 addresses 4096T at most), so a bigger number is a typo or an attack.
MAX_SIZE = 8388607 << 40
MAX_COUNT = (1 << 63) - 1
# pids.max refuses anything from PID_MAX_LIMIT + 1 on (kernel/pid.c: 4M on 64-bit).
MAX_NUMPROC = 4 * 1024 * 1024
CPUUNITS_DEFAULT = 1000


def _count(name: str, value: Any, minimum: int = 1, maximum: int | None = None,
           allow_unlimited: bool = True) -> int:
    if isinstance(value, bool):
        raise InvalidRequest(f"invalid {name} {value!r}: expected a whole number")
    try:
        number = parse_count(str(value))
    except ValueError:
        raise InvalidRequest(f"invalid {name} {value!r}: expected a whole number"
                             + (" or 'unlimited'" if allow_unlimited else "")) from None
    if number == UNLIMITED:
        if not allow_unlimited:
            raise InvalidRequest(f"invalid {name} {value!r}: expected a whole number")
        return UNLIMITED
    if number < minimum or number > (MAX_COUNT if maximum is None else maximum):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
        raise InvalidRequest(f"invalid {name} {value!r}: must be {bound}"
                             + ("" if maximum is not None else f" and at most {MAX_COUNT}"))
    return number


def _size(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool):
        raise InvalidRequest(f"invalid {name} {value!r}: expected a size like 512M")
    try:
        size = parse_size(str(value))
    except ValueError as exc:
        raise InvalidRequest(f"invalid {name} {value!r}: {exc}") from None
    if size != UNLIMITED and size < minimum:
        raise InvalidRequest(f"invalid {name} {value!r}: must be at least {human_size(minimum)}")
    if size != UNLIMITED and size > MAX_SIZE:
        raise InvalidRequest(f"invalid {name} {value!r}: at most {human_size(MAX_SIZE)} "
                             "(the largest limit the kernel takes; no host has that much), "
                             "or 'unlimited'")
    return size


def _split(value: Any) -> tuple[str, str]:
    text = str(value).strip()
    if text.count(":") > 1:
        raise InvalidRequest(f"invalid limit {value!r}: use 'barrier:limit' or one value")
    barrier, _, limit = text.partition(":")
    return (barrier, limit) if limit else (text, text)


def normalise(raw: Any, host_cpus: int) -> dict[str, int]:
    """Validate a set of changes; values are numbers, or UNLIMITED to remove a limit."""
    if not isinstance(raw, dict):
        raise InvalidRequest("limits must be an object like {\"ram\": \"512M\"}")
    unknown = sorted(set(raw) - set(LIMITS))
    if unknown:
        raise InvalidRequest(f"unknown limit(s) {', '.join(unknown)}; known: {', '.join(LIMITS)}")
    out: dict[str, int] = {}
    given = {k: v for k, v in raw.items() if v is not None}
    if "ram" in given:
        barrier, limit = _split(given["ram"])
        out["ram"] = _size("ram", limit, MIN_RAM)
        high = _size("ram barrier", barrier, MIN_RAM)
        if out["ram"] != UNLIMITED and (high == UNLIMITED or high > out["ram"]):
            raise InvalidRequest(f"invalid ram {given['ram']!r}: the barrier must not exceed the limit")
        out["ram_high"] = high if high != out["ram"] else UNLIMITED
    if "swap" in given:
        out["swap"] = _size("swap", given["swap"], 0)
    if "cpus" in given:
        out["cpus"] = _count("cpus", given["cpus"], 1)
        if out["cpus"] != UNLIMITED and out["cpus"] > host_cpus:
            raise InvalidRequest(f"invalid cpus {given['cpus']!r}: this host has only {host_cpus} CPU(s)")
    if "cpulimit" in given:
        out["cpulimit"] = _count("cpulimit", given["cpulimit"], 1)
        if out["cpulimit"] != UNLIMITED and out["cpulimit"] > 100 * host_cpus:
            raise InvalidRequest(f"invalid cpulimit {given['cpulimit']!r}: this host has only {host_cpus} "
                                 f"CPU(s), so at most {100 * host_cpus}")
    if "cpuunits" in given:
        out["cpuunits"] = _count("cpuunits", given["cpuunits"], 8, 500_000, allow_unlimited=False)
    if "numproc" in given:
        barrier, limit = _split(given["numproc"])
        out["numproc"] = _count("numproc", limit, 1, MAX_NUMPROC)
        if out["numproc"] != UNLIMITED and _count("numproc barrier", barrier, 1, MAX_NUMPROC) > out["numproc"]:
            raise InvalidRequest(f"invalid numproc {given['numproc']!r}: the barrier must not exceed the limit")
    if "numfile" in given:
        out["numfile"] = _count("numfile", given["numfile"], 16, nr_open())
    if "numpty" in given:
        out["numpty"] = _count("numpty", given["numpty"], 1, MAX_NUMPTY, allow_unlimited=False)
    if "iolimit" in given:
        out["iolimit"] = _size("iolimit", given["iolimit"], 4096)
    if "iopslimit" in given:
        out["iopslimit"] = _count("iopslimit", given["iopslimit"], 1)
    if "ioprio" in given:
        out["ioprio"] = _count("ioprio", given["ioprio"], 0, 7, allow_unlimited=False)
    if "diskspace" in given:
        barrier, limit = _split(given["diskspace"])  # OpenVZ's barrier:limit; the limit is enforced
        out["diskspace"] = _size("diskspace", limit, 1 << 20)
    return out


def check_stored(stored: Any, host_cpus: int) -> dict[str, int]:
    """A limit set in its stored form (bytes and counts, "ram_high" beside "ram"), as a backup's
    header carries it, validated like a request: it comes from a file anyone may have edited."""
    if not isinstance(stored, dict):
        raise InvalidRequest("limits must be an object like {\"ram\": 536870912}")
    if any(isinstance(v, bool) or not isinstance(v, (int, str)) for v in stored.values()):
        raise InvalidRequest("limits must be numbers")
    raw: dict[str, Any] = {k: v for k, v in stored.items() if k != "ram_high"}
    if "ram_high" in stored:
        if "ram" not in stored:
            raise InvalidRequest("limits: ram_high without ram")
        raw["ram"] = f"{stored['ram_high']}:{stored['ram']}"
    return merge({}, normalise(raw, host_cpus))


def merge(current: dict[str, int], changes: dict[str, int]) -> dict[str, int]:
    """The limits after a change; a removed limit disappears from the stored set."""
    merged = {**current, **changes}
    merged = {k: v for k, v in merged.items() if v != UNLIMITED}
    if "swap" in merged and "ram" not in merged:
        raise InvalidRequest("swap needs a ram limit (swap is counted on top of ram)")
    return merged


def nr_open() -> int:
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return 1048576


def pick_cpus(count: int, host_cpus: list[int], seed: int) -> str:
    """count CPUs, starting at a per-container offset so containers spread over the host."""
    start = seed % len(host_cpus)
    chosen = sorted((host_cpus * 2)[start:start + count])
    return ",".join(str(c) for c in chosen)


def ioprio_to_weight(prio: int) -> int:
    """OpenVZ ioprio 0..7 onto the cgroup io weight scale 100..1000 (4 -> 614)."""
    return round(100 + prio * 900 / 7)


def ioprio_unsupported(io_device: str | None, other_way: str = "drop --ioprio") -> str:
    """Why --ioprio cannot work on this host, and the two ways out."""
    disk = "DEV"
    if io_device is not None:
        with contextlib.suppress(OSError):
            disk = Path(f"/sys/dev/block/{io_device}").resolve().name
    return ("ioprio needs the bfq I/O scheduler (blkio.bfq.weight) or cgroup v2's io.weight; "
            f"this host has neither: load bfq (modprobe bfq; echo bfq > /sys/block/{disk}/queue/scheduler) "
            f"or {other_way}")


def check_io_weight(limits: dict[str, int], cgroups: CgroupManager, io_device: str | None) -> None:
    """--ioprio is refused up front on a host that has no io weight file (asked now)."""
    if "ioprio" in limits and cgroups.io_weight_file() is None:
        raise InvalidRequest(ioprio_unsupported(io_device))


def _value(limits: dict[str, int], removed: AbstractSet[str], key: str) -> int | None:
    if key in limits:
        return limits[key]
    return UNLIMITED if key in removed else None


def to_resources(limits: dict[str, int], host_cpus: list[int], seed: int,
                 io_device: str | None = None, removed: frozenset[str] = frozenset()) -> Resources:
    """The cgroup settings for a stored limit set; keys in removed are reset to unlimited."""
    cpuset = None
    if "cpus" in limits:
        cpuset = pick_cpus(limits["cpus"], host_cpus, seed)
    elif "cpus" in removed:
        cpuset = ",".join(str(c) for c in host_cpus)
    weight = None
    if "cpuunits" in limits:
        weight = max(1, min(10_000, limits["cpuunits"] // 10))
    elif "cpuunits" in removed:
        weight = CPUUNITS_DEFAULT // 10
    io_limits: tuple[IoLimit, ...] = ()
    if io_device and ({"iolimit", "iopslimit"} & (set(limits) | removed)):
        bps = _value(limits, removed, "iolimit")
        iops = _value(limits, removed, "iopslimit")
        io_limits = (IoLimit(io_device, rbps=bps, wbps=bps, riops=iops, wiops=iops),)
    io_weight = None
    if "ioprio" in limits:
        io_weight = ioprio_to_weight(limits["ioprio"])
    elif "ioprio" in removed:
        io_weight = ioprio_to_weight(4)
    return Resources(
        memory_max=_value(limits, removed, "ram"),
        memory_high=(_value(limits, removed, "ram_high")
                     if ("ram_high" in limits or "ram" in limits or "ram" in removed) else None),
        swap_max=_value(limits, removed, "swap"),
        cpuset=cpuset,
        cpu_quota_pct=_value(limits, removed, "cpulimit"),
        cpu_weight=weight,
        pids_max=_value(limits, removed, "numproc"),
        io_weight=io_weight,
        io_limits=io_limits,
    )


def _mount_source(path: Path) -> str | None:
    """The source of the mount holding path (/dev/loop0 for ctd's pool), from mountinfo."""
    best, source = "", None
    target = str(path.resolve())
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        mountpoint = fields[4].replace("\\040", " ")
        if (target == mountpoint or target.startswith(mountpoint.rstrip("/") + "/")) and len(mountpoint) >= len(best):
            best, source = mountpoint, fields[fields.index("-") + 2]
    return source


def block_device_of(path: Path) -> str | None:
    """'MAJ:MIN' of the whole disk holding path (io limits apply to disks, not partitions).

    btrfs reports an anonymous st_dev, so the mount's source device is asked first."""
    source = _mount_source(path)
    try:
        if source and source.startswith("/dev/"):
            dev = os.stat(source).st_rdev
        else:
            dev = os.stat(path).st_dev
    except OSError:
        return None
    major, minor = os.major(dev), os.minor(dev)
    sys_dev = Path(f"/sys/dev/block/{major}:{minor}")
    if not sys_dev.exists():
        return None  # not a block device (tmpfs, overlay …)
    if (sys_dev / "partition").exists():
        try:
            return (sys_dev.resolve().parent / "dev").read_text().strip()
        except OSError:
            return None
    return f"{major}:{minor}"


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    if n == UNLIMITED:
        return "unlimited"
    for unit, scale in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


SIZE_KEYS = frozenset({"ram", "ram_high", "swap", "iolimit", "diskspace"})


def shown(limits: dict[str, int]) -> dict[str, Any]:
    """Limits as a person reads them: sizes with units."""
    out: dict[str, Any] = {}
    for key, value in limits.items():
        out[key] = human_size(value) if key in SIZE_KEYS else value
    if "ram_high" in out:
        out["ram"] = f"{out.pop('ram_high')}:{out['ram']}"
    return out
