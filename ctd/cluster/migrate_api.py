"""Migration routes (docs/cluster.md, "Migration"; docs/api.md):

    POST   /1.0/instances/{ref}/migrate            {"to": NODE}: the operation, on the instance's node
    POST   /1.0/cluster/migrations                 the target's side, for the source node only
    PUT    /1.0/cluster/migrations/{id}/stream     (its certificate identity `node:NAME`):
    POST   /1.0/cluster/migrations/{id}/finish     ctd/cluster/migrate_receive.py
    POST   /1.0/cluster/migrations/{id}/done
    DELETE /1.0/cluster/migrations/{id}
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import BinaryIO, Protocol, TypeVar

from aiohttp import web

from ctd import validate
from ctd.api.context import ApiContext
from ctd.api.handlers import accepted, ctx
from ctd.api.jsonbody import json_body
from ctd.cluster import migrate, migrate_receive, vm_migrate  # VMs: their own module
from ctd.errors import Conflict, InvalidRequest
from ctd.remote.scope import caller
from ctd.state import InstanceType
from ctd.storage.backup.format import CHUNK

routes = web.RouteTableDef()
T = TypeVar("T")


@routes.post("/1.0/instances/{ref}/migrate")
async def migrate_instance(request: web.Request) -> web.Response:
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    body = validate.body_fields(await json_body(request), {"to"}, {"to"})
    if not isinstance(body["to"], str):
        raise InvalidRequest("to must be a node's name ('ctctl cluster list' shows them)")
    is_vm = rec.type is InstanceType.VM
    if is_vm:
        vm_migrate.check(c, rec)
    else:
        migrate.check(c, rec)
    migrate.claim(rec)
    try:
        if is_vm:
            op = c.operations.new("migrate", rec.name)
            work = vm_migrate.migrate_vm(c, rec, body["to"], op)
        else:
            session = await migrate.begin(c, rec, body["to"])   # the target's refusal is this request's answer
            try:
                op = c.operations.new("migrate", rec.name)
                work = migrate.migrate(c, rec, session, op)
            except BaseException:
                await session.abort()
                raise
    except BaseException:
        migrate.MIGRATING.discard(rec.id)
        raise
    return await accepted(request, c.operations.start("migrate", rec.name, work, op))


def _source(request: web.Request) -> str:
    who = caller(request)
    if ctx(request).cluster is None:
        raise Conflict("this ctd is not in cluster mode: nothing migrates to it")
    return migrate_receive.require_peer(who.name if who is not None else "")


@routes.post("/1.0/cluster/migrations")
async def migration_begin(request: web.Request) -> web.Response:
    source = _source(request)
    inc = migrate_receive.begin(ctx(request), source, await json_body(request))
    return web.json_response({"migration": {"id": inc.id, "name": inc.name}}, status=201)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


async def pipe_body(request: web.Request, receive: Callable[[BinaryIO], T]) -> T:
    """The request's body piped as it arrives into `receive`, which reads it in a thread (a
    checked btrfs receive, a VM file's records); its answer. A receive that ends early (refused
    the stream) ends the piping; its error is the answer. On any failure the receive has ended
    before this returns, so an abort after it never races it."""
    loop = asyncio.get_running_loop()
    r, w = os.pipe()

    def receiving() -> T:
        with os.fdopen(r, "rb") as reader:
            return receive(reader)

    fut = loop.run_in_executor(None, receiving)
    try:
        try:
            async for chunk in request.content.iter_chunked(CHUNK):
                if fut.done():
                    break
                await loop.run_in_executor(None, _write_all, w, chunk)
        except BrokenPipeError:
            pass   # the receive ended early: its answer says why
        finally:
            os.close(w)
        return await fut
    except BaseException:
        with contextlib.suppress(Exception):
            await fut
        raise


class Session(Protocol):
    """What exclusive() needs of a migration arriving here (a container's or a VM's)."""

    id: str
    busy: bool
    touched: float


@contextlib.asynccontextmanager
async def exclusive(inc: Session, abort_soon: Callable[[], object], refused: bool = False) -> AsyncIterator[None]:
    """One request at a time works on a migration (refused: a round the caller may not start);
    a failure in it aborts the whole migration here (nothing is kept), through abort_soon."""
    if inc.busy or refused:
        raise Conflict(f"migration {inc.id}: a request or round is under way, or too many rounds")
    inc.busy = True
    try:
        yield
    except BaseException:
        abort_soon()
        raise
    finally:
        inc.busy, inc.touched = False, time.monotonic()


def _exclusive(c: ApiContext, inc: migrate_receive.Incoming,
               refused: bool = False) -> AbstractAsyncContextManager[None]:
    return exclusive(inc, lambda: migrate_receive.abort_soon(c, inc), refused)


@routes.put("/1.0/cluster/migrations/{id}/stream")
async def migration_stream(request: web.Request) -> web.Response:
    """One btrfs send stream, piped into the checked receive as it arrives."""
    c = ctx(request)
    inc = migrate_receive._session(request.match_info["id"], _source(request))
    bt = migrate_receive._bt(c)
    async with _exclusive(c, inc, refused=inc.rounds >= migrate_receive.MAX_ROUNDS + len(inc.snapshots)):
        number = await pipe_body(request, lambda reader: migrate_receive.receive_round(bt, inc, reader))
    return web.json_response({"round": number})


@routes.post("/1.0/cluster/migrations/{id}/finish")
async def migration_finish(request: web.Request) -> web.Response:
    c = ctx(request)
    inc = migrate_receive._session(request.match_info["id"], _source(request))
    body = validate.body_fields(await json_body(request), {"start"})
    async with _exclusive(c, inc):
        brief = await migrate_receive.finish(c, inc, validate.boolean(body, "start"))
    return web.json_response({"instance": brief})


@routes.post("/1.0/cluster/migrations/{id}/done")
async def migration_done(request: web.Request) -> web.Response:
    c = ctx(request)
    migrate_receive.done(migrate_receive._session(request.match_info["id"], _source(request)))
    if c.cluster is not None:
        c.cluster.poke()
    return web.json_response({})


@routes.delete("/1.0/cluster/migrations/{id}")
async def migration_abort(request: web.Request) -> web.Response:
    await migrate_receive.abort(ctx(request), migrate_receive._session(request.match_info["id"], _source(request)))
    return web.json_response({})
