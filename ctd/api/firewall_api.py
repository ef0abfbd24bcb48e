"""REST routes of the firewall per instance (rules checked in ctd/network/firewall.py) and of
the port forwards of NAT networks (ctd/network/forwards.py):

    GET    /1.0/instances/{ref}/firewall             settings, rules, counters
    PATCH  /1.0/instances/{ref}/firewall             enabled, policy_in, policy_out
    POST   /1.0/instances/{ref}/firewall/rules       add a rule (201)
    DELETE /1.0/instances/{ref}/firewall/rules/{id}  delete one of this instance's rules

    GET    /1.0/networks/{name}/forwards             a network's forwards
    POST   /1.0/networks/{name}/forwards             add one (201; 409: host port taken)
    DELETE /1.0/networks/{name}/forwards/{id}        delete one

A tenant may call the four firewall routes on its instances (ctd/remote/policy.py); a rule is found by
(instance, id), so another instance's rule id is 404 here.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ctd.api.firewall_schema import BASE, FORWARDS
from ctd.api.handlers import ctx
from ctd.api.jsonbody import json_body
from ctd.errors import InvalidRequest

routes = web.RouteTableDef()


@routes.get(BASE)
async def get_firewall(request: web.Request) -> web.Response:
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    return web.json_response({"firewall": await asyncio.to_thread(c.network.firewall.view, rec)})


@routes.patch(BASE)
async def configure_firewall(request: web.Request) -> web.Response:
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    body = await json_body(request)
    return web.json_response({"firewall": await asyncio.to_thread(c.network.firewall.configure, rec, body)})


@routes.post(BASE + "/rules")
async def add_rule(request: web.Request) -> web.Response:
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    body = await json_body(request)
    return web.json_response({"rule": await asyncio.to_thread(c.network.firewall.add_rule, rec, body)}, status=201)


@routes.delete(BASE + "/rules/{id}")
async def delete_rule(request: web.Request) -> web.Response:
    c = ctx(request)
    rec = c.instances.get(request.match_info["ref"])
    rule_id = _id(request, "rule id", "'ctctl firewall NAME list' shows them")
    await asyncio.to_thread(c.network.firewall.delete_rule, rec, rule_id)
    return web.json_response({"deleted": rule_id})


def _id(request: web.Request, what: str, hint: str) -> int:
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit() and len(raw) < 19):
        raise InvalidRequest(f"invalid {what} {raw!r}: a number ({hint})")
    return int(raw)


@routes.get(FORWARDS)
async def list_forwards(request: web.Request) -> web.Response:
    c = ctx(request)
    net = c.network.network(request.match_info["name"])
    forwards = c.network.forwards
    return web.json_response({"forwards": [forwards.view(f) for f in forwards.list(net.name)]})


@routes.post(FORWARDS)
async def add_forward(request: web.Request) -> web.Response:
    c = ctx(request)
    forwards = c.network.forwards
    body = await json_body(request)

    def instance_id(ref: object) -> int:
        if not isinstance(ref, str):
            raise InvalidRequest("instance must be an instance name")
        return c.instances.get(ref).id

    checked = forwards.check_add(request.match_info["name"], body, instance_id)
    added = await asyncio.to_thread(forwards.add, checked)
    return web.json_response({"forward": forwards.view(added)}, status=201)


@routes.delete(FORWARDS + "/{id}")
async def delete_forward(request: web.Request) -> web.Response:
    c = ctx(request)
    name = request.match_info["name"]
    forward_id = _id(request, "forward id", f"'ctctl network forward list {name}' shows them")
    await asyncio.to_thread(c.network.forwards.delete, name, forward_id)
    return web.json_response({"deleted": forward_id})
