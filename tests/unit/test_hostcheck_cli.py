"""`ctctl check`: local mode with a fake kernel config, and the daemon path over a unix socket."""

from __future__ import annotations

import json
import shutil
import socket
import socketserver
import tempfile
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from click.testing import CliRunner

from ctctl.check import NOT_RUNNING, check

FAKE_CONFIG = """#
# Linux/x86 6.18.0 Kernel Configuration
#
CONFIG_NAMESPACES=y
CONFIG_UTS_NS=y
CONFIG_IPC_NS=y
# CONFIG_USER_NS is not set
CONFIG_PID_NS=y
CONFIG_NET_NS=y
CONFIG_CGROUPS=y
CONFIG_VETH=m
CONFIG_BRIDGE=m
"""
DAEMON_RESULTS = [
    {"name": "driver:vm", "status": "WARN", "detail": "TCG only", "fix": "enable KVM",
     "required": False, "category": "drivers"},
    {"name": "driver:container", "status": "OK", "detail": "ready", "fix": "",
     "required": True, "category": "drivers"},
]


def run(*args: str):
    return CliRunner().invoke(check, list(args), catch_exceptions=False)


def run_split(*args: str):
    """Invoke with stdout and stderr apart (click 8.1 needs mix_stderr=False; 8.2 dropped it)."""
    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    return runner.invoke(check, list(args), catch_exceptions=False)


def test_fake_config_missing_user_ns(tmp_path):
    cfg = tmp_path / "config"
    cfg.write_text(FAKE_CONFIG)
    res = run("--kernel-config", str(cfg), "--socket", str(tmp_path / "no.sock"))
    assert res.exit_code != 0
    [line] = [l for l in res.output.splitlines() if "CONFIG_USER_NS" in l]
    assert line.split()[:2] == ["MISSING", "CONFIG_USER_NS"]
    assert "fix: rebuild the kernel with CONFIG_USER_NS=y" in line
    assert "local checks only" in res.output.splitlines()[0]
    veth = next(l for l in res.output.splitlines() if " CONFIG_VETH " in l)
    assert veth.split()[0] == "OK"  # a module counts


def test_fake_config_json(tmp_path):
    cfg = tmp_path / "config"
    cfg.write_text(FAKE_CONFIG)
    res = run_split("--kernel-config", str(cfg), "--format", "json")
    assert res.exit_code == 1
    data = json.loads(res.stdout)
    user = next(r for r in data["results"] if r["name"] == "CONFIG_USER_NS")
    assert user["status"] == "MISSING" and user["required"] and "CONFIG_USER_NS=y" in user["fix"]
    assert data["source"] == "local" and "local checks only" in res.stderr


class FakeDaemon:
    """A unix-socket HTTP server answering GET /1.0/check with a fixed status and body."""

    def __init__(self, status: int, body: object) -> None:
        self.dir = tempfile.mkdtemp(prefix="ctdchk", dir="/tmp")  # short: sun_path is 108 bytes
        self.path = str(Path(self.dir) / "ctd.sock")
        status_, payload = status, json.dumps(body).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code = status_ if self.path == "/1.0/check" else 404
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = socketserver.ThreadingUnixStreamServer(self.path, Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.dir)


@pytest.fixture
def daemon(request):
    d = FakeDaemon(*request.param)
    yield d
    d.close()


@pytest.mark.parametrize("daemon", [(200, {"results": DAEMON_RESULTS})], indirect=True)
def test_through_daemon(daemon):
    res = run("--socket", daemon.path)
    assert res.exit_code == 0
    assert "local checks only" not in res.output
    assert any(l.split()[:2] == ["WARN", "driver:vm"] and "fix: enable KVM" in l
               for l in res.output.splitlines())
    res = run_split("--socket", daemon.path, "--format", "json")
    data = json.loads(res.stdout)
    assert data["source"] == "daemon" and [r["name"] for r in data["results"]] == ["driver:vm", "driver:container"]


@pytest.mark.parametrize("daemon", [(200, {"results": [dict(DAEMON_RESULTS[1], status="MISSING")]})],
                         indirect=True)
def test_daemon_missing_fails(daemon):
    assert run("--socket", daemon.path).exit_code == 1


@pytest.mark.parametrize("daemon", [(404, {"error": "not found"})], indirect=True)
def test_daemon_without_check_endpoint(daemon, monkeypatch):
    monkeypatch.setenv("CTD_SOCKET", daemon.path)
    res = run()
    assert "HTTP 404" in res.output.splitlines()[0] and "local checks only" in res.output
    assert "cgroup-version" in res.output  # the local checks ran


def test_socket_absent_or_refused(tmp_path):
    res = run("--socket", str(tmp_path / "absent.sock"))
    assert res.output.splitlines()[0] == NOT_RUNNING
    stale = tempfile.mkdtemp(prefix="ctdchk", dir="/tmp")
    try:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(Path(stale) / "s"))  # bound, never listening: connection refused
        res = run("--socket", str(Path(stale) / "s"))
        s.close()
        assert res.output.splitlines()[0] == NOT_RUNNING
    finally:
        shutil.rmtree(stale)
