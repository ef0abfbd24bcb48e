"""Who may ask, and what was asked: the access middleware (identity from the socket's peer, a
token or a trusted client certificate; rate limit; audit) and the token and audit endpoints.

On HTTPS a request with an Authorization header is judged by its token alone; one without is
judged by the client certificate of its TLS connection. Anything else is 401 (and counts
against its source). Only POST /1.0/trust/join goes through unauthenticated: it carries its own
one-time secret (ctd/remote/trust_api.py)."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler

from ctd.api.errors import error_response
from ctd.api.jsonbody import json_body, parse_json
from ctd.api.openapi import ERROR, OBJECT, Schema, responses
from ctd.errors import Forbidden, InvalidRequest
from ctd.remote import policy
from ctd.remote.audit import AuditEntry, AuditLog, parse_since
from ctd.remote.clientcert import peer_certificate
from ctd.remote.identity import Identity, IdentityKind, Role
from ctd.remote.ratelimit import FailureLimiter
from ctd.remote.tokens import TokenStore, utcnow
from ctd.remote.trust import TrustStore

log = logging.getLogger("ctd.remote")

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
UNAUTHORIZED = ("authentication required: send 'Authorization: Bearer <token>' (ctctl token create makes one) "
                "or a trusted client certificate (ctctl trust add)")
JOIN_PATH = "/1.0/trust/join"
# A browser cannot set Authorization on a WebSocket: the web console offers its token as a
# subprotocol "ctd.bearer.TOKEN" beside "ctd.v1" (the one the server answers with).
WS_BEARER = "ctd.bearer."


@dataclass
class RemoteAccess:
    tokens: TokenStore
    audit: AuditLog
    limiter: FailureLimiter = field(default_factory=FailureLimiter)
    trust: TrustStore | None = None
    server_fingerprint: str | None = None  # the HTTPS certificate's (None: no HTTPS listener)
    # In a cluster: a certificate's SHA-256 -> the member node it belongs to (ctd/cluster/node.py);
    # such a node is let in as an admin for the requests it forwards (ctd/cluster/forward.py).
    peers: Callable[[str], str | None] | None = None


ACCESS = web.AppKey("access", RemoteAccess)
# request keys the middleware sets (typed: request[IDENTITY] is an Identity to mypy)
IDENTITY = web.RequestKey("identity", Identity)
SOURCE = web.RequestKey("source", str)  # "unix", or the peer's address
STARTED = web.RequestKey("started", datetime.datetime)
DENIED = web.RequestKey("denied", str)  # set by the role check (ctd/remote/enforce.py): why the request was refused
PROJECT = web.RequestKey("project", str)  # set by the scoping (ctd/api/scoping.py): the project the request acts in
routes = web.RouteTableDef()


def identity(request: web.Request) -> Identity:
    return request[IDENTITY]


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    uid: int = struct.unpack("3i", creds)[1]
    return uid


def _bearer(header: str) -> str | None:
    scheme, _, secret = header.partition(" ")
    return secret.strip() if scheme.lower() == "bearer" and secret.strip() else None


def _websocket_bearer(request: web.Request) -> str | None:
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return None
    for offered in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
        offered = offered.strip()
        if offered.startswith(WS_BEARER) and len(offered) > len(WS_BEARER):
            return offered[len(WS_BEARER):]
    return None


def _public(request: web.Request) -> bool:
    """A GET of a route the policy table opens to anyone (the web console's static files)."""
    if request.method not in ("GET", "HEAD") or request.match_info.http_exception is not None:
        return False
    resource = request.match_info.route.resource
    return resource is not None and policy.rule_for(resource.canonical, request.method).role is None


def _local_identity(request: web.Request) -> Identity | None:
    """The peer of a unix-socket connection (its permissions already let it in); None for TCP."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        uid = str(_peer_uid(sock))
    except OSError:
        uid = "?"
    return Identity(uid, IdentityKind.LOCAL, Role.ADMIN)


def _refused(status: int, message: str, code: str, retry_after: float = 0.0) -> web.Response:
    response = error_response(message, code, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="ctd"'
    if retry_after:
        response.headers["Retry-After"] = str(int(retry_after) + 1)
    return response


def rate_limited(access: RemoteAccess, source: str) -> web.Response | None:
    wait = access.limiter.retry_after(source)
    if wait:
        return _refused(429, f"too many failed authentications from {source}; retry in {int(wait) + 1} s",
                        "rate-limited", wait)
    return None


def refuse(request: web.Request, access: RemoteAccess, source: str, why: str) -> web.Response:
    """401, logged, and counted against the source."""
    blocked = access.limiter.failed(source)
    log.warning("refused %s %s from %s: %s%s", request.method, request.path, source, why,
                "; source blocked for a while" if blocked else "")
    return _refused(401, UNAUTHORIZED, "unauthorized")


def _authenticate(request: web.Request, access: RemoteAccess, source: str) -> Identity | web.Response:
    limited = rate_limited(access, source)
    if limited is not None:
        return limited
    header = request.headers.get("Authorization")
    offered = _websocket_bearer(request) if header is None else None
    if header is not None or offered is not None:
        secret = _bearer(header) if header is not None else offered
        found = access.tokens.authenticate(secret) if secret else None
        return found or refuse(request, access, source, "bad, expired or revoked token")
    der = peer_certificate(request.transport)
    if der is None:
        return refuse(request, access, source, "no token and no client certificate")
    found = access.trust.authenticate(der) if access.trust is not None else None
    if found is None and access.peers is not None:
        fingerprint = hashlib.sha256(der).hexdigest()
        node = access.peers(fingerprint)
        if node is not None:
            return Identity(f"node:{node}", IdentityKind.CERTIFICATE, Role.ADMIN, fingerprint=fingerprint)
    if found is None:
        return refuse(request, access, source, "client certificate SHA-256 "
                      f"{hashlib.sha256(der).hexdigest()} is not trusted (unknown, removed or expired)")
    return found


async def _target(request: web.Request) -> str | None:
    """What the request acts on: the path's instance, template or network, else the body's name."""
    for key in ("ref", "name", "id"):
        if key in request.match_info:
            return request.match_info[key]
    if request.method in MUTATING and request.body_exists and request.content_length is not None:
        try:
            body = parse_json(await request.read())  # already read (and size-capped) by the handler
        except (InvalidRequest, web.HTTPException):
            return None
        name = body.get("name") if isinstance(body, dict) else None
        if isinstance(name, str):
            return name[:200]
    return None


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Who is asking: the socket's peer, or a token on HTTPS (else 401/429 and nothing more)."""
    access = request.app[ACCESS]
    request[STARTED] = utcnow()
    who = _local_identity(request)
    request[SOURCE] = "unix" if who is not None else (request.remote or "?")
    if who is None and request.method == "POST" and request.path == JOIN_PATH \
            and "Authorization" not in request.headers:
        return await handler(request)  # its one-time secret is checked (and rate limited) there
    if who is None and _public(request):
        return await handler(request)  # the same static files for everyone; no data in them
    if who is None:
        checked = _authenticate(request, access, request[SOURCE])
        if isinstance(checked, web.Response):
            return checked
        who = checked
    request[IDENTITY] = who
    return await handler(request)


async def audit_response(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the status is known, nothing is sent yet. A WebSocket upgrade
    (exec, console) is recorded when it is accepted (101), not when the session ends."""
    upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
    denied: str | None = request.get(DENIED)
    if request.method not in MUTATING and not upgrade and denied is None:
        return
    access = request.app[ACCESS]
    who: Identity | None = request.get(IDENTITY)
    if who is None and response.status == 429:
        return  # a blocked source's flood would fill the disk; its block was logged once
    target = await _target(request) if who is not None else None  # never read a stranger's body
    entry = AuditEntry(request.get(STARTED, utcnow()).isoformat(timespec="milliseconds"),
                       who.label if who else "anonymous", request.get(SOURCE) or request.remote or "?",
                       request.method, request.path, target, response.status, who.fingerprint if who else None,
                       who.role.value if who else None, denied,
                       request.get(PROJECT) or (who.project if who else None))
    try:
        access.audit.write(entry)
    except OSError as exc:
        log.error("could not write the audit log %s: %s", access.audit.path, exc)


# ------------------------------------------------------------------ tokens (local admin only)

def _local_only(request: web.Request) -> None:
    if not identity(request).is_local:
        raise Forbidden("tokens are managed on the host only: run 'ctctl token ...' there (unix socket)")


@routes.get("/1.0/tokens")
async def list_tokens(request: web.Request) -> web.Response:
    _local_only(request)
    access = request.app[ACCESS]
    now = utcnow()
    return web.json_response({"tokens": [t.to_json(now) for t in access.tokens.list()]})


@routes.post("/1.0/tokens")
async def create_token(request: web.Request) -> web.Response:
    _local_only(request)
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object: {\"name\": ..., \"expires\": \"30d\"}")
    unknown = sorted(set(body) - {"name", "role", "expires", "project"})
    if unknown:
        raise InvalidRequest(f"unknown field(s) {', '.join(unknown)}; known: name, role, expires, project")
    record, secret = request.app[ACCESS].tokens.create(body.get("name"), body.get("role", "admin"),
                                                      body.get("expires"), body.get("project", "default"))
    log.info("token %s created (role %s, project %s, expires %s)", record.name, record.role.value, record.project,
             record.expires_at or "never")
    return web.json_response({"token": {**record.to_json(utcnow()), "secret": secret}}, status=201)


@routes.delete("/1.0/tokens/{name}")
async def revoke_token(request: web.Request) -> web.Response:
    _local_only(request)
    name = request.match_info["name"]
    request.app[ACCESS].tokens.revoke(name)
    log.info("token %s revoked", name)
    return web.json_response({})


# ------------------------------------------------------------------ audit

@routes.get("/1.0/audit")
async def read_audit(request: web.Request) -> web.Response:
    if identity(request).role is not Role.ADMIN:
        raise Forbidden("only an admin may read the audit log")
    since = request.query.get("since")
    when = parse_since(since, utcnow()) if since else None
    audit = request.app[ACCESS].audit
    entries = await asyncio.to_thread(audit.read, when) if os.path.exists(audit.path) else []
    project = request.query.get("project")
    if project is not None:
        entries = [e for e in entries if e.get("project") == project]
    return web.json_response({"entries": entries})


def schema_paths() -> Schema:
    """The OpenAPI description of the endpoints above (merged into /1.0/openapi.json)."""
    def ok(status: int = 200) -> Schema:
        return responses(status, OBJECT, 400, 403)

    token_name = {"name": "name", "in": "path", "required": True,
                  "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,62}$"}}
    return {
        "/1.0/tokens": {
            "get": {"summary": "API tokens, without secrets (unix socket only)", "responses": ok()},
            "post": {"summary": "make an API token; the answer holds its secret, shown once (unix socket only)",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {
                         "type": "object", "required": ["name"], "additionalProperties": False,
                         "properties": {"name": token_name["schema"],
                                        "role": {"type": "string", "enum": [r.value for r in Role]},
                                        "expires": {"type": "string", "pattern": "^[0-9]{1,6}[smhdw]$"},
                                        "project": {"type": "string"}}}}}},
                     "responses": {**ok(201), "409": ERROR}},
        },
        "/1.0/tokens/{name}": {
            "parameters": [token_name],
            "delete": {"summary": "revoke an API token (unix socket only)", "responses": {**ok(), "404": ERROR}},
        },
        "/1.0/audit": {
            "get": {"summary": "the audit log: every mutating request",
                    "parameters": [{"name": "since", "in": "query", "required": False,
                                    "description": "a duration back from now (1h, 2d) or an ISO 8601 time",
                                    "schema": {"type": "string"}},
                                   {"name": "project", "in": "query", "required": False,
                                    "description": "only requests that acted in this project",
                                    "schema": {"type": "string"}}],
                    "responses": ok()},
        },
    }
