"""A request about another node's instance, made on that node (docs/cluster.md, "Forwarding").

Called by the scoping middleware (ctd/api/scoping.py) for a route on one instance whose name or
id is not this node's: the caller was authenticated here and its role checked against the route
and body (ctd/remote/enforce.py ran first); here its project is checked against the instance's
(another project's instance answers exactly as a missing one, as on its own node). The request
then goes to the owner node over mutual TLS (ctd/cluster/peer.py), where it runs as that
node's admin identity `certificate:node:THIS-NODE` (audited there), with ?wait=true so that an
operation ends there before the answer comes back (its id means nothing on this node).
WebSockets (exec, console, a VM's display) are not forwarded, nor are requests of operators and
tenants (the owner node would run them as an admin: what a handler decides by the caller's role
would be decided for an admin); the answer says where to go.
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING

from aiohttp import web

from ctd.errors import Conflict
from ctd.remote.scope import is_admin, sees

if TYPE_CHECKING:
    from ctd.cluster.node import ClusterNode

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def forward_if_remote(request: web.Request, cluster: ClusterNode, ref: str) -> web.StreamResponse | None:
    """The owner node's answer, or None when `ref` is no other node's instance this caller sees
    (the local handling then answers, with its 404 for one that does not exist)."""
    found = await cluster.locate(ref)
    if found is None or not sees(request, str(found.get("project"))):
        return None
    node = str(found["node"])
    if not is_admin(request):
        # the owner node runs a forwarded request as this node's admin identity: what a handler
        # shows or allows by the caller's role (backup paths, project rules) would be an admin's
        raise Conflict(f"{found['name']} is on node {node}; send this request to that node "
                       "(forwarding between nodes is for admins so far)")
    if request.headers.get("Upgrade", "").lower() == "websocket":
        raise Conflict(f"{found['name']} is on node {node}: exec, console and display connect to that node "
                       f"itself (ctctl --remote {node} ...)")
    query = dict(request.query)
    if request.method in MUTATING:
        query["wait"] = "true"
    path = request.path + ("?" + urllib.parse.urlencode(query) if query else "")
    body = await request.read() if request.body_exists else None
    reply = await cluster.forward(node, request.method, path, body, request.headers.get("Content-Type"))
    response = web.Response(body=reply.body, status=reply.status, headers={"Content-Type": reply.content_type,
                                                                           "X-Ctd-Node": node})
    return response
