"""Replication routes (docs/cluster.md, "Replication and HA"; docs/api.md):

    PUT  /1.0/instances/{ref}/replication        {"to", "every", "ha"}: on the owner (forwarded there)
    POST /1.0/instances/{ref}/replication/sync   one round now (an operation)
    GET  /1.0/cluster/replicas                   every replication of the cluster: last replicated, lag
    GET  /1.0/cluster/replicas/{name}            the target's side, for the owner node only
    POST /1.0/cluster/replicas/{name}            (its certificate identity `node:NAME`):
    PUT  /1.0/cluster/replicas/{name}/stream     ctd/cluster/replica_store.py
"""

from __future__ import annotations

from aiohttp import web

from ctd.api.handlers import accepted, ctx
from ctd.api.jsonbody import json_body
from ctd.cluster import replica_store, replicate
from ctd.cluster.migrate_api import _source, pipe_body
from ctd.errors import Conflict

routes = web.RouteTableDef()


@routes.put("/1.0/instances/{ref}/replication")
async def set_replication(request: web.Request) -> web.Response:
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    return web.json_response(await replicate.configure(c, rec, await json_body(request)))


@routes.post("/1.0/instances/{ref}/replication/sync")
async def sync_replication(request: web.Request) -> web.Response:
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    op = c.operations.new("replicate", rec.name)
    return await accepted(request, c.operations.start("replicate", rec.name, replicate.replicate(c, rec), op))


@routes.get("/1.0/cluster/replicas")
async def list_replicas(request: web.Request) -> web.Response:
    c = ctx(request)
    if c.cluster is None or not c.cluster.member:
        raise Conflict("this node is no member of a cluster: nothing is replicated")
    return web.json_response({"replicas": await replicate.listing(c.cluster),
                              "here": replica_store.local(c)})


@routes.get("/1.0/cluster/replicas/{name}")
async def replica_held(request: web.Request) -> web.Response:
    source = _source(request)
    return web.json_response(await replica_store.held(ctx(request), source, request.match_info["name"]))


@routes.post("/1.0/cluster/replicas/{name}")
async def replica_announce(request: web.Request) -> web.Response:
    source = _source(request)
    await replica_store.announce(ctx(request), source, request.match_info["name"], request.query.get("gen"),
                                 request.query.get("parent"), await json_body(request))
    return web.json_response({}, status=201)


@routes.put("/1.0/cluster/replicas/{name}/stream")
async def replica_stream(request: web.Request) -> web.Response:
    """One btrfs send stream, piped into the checked receive as it arrives (as a migration's)."""
    c = ctx(request)
    source = _source(request)
    name = request.match_info["name"]
    await replica_store.check_sender(c, source, name)   # still the owner, still this target
    bt = replica_store._bt(c)
    pending = replica_store.claim(source, name)
    try:
        state = await pipe_body(request, lambda reader: replica_store.receive_round(bt, name, pending, reader))
        await replica_store.publish(c, state)
    finally:
        replica_store.BUSY.discard(name)
    return web.json_response({"generation": state.gen})
