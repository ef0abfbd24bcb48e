"""Allocation of each container's private 65536-id range on the host.

Ranges never overlap each other, the host's system ids, or what /etc/subuid and /etc/subgid
give to host users — so root in one container is nobody on the host and in any other.
"""

from __future__ import annotations

from pathlib import Path

from ctd.errors import OperationFailed

MAX_ID = 2**32 - 2  # 4294967295 is (uid_t)-1


def subid_ranges(*files: Path) -> list[tuple[int, int]]:
    """(start, count) from subuid/subgid-style files; unreadable or bad lines are skipped."""
    ranges = []
    for path in files:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                ranges.append((int(parts[1]), int(parts[2])))
    return ranges


def allocate(base: int, size: int, taken: set[int], reserved: list[tuple[int, int]],
             limit: int = MAX_ID + 1) -> int:
    """The lowest range start >= base, aligned to size, ending at or below limit, overlapping
    nothing taken or reserved. One sweep over the sorted ranges: with a thousand containers a
    create must not compare every candidate slot with every taken range."""
    busy = sorted([(t, t + size) for t in taken] + [(r, r + n) for r, n in reserved])
    start = base
    end_max = min(limit, MAX_ID + 1)
    for lo, hi in busy:
        if start + size > end_max or lo >= start + size:
            break  # (sorted by lo: nothing later reaches back into this slot)
        if start < hi:  # overlaps this slot: the first aligned slot past it
            start = base + -(-(hi - base) // size) * size
    if start + size <= end_max:
        return start
    raise OperationFailed("no free id range left for a new container; destroy unused containers "
                          "or raise idmap_end in ctd.toml")
