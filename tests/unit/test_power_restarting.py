"""power.restarting(), the 'stop, act, start again' of rollback --restart and reinstall --restart:
a running instance is stopped with its own timeout before the act and started after it; a
stopped one is left alone; an act that fails leaves the instance stopped."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ctd.events import model as ev
from ctd.instance.power import restarting
from ctd.state import InstanceRecord, InstanceType, PowerState


class FakePower:
    """The manager as restarting() sees it: a record whose state stop/start change, and a log."""

    def __init__(self, running: bool) -> None:
        self.rec = InstanceRecord(id=7, name="web", type=InstanceType.CONTAINER, template="busybox",
                                  hostname="web", privileged=False, idmap_base=None, stop_timeout=12)
        self.rec.state = PowerState.RUNNING if running else PowerState.STOPPED
        self.calls: list[str] = []
        self.locks: dict[int, asyncio.Lock] = {}

    def get(self, ref: str | int) -> InstanceRecord:
        self.calls.append("get")
        return self.rec

    def lock(self, rec: InstanceRecord) -> asyncio.Lock:
        return self.locks.setdefault(rec.id, asyncio.Lock())

    def is_running(self, rec: InstanceRecord) -> bool:
        return self.rec.state is PowerState.RUNNING

    def stop_timeout(self, rec: InstanceRecord) -> float:
        return float(rec.stop_timeout or 30)

    def emit(self, rec: InstanceRecord, action: ev.Lifecycle, **metadata: Any) -> None:
        self.calls.append(f"emit {action.value}")

    def view(self, rec: InstanceRecord, cached: bool = False) -> dict[str, Any]:
        return {"name": rec.name}

    async def stop_locked(self, rec: InstanceRecord, timeout: float, kill: bool) -> None:
        self.calls.append(f"stop {timeout} kill={kill}")
        self.rec.state = PowerState.STOPPED

    async def start_locked(self, rec: InstanceRecord, paused: bool = False) -> None:
        self.calls.append("start")
        self.rec.state = PowerState.RUNNING


def test_a_running_instance_is_stopped_before_the_act_and_started_after() -> None:
    power = FakePower(running=True)

    async def run() -> None:
        async with restarting(power, power.rec) as rec:
            assert rec.state is PowerState.STOPPED    # the record as it is after the stop
            power.calls.append("act")

    asyncio.run(run())
    assert power.calls == ["stop 12.0 kill=False", "get", "act", "get", "start"]
    assert power.rec.state is PowerState.RUNNING


def test_a_stopped_instance_is_neither_stopped_nor_started() -> None:
    power = FakePower(running=False)

    async def run() -> None:
        async with restarting(power, power.rec):
            power.calls.append("act")

    asyncio.run(run())
    assert power.calls == ["act"]
    assert power.rec.state is PowerState.STOPPED


def test_an_act_that_fails_leaves_the_instance_stopped_and_the_error_goes_on() -> None:
    power = FakePower(running=True)

    async def run() -> None:
        async with restarting(power, power.rec):
            raise RuntimeError("rollback failed half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        asyncio.run(run())
    assert "start" not in power.calls
    assert power.rec.state is PowerState.STOPPED
