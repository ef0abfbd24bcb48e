"""Long work runs as an operation that clients can poll or wait on (like Incus' operations)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ctd.errors import CtdError, NotFound

log = logging.getLogger("ctd.operations")
KEEP = 500  # finished operations remembered


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
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"))
    result: Any = None
    error: str | None = None
    error_code: str | None = None
    progress: str = ""  # the latest line of a long job (a template build), set from any thread
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def to_json(self) -> dict:
        return {"id": self.id, "kind": self.kind, "target": self.target, "status": self.status.value,
                "created_at": self.created_at, "result": self.result, "error": self.error,
                "code": self.error_code, "progress": self.progress}


class Operations:
    def __init__(self) -> None:
        self._ops: OrderedDict[str, Operation] = OrderedDict()
        self._tasks: set[asyncio.Task] = set()

    def new(self, kind: str, target: str) -> Operation:
        """An operation whose work needs the operation itself (progress, cancellation)."""
        return Operation(uuid.uuid4().hex, kind, target)

    def start(self, kind: str, target: str, work: Awaitable[Any], op: Operation | None = None) -> Operation:
        op = op or Operation(uuid.uuid4().hex, kind, target)
        self._ops[op.id] = op
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
            op.done.set()

    def _trim(self) -> None:
        finished = [k for k, o in self._ops.items() if o.status is not OpStatus.RUNNING]
        for key in finished[: max(0, len(self._ops) - KEEP)]:
            del self._ops[key]

    def get(self, op_id: str) -> Operation:
        op = self._ops.get(op_id)
        if op is None:
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
