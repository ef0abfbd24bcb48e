"""Parsing of OpenVZ-style sizes, counts, barrier:limit pairs and cpu lists."""
from __future__ import annotations

import re
from fractions import Fraction
from typing import Final

# One sentinel for "no limit" everywhere; each backend writes it as its kernel expects
# ("max" on v2, -1 or 0 on v1).
UNLIMITED: Final[int] = -1

_UNLIMITED_WORDS: Final = frozenset({"unlimited", "max"})
_SIZE_RE: Final = re.compile(r"^(\d+(?:\.\d+)?)([kmgt]?)(b|ib)?$", re.IGNORECASE)
_SHIFT: Final = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}
_CPULIST_RE: Final = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def parse_size(text: str) -> int:
    """'64M' -> 67108864. Binary units K/M/G/T, optional B or iB, or 'unlimited'."""
    s = text.strip()
    if s.lower() in _UNLIMITED_WORDS:
        return UNLIMITED
    m = _SIZE_RE.match(s)
    # "64iB" without a unit letter is not a size anyone writes on purpose.
    if m is None or (not m.group(2) and (m.group(3) or "").lower() == "ib"):
        raise ValueError(
            f"invalid size '{text}': use a number with an optional K, M, G or T suffix, "
            "or 'unlimited'"
        )
    return int(Fraction(m.group(1)) * (1 << _SHIFT[m.group(2).lower()]))


def parse_count(text: str) -> int:
    """'20' -> 20, 'unlimited' -> UNLIMITED."""
    s = text.strip()
    if s.lower() in _UNLIMITED_WORDS:
        return UNLIMITED
    if not s.isdigit():
        raise ValueError(f"invalid count '{text}': use a whole number or 'unlimited'")
    return int(s)


def parse_limit(text: str, *, size: bool = False) -> tuple[int, int]:
    """OpenVZ 'barrier:limit' -> (barrier, limit); one value means barrier == limit.

    `size=True` parses each half with parse_size (units allowed), else as a count.
    """
    parse = parse_size if size else parse_count
    parts = text.split(":")
    if len(parts) > 2:
        raise ValueError(f"invalid limit '{text}': use 'barrier:limit' or a single value")
    barrier = parse(parts[0])
    limit = parse(parts[-1])
    if limit != UNLIMITED and (barrier == UNLIMITED or barrier > limit):
        raise ValueError(f"invalid limit '{text}': the barrier is above the limit")
    return barrier, limit


def is_cpulist(text: str) -> bool:
    return bool(_CPULIST_RE.match(text.strip()))


def parse_cpulist(text: str) -> list[int]:
    """Kernel cpu list '0-2,5' -> [0, 1, 2, 5]; empty text -> []."""
    s = text.strip()
    if not s:
        return []
    if not is_cpulist(s):
        raise ValueError(f"invalid cpu list '{text}': use a form like '0-3,6'")
    cpus: set[int] = set()
    for part in s.split(","):
        lo, _, hi = part.partition("-")
        first, last = int(lo), int(hi or lo)
        if last < first:
            raise ValueError(f"invalid cpu list '{text}': range {part} runs backwards")
        cpus.update(range(first, last + 1))
    return sorted(cpus)
