"""/1.0/cluster: membership (admin only; ctd/remote/policy.py). On a standalone ctd (no
etcd_endpoints) GET answers {"enabled": false} and the rest say how to turn cluster mode on;
this module never imports the etcd client itself (ctd/cluster/node.py does, loaded by the daemon
only in cluster mode)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ctd import validate
from ctd.api.handlers import ctx, flag
from ctd.api.jsonbody import json_body
from ctd.config import NODE_NAME
from ctd.errors import Conflict, InvalidRequest
from ctd.remote.tokens import parse_duration

if TYPE_CHECKING:
    from ctd.cluster.node import ClusterNode

routes = web.RouteTableDef()
DEFAULT_TOKEN_LIFETIME = "1h"


def _node(request: web.Request) -> ClusterNode:
    cluster = ctx(request).cluster
    if cluster is None:
        raise Conflict("this ctd is not in cluster mode: set etcd_endpoints (the etcd cluster's client URLs) in "
                       "ctd.toml and restart ctd (docs/cluster.md)")
    return cluster


def _node_name(value: Any) -> str:
    if not isinstance(value, str) or not NODE_NAME.fullmatch(value):
        raise InvalidRequest(f"node name {str(value)[:70]!r} is not valid: lowercase letters, digits and -, "
                             "at most 63, starting with a letter or digit")
    return value


@routes.get("/1.0/cluster")
async def cluster_info(request: web.Request) -> web.Response:
    cluster = ctx(request).cluster
    return web.json_response({"cluster": cluster.describe() if cluster is not None else {"enabled": False}})


@routes.post("/1.0/cluster/init")
async def cluster_init(request: web.Request) -> web.Response:
    validate.body_fields(await json_body(request), set())
    return web.json_response({"cluster": await _node(request).init()}, status=201)


@routes.get("/1.0/cluster/nodes")
async def cluster_nodes(request: web.Request) -> web.Response:
    return web.json_response({"nodes": await _node(request).nodes()})


@routes.post("/1.0/cluster/nodes")
async def cluster_add(request: web.Request) -> web.Response:
    """A one-time join token for a new node (shown once)."""
    body = validate.body_fields(await json_body(request), {"name", "expires"}, {"name"})
    lifetime = parse_duration(body.get("expires") or DEFAULT_TOKEN_LIFETIME)
    return web.json_response(await _node(request).add_token(_node_name(body["name"]), lifetime), status=201)


@routes.post("/1.0/cluster/join")
async def cluster_join(request: web.Request) -> web.Response:
    body = validate.body_fields(await json_body(request), {"token"}, {"token"})
    return web.json_response({"cluster": await _node(request).join(body["token"])}, status=201)


@routes.delete("/1.0/cluster/nodes/{name}")
async def cluster_remove(request: web.Request) -> web.Response:
    name = _node_name(request.match_info["name"])
    return web.json_response(await _node(request).remove(name, flag(request, "force")))
