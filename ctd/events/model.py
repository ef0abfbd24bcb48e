"""One event of GET /1.0/events, and the project an instance belongs to.

An event is plain data: its type (lifecycle, operation, limit, exit, log), when, the instance
it is about (None: the host's), that instance's project (None: host-wide, admins only), and
type-specific metadata (docs/api.md lists each type's fields). `seq` is the bus's counter: it
grows by one per event published, so a client sees a gap only where its filter (types, instance,
project) left events out, never because one was dropped.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from ctd.remote.identity import DEFAULT_PROJECT
from ctd.state import InstanceRecord


class EventType(str, Enum):
    LIFECYCLE = "lifecycle"   # an instance's state or settings changed (created, started, …)
    OPERATION = "operation"   # an operation was created, made progress, succeeded or failed
    LIMIT = "limit"           # a beancounter's failcnt grew, the OOM killer ended a process
    EXIT = "exit"             # how an instance's run ended (ctd/instance/exits.py)
    LOG = "log"               # a warning or error ctd logged


class Lifecycle(str, Enum):
    """The actions of lifecycle events (metadata.action)."""

    CREATED = "created"
    STARTED = "started"
    STOPPED = "stopped"
    SUSPENDED = "suspended"
    RESUMED = "resumed"
    RENAMED = "renamed"
    DESTROYED = "destroyed"
    SET = "set"
    REINSTALLED = "reinstalled"
    SNAPSHOT_CREATED = "snapshot-created"
    SNAPSHOT_DELETED = "snapshot-deleted"
    ROLLED_BACK = "rolled-back"


def project_of(rec: InstanceRecord) -> str:
    """The project an instance belongs to: the one place events (and their filter) learn it."""
    return getattr(rec, "project", None) or DEFAULT_PROJECT


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Event:
    type: EventType
    instance: str | None
    project: str | None
    metadata: Mapping[str, object] = field(default_factory=dict)  # JSON: what the event type says
    timestamp: str = field(default_factory=now)
    seq: int = 0

    def numbered(self, seq: int) -> Event:
        return dataclasses.replace(self, seq=seq)

    def to_json(self) -> dict[str, object]:
        return {"type": self.type.value, "seq": self.seq, "timestamp": self.timestamp,
                "project": self.project, "instance": self.instance, "metadata": self.metadata}


def lifecycle(rec: InstanceRecord, action: Lifecycle, **metadata: object) -> Event:
    return Event(EventType.LIFECYCLE, rec.name, project_of(rec),
                 {"action": action.value, "type": rec.type.value, "state": rec.state.value, **metadata})
