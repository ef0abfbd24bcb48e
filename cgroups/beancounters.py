"""OpenVZ's /proc/user_beancounters rebuilt from cgroup counters."""
from __future__ import annotations

from typing import Final

from .model import Beancounter, Resources, Usage
from .units import UNLIMITED

LONG_MAX: Final = 9_223_372_036_854_775_807   # how OpenVZ prints "unlimited"


def _n(v: int | None) -> int:
    return 0 if v is None else v


def _lim(v: int | None) -> int:
    return UNLIMITED if v is None else v


def build_beancounters(u: Usage, lim: Resources) -> list[Beancounter]:
    """Rows: physpages/swappages in bytes, numproc in processes, cpu in microseconds of
    cpu time (barrier/limit = cpu_quota_pct, failcnt = throttled periods), io in bytes."""
    mem_limit = _lim(lim.memory_max)
    mem_barrier = mem_limit if lim.memory_high in (None, UNLIMITED) else _lim(lim.memory_high)
    cpu_us = 0 if u.cpu_seconds is None else round(u.cpu_seconds * 1e6)
    io_bytes = _n(u.io_read_bytes) + _n(u.io_write_bytes)
    swap = _lim(lim.swap_max)
    pids = _lim(lim.pids_max)
    cpu = _lim(lim.cpu_quota_pct)
    return [
        Beancounter("physpages", _n(u.memory_current), _n(u.memory_peak), mem_barrier,
                    mem_limit, _n(u.memory_failcnt)),
        Beancounter("swappages", _n(u.swap_current), _n(u.swap_peak), swap, swap,
                    _n(u.swap_failcnt)),
        Beancounter("numproc", _n(u.pids_current), _n(u.pids_peak), pids, pids,
                    _n(u.pids_failcnt)),
        Beancounter("cpu", cpu_us, cpu_us, cpu, cpu, _n(u.cpu_nr_throttled)),
        Beancounter("io", io_bytes, io_bytes, UNLIMITED, UNLIMITED, 0),
    ]


def format_beancounters(rows: list[Beancounter], uid: int | str) -> str:
    """The rows in /proc/user_beancounters layout (unlimited printed as LONG_MAX)."""
    def v(x: int) -> str:
        return str(LONG_MAX if x == UNLIMITED else x)

    head = (f"{'uid':>10}  {'resource':<12}{'held':>20}{'maxheld':>20}"
            f"{'barrier':>20}{'limit':>20}{'failcnt':>10}")
    lines = [head]
    for i, r in enumerate(rows):
        who = f"{uid}:" if i == 0 else ""
        lines.append(f"{who:>10}  {r.name:<12}{v(r.held):>20}{v(r.maxheld):>20}"
                     f"{v(r.barrier):>20}{v(r.limit):>20}{r.failcnt:>10}")
    return "\n".join(lines) + "\n"
