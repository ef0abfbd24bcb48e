"""Long work runs as an operation that clients can poll or wait on (like Incus' operations).

With an event bus, every operation publishes operation events (docs/api.md, "Events"): created,
progress (its progress line changed; at most PROGRESS_EVERY apart per operation, the latest line
is always in the operation itself), then success or failure. An operation on an instance
carries that instance and its project (resolved while the instance exists: a destroy's events
keep it); others (template builds, the boot sequence) are host-wide.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ctd.errors import CtdError, NotFound
from ctd.events.bus import UNRESOLVED, EventBus
from ctd.events.model import Event, EventType

log = logging.getLogger("ctd.operations")
KEEP = 500  # finished operations remembered
PROGRESS_EVERY = 0.5  # seconds between two progress events of one operation
# operations whose target is an instance's name
INSTANCE_KINDS = frozenset({"create", "destroy", "start", "stop", "restart", "suspend", "resume", "snapshot",
                            "rollback", "clone", "reinstall", "backup", "restore"})
# The project an operation belongs to (who may see it): set per request by the API's scoping
# (ctd/api/scoping.py) to the project of the instance it acts on; an Operation made while
# handling that request takes it.
OP_PROJECT: ContextVar[str] = ContextVar("ctd_operation_project", default="default")


class OpStatus(str, Enum):
    RUNNING = "running"
    SUCCESS = "success"
    FAILURE = "failure"


@dataclass
class Operation:
    id: str
    kind: str
    target: str
    status: OpStatus = OpStatus.RUNNING
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"))
    result: Any = None
    error: str | None = None
    error_code: str | None = None
    progress: str = ""  # the latest line of a long job (a template build), set from any thread
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    project: str = field(default_factory=OP_PROJECT.get)   # of its instance (scoping, events)
    on_progress: Any = None      # Callable[[Operation], None]: set by Operations to publish
    _progress_at: float = 0.0

    def __setattr__(self, name: str, value: Any) -> None:
        # `op.progress = line` (from any thread) is how work reports; it becomes an event too
        super().__setattr__(name, value)
        if name == "progress" and value and getattr(self, "on_progress", None) is not None:
            now = time.monotonic()
            if now - self._progress_at >= PROGRESS_EVERY:
                super().__setattr__("_progress_at", now)
                self.on_progress(self)

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "kind": self.kind, "target": self.target, "status": self.status.value,
                "created_at": self.created_at, "result": self.result, "error": self.error,
                "code": self.error_code, "progress": self.progress, "project": self.project}


class Operations:
    def __init__(self, events: EventBus | None = None) -> None:
        self._ops: OrderedDict[str, Operation] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self.events = events

    def _publish(self, op: Operation, action: str, resolve: bool = True) -> None:
        """An operation event; resolve: look the instance's project up (the loop thread only)."""
        if self.events is None:
            return
        instance = op.target if op.kind in INSTANCE_KINDS else None
        if instance and resolve and self.events.resolve is not None:
            # the instance's own project, once it exists (the request's is a guess for work no
            # request started: a boot sequence, a scheduled backup)
            op.project = self.events.resolve(instance) or op.project
        project = (op.project or UNRESOLVED) if instance else None   # host-wide: admins only
        meta = {"action": action, **op.to_json()}
        self.events.publish(Event(EventType.OPERATION, instance, project, meta))

    def new(self, kind: str, target: str) -> Operation:
        """An operation whose work needs the operation itself (progress, cancellation)."""
        return Operation(uuid.uuid4().hex, kind, target)

    def start(self, kind: str, target: str, work: Awaitable[Any], op: Operation | None = None) -> Operation:
        op = op or Operation(uuid.uuid4().hex, kind, target)
        self._ops[op.id] = op
        self._publish(op, "created")
        op.on_progress = lambda o: self._publish(o, "progress", resolve=False)
        task = asyncio.get_running_loop().create_task(self._run(op, work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._trim()
        return op

    async def _run(self, op: Operation, work: Awaitable[Any]) -> None:
        try:
            op.result = await work
            op.status = OpStatus.SUCCESS
        except CtdError as exc:
            op.status, op.error, op.error_code = OpStatus.FAILURE, exc.message, exc.code
        except Exception as exc:  # noqa: BLE001 — reported, never crashes the daemon
            log.exception("operation %s %s failed", op.kind, op.target)
            op.status, op.error, op.error_code = OpStatus.FAILURE, f"internal error: {exc}", "internal"
        finally:
            op.on_progress = None
            self._publish(op, op.status.value)
            op.done.set()

    def _trim(self) -> None:
        finished = [k for k, o in self._ops.items() if o.status is not OpStatus.RUNNING]
        for key in finished[: max(0, len(self._ops) - KEEP)]:
            del self._ops[key]

    def get(self, op_id: str, visible: Callable[[Operation], bool] | None = None) -> Operation:
        """The operation; one `visible` refuses (another project's) is answered as unknown."""
        op = self._ops.get(op_id)
        if op is None or (visible is not None and not visible(op)):
            raise NotFound(f"no operation {op_id!r} (finished operations are kept for a while only)")
        return op

    def list(self) -> list[Operation]:
        return list(self._ops.values())

    async def wait(self, op_id: str, timeout: float | None) -> Operation:
        op = self.get(op_id)
        try:
            await asyncio.wait_for(op.done.wait(), timeout)
        except TimeoutError:
            pass
        return op

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
