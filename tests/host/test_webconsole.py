"""The web console in headless Chromium against a real daemon over HTTPS on 127.0.0.1.

An admin logs in with a token, sees a running container, stops and starts it from the page and
types into a shell; a tenant sees its instances without the Shell button (its project allows no
exec) and types into the console; a bad token gets the login error; a hostile description is
shown as text and runs nothing. Screenshots go to each test's tmp dir (`webconsole-*.png`;
pytest keeps the last runs' under --basetemp).
"""
from __future__ import annotations

import asyncio
import http.client
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from selenium import webdriver  # pip install -e .[test]
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from ctctl.client import pinning_context
from ctd.web import serve
from tests.conftest import Daemon
from tests.host import test_roles

daemon = test_roles.daemon   # the fixture: a daemon of this module's own with HTTPS on 127.0.0.1
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WS = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


@pytest.fixture(scope="module")
def running(daemon: Daemon) -> str:
    name = daemon.unique("web")
    daemon.ok("create", name, "--template", "busybox", "--ram", "256M")
    daemon.ok("start", name)
    return name


def token(d: Daemon, role: str) -> str:
    secret = d.ok("token", "create", f"{role}-{uuid.uuid4().hex[:6]}", "--role", role).strip()
    assert secret.startswith("ctd_")
    return secret


def url(d: Daemon) -> str:
    return f"https://127.0.0.1:{d.port}/console/"  # type: ignore[attr-defined]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    for path in (CHROMIUM, CHROMEDRIVER):
        assert Path(path).exists(), f"{path} is missing: setup.sh installs chromium and chromium-driver"
    profile = tempfile.mkdtemp(prefix="webconsole-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--ignore-certificate-errors",   # ctd's self-signed certificate (clients pin it)
                 "--window-size=1280,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        try:
            driver.save_screenshot(str(tmp_path / "webconsole-last.png"))
        finally:
            driver.quit()
            shutil.rmtree(profile, ignore_errors=True)


def wait_for(what: str, check: Callable[[], object], timeout: float = 60,
             driver: WebDriver | None = None) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    shown = ""
    if driver is not None:   # what the page says, for the failure message
        shown = f"on {driver.current_url}: " + str(driver.execute_script(
            "return document.body ? document.body.innerText.slice(0, 400) : document.documentElement.outerHTML"))
    raise TimeoutException(f"timed out waiting for {what} {shown}")


def open_page(driver: WebDriver, address: str) -> None:
    """Load the page; again when Chromium dropped the load because this shared host's interfaces
    changed (other tests make veths and bridges: ERR_NETWORK_CHANGED)."""
    for _ in range(3):
        driver.get(address)
        if "ERR_NETWORK_CHANGED" not in str(driver.execute_script("return document.body.innerText")):
            break
        time.sleep(1)
    wait_for("the login form", lambda: any(e.is_displayed() for e in driver.find_elements(By.ID, "token")),
             driver=driver)


def login(driver: WebDriver, d: Daemon, secret: str) -> None:
    open_page(driver, url(d))
    driver.find_element(By.ID, "token").send_keys(secret)
    driver.find_element(By.ID, "login-button").click()


def row(driver: WebDriver, name: str):  # type: ignore[no-untyped-def]
    # compared in the page, not in a selector: a hostile name would break the selector
    return driver.execute_script("return [...document.querySelectorAll('#instances tbody tr')]"
                                 ".find((tr) => tr.dataset.name === arguments[0]) || null", name)


def state_of(driver: WebDriver, name: str) -> str | None:
    r = row(driver, name)
    try:
        return r.find_element(By.CSS_SELECTOR, "td.state").text if r is not None else None
    except Exception:  # noqa: BLE001 - the list was redrawn between the two lookups
        return None


def buttons(driver: WebDriver, name: str) -> list[str]:
    r = row(driver, name)
    try:
        return [b.text for b in r.find_elements(By.CSS_SELECTOR, "td.actions button")] if r is not None else []
    except Exception:  # noqa: BLE001 - redrawn meanwhile
        return []


def click(driver: WebDriver, name: str, label: str) -> None:
    wait_for(f"button {label} of {name}", lambda: label in buttons(driver, name))
    r = row(driver, name)
    assert r is not None
    r.find_element(By.CSS_SELECTOR, f'button[data-action="{label.lower()}"]').click()


def type_into_terminal(driver: WebDriver, text: str) -> None:
    wait_for("the terminal", lambda: driver.find_elements(By.CSS_SELECTOR, "#screen .xterm-helper-textarea"))
    time.sleep(1)   # the WebSocket opens after the terminal is drawn
    area = driver.find_element(By.CSS_SELECTOR, "#screen .xterm-helper-textarea")
    area.send_keys(text + Keys.ENTER)


def terminal_text(driver: WebDriver) -> str:
    return str(driver.execute_script(
        "const r = document.querySelector('#screen .xterm-rows'); return r ? r.innerText : '';"))


def test_an_admin_stops_starts_and_uses_a_shell(daemon: Daemon, running: str, browser: WebDriver,
                                                tmp_path: Path) -> None:
    login(browser, daemon, token(daemon, "admin"))
    wait_for("the running container in the list", lambda: state_of(browser, running) == "running",
             driver=browser)
    assert {"Stop", "Restart", "Console", "Shell"} <= set(buttons(browser, running))
    browser.save_screenshot(str(tmp_path / "webconsole-admin-list.png"))

    click(browser, running, "Stop")
    wait_for("stopped on the page", lambda: state_of(browser, running) == "stopped", 120)
    assert f"{running}" in daemon.ok("list", "--state", "stopped"), "ctd says it stopped too"
    click(browser, running, "Start")
    wait_for("running on the page", lambda: state_of(browser, running) == "running", 120)
    assert running in daemon.ok("list", "--state", "running")

    click(browser, running, "Shell")
    mark = uuid.uuid4().hex[:8]
    type_into_terminal(browser, f"echo hi-$((6*7))-{mark}")
    wait_for("the shell's answer", lambda: f"hi-42-{mark}" in terminal_text(browser), 30)
    # xterm.js's own <style> elements are refused by the CSP (logged); the page copies them into
    # a constructed stylesheet. Nothing else may be refused, and nothing may cost a 401.
    assert browser.execute_script("return document.adoptedStyleSheets.some((s) => s.cssRules.length > 0)")
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert [m for m in errors if not ("xterm.mjs" in m and "Applying inline style" in m)] == []
    browser.save_screenshot(str(tmp_path / "webconsole-admin-shell.png"))


def test_a_tenant_sees_no_shell_button_and_uses_the_console(daemon: Daemon, running: str, browser: WebDriver,
                                                            tmp_path: Path) -> None:
    secret = token(daemon, "tenant")
    login(browser, daemon, secret)
    wait_for("its instance", lambda: state_of(browser, running) == "running", driver=browser)
    shown = buttons(browser, running)
    assert "Shell" not in shown and {"Stop", "Restart", "Console"} <= set(shown), shown
    assert "tenant" in browser.find_element(By.ID, "who").text
    # the page hides the button; the server is the judge: the tenant's exec WebSocket is refused
    status, _ = upgrade(daemon, f"/1.0/instances/{running}/exec?cmd=id", secret)
    assert status == 403

    click(browser, running, "Console")
    mark = uuid.uuid4().hex[:8]
    type_into_terminal(browser, f"echo console-$((6*7))-{mark}")
    wait_for("the console's answer", lambda: f"console-42-{mark}" in terminal_text(browser), 30)
    browser.save_screenshot(str(tmp_path / "webconsole-tenant-console.png"))


def test_a_bad_token_gets_the_login_error(daemon: Daemon, browser: WebDriver, tmp_path: Path) -> None:
    login(browser, daemon, "ctd_" + "x" * 43)
    error = browser.find_element(By.ID, "login-error")
    wait_for("the login error", lambda: "refused" in error.text, driver=browser)
    assert not browser.find_element(By.ID, "main").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('ctd.token')") is None, "a refused token is not kept"
    browser.save_screenshot(str(tmp_path / "webconsole-bad-token.png"))


def test_a_hostile_description_is_shown_as_text(daemon: Daemon, running: str, browser: WebDriver,
                                                tmp_path: Path) -> None:
    hostile = '<img src=x onerror="window.pwned=1;document.title=\'pwned\'"><script>window.pwned=2</script>'
    daemon.ok("set", running, "--description", hostile)
    try:
        login(browser, daemon, token(daemon, "tenant"))
        wait_for("the description", lambda: row(browser, running) is not None
                 and hostile in row(browser, running).text)
        time.sleep(1)   # an onerror handler would have run by now
        assert browser.execute_script("return window.pwned") is None
        assert browser.title == "ctd console"
        assert browser.find_elements(By.CSS_SELECTOR, "#instances img, #instances script") == []
        browser.save_screenshot(str(tmp_path / "webconsole-hostile.png"))
    finally:
        daemon.ok("set", running, "--description", "")


def upgrade(d: Daemon, path: str, secret: str) -> tuple[int, dict[str, str]]:
    """A WebSocket handshake that offers the token as a subprotocol, like the page does."""
    conn = http.client.HTTPSConnection("127.0.0.1", d.port, timeout=60,  # type: ignore[attr-defined]
                                       context=pinning_context())
    try:
        conn.request("GET", path, headers={**WS, "Sec-WebSocket-Protocol": f"ctd.v1, ctd.bearer.{secret}"})
        response = conn.getresponse()
        if response.status != 101:
            response.read()
        return response.status, dict(response.getheaders())
    finally:
        conn.close()


def get(d: Daemon, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", d.port, timeout=60,  # type: ignore[attr-defined]
                                       context=pinning_context())
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_websocket_token_in_a_subprotocol_is_never_echoed(daemon: Daemon, running: str) -> None:
    status, headers = upgrade(daemon, f"/1.0/instances/{running}/console", token(daemon, "admin"))
    assert status == 101 and headers.get("Sec-WebSocket-Protocol") == "ctd.v1"
    status, _ = upgrade(daemon, f"/1.0/instances/{running}/console", "ctd_" + "y" * 43)
    assert status == 401


def test_the_page_is_public_and_strict_and_api_answers_are_not_cached(daemon: Daemon) -> None:
    status, headers, body = get(daemon, "/console/")
    assert status == 200 and b"app.js" in body
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    status, headers, _ = get(daemon, "/console/vendor/xterm/LICENSE.txt")
    assert status == 200, "scripts/build-web.sh (setup.sh) vendors xterm.js with its license"
    for bad in ("/console/../1.0/instances", "/console/%2e%2e/%2e%2e/ctd.db", "/console/vendor/../../serve.py",
                "/console/.hidden.js"):
        assert get(daemon, bad)[0] in (401, 404), bad
    status, headers, _ = get(daemon, "/1.0/instances")
    assert status == 401 and headers["Cache-Control"] == "no-store"
    admin = token(daemon, "admin")
    status, headers, _ = get(daemon, "/1.0/instances", {"Authorization": f"Bearer {admin}"})
    assert status == 200 and headers["Cache-Control"] == "no-store"
    status, _, body = get(daemon, "/1.0/instances", {"Authorization": f"Bearer {admin}",
                                                     "Origin": "https://evil.example"})
    assert status == 403 and b"cross-origin" in body


# ---------------------------------------------------------------- the page alone, against a fake API

HOSTILE_NAME = '<img src=x onerror="window.pwned=1">'


async def fake_whoami(request: web.Request) -> web.Response:
    return web.json_response({
        "identity": {"name": "fake", "kind": "token", "role": "tenant", "project": "p"},
        "may": {"start": True, "stop": True, "restart": True, "console": True, "exec": False, "display": True}})


async def fake_instances(request: web.Request) -> web.Response:
    return web.json_response({"instances": [
        {"name": HOSTILE_NAME, "type": "<b>vm</b>", "state": "running", "description": "<script>x</script>",
         "usage": {"cpu_seconds": "<i>1</i>", "memory_current": 1048576}}]})


class PageServer:
    """ctd's page routes and a fake API (a list with a hostile name) on loopback, in a thread:
    what the page shows of data no real ctd would accept, and the page without vendored files."""

    def __init__(self) -> None:
        app = web.Application(middlewares=[serve.origin_middleware])
        app.add_routes(serve.routes)
        app.on_response_prepare.append(serve.security_headers)
        app.router.add_get("/1.0/whoami", fake_whoami)
        app.router.add_get("/1.0/instances", fake_instances)
        self.runner = web.AppRunner(app)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.runner.setup(), self.loop).result(30)
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        asyncio.run_coroutine_threadsafe(site.start(), self.loop).result(30)
        port = self.runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/console/"

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def test_hostile_fields_stay_text_and_missing_vendor_files_say_how_to_build(
        browser: WebDriver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unbuilt = tmp_path / "static"
    shutil.copytree(serve.STATIC_DIR, unbuilt, ignore=shutil.ignore_patterns("vendor"))
    monkeypatch.setattr(serve, "STATIC_DIR", unbuilt)
    with PageServer() as page:
        open_page(browser, page)
        browser.find_element(By.ID, "token").send_keys("ctd_fake")
        browser.find_element(By.ID, "login-button").click()
        wait_for("the hostile row", lambda: row(browser, HOSTILE_NAME) is not None)
        shown = row(browser, HOSTILE_NAME)
        assert shown is not None
        assert shown.find_element(By.CSS_SELECTOR, "td.name").text == HOSTILE_NAME
        assert "<b>vm</b>" in shown.text and "<script>x</script>" in shown.text
        assert browser.find_elements(By.CSS_SELECTOR, "#instances img, #instances b, #instances script") == []
        time.sleep(1)
        assert browser.execute_script("return window.pwned") is None
        assert buttons(browser, HOSTILE_NAME) == ["Stop", "Restart", "Console"]   # the whoami answer
        click(browser, HOSTILE_NAME, "Console")
        wait_for("the build hint", lambda: "build-web.sh" in browser.find_element(By.ID, "notice").text)
        browser.save_screenshot(str(tmp_path / "webconsole-unbuilt.png"))
