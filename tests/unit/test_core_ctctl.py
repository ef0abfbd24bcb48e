"""ctctl's table output and its HTTP client, against a tiny server on a unix socket."""
from __future__ import annotations

import json
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from ctctl.client import ApiError, Client
from ctctl.output import human_bytes, table

REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------- output


def test_table_aligns_columns_and_strips_trailing_blanks() -> None:
    out = table(["ID", "NAME", "STATE"], [[100, "web", "running"], [7, "a-long-name", None], [12, "", "x"]])
    assert out.splitlines() == [
        "ID   NAME         STATE",
        "100  web          running",
        "7    a-long-name  -",
        "12   -            x",
    ]
    assert not any(line.endswith(" ") for line in out.splitlines())


def test_table_without_rows_is_the_header() -> None:
    assert table(["ID", "NAME"], []) == "ID  NAME"


def test_table_keeps_zero_and_false() -> None:
    assert table(["A", "B"], [[0, False]]).splitlines()[1] == "0  False"


@pytest.mark.parametrize("n,text", [
    (None, "-"), (0, "0B"), (1, "1B"), (1023, "1023B"), (1024, "1.0K"), (1536, "1.5K"),
    (1 << 20, "1.0M"), (int(2.5 * (1 << 30)), "2.5G"), (1 << 40, "1.0T"), (5 << 50, "5120.0T"),
])
def test_human_bytes(n: int | None, text: str) -> None:
    assert human_bytes(n) == text


# ---------------------------------------------------------------- client

Reply = tuple[int, Any]  # (status, JSON-able body, or bytes sent raw)


class FakeCtd:
    """Answers each request with handler(method, path, body) and records what it got."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[dict[str, Any]] = []
        self.handler: Callable[[str, str, Any], Reply] = lambda m, p, b: (200, {})
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                fake.requests.append({"method": self.command, "path": self.path, "body": body,
                                      "content_type": self.headers.get("Content-Type")})
                status, reply = fake.handler(self.command, self.path, body)
                data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:  # client_address is '' on a unix socket
                pass

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True
            block_on_close = False

        self.server = Server(str(path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def ctd(tmp_path: Path) -> Iterator[FakeCtd]:
    fake = FakeCtd(tmp_path / "ctd.sock")
    yield fake
    fake.close()


def client(fake: FakeCtd, timeout: float = 5) -> Client:
    return Client(str(fake.path), timeout=timeout)


def test_plain_get_with_query(ctd: FakeCtd) -> None:
    ctd.handler = lambda m, p, b: (200, {"instances": [{"name": "web"}]})
    assert client(ctd).get("/1.0/instances") == {"instances": [{"name": "web"}]}
    client(ctd).get("/1.0/x", force="true", cmd=["ps", "a b"])
    assert [r["path"] for r in ctd.requests] == ["/1.0/instances", "/1.0/x?force=true&cmd=ps&cmd=a+b"]
    assert ctd.requests[0]["body"] is None


def test_json_body_is_sent_with_its_content_type(ctd: FakeCtd) -> None:
    ctd.handler = lambda m, p, b: (200, {"echo": b})
    assert client(ctd).request("PUT", "/1.0/instances/web/state", {"action": "stop"}) == {"echo": {"action": "stop"}}
    assert ctd.requests[0]["content_type"] == "application/json" and ctd.requests[0]["method"] == "PUT"


def test_empty_reply_is_an_empty_dict(ctd: FakeCtd) -> None:
    ctd.handler = lambda m, p, b: (200, b"")
    assert client(ctd).get("/1.0") == {}


@pytest.mark.parametrize("status,code", [(400, "invalid"), (404, "not-found"), (409, "conflict"), (500, "internal")])
def test_error_json_becomes_api_error(ctd: FakeCtd, status: int, code: str) -> None:
    ctd.handler = lambda m, p, b: (status, {"error": f"it went wrong ({code}); do this", "code": code})
    with pytest.raises(ApiError) as e:
        client(ctd).get("/1.0/instances/web")
    assert (e.value.message, e.value.code, e.value.status) == (f"it went wrong ({code}); do this", code, status)
    assert str(e.value) == e.value.message


def test_error_without_a_body_shape(ctd: FakeCtd) -> None:
    ctd.handler = lambda m, p, b: (502, {"something": "else"})
    with pytest.raises(ApiError) as e:
        client(ctd).get("/1.0")
    assert (e.value.message, e.value.code, e.value.status) == ("HTTP 502", "error", 502)


def test_reply_that_is_not_json(ctd: FakeCtd) -> None:
    ctd.handler = lambda m, p, b: (200, b"<html>proxy error</html>")
    with pytest.raises(ApiError, match=r"not JSON \(HTTP 200\)"):
        client(ctd).get("/1.0")


def test_connection_refused_names_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))  # bound, never listening: connect() is refused
    try:
        with pytest.raises(ApiError) as e:
            Client(str(path), timeout=2).get("/1.0")
    finally:
        s.close()
    assert str(path) in e.value.message and "is it running?" in e.value.message


def test_missing_socket_names_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "nothing-here.sock"
    with pytest.raises(ApiError) as e:
        Client(str(path), timeout=2).get("/1.0")
    assert str(path) in e.value.message and "Start it" in e.value.message


def test_timeout_is_an_api_error(ctd: FakeCtd) -> None:
    gate = threading.Event()

    def slow(m: str, p: str, b: Any) -> Reply:
        gate.wait(5)
        return 200, {}

    ctd.handler = slow
    try:
        with pytest.raises(ApiError) as e:
            client(ctd, timeout=0.2).get("/1.0")
        assert str(ctd.path) in e.value.message
    finally:
        gate.set()


def test_run_waits_for_the_operation(ctd: FakeCtd) -> None:
    polls = iter(["running", "running", "success"])

    def handler(method: str, path: str, body: Any) -> Reply:
        if method == "POST":
            return 202, {"operation": {"id": "op1", "status": "running"}}
        status = next(polls)
        return 200, {"operation": {"id": "op1", "status": status,
                                   "result": {"name": "web", "id": 100} if status == "success" else None}}

    ctd.handler = handler
    assert client(ctd).run("POST", "/1.0/instances", {"name": "web"}) == {"name": "web", "id": 100}
    assert [r["path"] for r in ctd.requests] == ["/1.0/instances?wait=true"] + ["/1.0/operations/op1/wait?timeout=60"] * 3
    assert ctd.requests[0]["body"] == {"name": "web"}


def test_run_on_an_already_finished_operation_does_not_wait(ctd: FakeCtd) -> None:
    ctd.handler = lambda m, p, b: (202, {"operation": {"id": "op1", "status": "success", "result": None}})
    assert client(ctd).run("DELETE", "/1.0/instances/web") == {}
    assert len(ctd.requests) == 1


def test_run_raises_for_a_failed_operation(ctd: FakeCtd) -> None:
    def handler(method: str, path: str, body: Any) -> Reply:
        if method == "PUT":
            return 202, {"operation": {"id": "op2", "status": "running"}}
        return 200, {"operation": {"id": "op2", "status": "failure", "error": "web did not stop; use --kill",
                                   "code": "failed"}}

    ctd.handler = handler
    with pytest.raises(ApiError) as e:
        client(ctd).run("PUT", "/1.0/instances/web/state", {"action": "stop"})
    assert (e.value.message, e.value.code) == ("web did not stop; use --kill", "failed")


def test_run_without_an_operation_returns_the_reply(ctd: FakeCtd) -> None:
    ctd.handler = lambda m, p, b: (200, {"deleted": "busybox"})
    assert client(ctd).run("DELETE", "/1.0/templates/busybox") == {"deleted": "busybox"}


def test_run_raises_the_http_error_of_the_request(ctd: FakeCtd) -> None:
    ctd.handler = lambda m, p, b: (409, {"error": "web is running", "code": "conflict"})
    with pytest.raises(ApiError) as e:
        client(ctd).run("DELETE", "/1.0/instances/web")
    assert e.value.status == 409 and e.value.code == "conflict"


# ---------------------------------------------------------------- start-up


def test_loading_ctctl_leaves_asyncio_aiohttp_and_hostcheck_to_the_commands_that_use_them() -> None:
    """Every ctctl run pays for what `import ctctl.main` loads: exec/console/vnc bring asyncio and
    aiohttp when they run, check brings hostcheck; the other commands start without them."""
    probe = ("import sys, ctctl.main\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'asyncio', 'aiohttp', 'hostcheck', 'ctd'}))\n"
             "print(ctctl.main.cli.list_commands(None))")
    r = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    loaded, commands = r.stdout.splitlines()
    assert loaded == "[]"
    for name in ("check", "create", "exec", "console", "vnc", "template", "network", "remote", "completion"):
        assert f"'{name}'" in commands  # registered all the same
