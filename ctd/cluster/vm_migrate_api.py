"""The receiving routes of a VM migration (ctd/cluster/vm_migrate_receive.py), for the source
node only (its certificate identity `node:NAME`):

    POST   /1.0/cluster/vm-migrations                 begin
    PUT    /1.0/cluster/vm-migrations/{id}/file?name= one file's record stream (vm_files.py)
    POST   /1.0/cluster/vm-migrations/{id}/finish     the VM made here, stopped (live: QEMU waiting)
    GET    /1.0/cluster/vm-migrations/{id}/tunnel?to= live: a WebSocket to the target QEMU (vm_tunnel.py)
    POST   /1.0/cluster/vm-migrations/{id}/resume     live: the migration arrived, the guest runs here
    POST   /1.0/cluster/vm-migrations/{id}/done       the source moved the keys: it is this node's
    DELETE /1.0/cluster/vm-migrations/{id}            abort: nothing kept

`POST /1.0/instances/{ref}/migrate` (ctd/cluster/migrate_api.py) sends a VM's to vm_migrate.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from aiohttp import web

from ctd.api.context import ApiContext
from ctd.api.handlers import ctx
from ctd.api.jsonbody import json_body
from ctd.cluster import vm_files, vm_live, vm_tunnel
from ctd.cluster import vm_migrate_receive as receive
from ctd.cluster.migrate_api import _source, exclusive, pipe_body
from ctd.errors import Conflict, InvalidRequest

routes = web.RouteTableDef()


@routes.post("/1.0/cluster/vm-migrations")
async def vm_migration_begin(request: web.Request) -> web.Response:
    source = _source(request)
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidRequest("a VM migration's begin is a JSON object")
    inc = receive.begin(ctx(request), source, body)
    return web.json_response({"migration": {"id": inc.id, "name": inc.name}}, status=201)


def _exclusive(c: ApiContext, inc: receive.VmIncoming) -> AbstractAsyncContextManager[None]:
    return exclusive(inc, lambda: receive.abort_soon(c, inc))


@routes.put("/1.0/cluster/vm-migrations/{id}/file")
async def vm_migration_file(request: web.Request) -> web.Response:
    c = ctx(request)
    inc = receive.session(request.match_info["id"], _source(request))
    async with _exclusive(c, inc):
        dest, size = receive.file_target(inc, request.query.get("name", ""))
        label = f"VM migration of {inc.name} from {inc.source}, {dest.name}"
        written = await pipe_body(request, lambda reader: vm_files.receive(reader, dest, size, inc.budget, label))
    return web.json_response({"file": dest.name, "data": written})


@routes.post("/1.0/cluster/vm-migrations/{id}/finish")
async def vm_migration_finish(request: web.Request) -> web.Response:
    c = ctx(request)
    inc = receive.session(request.match_info["id"], _source(request))
    async with _exclusive(c, inc):
        brief = await receive.finish(c, inc)
        if inc.live and inc.rec is not None:   # QEMU waits for the source's (vm_live.py)
            await vm_live.start_incoming(c, inc, inc.rec)
    return web.json_response({"instance": brief})


@routes.post("/1.0/cluster/vm-migrations/{id}/resume")
async def vm_migration_resume(request: web.Request) -> web.Response:
    """A live migration arrived: the guest runs here (vm_live.resume)."""
    c = ctx(request)
    inc = receive.session(request.match_info["id"], _source(request))
    async with _exclusive(c, inc):
        brief = await vm_live.resume(c, inc)
    return web.json_response({"instance": brief})


@routes.get("/1.0/cluster/vm-migrations/{id}/tunnel")
async def vm_migration_tunnel(request: web.Request) -> web.StreamResponse:
    """One of the source QEMU's connections (NBD or migration), to this node's QEMU (vm_tunnel.py)."""
    inc = receive.session(request.match_info["id"], _source(request))
    socket = inc.sockets.get(request.query.get("to", ""))
    if socket is None:
        raise Conflict(f"VM migration {inc.id}: no such stream, or the target QEMU is not waiting yet")
    return await vm_tunnel.serve(request, socket)


@routes.post("/1.0/cluster/vm-migrations/{id}/done")
async def vm_migration_done(request: web.Request) -> web.Response:
    c = ctx(request)
    receive.done(receive.session(request.match_info["id"], _source(request)))
    if c.cluster is not None:
        c.cluster.poke()
    return web.json_response({})


@routes.delete("/1.0/cluster/vm-migrations/{id}")
async def vm_migration_abort(request: web.Request) -> web.Response:
    await receive.abort(ctx(request), receive.session(request.match_info["id"], _source(request)))
    return web.json_response({})
