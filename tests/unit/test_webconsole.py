"""The web console's server side on its own: which files it serves, its headers, the Origin check,
the token offered as a WebSocket subprotocol, /1.0/whoami's answer per role; and the page's own
rules read from its files (no inline script, nothing written as HTML)."""
from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from ctd.remote import api as remote_api
from ctd.remote import whoami
from ctd.remote.identity import Identity, IdentityKind, Role
from ctd.web import serve

STATIC = Path(serve.__file__).parent / "static"


@pytest.fixture
def static(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "static"
    (root / "vendor" / "xterm").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><p>page</p>")
    (root / "app.js").write_text("// js")
    (root / "vendor" / "xterm" / "xterm.mjs").write_text("// xterm")
    (tmp_path / "secret.js").write_text("// outside")
    (root / "link.js").symlink_to(tmp_path / "secret.js")
    (root / "notes.py").write_text("# not a page file")
    monkeypatch.setattr(serve, "STATIC_DIR", root)
    return root


def test_only_page_files_inside_the_static_folder_are_served(static: Path) -> None:
    assert serve.static_file("index.html") == static / "index.html"
    assert serve.static_file("vendor/xterm/xterm.mjs") == static / "vendor" / "xterm" / "xterm.mjs"
    for bad in ("../secret.js", "vendor/../../secret.js", "link.js", ".hidden.js", "notes.py", "vendor",
                "/etc/passwd", "vendor//xterm/xterm.mjs", "app.js\x00.css", "missing.js", "vendor/xterm/./xterm.mjs"):
        assert serve.static_file(bad) is None, bad


async def thing(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def serve_app(test: Callable[[TestClient], Awaitable[None]]) -> None:
    async def main() -> None:
        app = web.Application(middlewares=[serve.origin_middleware])
        app.add_routes(serve.routes)
        app.router.add_route("*", "/1.0/thing", thing)
        app.on_response_prepare.append(serve.security_headers)
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            await test(client)
        finally:
            await client.close()
    asyncio.run(main())


def test_headers_of_the_page_and_of_the_api(static: Path) -> None:
    async def t(client: TestClient) -> None:
        page = await client.get("/console/")
        assert page.status == 200 and "<p>page</p>" in await page.text()
        assert page.headers["Content-Type"].startswith("text/html")
        csp = page.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe" not in csp
        assert page.headers["X-Frame-Options"] == "DENY" and page.headers["X-Content-Type-Options"] == "nosniff"
        assert page.headers["Referrer-Policy"] == "no-referrer"
        module = await client.get("/console/vendor/xterm/xterm.mjs")
        assert module.status == 200 and module.headers["Content-Type"].startswith("text/javascript")
        assert (await client.get("/console/vendor/novnc/core/rfb.js")).status == 404   # not built: 404, no crash
        assert (await client.get("/console/link.js")).status == 404
        answer = await client.get("/1.0/thing")
        assert answer.headers["Cache-Control"] == "no-store"
        assert answer.headers["Content-Security-Policy"] == serve.API_CSP
    serve_app(t)


def test_a_browser_request_from_another_origin_is_refused(static: Path) -> None:
    async def t(client: TestClient) -> None:
        own = f"http://{client.host}:{client.port}"
        assert (await client.get("/1.0/thing", headers={"Origin": own})).status == 200
        assert (await client.get("/1.0/thing")).status == 200   # ctctl, curl: no Origin
        for other in ("https://evil.example", "null", f"http://{client.host}:{client.port + 1}",
                      f"file://{client.host}:{client.port}"):
            refused = await client.post("/1.0/thing", headers={"Origin": other})
            assert refused.status == 403 and "cross-origin" in (await refused.json())["error"], other
        assert (await client.get("/console/", headers={"Origin": "https://evil.example"})).status == 200
    serve_app(t)


def test_a_token_is_taken_from_a_websocket_subprotocol_only_on_an_upgrade() -> None:
    ws = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Protocol": "ctd.v1, ctd.bearer.ctd_abc"}
    assert remote_api._websocket_bearer(make_mocked_request("GET", "/x", headers=ws)) == "ctd_abc"
    plain = {"Sec-WebSocket-Protocol": "ctd.bearer.ctd_abc"}
    assert remote_api._websocket_bearer(make_mocked_request("GET", "/x", headers=plain)) is None
    empty = {**ws, "Sec-WebSocket-Protocol": "ctd.v1, ctd.bearer."}
    assert remote_api._websocket_bearer(make_mocked_request("GET", "/x", headers=empty)) is None


@pytest.mark.parametrize(("role", "expected"), [
    (Role.TENANT, {"start": True, "stop": True, "restart": True, "console": True, "exec": False, "display": True}),
    (Role.OPERATOR, dict.fromkeys(whoami.ACTIONS, True)),
    (Role.ADMIN, dict.fromkeys(whoami.ACTIONS, True)),
])
def test_whoami_says_what_the_role_table_allows(role: Role, expected: dict[str, bool]) -> None:
    who = Identity("t", IdentityKind.TOKEN, role, "p1")
    assert {a: whoami.allowed(web.Application(), who, a) for a in whoami.ACTIONS} == expected


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, dict(attrs)))


def test_the_page_has_no_inline_script_or_style_and_loads_only_its_own_files() -> None:
    parser = _Tags()
    parser.feed((STATIC / "index.html").read_text())
    for tag, attrs in parser.found:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        assert "style" not in attrs and tag != "style", (tag, attrs)
        if tag == "script":
            assert attrs.get("src") and "//" not in str(attrs["src"]), attrs
        if tag == "link":
            assert "//" not in str(attrs.get("href")), attrs


def test_the_script_never_writes_html_nor_keeps_the_token_outside_the_tab() -> None:
    script = (STATIC / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "localStorage", "document.cookie"):
        assert sink not in script, sink
    assert re.search(r"sessionStorage\.setItem\(TOKEN_KEY", script)
    assert "?token=" not in script and "&token=" not in script
