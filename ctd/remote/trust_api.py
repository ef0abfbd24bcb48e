"""The trust endpoints: client certificates the HTTPS listener accepts, and join tokens.

Managing trust (list, add, remove, make or revoke a join token) is for an admin: the local admin
on the socket or an admin token or certificate. POST /1.0/trust/join is the one request that
arrives unauthenticated: its one-time secret is the authentication, and a wrong one is a 401
counted against the source like a bad token.
"""

from __future__ import annotations

import logging

from aiohttp import web

from ctd.api.jsonbody import json_body, parse_json
from ctd.api.openapi import ERROR, OBJECT, Schema, responses
from ctd.errors import Forbidden, InvalidRequest
from ctd.remote.api import ACCESS, IDENTITY, SOURCE, RemoteAccess, identity, rate_limited, refuse
from ctd.remote.clientcert import peer_certificate
from ctd.remote.identity import Identity, IdentityKind, Role
from ctd.remote.tokens import utcnow
from ctd.remote.trust import DEFAULT_JOIN_LIFETIME, TrustStore, encode_join_token

log = logging.getLogger("ctd.remote")
routes = web.RouteTableDef()
MAX_JOIN_BODY = 4096


def _admin_store(request: web.Request) -> TrustStore:
    if identity(request).role is not Role.ADMIN:
        raise Forbidden("only an admin may manage trusted certificates")
    store = request.app[ACCESS].trust
    if store is None:
        raise InvalidRequest("this ctd has no trust store")
    return store


async def _object(request: web.Request, known: set[str], example: str) -> dict[str, object]:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidRequest(f"the body must be a JSON object: {example}")
    unknown = sorted(set(body) - known)
    if unknown:
        raise InvalidRequest(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return body


@routes.get("/1.0/trust")
async def list_trust(request: web.Request) -> web.Response:
    store = _admin_store(request)
    now = utcnow()
    return web.json_response({"certificates": [c.to_json(now) for c in store.list()],
                              "tokens": [t.to_json(now) for t in store.tokens()]})


@routes.post("/1.0/trust")
async def add_trust(request: web.Request) -> web.Response:
    store = _admin_store(request)
    body = await _object(request, {"certificate", "name", "role", "project"},
                         '{"certificate": "-----BEGIN ...", "name": ...}')
    record = store.add(body.get("certificate"), body.get("name"), body.get("role", "admin"),
                       body.get("project", "default"))
    log.info("trusted client certificate %s (SHA-256 %s, role %s)", record.name, record.fingerprint,
             record.role.value)
    return web.json_response({"certificate": record.to_json(utcnow())}, status=201)


@routes.delete("/1.0/trust/{name}")
async def remove_trust(request: web.Request) -> web.Response:
    record = _admin_store(request).remove(request.match_info["name"])
    log.info("no longer trusted: client certificate %s (SHA-256 %s)", record.name, record.fingerprint)
    return web.json_response({})


@routes.post("/1.0/trust/tokens")
async def create_join_token(request: web.Request) -> web.Response:
    store = _admin_store(request)
    access: RemoteAccess = request.app[ACCESS]
    if access.server_fingerprint is None:
        raise InvalidRequest("join tokens are redeemed over HTTPS: set https_address in ctd.toml and restart ctd")
    body = await _object(request, {"name", "role", "expires", "project"}, '{"name": ..., "expires": "1h"}')
    token, secret = store.create_token(body.get("name"), body.get("role", "admin"),
                                       body.get("expires", DEFAULT_JOIN_LIFETIME), body.get("project", "default"))
    log.info("join token %s made (role %s, expires %s)", token.name, token.role.value, token.expires_at)
    encoded = encode_join_token(token.name, secret, access.server_fingerprint, token.expires_at)
    return web.json_response({"token": {**token.to_json(utcnow()), "token": encoded}}, status=201)


@routes.delete("/1.0/trust/tokens/{name}")
async def revoke_join_token(request: web.Request) -> web.Response:
    _admin_store(request).revoke_token(request.match_info["name"])
    return web.json_response({})


@routes.post("/1.0/trust/join")
async def join(request: web.Request) -> web.Response:
    """Redeem a join token: the certificate of this TLS connection becomes trusted."""
    access: RemoteAccess = request.app[ACCESS]
    source = request[SOURCE]
    limited = rate_limited(access, source)
    if limited is not None:
        return limited
    der = peer_certificate(request.transport)
    if der is None or access.trust is None:
        raise InvalidRequest("present the certificate to trust at the TLS level (a client certificate) "
                             "and send {\"secret\": ...} from the join token")
    if request.content_length is None or request.content_length > MAX_JOIN_BODY:
        raise InvalidRequest("the body must be {\"secret\": ...}, under 4 kB")
    body = parse_json(await request.read())
    secret = body.get("secret") if isinstance(body, dict) else None
    record = access.trust.redeem(secret, der) if isinstance(secret, str) and secret else None
    if record is None:
        return refuse(request, access, source, "a join token that is unknown, used or expired")
    request[IDENTITY] = Identity(record.name, IdentityKind.CERTIFICATE, record.role, record.project,
                                 fingerprint=record.fingerprint)  # the audit line names who joined
    log.info("join token %s redeemed from %s: trusted client certificate SHA-256 %s", record.name, source,
             record.fingerprint)
    return web.json_response({"certificate": record.to_json(utcnow())}, status=201)


def schema_paths() -> Schema:
    """The OpenAPI description of the endpoints above (merged into /1.0/openapi.json)."""
    def ok(status: int = 200) -> Schema:
        return responses(status, OBJECT, 400, 403)

    name = {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,62}$"}
    expires = {"type": "string", "pattern": "^[0-9]{1,6}[smhdw]$"}
    role = {"type": "string", "enum": [r.value for r in Role]}
    path_name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "/1.0/trust": {
            "get": {"summary": "trusted client certificates and pending join tokens (admin)", "responses": ok()},
            "post": {"summary": "trust a client certificate (PEM) by its SHA-256 fingerprint (admin)",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {
                         "type": "object", "required": ["certificate"], "additionalProperties": False,
                         "properties": {"certificate": {"type": "string"}, "name": name, "role": role,
                                        "project": {"type": "string"}}}}}},
                     "responses": {**ok(201), "409": ERROR}},
        },
        "/1.0/trust/{name}": {
            "parameters": [path_name],
            "delete": {"summary": "stop trusting a client certificate (by name or fingerprint; admin)",
                       "responses": {**ok(), "404": ERROR}},
        },
        "/1.0/trust/tokens": {
            "post": {"summary": "make a one-time join token; the answer holds it, shown once (admin)",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {
                         "type": "object", "required": ["name"], "additionalProperties": False,
                         "properties": {"name": name, "role": role, "expires": expires,
                                        "project": {"type": "string"}}}}}},
                     "responses": {**ok(201), "409": ERROR}},
        },
        "/1.0/trust/tokens/{name}": {
            "parameters": [path_name],
            "delete": {"summary": "revoke a pending join token (admin)", "responses": {**ok(), "404": ERROR}},
        },
        "/1.0/trust/join": {
            "post": {"summary": "redeem a join token: the TLS client certificate becomes trusted (no other "
                                "authentication)",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {
                         "type": "object", "required": ["secret"], "properties": {"secret": {"type": "string"}}}}}},
                     "responses": {**ok(201), "401": ERROR}},
        },
    }
