"""Limit events: a beancounter's failcnt that grew, an OOM kill.

The counters are the ones `ctctl beancounters` and the metrics read from each running
instance's cgroup (cgroups.Usage): physpages (memory failcnt; v2: memory.events max), swappages,
numproc (forks refused: pids.events max) and oom_kill (the OOM killer's count). The watcher reads
them every POLL_SECONDS (1 s) — only while someone is subscribed to events: with no listener it
reads nothing. When the first subscriber arrives it takes the current values as the baseline at
once (in the event loop, before the subscription returns), so growth after that is reported.
A new run starts from zero (its cgroup is new); at an instance's exit the OOM count its driver
read just before the cgroup went is compared too, so an OOM kill that ended the instance between
two reads is still reported, before the exit event.

Event metadata: resource (physpages, swappages, numproc, oom_kill), failcnt (the new count),
previous, delta.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Protocol

from cgroups import CgroupGroup, Usage
from ctd.errors import CtdError
from ctd.events.bus import EventBus
from ctd.events.model import Event, EventType, Lifecycle, project_of
from ctd.state import InstanceRecord, PowerState, StateDB

log = logging.getLogger("ctd.events")
POLL_SECONDS = 1.0
COUNTERS = {"memory_failcnt": "physpages", "swap_failcnt": "swappages", "pids_failcnt": "numproc",
            "oom_kills": "oom_kill"}
Counts = dict[str, int]


class Instances(Protocol):
    """What the watcher reads of the instance manager."""

    db: StateDB

    def is_running(self, rec: InstanceRecord) -> bool: ...
    def group_of(self, rec: InstanceRecord) -> CgroupGroup: ...


def counts(usage: Usage) -> Counts:
    return {name: int(getattr(usage, field) or 0) for field, name in COUNTERS.items()}


def _read(groups: Iterable[tuple[str, str, CgroupGroup]]) -> list[tuple[str, str, Counts]]:
    out = []
    for name, project, group in groups:
        with contextlib.suppress(OSError, ValueError, CtdError):   # it stopped under us
            out.append((name, project, counts(group.usage())))
    return out


class LimitWatcher:
    def __init__(self, bus: EventBus, instances: Instances, interval: float = POLL_SECONDS) -> None:
        self.bus, self.instances, self.interval = bus, instances, interval
        self._seen: dict[str, Counts] = {}
        bus.tap(self._on_event)
        bus.on_first_subscriber(self.prime)

    def _running(self) -> list[tuple[str, str, CgroupGroup]]:
        out = []
        for rec in self.instances.db.list_instances():
            if rec.state in (PowerState.RUNNING, PowerState.SUSPENDED, PowerState.STOPPING):
                with contextlib.suppress(OSError, CtdError):
                    if self.instances.is_running(rec):
                        out.append((rec.name, project_of(rec), self.instances.group_of(rec)))
        return out

    def prime(self) -> None:
        """Baselines of every running instance, now (the first subscriber arrived)."""
        self._seen = {name: values for name, _, values in _read(self._running())}

    def compare(self, name: str, project: str, values: Counts) -> None:
        """Publish an event per counter of `name` that grew since it was last seen."""
        before = self._seen.get(name)
        self._seen[name] = {**(before or {}), **values}
        if before is None:
            return   # first sight (adopted, or started while nobody listened): a baseline only
        for resource, value in values.items():
            previous = before.get(resource, 0)
            if value > previous:
                self.bus.publish(Event(EventType.LIMIT, name, project, {
                    "resource": resource, "failcnt": value, "previous": previous, "delta": value - previous}))

    def _on_event(self, event: Event) -> None:
        name = event.instance
        if name is None or event.project is None:
            return
        if event.type is EventType.LIFECYCLE:
            action = event.metadata.get("action")
            if action == Lifecycle.STARTED.value:
                self._seen[name] = dict.fromkeys(COUNTERS.values(), 0)   # a new run, a new cgroup
            elif action in (Lifecycle.STOPPED.value, Lifecycle.DESTROYED.value):
                self._seen.pop(name, None)
            elif action == Lifecycle.RENAMED.value:
                old = event.metadata.get("old_name")
                if isinstance(old, str) and old in self._seen:
                    self._seen[name] = self._seen.pop(old)
        elif event.type is EventType.EXIT and self.bus.listening:
            oom = event.metadata.get("oom_kills")
            if isinstance(oom, int) and name in self._seen:
                self.compare(name, event.project, {"oom_kill": oom})

    async def run(self) -> None:
        """Poll while anyone listens (the daemon runs this for its life)."""
        while True:
            await asyncio.sleep(self.interval)
            if not self.bus.listening:
                continue
            try:
                groups = self._running()
                for name, project, values in await asyncio.to_thread(_read, groups):
                    if name in self._seen or self.bus.listening:
                        self.compare(name, project, values)
            except Exception:  # noqa: BLE001 — a bad read must not end the watcher
                log.exception("reading the limit counters failed")
