"""Typed shapes of what the instance rooms hand across module boundaries and the API answers
with (JSON objects: TypedDicts, so the bytes on the wire are what they were as plain dicts).

Pure types: this module imports nothing from ctd, so any room (and the kinds) may use it.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


class LiveSnapshot(TypedDict):
    """What a kind says of a snapshot it took of a running instance (vm/livesnap.py)."""

    live: bool
    consistency: str     # filesystems frozen by the guest agent, or crash-consistent
    paused_ms: float     # how long the vCPUs stood still (0: the guest was paused already)
    copy_ms: float
    notes: list[str]


class SnapshotTaken(TypedDict):
    """POST /1.0/instances/REF/snapshots's result: the names, and a live snapshot's facts."""

    instance: str
    snapshot: str
    live: NotRequired[bool]
    consistency: NotRequired[str]
    paused_ms: NotRequired[float]
    copy_ms: NotRequired[float]
    notes: NotRequired[list[str]]


class BeancounterRow(TypedDict):
    """One row of OpenVZ's /proc/user_beancounters (GET /1.0/instances/REF/beancounters, metrics)."""

    name: str
    held: int
    maxheld: int
    barrier: int
    limit: int
    failcnt: int
