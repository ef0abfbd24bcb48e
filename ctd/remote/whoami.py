"""GET /1.0/whoami: the caller's identity and what its role lets it do to an instance.

For clients that show only what a caller may do (the web console hides the buttons of refused
actions). It answers from the same table the role check uses (ctd/remote/policy.py) and the
project's rules (projectrules.py), so it cannot drift from what the server enforces; the server
still judges every request. It says nothing about other identities or projects.
"""

from __future__ import annotations

from aiohttp import web

from ctd.remote import policy, projectrules
from ctd.remote.api import IDENTITY
from ctd.remote.identity import Identity, IdentityKind, Role

routes = web.RouteTableDef()
ACTIONS = policy.INSTANCE_ACTIONS


def allowed(app: web.Application, who: Identity, action: str) -> bool:
    path, method, body = ACTIONS[action]
    rule = policy.rule_for(path, method)
    if who.role is Role.ADMIN:
        return True
    if policy.check_route(who.role, rule, method, path) is not None:
        return False
    if rule.fields is not None and policy.check_body(who.role, rule.fields, body) is not None:
        return False
    if who.role is Role.TENANT and rule.project_check == "exec":
        return projectrules.exec_allowed(app, who.project)
    return True


@routes.get("/1.0/whoami")
async def whoami(request: web.Request) -> web.Response:
    # without the access layer (an app made for tests) the caller is the socket's admin
    who: Identity = request.get(IDENTITY) or Identity("local", IdentityKind.LOCAL, Role.ADMIN)
    return web.json_response({
        "identity": {"name": who.name, "kind": who.kind.value, "role": who.role.value, "project": who.project},
        "may": {action: allowed(request.app, who, action) for action in ACTIONS},
    })

