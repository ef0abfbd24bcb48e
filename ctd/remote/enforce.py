"""The role check on every request: the table of ctd/remote/policy.py applied by a middleware.

Contract: runs after the identity is known (ctd/remote/api.py access_middleware) and before the
handler. A denial raises Forbidden (403, with a message naming the role and what it lacks) and
marks the request so the audit log records it, also for a GET. The order is: the route (no body is
read for a route the role may not call), then the body's fields, then what the project allows
(exec, reinstall template; tenants only). A WebSocket (exec, console) is refused here, before the
upgrade. The local admin on the unix socket is an admin like any other: nothing changes for it.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from ctd.api.jsonbody import json_body
from ctd.errors import Forbidden
from ctd.remote import policy, projectrules
from ctd.remote.api import DENIED, IDENTITY
from ctd.remote.identity import Identity, Role

log = logging.getLogger("ctd.remote")


def route_template(request: web.Request) -> str | None:
    """The matched route's path template (/1.0/instances/{ref}); None when nothing matched."""
    if request.match_info.http_exception is not None:
        return None
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None


def deny(request: web.Request, who: Identity, message: str) -> Forbidden:
    request[DENIED] = message
    log.warning("denied %s %s to %s (role %s, project %s): %s", request.method, request.path, who.label,
                who.role.value, who.project, message)
    return Forbidden(message)


async def _body(request: web.Request) -> object:
    return await json_body(request)  # aiohttp keeps the bytes: the handler's json_body reads them again


def _project_check(request: web.Request, who: Identity, rule: policy.Rule, body: object) -> str | None:
    if who.role is not Role.TENANT or not rule.project_check:
        return None
    if rule.project_check == "exec" and not projectrules.exec_allowed(request.app, who.project):
        return (f"role tenant may not run commands in an instance: project {who.project!r} does not allow "
                "exec for tenants (the console works; an admin can allow exec in the project's settings)")
    if rule.project_check == "reinstall" and isinstance(body, dict):
        template = body.get("template")
        if isinstance(template, str) and not projectrules.template_allowed(request.app, who.project, template):
            return (f"role tenant may not reinstall from template {template!r}: project {who.project!r} "
                    "does not allow it ('ctctl template list' shows the templates; ask an admin)")
    return None


@web.middleware
async def policy_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    who: Identity | None = request.get(IDENTITY)
    path = route_template(request)
    if path is None:
        return await handler(request)  # 404/405 from the router, whoever asks
    rule = policy.rule_for(path, request.method)
    if who is None:
        if rule.role is None:
            return await handler(request)  # redeeming a join token: its secret is checked there
        raise Forbidden("authentication required")   # not reached: access_middleware answers 401 first
    if who.role is Role.ADMIN:
        return await handler(request)
    denied = policy.check_route(who.role, rule, request.method, path)
    if denied is not None:
        raise deny(request, who, denied.message)
    body: object = None
    if rule.fields is not None or rule.project_check == "reinstall":
        body = await _body(request)
    if rule.fields is not None:
        denied = policy.check_body(who.role, rule.fields, body)
        if denied is not None:
            allowed = policy.allowed_fields(who.role, rule.fields)
            may = f"a {who.role.value} may send: {', '.join(allowed)}" if allowed else \
                f"a {who.role.value} sends no field here (an empty body)"
            raise deny(request, who, f"{denied.message}; {may}")
    refused = _project_check(request, who, rule, body)
    if refused is not None:
        raise deny(request, who, refused)
    return await handler(request)
