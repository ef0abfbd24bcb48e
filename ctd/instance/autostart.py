"""Autostart after a host boot, and the orderly shutdown of every instance.

Contract:
- `Autostart.plan()` (at ctd's start, before the API listens) reads the kernel's boot id
  (`boot_id_file`) and compares it with the runs recorded in state (`boot_runs`): a boot id
  never seen starts a new boot sequence, one whose sequence did not finish (ctd was killed
  during it) resumes it, one that finished starts nothing (a ctd restart without a reboot).
- `Autostart.run(boot_id)` (a background operation once the API listens) starts every onboot
  instance in boot-order groups (lowest first); a group's instances start in parallel, at most
  `boot_concurrency` at once; the next group waits until each started instance's boot_delay has
  passed since its start. Each instance's outcome is written to `boot_steps` before the next
  step, so a resumed sequence never starts an instance twice; one that fails is logged and
  reported and does not hold up the others. `status` (GET /1.0 "boot") shows the progress.
- `Autostart.shutdown_all(timeout)` stops every running instance in reverse boot order (groups
  in parallel), each with the stop timeout (containers their stop signal, VMs the ACPI button,
  killed after it). It ends a boot sequence still running first (the starts under way finish,
  nothing more starts) and that sequence counts as over: a ctd restart on this boot does not
  resume it. ctd stopping (SIGTERM) halts a sequence too, but the next ctd resumes that one.

It sits above the manager (like the API handlers) and reaches instances only through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, TypedDict

from ctd.errors import CtdError, InvalidRequest
from ctd.instance.bootorder import boot_groups, shutdown_groups
from ctd.instance.manager import InstanceManager
from ctd.operations import Operation
from ctd.state import InstanceRecord

log = logging.getLogger("ctd.autostart")
BOOT_ID = re.compile(r"[0-9A-Za-z-]{1,64}")
FINAL = ("started", "running", "failed", "skipped")   # a step with one of these is not taken again


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


@dataclass
class Step:
    name: str
    outcome: str    # starting, started, running (already), failed, skipped (no longer onboot)
    at: float       # seconds since the epoch
    detail: str = ""


class StepView(TypedDict):
    """A step as the status and the boot sequence's result show it."""

    name: str
    outcome: str
    at: float
    detail: str


class BootResult(TypedDict):
    """What a boot sequence's operation ends with."""

    boot_id: str
    state: str
    steps: list[StepView]
    failed: list[str]


class Stopped(TypedDict):
    name: str
    how: str    # StopOutcome's value
    at: float


class NotStopped(TypedDict):
    name: str
    error: str


class ShutdownResult(TypedDict):
    """What POST /1.0/shutdown's operation ends with."""

    stopped: list[Stopped]
    failed: list[NotStopped]
    timeout: float | None


class Autostart:
    """The boot sequence of one ctd and its shutdown-all."""

    def __init__(self, instances: InstanceManager) -> None:
        self.instances = instances
        self.db = instances.db
        self.config = instances.config
        self.status: dict[str, Any] = {"state": "idle", "boot_id": None}
        self._halt = asyncio.Event()      # set: start nothing more (ctd stopping, or shutdown-all)
        self._by_shutdown = False         # shutdown-all halted it: this boot's sequence is over
        self._idle = asyncio.Event()      # clear while run() is under way
        self._idle.set()

    # ------------------------------------------------------------- the host's boot

    def read_boot_id(self) -> str:
        try:
            value = self.config.boot_id_file.read_text().strip()
        except OSError as exc:
            raise CtdError(f"cannot read the boot id from {self.config.boot_id_file}: {exc.strerror}") from None
        if not BOOT_ID.fullmatch(value):
            raise CtdError(f"{self.config.boot_id_file} holds no boot id (letters, digits and '-')")
        return value

    def plan(self) -> str | None:
        """The boot id whose sequence is to run now (new or unfinished), or None."""
        try:
            boot_id = self.read_boot_id()
        except CtdError as exc:
            log.warning("autostart off: %s", exc.message)
            self.status.update(state="off", reason=exc.message)
            return None
        self.status["boot_id"] = boot_id
        row = self.db.conn.execute("SELECT started_at, finished_at FROM boot_runs WHERE boot_id = ?",
                                   (boot_id,)).fetchone()
        if row is not None and row["finished_at"]:
            self.status.update(state="done", started_at=row["started_at"], finished_at=row["finished_at"],
                               steps=self._steps_json(boot_id))
            return None
        with self.db.transaction():
            # Earlier boots' records go: only this boot's sequence can still be resumed.
            self.db.conn.execute("DELETE FROM boot_steps WHERE boot_id != ?", (boot_id,))
            self.db.conn.execute("DELETE FROM boot_runs WHERE boot_id != ?", (boot_id,))
            if row is None:
                self.db.conn.execute("INSERT INTO boot_runs (boot_id, started_at) VALUES (?, ?)", (boot_id, _now()))
        resumed = row is not None
        self.status.update(state="pending", resumed=resumed)
        log.info("%s boot sequence for boot id %s", "resuming the" if resumed else "new host boot: starting the",
                 boot_id)
        return boot_id

    def _steps(self, boot_id: str) -> dict[int, Step]:
        rows = self.db.conn.execute("SELECT instance_id, name, outcome, at, detail FROM boot_steps WHERE boot_id = ?",
                                    (boot_id,))
        return {r["instance_id"]: Step(r["name"], r["outcome"], r["at"], r["detail"]) for r in rows}

    def _steps_json(self, boot_id: str) -> list[StepView]:
        return [StepView(name=s.name, outcome=s.outcome, at=s.at, detail=s.detail)
                for s in sorted(self._steps(boot_id).values(), key=lambda s: s.at)]

    def _record(self, boot_id: str, rec: InstanceRecord, outcome: str, detail: str = "") -> Step:
        step = Step(rec.name, outcome, time.time(), detail)
        self.db.conn.execute(  # one statement: committed at once (the next step may be a kill)
                "INSERT OR REPLACE INTO boot_steps (boot_id, instance_id, name, outcome, at, detail) "
                "VALUES (?, ?, ?, ?, ?, ?)", (boot_id, rec.id, rec.name, outcome, step.at, detail))
        self.status["steps"] = self._steps_json(boot_id)
        return step

    async def run(self, boot_id: str, op: Operation | None = None) -> BootResult:
        """Start the onboot instances, group after group (see the module's contract)."""
        self._idle.clear()
        try:
            return await self._run(boot_id, op)
        finally:
            self._idle.set()

    async def _run(self, boot_id: str, op: Operation | None) -> BootResult:
        self.status.update(state="running", started_at=_now())
        onboot = [r for r in self.db.list_instances() if r.onboot]
        groups = boot_groups(onboot)
        gate = asyncio.Semaphore(self.config.boot_concurrency)
        for number, group in enumerate(groups, start=1):
            if self._halt.is_set():
                break
            line = (f"group {number}/{len(groups)} (order {group[0].boot_order}): "
                    f"{', '.join(r.name for r in group)}")
            self.status["group"] = line
            if op is not None:
                op.progress = line
            log.info("boot sequence: %s", line)
            steps = await asyncio.gather(*(self._start_one(boot_id, rec, gate) for rec in group))
            ready_at = max((s.at + rec.boot_delay for s, rec in zip(steps, group, strict=True)
                            if s.outcome in ("started", "running")), default=0.0)
            wait = ready_at - time.time()
            if wait > 0 and number < len(groups) and not self._halt.is_set():
                log.info("boot sequence: waiting %.1f s (boot delay) before the next group", wait)
                with contextlib.suppress(TimeoutError):   # a halt ends the wait
                    await asyncio.wait_for(self._halt.wait(), wait)
        if self._halt.is_set() and not self._by_shutdown:   # ctd stops: the next ctd resumes it
            self.status.update(state="halted", group=None)
            log.info("boot sequence halted (ctd stops); the next ctd on this boot resumes it")
        else:   # done, or ended by shutdown-all (which nobody wants undone by a ctd restart)
            finished = _now()
            self.db.conn.execute("UPDATE boot_runs SET finished_at = ? WHERE boot_id = ?", (finished, boot_id))
            self.status.update(state="halted" if self._by_shutdown else "done", finished_at=finished, group=None)
        failed = [s["name"] for s in self.status.get("steps", []) if s["outcome"] == "failed"]
        log.info("boot sequence %s: %d onboot instance(s), %d failed%s", self.status["state"], len(onboot),
                 len(failed), f" ({', '.join(failed)})" if failed else "")
        return BootResult(boot_id=boot_id, state=self.status["state"], steps=self.status.get("steps", []),
                          failed=failed)

    async def _start_one(self, boot_id: str, rec: InstanceRecord, gate: asyncio.Semaphore) -> Step:
        done = self._steps(boot_id).get(rec.id)
        if done is not None and done.outcome in FINAL:
            return done     # a resumed sequence: this one was dealt with before ctd was killed
        async with gate:
            fresh = self.db.get_instance(rec.id)
            if self._halt.is_set() or fresh is None or not fresh.onboot:
                return Step(rec.name, "skipped", time.time())
            if self.instances.is_running(fresh):
                return self._record(boot_id, fresh, "running", "already running")
            self._record(boot_id, fresh, "starting")
            try:
                await self.instances.start(fresh)
            except CtdError as exc:
                log.warning("boot sequence: %s did not start: %s", fresh.name, exc.message)
                return self._record(boot_id, fresh, "failed", exc.message)
            except Exception as exc:  # noqa: BLE001 - one instance must not end the sequence
                log.exception("boot sequence: %s did not start", fresh.name)
                return self._record(boot_id, fresh, "failed", str(exc) or type(exc).__name__)
            log.info("boot sequence: started %s (order %d)", fresh.name, fresh.boot_order)
            return self._record(boot_id, fresh, "started")

    def halt(self) -> None:
        """ctd is stopping: the boot sequence starts nothing more (the next ctd resumes it)."""
        self._halt.set()

    # ------------------------------------------------------------- shutdown-all

    @staticmethod
    def check_timeout(body: dict[str, Any]) -> float | None:
        """The timeout a shutdown-all request gave for every instance; None: each its own."""
        value = body.get("timeout")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 3600:
            raise InvalidRequest(f"timeout must be seconds from 0 to 3600, not {value!r}")
        return float(value)

    async def shutdown_all(self, timeout: float | None) -> ShutdownResult:
        """Stop every running instance, highest boot order first (a group in parallel), each
        with `timeout`, or with its own stop timeout when None."""
        self._by_shutdown = True
        self._halt.set()    # a boot sequence still running starts nothing more …
        await self._idle.wait()   # … and the starts it has under way end before the stops begin
        running = [r for r in self.db.list_instances() if self.instances.is_running(r)]
        stopped: list[Stopped] = []
        failed: list[NotStopped] = []
        for group in shutdown_groups(running):
            log.info("shutdown-all: stopping %s", ", ".join(r.name for r in group))
            results = await asyncio.gather(*(self.instances.stop(r, timeout, kill=False) for r in group),
                                           return_exceptions=True)
            for rec, result in zip(group, results, strict=True):
                if isinstance(result, BaseException):
                    message = result.message if isinstance(result, CtdError) else str(result)
                    log.warning("shutdown-all: %s did not stop: %s", rec.name, message)
                    failed.append(NotStopped(name=rec.name, error=message))
                else:
                    stopped.append(Stopped(name=rec.name, how=result["stop"]["how"], at=time.time()))
        return ShutdownResult(stopped=stopped, failed=failed, timeout=timeout)
