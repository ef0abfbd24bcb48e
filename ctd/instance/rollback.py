"""All-or-nothing for changes made of several live steps (`ctctl set`): each step done records
how to take it back; a failure takes the done steps back, newest first, and the error says
whether that left nothing changed or exactly which steps stayed applied."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ctd.errors import CtdError, OperationFailed

log = logging.getLogger("ctd.instances")
UndoFn = Callable[[], Awaitable[None]]


@dataclass
class Rollback:
    subject: str                      # e.g. the instance's name, for the log
    _done: list[tuple[str, UndoFn | None]] = field(default_factory=list)

    def done(self, what: str, undo: UndoFn | None) -> None:
        """Step `what` is applied; undo takes it back (None: it cannot be taken back)."""
        self._done.append((what, undo))

    async def undo_all(self) -> list[str]:
        """Take back every done step, newest first; the steps that stayed applied."""
        stayed: list[str] = []
        for what, undo in reversed(self._done):
            if undo is None:
                stayed.append(what)
                continue
            try:
                await undo()
            except (Exception, asyncio.CancelledError):  # noqa: BLE001 — the others must still be tried
                log.exception("%s: taking back %s failed", self.subject, what)
                stayed.append(what)
        self._done.clear()
        return list(reversed(stayed))

    async def fail(self, exc: BaseException, step: str) -> CtdError:
        """The error to raise for exc (met while applying step) after taking the done steps
        back: the same kind (4xx stays 4xx), its message followed by what stayed applied."""
        stayed = await self.undo_all()
        outcome = (f"; still applied (taking it back failed, see the ctd log): {', '.join(stayed)}" if stayed
                   else "; nothing was changed")
        if isinstance(exc, CtdError):
            return type(exc)(exc.message + outcome)
        log.error("%s: %s failed", self.subject, step, exc_info=exc)
        return OperationFailed(f"{step}: {type(exc).__name__}: {exc}{outcome}")
