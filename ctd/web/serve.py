"""The web console's files, and the security headers on every answer of ctd.

Contract:
- GET /console/ and /console/{file}: files from ctd/web/static only (index.html, app.js,
  app.css, and vendor/: xterm.js and noVNC with their licenses, copied there at install time by
  scripts/build-web.sh). No templating: the files are the same for everyone and hold no data, so
  they need no authentication. The page asks the API with the token the user typed: kept in
  sessionStorage, sent as `Authorization: Bearer`, and to WebSockets (which cannot carry that
  header from a browser) as the subprotocol `ctd.bearer.TOKEN` beside `ctd.v1`
  (ctd/remote/api.py); never in a URL or a cookie.
- Every answer carries `X-Content-Type-Options: nosniff`; the console's files a strict
  Content-Security-Policy (scripts, styles, connections: this origin only; no inline script; no
  framing), `X-Frame-Options: DENY` and `Referrer-Policy: no-referrer`; API answers
  `Cache-Control: no-store` and a CSP that runs nothing.
- A request whose `Origin` header names another site than the one it was sent to is refused
  (403) before authentication: a browser holding a trusted client certificate must not let
  another site's page drive ctd with it (cross-site WebSocket hijacking, form posts).

How a tenant would abuse it, and what stops it: a hostile instance description or name shown
to an admin's browser (the page only ever sets textContent, never HTML; the CSP forbids inline
script in any case); paths that climb out of the static folder (`..`, symlinks, odd characters:
404); framing the page to click its buttons (frame-ancestors 'none'); reading the token from
another origin (sessionStorage is per origin and per tab).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from ctd.api.errors import error_response
from ctd.api.openapi import Schema

STATIC_DIR = Path(__file__).parent / "static"
PREFIX = "/console/"
routes = web.RouteTableDef()

CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".txt": "text/plain; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*")

PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
API_CSP = "default-src 'none'; frame-ancestors 'none'"


def static_file(name: str) -> Path | None:
    """The file under STATIC_DIR that `name` names, or None (bad name, outside, or missing)."""
    if not _FILE.fullmatch(name) or ".." in name.split("/") or Path(name).suffix not in CONTENT_TYPES:
        return None
    root = STATIC_DIR.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def _file_response(name: str) -> web.StreamResponse:
    path = static_file(name)
    if path is None:
        raise web.HTTPNotFound(text=f"no such file in the web console: {name[:100]!r}\n")
    return web.FileResponse(path, headers={"Content-Type": CONTENT_TYPES[path.suffix]})


@routes.get(PREFIX)
async def console_page(request: web.Request) -> web.StreamResponse:
    return _file_response("index.html")


@routes.get(PREFIX + "{file:.+}")
async def console_file(request: web.Request) -> web.StreamResponse:
    return _file_response(request.match_info["file"])


def _cross_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return False   # not a browser's cross-origin request (ctctl, curl, same-origin GETs)
    parts = urlsplit(origin)
    return parts.scheme not in ("http", "https") or parts.netloc.lower() != (request.host or "").lower()


@web.middleware
async def origin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if _cross_origin(request) and not request.path.startswith(PREFIX):
        return error_response(f"cross-origin requests are refused (Origin {request.headers['Origin'][:100]!r}): "
                              "use ctd's own web console or a client that is not a browser page", "forbidden", 403)
    return await handler(request)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: headers on every answer (the page's, the API's, errors, 101s)."""
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    if request.path.startswith(PREFIX):
        headers["Content-Security-Policy"] = PAGE_CSP
        headers["X-Frame-Options"] = "DENY"
        headers["Referrer-Policy"] = "no-referrer"
        headers["Cache-Control"] = "no-cache"   # revalidate: an upgraded ctd serves the new page
    else:
        headers.setdefault("Content-Security-Policy", API_CSP)
        headers["Cache-Control"] = "no-store"


def schema_paths() -> Schema:
    page = {"200": {"description": "a file of the page", "content": {"text/html": {"schema": {"type": "string"}}}},
            "404": {"description": "no such file"}}
    return {
        "/console/": {"get": {"summary": "the web console (a static page; no authentication)", "responses": page}},
        "/console/{file}": {"parameters": [{"name": "file", "in": "path", "required": True,
                                            "schema": {"type": "string"}}],
                            "get": {"summary": "a file of the web console", "responses": page}},
    }
