"""The one table from error kinds to HTTP status codes, and the JSON error body."""

from __future__ import annotations

import json
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from ctd import errors

log = logging.getLogger("ctd.api")

STATUS: dict[type[errors.CtdError], int] = {
    errors.InvalidRequest: 400,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.NotSupported: 501,
    errors.Unavailable: 503,
    errors.OperationFailed: 500,
    errors.CtdError: 500,
}


def status_for(exc: errors.CtdError) -> int:
    for kind in type(exc).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


def one_line(message: str) -> str:
    """An error is one line whatever a client sent: control characters echoed from its input
    (a field name, a value) are shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def error_response(message: str, code: str, status: int, request: web.Request | None = None) -> web.Response:
    message = one_line(message)
    response = web.json_response({"error": message, "code": code}, status=status)
    if request is not None and request.headers.get("Upgrade", "").lower() == "websocket":
        # A WebSocket client sees only the status and headers of a refused upgrade.
        response.headers["X-Ctd-Error"] = (message.replace("\r", " ").replace("\n", " ")
                                           .encode("ascii", "replace").decode("ascii")[:1000])
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.CtdError as exc:
        return error_response(exc.message, exc.code, status_for(exc), request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            code = {404: "not-found", 405: "method-not-allowed", 413: "too-large"}.get(exc.status, "http")
            reason = exc.text or exc.reason
            if exc.status == 404:
                reason = f"no such API path {request.path!r}; GET /1.0/openapi.json lists them"
            elif exc.status == 405:
                reason = f"{request.method} is not allowed on {request.path}"
            return error_response(reason, code, exc.status)
        raise
    except json.JSONDecodeError as exc:
        return error_response(f"the request body is not valid JSON: {exc}", "invalid", 400)
    except Exception:  # noqa: BLE001 — never let a request take the daemon down
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response("internal error; see the ctd log", "internal", 500)
