"""The event bus, its queues and filters, and what publishes into it (no daemon: fakes for the
instances; tests/host/test_events.py runs the real thing)."""
from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from cgroups import Usage
from ctd.api.events import matcher, parse_types
from ctd.config import load_config
from ctd.errors import Conflict, InvalidRequest
from ctd.events.bus import UNRESOLVED, EventBus, SlowClient
from ctd.events.limits import LimitWatcher
from ctd.events.logs import EventLogHandler
from ctd.events.model import Event, EventType, Lifecycle, lifecycle, project_of
from ctd.operations import Operations
from ctd.remote.identity import Identity, IdentityKind, Role
from ctd.remote.scope import event_visible
from ctd.state import InstanceRecord, InstanceType, PowerState
from ctctl.monitor import event_line


def ev(name: str | None = "web", project: str | None = "default", kind: EventType = EventType.LIFECYCLE,
       **meta: Any) -> Event:
    return Event(kind, name, project, meta)


def rec(name: str = "web") -> InstanceRecord:
    return InstanceRecord(id=101, name=name, type=InstanceType.CONTAINER, template="busybox", hostname=name,
                          privileged=False, idmap_base=None, state=PowerState.RUNNING)


def drain(sub: Any) -> list[Event]:
    async def take() -> list[Event]:
        out = []
        while sub.pending():
            out.append(await sub.next())
        return out
    return asyncio.run(take())


# ------------------------------------------------------------------ the bus

def test_every_subscriber_gets_every_event_numbered_and_in_order() -> None:
    bus = EventBus()
    a, b = bus.subscribe(lambda e: True), bus.subscribe(lambda e: e.instance == "db")
    for i in range(100):
        bus.publish(ev("web" if i % 2 else "db", action=str(i)))
    got = drain(a)
    assert [e.seq for e in got] == list(range(1, 101))
    assert [e.metadata["action"] for e in got] == [str(i) for i in range(100)]
    assert [e.metadata["action"] for e in drain(b)] == [str(i) for i in range(0, 100, 2)]


def test_a_full_queue_cuts_the_client_off_with_a_reason_and_never_skips() -> None:
    bus = EventBus(queue_size=3)
    slow, fine = bus.subscribe(lambda e: True), bus.subscribe(lambda e: True)
    for _ in range(3):
        bus.publish(ev())
    assert slow.cut is None and drain(fine) and fine.pending() == 0
    bus.publish(ev())   # the 4th: slow's queue is full
    assert slow.cut is not None and "too slow: 3 events waited unread (event 4" in slow.cut
    assert slow.cut_event.is_set()
    bus.publish(ev())
    assert slow.pending() == 3   # nothing after the cut is queued …

    async def next_of_slow() -> Event:
        return await slow.next()
    with pytest.raises(SlowClient, match="reconnect"):   # … and nothing more is handed out
        asyncio.run(next_of_slow())
    assert [e.seq for e in drain(fine)] == [4, 5] and fine.cut is None


def test_a_closed_subscription_gets_nothing_more() -> None:
    bus = EventBus()
    sub = bus.subscribe(lambda e: True)
    sub.close()
    bus.publish(ev())
    assert sub.pending() == 0 and bus.listening == 0


def test_publishing_from_another_thread_runs_in_the_loop_in_order() -> None:
    async def main() -> list[Event]:
        bus = EventBus()
        bus.bind(asyncio.get_running_loop())
        sub = bus.subscribe(lambda e: True)
        seen_in: list[int] = []
        bus.tap(lambda e: seen_in.append(threading.get_ident()))
        thread = threading.Thread(target=lambda: [bus.publish(ev(action=str(i))) for i in range(50)])
        thread.start()
        await asyncio.to_thread(thread.join)
        await asyncio.sleep(0.05)
        assert set(seen_in) == {threading.get_ident()}
        return [await sub.next() for _ in range(50)]
    got = asyncio.run(main())
    assert [e.metadata["action"] for e in got] == [str(i) for i in range(50)]


def test_unresolved_projects_come_from_the_resolver_and_unknown_names_are_host_wide() -> None:
    bus = EventBus(resolve=lambda name: "acme" if name == "web" else None)
    sub = bus.subscribe(lambda e: True)
    bus.publish(ev("web", UNRESOLVED))
    bus.publish(ev("GET", UNRESOLVED))
    known, unknown = drain(sub)
    assert (known.instance, known.project) == ("web", "acme")
    assert (unknown.instance, unknown.project) == (None, None)


def test_a_tap_may_publish_first() -> None:
    bus = EventBus()
    sub = bus.subscribe(lambda e: True)

    def tap(e: Event) -> None:
        if e.type is EventType.EXIT:
            bus.publish(ev(kind=EventType.LIMIT))
    bus.tap(tap)
    bus.publish(ev(kind=EventType.EXIT))
    assert [(e.type, e.seq) for e in drain(sub)] == [(EventType.LIMIT, 1), (EventType.EXIT, 2)]


# ------------------------------------------------------------------ who sees what

def who(role: Role, project: str = "default") -> Identity:
    return Identity("x", IdentityKind.TOKEN, role, project)


@pytest.mark.parametrize("identity,event,seen", [
    (None, ev(project="acme"), True),                       # the API without remote access: local admin
    (who(Role.ADMIN, "acme"), ev(project="default"), True),
    (who(Role.ADMIN), ev(None, None), True),                # host-wide: admins
    (who(Role.TENANT), ev(project="default"), True),
    (who(Role.TENANT, "acme"), ev(project="default"), False),
    (who(Role.OPERATOR, "acme"), ev(project="default"), False),
    (who(Role.OPERATOR), ev(None, None), False),
    (who(Role.TENANT), ev(None, None), False),
    (who(Role.TENANT, "acme"), ev(project="acme"), True),
])
def test_event_visible(identity: Identity | None, event: Event, seen: bool) -> None:
    assert event_visible(identity, event) is seen


def test_project_of_is_default_until_records_have_one() -> None:
    assert project_of(rec()) == "default"
    e = lifecycle(rec(), Lifecycle.STARTED, pid=5)
    assert (e.project, e.instance, e.metadata) == ("default", "web", {"action": "started", "type": "container",
                                                                      "state": "running", "pid": 5})


def test_types_and_instance_filter() -> None:
    assert parse_types([]) == frozenset(EventType)
    assert parse_types(["lifecycle,exit", "limit"]) == {EventType.LIFECYCLE, EventType.EXIT, EventType.LIMIT}
    with pytest.raises(InvalidRequest, match="unknown event type.*'nope'.*lifecycle, operation, limit, exit, log"):
        parse_types(["lifecycle,nope"])
    only_web = matcher(frozenset({EventType.LIFECYCLE}), "web")
    assert only_web(ev("web")) and not only_web(ev("db")) and not only_web(ev("web", kind=EventType.LOG))
    assert only_web(ev("new", old_name="web"))   # a rename away from the watched name


# ------------------------------------------------------------------ what publishes

def test_operations_publish_created_progress_and_their_end() -> None:
    async def main() -> list[Event]:
        bus = EventBus(resolve=lambda name: "default" if name == "web" else None)
        sub = bus.subscribe(lambda e: True)
        ops = Operations(bus)

        async def work() -> str:
            op.progress = "1 of 2"
            op.progress = "2 of 2"   # within PROGRESS_EVERY of the first: no event of its own
            return "ok"

        async def fails() -> None:
            raise Conflict("no")

        op = ops.new("backup", "web")
        ops.start("backup", "web", work(), op)
        await op.done.wait()
        other = ops.start("template-build", "debian", fails())
        await other.done.wait()
        return [await sub.next() for _ in range(sub.pending())]
    got = asyncio.run(main())
    assert [(e.instance, e.project, e.metadata["action"]) for e in got] == [
        ("web", "default", "created"), ("web", "default", "progress"), ("web", "default", "success"),
        (None, None, "created"), (None, None, "failure")]
    assert got[1].metadata["progress"] == "1 of 2" and got[2].metadata["progress"] == "2 of 2"
    assert got[4].metadata["error"] == "no" and got[4].metadata["target"] == "debian"


def test_warnings_become_log_events_of_their_instance() -> None:
    bus = EventBus(resolve=lambda name: "default" if name == "web" else None)
    sub = bus.subscribe(lambda e: True)
    handler = EventLogHandler(bus)
    logging.getLogger("ctd").addHandler(handler)
    instances, storage = logging.getLogger("ctd.instances"), logging.getLogger("ctd.storage.archive.extract")
    try:
        instances.warning("%s: its NIC vanished", "web")
        instances.info("%s: started", "web")                    # below WARNING: no event
        instances.error("storage %s is full", "pool")           # does not start with a name: host-wide
        storage.warning("%s: xattr not restored", "web")        # a tarball's member, not an instance
        storage.warning("about it", extra={"instance": "web"})  # named explicitly
    finally:
        logging.getLogger("ctd").removeHandler(handler)
    got = drain(sub)
    assert [(e.instance, e.project, e.metadata["level"], e.metadata["message"]) for e in got] == [
        ("web", "default", "warning", "web: its NIC vanished"), (None, None, "error", "storage pool is full"),
        (None, None, "warning", "web: xattr not restored"), ("web", "default", "warning", "about it")]


class FakeGroup:
    def __init__(self) -> None:
        self.usage_now = Usage(memory_failcnt=0, oom_kills=0, pids_failcnt=0)

    def usage(self) -> Usage:
        return self.usage_now


class FakeInstances:
    def __init__(self) -> None:
        self.group = FakeGroup()
        self.db = self

    def list_instances(self) -> list[InstanceRecord]:
        return [rec()]

    def is_running(self, r: InstanceRecord) -> bool:
        return True

    def group_of(self, r: InstanceRecord) -> FakeGroup:
        return self.group


def test_limit_watcher_reports_growth_after_its_baseline_and_an_oom_at_exit() -> None:
    bus = EventBus()
    instances = FakeInstances()
    watcher = LimitWatcher(bus, instances)  # type: ignore[arg-type]
    instances.group.usage_now = Usage(memory_failcnt=7, oom_kills=1, pids_failcnt=0)
    sub = bus.subscribe(lambda e: e.type is EventType.LIMIT)   # the first subscriber: a baseline, no event
    assert drain(sub) == []

    async def poll() -> None:
        watcher.interval = 0.01
        task = asyncio.create_task(watcher.run())
        await asyncio.sleep(0.2)
        task.cancel()
    instances.group.usage_now = Usage(memory_failcnt=9, oom_kills=1, pids_failcnt=2)
    asyncio.run(poll())
    got = drain(sub)
    assert sorted((e.metadata["resource"], e.metadata["previous"], e.metadata["failcnt"]) for e in got) == [
        ("numproc", 0, 2), ("physpages", 7, 9)]
    # the exit of a run the OOM killer ended, between two reads: reported before the exit
    bus.publish(Event(EventType.EXIT, "web", "default", {"kind": "oom", "oom_kills": 3}))
    (oom,) = drain(sub)
    assert oom.metadata == {"resource": "oom_kill", "failcnt": 3, "previous": 1, "delta": 2}
    # a new run starts at zero
    bus.publish(lifecycle(rec(), Lifecycle.STARTED))
    bus.publish(Event(EventType.EXIT, "web", "default", {"kind": "oom", "oom_kills": 1}))
    assert [e.metadata["delta"] for e in drain(sub)] == [1]


def test_events_queue_setting_is_checked(tmp_path: Path) -> None:
    conf = tmp_path / "ctd.toml"
    conf.write_text("events_queue = 0\n")
    with pytest.raises(InvalidRequest, match="events_queue must be a whole number from 1"):
        load_config(conf, {})
    conf.write_text("events_queue = 50\n")
    assert load_config(conf, {}).events_queue == 50


def test_monitor_lines() -> None:
    line = event_line({"type": "lifecycle", "timestamp": "T", "project": "default", "instance": "web",
                       "metadata": {"action": "renamed", "old_name": "www"}})
    assert line == "T lifecycle web renamed old_name=www"
    assert event_line({"type": "limit", "timestamp": "T", "project": "acme", "instance": "db",
                       "metadata": {"resource": "oom_kill", "previous": 0, "failcnt": 1}}
                      ) == "T limit     acme/db oom_kill failcnt 0 -> 1"
    assert event_line({"type": "log", "timestamp": "T", "project": None, "instance": None,
                       "metadata": {"level": "error", "message": "pool full"}}) == "T log       - error: pool full"


def test_ctd_stopping_ends_every_stream_with_going_away() -> None:
    bus = EventBus()
    a, b = bus.subscribe(lambda e: True), bus.subscribe(lambda e: True)
    bus.publish(ev())
    bus.end_all("ctd is stopping")

    async def next_of(sub: Any) -> Event:
        return await sub.next()
    for sub in (a, b):
        with pytest.raises(SlowClient) as ended:
            asyncio.run(next_of(sub))
        assert (ended.value.code, str(ended.value)) == (1001, "ctd is stopping")
