"""REST routes for an instance's NICs after create (the work: ctd/instance/nicplug.py):

    POST   /1.0/instances/{ref}/nics          add a NIC (201), live on a running container
    DELETE /1.0/instances/{ref}/nics/{nic}    remove one, named as inside (eth1)

Both are an operator's (a NIC's network and addresses are the provider's to give, as at
create); "filter": false stays an admin's (ctd/remote/policy.py).
"""

from __future__ import annotations

from aiohttp import web

from ctd.api.handlers import ctx
from ctd.api.jsonbody import json_body
from ctd.api.nics_schema import BASE
from ctd.instance import nicplug

routes = web.RouteTableDef()


@routes.post(BASE)
async def add_nic(request: web.Request) -> web.Response:
    c = ctx(request)
    body = await json_body(request)
    nic = await nicplug.add_nic(c.instances, request.match_info["ref"], body)
    return web.json_response({"nic": nic}, status=201)


@routes.delete(BASE + "/{nic}")
async def remove_nic(request: web.Request) -> web.Response:
    c = ctx(request)
    which = request.match_info["nic"]
    await nicplug.remove_nic(c.instances, request.match_info["ref"], which)
    return web.json_response({"deleted": which})
