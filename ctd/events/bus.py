"""The event bus: publish synchronously where a change is made, deliver through per-client queues.

Contract:
- publish() runs in the daemon's event loop thread, at the place the change is made (after the
  state row is written), and puts the event on every matching subscriber's queue before it
  returns: an event published before a client reads is in its queue, none is lost in between.
  From another thread (a progress line, a log record) it is handed to the loop thread first.
- Each subscription has a bounded queue (events_queue in ctd.toml). A client that falls that far
  behind is not skipped over: its subscription is cut (`cut` says why) and the WebSocket closes
  with that reason; the client reconnects and re-reads the state it missed.
- Taps are synchronous callbacks that see every event before subscribers do (the limit watcher
  keeps its baselines from lifecycle events and reports an OOM kill before the exit it caused).
- An event whose instance is known but whose project is not (a log record, an operation on a
  name) gets it from `resolve` (the daemon's state lookup); an unknown name makes it host-wide.

How a tenant would abuse it: subscribe and never read (bounded queue, then cut off; the server's
send buffer for event sockets is small, so memory per idle client stays bounded), subscribe
many times (each costs one bounded queue; the HTTPS rate limit and roles apply), ask for another
project's events (the filter is ctd/remote/scope.py, applied per event before it is queued).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading
from collections.abc import Callable

from ctd.events.model import Event

QUEUE_SIZE = 1024
UNRESOLVED = "\0unresolved"   # an Event.project the bus fills in through resolve()


TOO_SLOW, STOPPING = 1008, 1001   # WebSocket close codes: policy violation, going away


class SlowClient(Exception):
    """The subscription ended: its queue overflowed (code TOO_SLOW) or ctd is stopping (STOPPING)."""

    def __init__(self, reason: str, code: int = TOO_SLOW) -> None:
        super().__init__(reason)
        self.code = code


class Subscription:
    def __init__(self, bus: EventBus, accept: Callable[[Event], bool], size: int) -> None:
        self._bus, self._accept, self._size = bus, accept, size
        self._queue: collections.deque[Event] = collections.deque()
        self._wake = asyncio.Event()
        self.cut: str | None = None
        self.cut_code = TOO_SLOW
        self.cut_event = asyncio.Event()

    def offer(self, event: Event) -> None:
        if self.cut is not None or not self._accept(event):
            return
        if len(self._queue) >= self._size:
            self.end(f"too slow: {self._size} events waited unread (event {event.seq} found the queue "
                     "full); reconnect and re-read the state", TOO_SLOW)
        else:
            self._queue.append(event)
            self._wake.set()

    def end(self, reason: str, code: int) -> None:
        if self.cut is None:
            self.cut, self.cut_code = reason, code
            self.cut_event.set()
            self._wake.set()

    def pending(self) -> int:
        return len(self._queue)

    async def next(self) -> Event:
        """The next event; SlowClient once the queue overflowed (what was queued is not sent:
        the client must re-read the state anyway)."""
        while True:
            if self.cut is not None:
                raise SlowClient(self.cut, self.cut_code)
            if self._queue:
                return self._queue.popleft()
            self._wake.clear()
            await self._wake.wait()

    def close(self) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    def __init__(self, queue_size: int = QUEUE_SIZE, resolve: Callable[[str], str | None] | None = None) -> None:
        self.queue_size = queue_size
        self.resolve = resolve
        self._subs: list[Subscription] = []
        self._taps: list[Callable[[Event], None]] = []
        self._on_first: list[Callable[[], None]] = []
        self._seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop (and its thread) every publish runs in; publishes from other threads go there."""
        self._loop, self._thread = loop, threading.get_ident()

    @property
    def listening(self) -> int:
        return len(self._subs)

    def tap(self, callback: Callable[[Event], None]) -> None:
        self._taps.append(callback)

    def on_first_subscriber(self, callback: Callable[[], None]) -> None:
        """Called (synchronously) when a subscription arrives while nobody listened."""
        self._on_first.append(callback)

    def subscribe(self, accept: Callable[[Event], bool], size: int | None = None) -> Subscription:
        sub = Subscription(self, accept, size or self.queue_size)
        self._subs.append(sub)
        if len(self._subs) == 1:
            for callback in self._on_first:
                callback()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def end_all(self, reason: str) -> None:
        """ctd is stopping: every stream ends with this reason."""
        for sub in list(self._subs):
            sub.end(reason, STOPPING)

    def publish(self, event: Event) -> None:
        if self._loop is not None and threading.get_ident() != self._thread:
            if not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self.publish, event)
            return
        if event.project == UNRESOLVED:
            project = self.resolve(event.instance) if self.resolve and event.instance else None
            event = dataclasses.replace(event, project=project, instance=event.instance if project else None)
        for tap in self._taps:
            tap(event)   # may publish first (an OOM kill before the exit it caused)
        self._seq += 1
        event = event.numbered(self._seq)
        for sub in list(self._subs):
            sub.offer(event)
