"""The role table (ctd/remote/policy.py) and its middleware (ctd/remote/enforce.py).

The table must name every route of the OpenAPI schema (so a new route cannot be forgotten) and
nothing else; a route or a body field it does not name needs an admin. The middleware is tried
on a small aiohttp app over loopback with identities of each role.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.typedefs import Handler

from ctd.api.errors import error_middleware
from ctd.api.jsonbody import json_body
from ctd.api.schema import build_schema
from ctd.remote import enforce, policy
from ctd.remote.api import DENIED, IDENTITY
from ctd.remote.identity import Identity, IdentityKind, Role

HTTP_METHODS = {"get", "put", "post", "delete", "patch"}
ADMIN, OPERATOR, TENANT = Role.ADMIN, Role.OPERATOR, Role.TENANT
INST = "/1.0/instances/{ref}"


def test_every_route_has_a_policy_entry_and_no_entry_is_stale() -> None:
    documented = {(path, method.upper()) for path, ops in build_schema()["paths"].items()
                  for method in ops if method in HTTP_METHODS}
    table = set(policy.POLICY)
    assert documented - table == set(), "routes without a role rule: add them to ctd/remote/policy.py POLICY"
    assert table - documented == set(), "role rules for routes that do not exist"


def test_a_route_missing_from_the_table_needs_an_admin() -> None:
    rule = policy.rule_for("/1.0/some-new-route", "POST")
    assert rule.role is ADMIN
    for role in (TENANT, OPERATOR):
        denied = policy.check_route(role, rule, "POST", "/1.0/some-new-route")
        assert denied is not None and denied.needs is ADMIN and role.value in denied.message
    assert policy.check_route(ADMIN, rule, "POST", "/1.0/some-new-route") is None
    assert policy.rule_for(INST, "HEAD") is policy.rule_for(INST, "GET")


def test_roles_are_ordered() -> None:
    assert ADMIN.at_least(OPERATOR) and OPERATOR.at_least(TENANT) and TENANT.at_least(TENANT)
    assert not TENANT.at_least(OPERATOR) and not OPERATOR.at_least(ADMIN)


@pytest.mark.parametrize(("path", "method", "tenant", "operator"), [
    ("/1.0/instances", "GET", True, True),
    ("/1.0/instances", "POST", False, True),
    (INST, "DELETE", False, True),
    (INST + "/state", "PUT", True, True),
    (INST + "/console", "GET", True, True),
    (INST + "/exec", "GET", True, True),          # a tenant's also asks the project
    (INST + "/snapshots", "POST", True, True),
    (INST + "/rollback", "POST", True, True),
    (INST + "/reinstall", "POST", True, True),
    (INST + "/clone", "POST", False, True),
    (INST + "/rename", "POST", False, True),
    (INST + "/backup", "POST", True, True),       # into backup_dir; a named file is a field only an admin sends
    ("/1.0/restore", "POST", False, False),
    ("/1.0/networks", "POST", False, False),
    ("/1.0/networks", "GET", False, True),
    ("/1.0/templates", "GET", True, True),
    ("/1.0/templates", "POST", False, False),
    ("/1.0/templates/{name}", "DELETE", False, False),
    ("/1.0/storage", "GET", False, False),
    ("/1.0/shutdown", "POST", False, False),
    ("/1.0/tokens", "POST", False, False),
    ("/1.0/audit", "GET", False, False),
    ("/1.0/trust", "POST", False, False),
    ("/1.0/trust/tokens", "POST", False, False),
])
def test_who_may_call_what(path: str, method: str, tenant: bool, operator: bool) -> None:
    rule = policy.rule_for(path, method)
    assert (policy.check_route(TENANT, rule, method, path) is None) is tenant
    assert (policy.check_route(OPERATOR, rule, method, path) is None) is operator
    assert policy.check_route(ADMIN, rule, method, path) is None


def body_denial(role: Role, path: str, method: str, body: Any) -> policy.Denial | None:
    fields = policy.rule_for(path, method).fields
    assert fields is not None
    return policy.check_body(role, fields, body)


@pytest.mark.parametrize("body", [
    {"userpasswd": "root:pw"}, {"ssh_keys": ["ssh-ed25519 AAAA x"]}, {"description": "mine"},
    {"hostname": "h"}, {"timezone": "UTC"}, {"nameservers": ["1.1.1.1"]},
])
def test_a_tenant_may_set_the_guests_own_settings(body: dict[str, Any]) -> None:
    assert body_denial(TENANT, INST, "PATCH", body) is None


@pytest.mark.parametrize(("body", "needs", "named"), [
    ({"limits": {"ram": "4G"}}, OPERATOR, "limits"),
    ({"description": "x", "limits": {"cpus": 4}}, OPERATOR, "limits"),   # one bad field spoils the body
    ({"ipadd": ["10.0.0.9"]}, OPERATOR, "ipadd"),
    ({"rate": "1G"}, OPERATOR, "rate"),
    ({"tags": {"plan": "free"}}, OPERATOR, "tags"),
    ({"protected": False}, OPERATOR, "protected"),
    ({"disabled": False}, ADMIN, "disabled"),
    ({"boot_delay": 3600}, ADMIN, "boot_delay"),
    ({"privileged": True}, ADMIN, "privileged"),      # not a set field at all: unknown is admin's
    ({"devices": ["/dev/sda"]}, ADMIN, "devices"),
    ({"features": ["tun"]}, OPERATOR, "features"),   # devices are the provider's to give
])
def test_a_tenant_may_not_set_the_rest(body: dict[str, Any], needs: Role, named: str) -> None:
    denied = body_denial(TENANT, INST, "PATCH", body)
    assert denied is not None and denied.needs is needs and f"'{named}'" in denied.message
    assert denied.message.startswith("role tenant may not")


def test_an_operator_sets_limits_but_not_the_providers_flags() -> None:
    assert body_denial(OPERATOR, INST, "PATCH", {"limits": {"ram": "1G"}, "protected": True, "onboot": True}) is None
    for body in ({"disabled": True, "reason": "unpaid"}, {"disabled": False}, {"boot_order": 1}):
        denied = body_denial(OPERATOR, INST, "PATCH", body)
        assert denied is not None and denied.needs is ADMIN


@pytest.mark.parametrize(("body", "allowed"), [
    ({"name": "a", "template": "busybox", "limits": {"ram": "1G"}}, True),
    ({"name": "a", "privileged": False, "io_uring": False, "disabled": False}, True),
    ({"name": "a", "privileged": True}, False),
    ({"name": "a", "privileged": "yes"}, False),     # only exactly false is an operator's
    ({"name": "a", "privileged": 0}, False),
    ({"name": "a", "io_uring": True}, False),
    ({"name": "a", "type": "vm", "vm": {"profile": "linux"}}, True),
    ({"name": "a", "type": "vm", "vm": {"disk": "/etc/shadow"}}, False),
    ({"name": "a", "type": "vm", "vm": {"iso": "/root/x.iso"}}, False),
    ({"name": "a", "nics": [{"network": "default", "filter": True}]}, True),
    ({"name": "a", "nics": [{"network": "default"}, {"network": "x", "filter": False}]}, False),
    ({"name": "a", "nics": [{"network": "default", "hostdev": "eth0"}]}, False),
    ({"name": "a", "boot_delay": 5}, False),
])
def test_what_an_operator_may_create(body: dict[str, Any], allowed: bool) -> None:
    denied = body_denial(OPERATOR, "/1.0/instances", "POST", body)
    assert (denied is None) is allowed, denied
    assert body_denial(ADMIN, "/1.0/instances", "POST", body) is None


def test_a_denied_value_is_named_in_the_message() -> None:
    denied = body_denial(OPERATOR, "/1.0/instances", "POST", {"name": "a", "nics": [{}, {"filter": False}]})
    assert denied is not None and "'nics[1].filter' to false" in denied.message and "admin" in denied.message


@pytest.mark.parametrize(("action", "allowed"), [("start", True), ("stop", True), ("restart", True),
                                                 ("suspend", False), ("resume", False), ("freeze", False)])
def test_a_tenant_starts_stops_and_restarts_only(action: str, allowed: bool) -> None:
    assert (body_denial(TENANT, INST + "/state", "PUT", {"action": action, "timeout": 5}) is None) is allowed
    assert body_denial(OPERATOR, INST + "/state", "PUT", {"action": "suspend"}) is None
    assert body_denial(TENANT, INST + "/state", "PUT", {"action": "start", "paused": True}) is not None


def test_bodies_that_are_not_objects_are_left_to_the_handler() -> None:
    assert body_denial(TENANT, INST, "PATCH", ["limits"]) is None
    assert body_denial(OPERATOR, "/1.0/instances", "POST", {"name": "a", "vm": "disk"}) is None


def test_below_admin_the_server_information_says_nothing_about_the_host() -> None:
    info = {"version": "1", "api": "1.0", "https": {"address": "x"}, "state_dir": "/var/lib/ctd",
            "recovered": {"adopted": ["other-projects-vm"]}, "boot": {"steps": [{"name": "other"}]}}
    tenant = Identity("t", IdentityKind.TOKEN, TENANT)
    assert policy.visible_info(tenant, info) == {"version": "1", "api": "1.0", "https": {"address": "x"}}
    assert policy.visible_info(Identity("0", IdentityKind.LOCAL, ADMIN), info) == info


# ---------------------------------------------------------------- the middleware

def serve(test: Callable[[TestClient, list[tuple[str, Any]]], Awaitable[None]]) -> None:
    calls: list[tuple[str, Any]] = []

    @web.middleware
    async def who(request: web.Request, handler: Handler) -> web.StreamResponse:
        role = request.headers.get("X-Role")
        if role:
            request[IDENTITY] = Identity("t1", IdentityKind.TOKEN, Role(role), "p1")
        response = await handler(request)
        response.headers["X-Denied"] = request.get(DENIED) or ""
        return response

    async def patch(request: web.Request) -> web.Response:
        calls.append(("patch", await json_body(request)))   # the body the policy read is read again
        return web.json_response({})

    async def anything(request: web.Request) -> web.Response:
        calls.append((request.method, request.path))
        return web.json_response({})

    app = web.Application(middlewares=[who, error_middleware, enforce.policy_middleware])
    app.router.add_patch(INST, patch)
    app.router.add_get("/1.0/storage", anything)
    app.router.add_get(INST + "/exec", anything)
    app.router.add_get(INST + "/console", anything)
    app.router.add_post(INST + "/reinstall", anything)
    app.router.add_post("/1.0/trust/join", anything)

    async def run() -> None:
        async with TestClient(TestServer(app)) as client:
            await test(client, calls)

    asyncio.run(run())


def test_the_middleware_refuses_before_the_handler_runs() -> None:
    async def t(client: TestClient, calls: list[tuple[str, Any]]) -> None:
        resp = await client.get("/1.0/storage", headers={"X-Role": "operator"})
        body = await resp.json()
        assert resp.status == 403 and body["code"] == "forbidden"
        assert "role operator may not read the storage pool" in body["error"] and "admin" in body["error"]
        assert resp.headers["X-Denied"], "marked for the audit log"
        resp = await client.patch("/1.0/instances/web", json={"limits": {"ram": "9G"}}, headers={"X-Role": "tenant"})
        body = await resp.json()
        assert resp.status == 403 and "'limits'" in body["error"] and "userpasswd" in body["error"]
        assert calls == []
        resp = await client.patch("/1.0/instances/web", json={"ssh_keys": []}, headers={"X-Role": "tenant"})
        assert resp.status == 200 and calls == [("patch", {"ssh_keys": []})]
        resp = await client.patch("/1.0/instances/web", data=b"{not json", headers={"X-Role": "tenant"})
        assert resp.status == 400
        for role in ("admin", "operator"):
            assert (await client.get("/1.0/storage" if role == "admin" else "/1.0/instances/web/exec",
                                     headers={"X-Role": role})).status == 200
        assert (await client.post("/1.0/trust/join")).status == 200, "no identity: only the join route"
        assert (await client.get("/1.0/nowhere", headers={"X-Role": "tenant"})).status == 404
    serve(t)


def test_a_websocket_is_refused_before_the_upgrade() -> None:
    async def t(client: TestClient, calls: list[tuple[str, Any]]) -> None:
        ws = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "X-Role": "tenant"}
        resp = await client.get("/1.0/instances/web/exec?cmd=id", headers=ws)
        assert resp.status == 403 and "does not allow exec" in resp.headers["X-Ctd-Error"]
        assert calls == []
        assert (await client.get("/1.0/instances/web/console", headers={"X-Role": "tenant"})).status == 200
    serve(t)


def test_a_tenants_reinstall_template_is_asked_of_the_project(monkeypatch: pytest.MonkeyPatch) -> None:
    from ctd.remote import projectrules
    asked: list[tuple[str, str]] = []

    def allowed(app: web.Application, project: str, template: str) -> bool:
        asked.append((project, template))
        return template == "debian"

    monkeypatch.setattr(projectrules, "template_allowed", allowed)

    async def t(client: TestClient, calls: list[tuple[str, Any]]) -> None:
        hdr = {"X-Role": "tenant"}
        resp = await client.post("/1.0/instances/web/reinstall", json={"template": "debian"}, headers=hdr)
        assert resp.status == 200
        resp = await client.post("/1.0/instances/web/reinstall", json={"template": "windows"}, headers=hdr)
        assert resp.status == 403 and "'windows'" in json.loads(await resp.text())["error"]
        assert (await client.post("/1.0/instances/web/reinstall", json={"template": "windows"},
                                  headers={"X-Role": "operator"})).status == 200
        assert asked == [("p1", "debian"), ("p1", "windows")]
    serve(t)


@pytest.mark.parametrize("body", [{"file": "/root/x.ctdbackup"}, {"snapshot": "s1"}, {"driver": "tar"}])
def test_a_tenant_backs_up_into_backup_dir_only(body: dict[str, Any]) -> None:
    assert body_denial(TENANT, INST + "/backup", "POST", {}) is None
    denied = body_denial(TENANT, INST + "/backup", "POST", body)
    assert denied is not None and denied.needs is ADMIN
