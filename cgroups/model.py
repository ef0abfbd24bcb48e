"""Plain data: what to limit (Resources), what was used (Usage), the beancounter row."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from .errors import CgroupError
from .units import UNLIMITED, is_cpulist

CPU_PERIOD_US: Final = 100_000
_DEVICE_RE: Final = re.compile(r"^\d+:\d+$")

# systemd's mapping between CPUWeight= (v2) and CPUShares= (v1): weight 100 == 1024 shares.
CPU_WEIGHT_MIN, CPU_WEIGHT_DEFAULT, CPU_WEIGHT_MAX = 1, 100, 10_000
CPU_SHARES_MIN, CPU_SHARES_DEFAULT, CPU_SHARES_MAX = 2, 1024, 262_144


def cpu_weight_to_shares(weight: int) -> int:
    """systemd's cgroup_cpu_weight_to_shares(): scale, then clamp to the v1 range."""
    shares = weight * CPU_SHARES_DEFAULT // CPU_WEIGHT_DEFAULT
    return max(CPU_SHARES_MIN, min(CPU_SHARES_MAX, shares))


def cpu_shares_to_weight(shares: int) -> int:
    """systemd's cgroup_cpu_shares_to_weight()."""
    weight = shares * CPU_WEIGHT_DEFAULT // CPU_SHARES_DEFAULT
    return max(CPU_WEIGHT_MIN, min(CPU_WEIGHT_MAX, weight))


def _check_amount(name: str, value: int | None, *, minimum: int = 0) -> None:
    if value is None or value == UNLIMITED:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CgroupError(f"{name}={value!r}: use a whole number >= {minimum} or UNLIMITED")


@dataclass(frozen=True)
class IoLimit:
    """Bandwidth / IOPS limits on one block device ("MAJ:MIN"); None leaves a field as is."""

    device: str
    rbps: int | None = None
    wbps: int | None = None
    riops: int | None = None
    wiops: int | None = None

    def __post_init__(self) -> None:
        if not _DEVICE_RE.match(self.device):
            raise CgroupError(f"io limit device {self.device!r}: use 'MAJOR:MINOR', e.g. '8:0'")
        for name in ("rbps", "wbps", "riops", "wiops"):
            # 0 would mean "remove the rule" on v1 but "stall" on v2, so refuse it.
            _check_amount(f"io_limits[{self.device}].{name}", getattr(self, name), minimum=1)

    def items(self) -> list[tuple[str, int]]:
        """(kind, value) for the fields that are set, kind in rbps/wbps/riops/wiops."""
        return [(k, v) for k in ("rbps", "wbps", "riops", "wiops")
                if (v := getattr(self, k)) is not None]


class DeviceType(str, Enum):
    CHAR = "c"
    BLOCK = "b"
    ALL = "a"   # both kinds (v1's "a")


DEVICE_ACCESS: Final = "rwm"   # read, write, mknod
_MAX_MAJOR: Final = (1 << 12) - 1   # the kernel's dev_t: 12-bit major, 20-bit minor
_MAX_MINOR: Final = (1 << 20) - 1


@dataclass(frozen=True)
class DeviceRule:
    """One entry of a device allow-list: kind, major and minor (None = any) and access."""

    type: DeviceType
    major: int | None
    minor: int | None
    access: str

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "type", DeviceType(self.type))
        except ValueError:
            raise CgroupError(f"device rule type {self.type!r}: use 'c', 'b' or 'a'") from None
        for name, value, top in (("major", self.major, _MAX_MAJOR), ("minor", self.minor, _MAX_MINOR)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 0 <= value <= top):
                raise CgroupError(f"device rule {name}={value!r}: use 0..{top} or None for any")
        if (not self.access or len(set(self.access)) != len(self.access)
                or set(self.access) - set(DEVICE_ACCESS)):
            raise CgroupError(f"device rule access {self.access!r}: use letters of {DEVICE_ACCESS!r}, once each")
        if self.type is DeviceType.ALL and (self.major, self.minor) != (None, None):
            raise CgroupError("device rule of type 'a' covers every device: no major or minor")

    def v1_line(self) -> str:
        """As devices.allow takes it: 'c 1:3 rwm', 'b *:* m', 'a *:* rwm'."""
        def part(n: int | None) -> str:
            return "*" if n is None else str(n)
        return f"{self.type.value} {part(self.major)}:{part(self.minor)} {self.access}"


@dataclass(frozen=True)
class Resources:
    """Limits for one group. None = leave as is; UNLIMITED = remove the limit."""

    cpuset: str | None = None          # kernel cpu list, e.g. "0-1"
    cpu_quota_pct: int | None = None   # percent of ONE cpu; 200 = two cpus' worth
    cpu_weight: int | None = None      # 1..10000, default 100 (cpuunits-like)
    memory_max: int | None = None      # bytes
    memory_high: int | None = None     # bytes; v1 soft limit
    swap_max: int | None = None        # bytes of swap on top of memory_max
    pids_max: int | None = None
    io_weight: int | None = None       # 10..1000
    io_limits: tuple[IoLimit, ...] = ()

    def __post_init__(self) -> None:
        if self.cpuset is not None and not is_cpulist(self.cpuset):
            raise CgroupError(f"cpuset={self.cpuset!r}: use a cpu list like '0-1,3'")
        _check_amount("cpu_quota_pct", self.cpu_quota_pct, minimum=1)
        if self.cpu_weight is not None and not (
            CPU_WEIGHT_MIN <= self.cpu_weight <= CPU_WEIGHT_MAX
        ):
            raise CgroupError(f"cpu_weight={self.cpu_weight}: use 1..10000 (default 100)")
        for name in ("memory_max", "memory_high", "swap_max", "pids_max"):
            _check_amount(name, getattr(self, name))
        if self.io_weight is not None and not 10 <= self.io_weight <= 1000:
            raise CgroupError(f"io_weight={self.io_weight}: use 10..1000 (default 100)")
        if not isinstance(self.io_limits, tuple):
            object.__setattr__(self, "io_limits", tuple(self.io_limits))
        devices = [lim.device for lim in self.io_limits]
        if len(devices) != len(set(devices)):
            raise CgroupError("io_limits: one entry per device")

    def merged(self, newer: Resources) -> Resources:
        """This, with every field that `newer` sets taken from `newer`."""
        changes: dict[str, Any] = {
            f.name: getattr(newer, f.name) for f in dataclasses.fields(self)
            if getattr(newer, f.name) not in (None, ())
        }
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; fields left None are omitted."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "io_limits":
                if value:
                    out[f.name] = [dataclasses.asdict(lim) for lim in value]
            elif value is not None:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Resources:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise CgroupError(f"unknown resource field(s): {', '.join(sorted(unknown))}")
        args = dict(data)
        args["io_limits"] = tuple(IoLimit(**lim) for lim in data.get("io_limits", ()))
        return cls(**args)


@dataclass(frozen=True)
class Usage:
    """Counters of one group. None = this host has no such counter."""

    cpu_seconds: float | None = None
    cpu_throttled_seconds: float | None = None
    cpu_nr_throttled: int | None = None
    memory_current: int | None = None
    memory_peak: int | None = None
    memory_failcnt: int | None = None   # times usage hit the limit (v2: memory.events max)
    oom_kills: int | None = None
    swap_current: int | None = None
    swap_peak: int | None = None
    swap_failcnt: int | None = None
    pids_current: int | None = None
    pids_peak: int | None = None
    pids_failcnt: int | None = None     # forks refused (pids.events max)
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    io_read_ios: int | None = None
    io_write_ios: int | None = None


@dataclass(frozen=True)
class Beancounter:
    """One row of OpenVZ's /proc/user_beancounters. Unlimited barrier/limit = UNLIMITED."""

    name: str
    held: int
    maxheld: int
    barrier: int
    limit: int
    failcnt: int

