"""Failed authentications per source: after too many in a window, the source waits (429)."""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field


def source_key(address: str) -> str:
    """An IPv6 client owns its whole /64: one bucket per /64, else it could walk its addresses."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass
class _Source:
    failures: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0


class FailureLimiter:
    """`max_failures` failures within `window` seconds block a source for `block` seconds.
    At most `max_sources` sources are tracked (the least recently seen are forgotten first)."""

    def __init__(self, max_failures: int = 10, window: float = 60.0, block: float = 300.0,
                 max_sources: int = 10000, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window = window
        self.block = block
        self.max_sources = max_sources
        self.clock = clock
        self._sources: OrderedDict[str, _Source] = OrderedDict()

    def retry_after(self, address: str) -> float:
        """Seconds the source must still wait; 0 when it may try."""
        source = self._sources.get(source_key(address))
        if source is None:
            return 0.0
        return max(0.0, source.blocked_until - self.clock())

    def failed(self, address: str) -> bool:
        """Count a failure; True when it blocks the source."""
        key = source_key(address)
        now = self.clock()
        source = self._sources.pop(key, None) or _Source()
        self._sources[key] = source  # most recent last
        while len(self._sources) > self.max_sources:
            self._sources.popitem(last=False)
        source.failures.append(now)
        while source.failures and source.failures[0] <= now - self.window:
            source.failures.popleft()
        if len(source.failures) >= self.max_failures:
            source.failures.clear()
            source.blocked_until = now + self.block
            return True
        return False
