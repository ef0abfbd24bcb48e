"""GET /1.0/events: the node's events on a WebSocket (docs/api.md, "Events").

Query: `type` (comma-separated and/or repeated: lifecycle, operation, limit, exit, log; default
all) and `instance` (one instance's events; a rename's event matches its old name too). Frames,
server -> client: one text frame per event, its JSON (ctd/events/model.py). The client sends
nothing (anything it sends is read and dropped). The subscription exists before the handshake's
answer: an event published after the upgrade returned is delivered.

A client that lets events_queue events wait unread is cut off: the socket closes with code 1008
and a reason that says so (never a silent gap). When ctd stops, every stream closes with 1001. Event
sockets get small send buffers (asyncio's and
the kernel's) so that unread events wait in the bounded queue, not in buffers. The events a caller sees are
those ctd/remote/scope.py lets its identity see.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Callable

from aiohttp import web

from ctd import validate
from ctd.api.handlers import CTX, ctx, routes
from ctd.errors import InvalidRequest
from ctd.events.bus import TOO_SLOW, SlowClient, Subscription
from ctd.events.model import Event, EventType
from ctd.remote.api import IDENTITY
from ctd.remote.scope import event_visible

log = logging.getLogger("ctd.api.events")
SEND_BUFFER = 16384   # bytes asyncio and the kernel (each) hold for one event socket
CUT_GRACE = 10.0      # seconds a cut-off client has to take the close frame before the socket goes
TYPES = [t.value for t in EventType]


def parse_types(values: list[str]) -> frozenset[EventType]:
    wanted = {part.strip() for value in values for part in value.split(",") if part.strip()}
    unknown = sorted(wanted - set(TYPES))
    if unknown:
        raise InvalidRequest(f"unknown event type(s) {', '.join(repr(u[:40]) for u in unknown[:5])}; "
                             f"the types are {', '.join(TYPES)}")
    return frozenset(EventType(t) for t in wanted) if wanted else frozenset(EventType)


def matcher(types: frozenset[EventType], instance: str | None) -> Callable[[Event], bool]:
    def matches(event: Event) -> bool:
        if event.type not in types:
            return False
        return instance is None or instance in (event.instance, event.metadata.get("old_name"))
    return matches


async def _send(ws: web.WebSocketResponse, sub: Subscription) -> None:
    while True:
        try:
            event = await sub.next()
        except SlowClient as cut:
            await ws.close(code=cut.code, message=str(cut).encode()[:120])
            return
        await ws.send_str(json.dumps(event.to_json()))


async def _read(ws: web.WebSocketResponse) -> None:
    async for _ in ws:   # the client says nothing; this notices when it goes
        pass


async def end_streams(app: web.Application) -> None:
    """on_shutdown: every event stream closes (1001, "ctd is stopping") instead of holding the
    daemon's exit up."""
    app[CTX].events.end_all("ctd is stopping; reconnect when it is back")


@routes.get("/1.0/events")
async def events_ws(request: web.Request) -> web.StreamResponse:
    c = ctx(request)
    types = parse_types(request.query.getall("type", []))
    raw = request.query.get("instance")
    instance = validate.instance_name(raw, "instance") if raw is not None else None
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=4096, writer_limit=SEND_BUFFER // 4)
    if not ws.can_prepare(request).ok:
        raise InvalidRequest("events is a WebSocket endpoint: send the WebSocket upgrade handshake")
    who = request.get(IDENTITY)
    wanted = matcher(types, instance)
    sub = c.events.subscribe(lambda event: wanted(event) and event_visible(who, event))
    tasks: list[asyncio.Task[object]] = []
    try:
        await ws.prepare(request)
        if request.transport is not None:   # unread events wait in the bounded queue, not in buffers
            request.transport.set_write_buffer_limits(high=SEND_BUFFER)
            sock = request.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        sender, reader = asyncio.create_task(_send(ws, sub)), asyncio.create_task(_read(ws))
        cut = asyncio.create_task(sub.cut_event.wait())
        tasks = [sender, reader, cut]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if sub.cut is not None:
            if sub.cut_code == TOO_SLOW:
                log.info("events: cut off a client (%s): %s", getattr(who, "label", "local"), sub.cut)
            # the sender closes with the reason once the client reads what the buffers hold
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(sender), CUT_GRACE if sub.cut_code == TOO_SLOW else 2.0)
    finally:
        sub.close()
        for task in tasks:
            task.cancel()
        if not ws.closed and sub.cut is not None and request.transport is not None:
            request.transport.abort()   # it never took the close frame
    return ws
