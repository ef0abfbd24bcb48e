"""Where a create is made in a cluster (`create --node auto|NAME`, ctd/cluster/placement.py).

Called by the create handler (ctd/api/handlers.py) before any local check or reservation: the
chosen node is this one (the create goes on here as on a standalone ctd), or another member, to
which the request goes over mutual TLS like any forwarded request (ctd/cluster/forward.py),
pinned to it (`"node": NAME`) so that it is made there and not placed again. Nothing is held on
this node for a create made elsewhere: the chosen node claims the name and id itself.
Operators and tenants are not forwarded (forward.py says why): `auto` for them is this node, if
it has room.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ctd.cluster.placement import needs_of, node_choice
from ctd.errors import Conflict
from ctd.limits import normalise
from ctd.remote.scope import is_admin

if TYPE_CHECKING:
    from ctd.cluster.node import ClusterNode

ANY_CPUS = 1 << 16   # the limits are checked against the chosen node's CPUs by placement, then by that node


async def place_create(request: web.Request, cluster: ClusterNode | None, body: Any) -> tuple[web.Response | None,
                                                                                              Any]:
    """(the chosen node's answer, None) when it is another node; (None, the body without "node")
    when the create is to be made here."""
    if not isinstance(body, dict) or ("node" not in body and (cluster is None or not cluster.member)):
        return None, body
    choice = node_choice(body)
    rest = {k: v for k, v in body.items() if k != "node"}
    if cluster is None or not cluster.member:
        if choice is not None:
            raise Conflict(f"this ctd is no member of a cluster, so it cannot make an instance on node {choice!r}; "
                           "leave out node (--node)")
        return None, rest
    if choice is not None and choice != cluster.name and not is_admin(request):
        raise Conflict(f"send this request to node {choice} itself (forwarding between nodes is for admins so far)")
    if choice is None and not is_admin(request):
        choice = cluster.name
    needs = needs_of(normalise(rest.get("limits") or {}, ANY_CPUS))
    target = await cluster.place(needs, choice)
    if target == cluster.name:
        return None, rest
    query = {**request.query, "wait": "true"}
    reply = await cluster.forward(target, "POST", request.path + "?" + urllib.parse.urlencode(query),
                                  json.dumps({**rest, "node": target}).encode(), "application/json")
    return web.Response(body=reply.body, status=reply.status, headers={"Content-Type": reply.content_type,
                                                                       "X-Ctd-Node": target}), None
