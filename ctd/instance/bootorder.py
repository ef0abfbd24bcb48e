"""Autostart settings of an instance (onboot, boot order, boot delay): their checks and the
order they give.

Contract: `check_boot(body)` reads the optional keys "onboot", "boot_order", "boot_delay" and
"stop_timeout" (how long a stop of it waits before it kills) of
a create or set body and returns a BootSettings with only the given ones set (4xx naming the
range on bad input). `boot_groups(records)` orders records for a host boot: groups of equal
boot_order, lowest first; `shutdown_groups` is the reverse. Pure: no I/O, no daemon parts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ctd.errors import InvalidRequest
from ctd.state import InstanceRecord

BOOT_FIELDS = frozenset({"onboot", "boot_order", "boot_delay", "stop_timeout"})
MAX_BOOT_ORDER = 10000
# As in Proxmox, an instance given no order starts after every ordered one (and stops first).
DEFAULT_BOOT_ORDER = MAX_BOOT_ORDER
MAX_BOOT_DELAY = 3600
MAX_STOP_TIMEOUT = 3600
SERVER_DEFAULT = -1  # stop_timeout "default": back to the server's stop_timeout


@dataclass(frozen=True)
class BootSettings:
    """The autostart settings a request gave (None: not given, keep what the instance has)."""

    onboot: bool | None = None
    boot_order: int | None = None
    boot_delay: int | None = None
    stop_timeout: int | None = None  # SERVER_DEFAULT: the server's again

    @property
    def given(self) -> bool:
        return (self.onboot is not None or self.boot_order is not None or self.boot_delay is not None
                or self.stop_timeout is not None)

    def apply(self, rec: InstanceRecord) -> None:
        if self.onboot is not None:
            rec.onboot = self.onboot
        if self.boot_order is not None:
            rec.boot_order = self.boot_order
        if self.boot_delay is not None:
            rec.boot_delay = self.boot_delay
        if self.stop_timeout is not None:
            rec.stop_timeout = None if self.stop_timeout == SERVER_DEFAULT else self.stop_timeout


def _yes_no(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("yes", "no", "true", "false"):
        return value.lower() in ("yes", "true")
    raise InvalidRequest("onboot must be yes or no (true or false)")


def _whole(body: dict[str, Any], key: str, high: int, what: str) -> int:
    value = body[key]
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise InvalidRequest(f"{key} must be a whole number from 0 to {high} ({what}), not {body[key]!r}")
    return value


def check_boot(body: dict[str, Any]) -> BootSettings:
    """The autostart keys of a create/set body, checked."""
    return BootSettings(
        onboot=_yes_no(body["onboot"]) if body.get("onboot") is not None else None,
        boot_order=(_whole(body, "boot_order", MAX_BOOT_ORDER, "lower starts first")
                    if body.get("boot_order") is not None else None),
        boot_delay=(_whole(body, "boot_delay", MAX_BOOT_DELAY, "seconds to wait after it started")
                    if body.get("boot_delay") is not None else None),
        stop_timeout=_stop_timeout(body) if body.get("stop_timeout") is not None else None)


def _stop_timeout(body: dict[str, Any]) -> int:
    if body["stop_timeout"] == "default":
        return SERVER_DEFAULT
    return _whole(body, "stop_timeout", MAX_STOP_TIMEOUT,
                  "seconds a stop waits before it kills, or 'default' for the server's stop_timeout")


def boot_groups(records: Iterable[InstanceRecord]) -> list[list[InstanceRecord]]:
    """Groups of equal boot_order, lowest order first; within a group by id (stable)."""
    groups: dict[int, list[InstanceRecord]] = {}
    for rec in sorted(records, key=lambda r: (r.boot_order, r.id)):
        groups.setdefault(rec.boot_order, []).append(rec)
    return [groups[order] for order in sorted(groups)]


def shutdown_groups(records: Iterable[InstanceRecord]) -> list[list[InstanceRecord]]:
    """The reverse of boot_groups: the highest order stops first."""
    return list(reversed(boot_groups(records)))
