"""The HTTPS listener from outside: real TLS on 127.0.0.1, a real daemon, ctctl as a remote client.

Attempts: no token, garbage/revoked/expired tokens, plain HTTP and TLS 1.1 on the TLS port,
brute force (rate limit), token management over HTTPS, a client with a wrong pinned certificate.
Each asserts what an attacker would see (status, body) and that nothing changed. Tests that
fail authentications on purpose talk from addresses of their own in 127.0.0.0/8, so that the
rate limit they trip does not block the others.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctctl.client import fetch_fingerprint, pinning_context
from tests.conftest import REPO, CtlResult, Daemon, _start_daemon, _teardown

WS_HEADERS = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def https_daemon(tmp: Path, tag: str) -> Iterator[Daemon]:
    """A daemon with HTTPS on a free loopback port (its .port), torn down at the end."""
    port = free_port()
    d = _start_daemon(tmp, tag, f'https_address = "127.0.0.1:{port}"\n')
    d.port = port  # type: ignore[attr-defined]
    try:
        yield d
    finally:
        _teardown(d)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from https_daemon(tmp_path_factory.mktemp("remote"), "https")


@pytest.fixture
def user_config(tmp_path: Path) -> Path:
    return tmp_path / "xdg"


def ctl(config: Path, *args: str, input: str = "", timeout: float = 120) -> CtlResult:
    """ctctl as a user on another machine would run it: its own config dir, no socket given."""
    env = {k: v for k, v in os.environ.items() if k != "CTD_SOCKET"}
    env["XDG_CONFIG_HOME"] = str(config)
    r = subprocess.run([sys.executable, "-m", "ctctl.main", *args], capture_output=True, text=True, input=input,
                       timeout=timeout, cwd=REPO, env=env)
    return CtlResult(r.returncode, r.stdout, r.stderr)


def https(d: Daemon, method: str, path: str, token: str | None = None, body: object = None,
          headers: dict[str, str] | None = None, source: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", d.port, timeout=30, context=pinning_context(),  # type: ignore[attr-defined]
                                       source_address=(source, 0))
    try:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        payload = None if body is None else json.dumps(body)
        conn.request(method, path, payload, sent)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def make_token(d: Daemon, name: str, *extra: str) -> str:
    secret = d.ok("token", "create", name, *extra).strip()
    assert secret.startswith("ctd_")
    return secret


def fingerprint(d: Daemon) -> str:
    return d.client.get("/1.0")["https"]["certificate_fingerprint"]


def test_the_served_certificate_is_the_one_ctd_shows_and_its_key_is_private(daemon: Daemon) -> None:
    shown = fingerprint(daemon)
    assert fetch_fingerprint("127.0.0.1", daemon.port) == shown  # type: ignore[attr-defined]
    assert shown in daemon.ok("info")
    for name in ("server.key", "server.crt"):
        assert stat.S_IMODE((daemon.state_dir / "tls" / name).stat().st_mode) == 0o600


def test_no_token_gets_401_and_nothing_about_instances(daemon: Daemon) -> None:
    name = daemon.unique("secret")
    daemon.ok("create", name, "--template", "busybox")
    attempts = [("GET", "/1.0/instances", None, None), ("GET", f"/1.0/instances/{name}", None, None),
                ("GET", "/1.0", None, None), ("GET", "/1.0/operations", None, None),
                ("GET", "/1.0/no-such-path", None, None),
                ("POST", "/1.0/instances", {"name": "intruder", "template": "busybox"}, None),
                ("DELETE", f"/1.0/instances/{name}", None, None),
                ("PUT", f"/1.0/instances/{name}/state", {"action": "start"}, None),
                ("GET", f"/1.0/instances/{name}/exec?cmd=id", None, WS_HEADERS),
                ("GET", f"/1.0/instances/{name}/console", None, WS_HEADERS)]
    for method, path, body, headers in attempts:
        status, got_headers, raw = https(daemon, method, path, body=body, headers=headers, source="127.0.0.3")
        assert status == 401, (method, path, status, raw)
        assert json.loads(raw)["code"] == "unauthorized"
        assert name.encode() not in raw and b"busybox" not in raw and b"state_dir" not in raw
        assert got_headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert daemon.instance(name)["state"] == "stopped", "nothing changed"
    assert "intruder" not in [i["name"] for i in daemon.client.get("/1.0/instances")["instances"]]
    audit = (daemon.state_dir / "audit.log").read_text().splitlines()
    refused = [json.loads(line) for line in audit if '"anonymous"' in line]
    assert {(e["method"], e["status"]) for e in refused} >= {("POST", 401), ("DELETE", 401), ("PUT", 401)}
    assert all(e["target"] is None for e in refused), "a stranger's body is never read"
    daemon.ok("destroy", name)


def test_garbage_revoked_and_expired_tokens_get_401(daemon: Daemon) -> None:
    def https(*args, **kw):  # type: ignore[no-untyped-def]
        return globals()["https"](*args, source="127.0.0.4", **kw)  # failures of its own source

    good = make_token(daemon, "lifecycle")
    assert https(daemon, "GET", "/1.0/instances", good)[0] == 200
    expiring = make_token(daemon, "short", "--expires", "1s")
    for garbage in ("x", "ctd_" + "A" * 43, good[:-1], good + "x", "Bearer " + good):
        assert https(daemon, "GET", "/1.0/instances", garbage)[0] == 401, garbage
    status, _, raw = https(daemon, "GET", "/1.0/instances", headers={"Authorization": f"Basic {good}"})
    assert status == 401, "only the Bearer scheme"
    daemon.ok("token", "revoke", "lifecycle")
    status, _, raw = https(daemon, "GET", "/1.0/instances", good)
    assert status == 401 and b"instances" not in raw.replace(b"ctctl token", b"")
    time.sleep(1.5)
    assert https(daemon, "GET", "/1.0/instances", expiring)[0] == 401
    listed = daemon.ok("token", "list")
    assert "short" in listed and "expired" in listed and "lifecycle" not in listed
    daemon.ok("token", "revoke", "short")


def test_tokens_are_managed_only_on_the_socket(daemon: Daemon) -> None:
    admin = make_token(daemon, "no-mint")
    status, _, raw = https(daemon, "POST", "/1.0/tokens", admin, {"name": "minted"})
    assert status == 403 and b"ctd_" not in raw
    assert https(daemon, "GET", "/1.0/tokens", admin)[0] == 403
    assert https(daemon, "DELETE", "/1.0/tokens/no-mint", admin)[0] == 403
    assert "minted" not in daemon.ok("token", "list")
    daemon.ok("token", "revoke", "no-mint")


def test_secrets_are_never_stored_or_logged_in_clear(daemon: Daemon) -> None:
    secret = make_token(daemon, "hashed")
    assert https(daemon, "POST", "/1.0/instances", secret, {"name": "bad name!"})[0] == 400
    for bad in (secret + "x", secret[:-2]):
        https(daemon, "GET", "/1.0", bad, source="127.0.0.5")
    # Every file ctd writes text or records to (not the pool image: it holds the instances' disks).
    files = [p for p in daemon.state_dir.iterdir() if p.is_file() and p.name != "pool.img"] + [daemon.log]
    digest = hashlib.sha256(secret.encode()).hexdigest().encode()
    found_hash = False
    for path in files:
        data = path.read_bytes()  # type: ignore[union-attr]
        assert secret[4:20].encode() not in data, f"the secret is in {path}"
        found_hash |= digest in data
    assert found_hash, "the DB keeps the hash (else the check above proves nothing)"
    assert stat.S_IMODE((daemon.state_dir / "ctd.db").stat().st_mode) == 0o600, "not even the hash for others"
    daemon.ok("token", "revoke", "hashed")


def test_plain_http_on_the_tls_port_gets_nothing(daemon: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as s:  # type: ignore[attr-defined]
        s.sendall(b"GET /1.0/instances HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert b"HTTP/" not in got and b"instances" not in got and b"{" not in got, got[:200]


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_below_1_2_is_refused(daemon: Daemon) -> None:
    def handshake(version: ssl.TLSVersion) -> str:
        context = pinning_context()
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = version
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer the old versions
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as raw:  # type: ignore[attr-defined]
            with context.wrap_socket(raw) as tls:
                return tls.version() or ""

    assert handshake(ssl.TLSVersion.TLSv1_2) == "TLSv1.2", "the same client gets in with TLS 1.2"
    for old in (ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1):
        with pytest.raises(ssl.SSLError):  # the server ends the handshake (alert or EOF)
            handshake(old)


def test_failed_authentications_are_rate_limited_per_source(daemon: Daemon) -> None:
    good = make_token(daemon, "limited")
    attacker = "127.0.0.2"  # loopback too; the rest of this module talks from 127.0.0.1
    statuses = [https(daemon, "GET", "/1.0/instances", f"ctd_guess{i}", source=attacker)[0] for i in range(12)]
    assert statuses[:9] == [401] * 9 and statuses[10:] == [429, 429], statuses
    status, headers, raw = https(daemon, "GET", "/1.0/instances", good, source=attacker)
    assert status == 429 and int(headers["Retry-After"]) > 0, "blocked even with a valid token, for a while"
    assert b"limited" not in raw.replace(b"rate-limited", b"")
    assert https(daemon, "GET", "/1.0/instances", good)[0] == 200, "another source is not blocked"
    assert "too many failed" in daemon.ok("audit") or "refused" in daemon.log.read_text()  # type: ignore[union-attr]
    assert "source blocked" in daemon.log.read_text()  # type: ignore[union-attr]
    # A flood of writes from a blocked source does not fill the audit log (its first failures do).
    flooder = "127.0.0.6"
    for i in range(40):
        https(daemon, "DELETE", f"/1.0/instances/x{i}", "ctd_guess", source=flooder)
    lines = [line for line in (daemon.state_dir / "audit.log").read_text().splitlines() if flooder in line]
    assert len(lines) == 10 and all('"status":401' in line for line in lines)
    daemon.ok("token", "revoke", "limited")


def test_ctctl_remote_manages_instances_over_https_and_is_audited(daemon: Daemon, user_config: Path) -> None:
    secret = make_token(daemon, "panel", "--expires", "1d")
    url = f"https://127.0.0.1:{daemon.port}"  # type: ignore[attr-defined]
    fp = fingerprint(daemon)
    r = ctl(user_config, "remote", "add", "node1", url, "--token", secret, "--accept-certificate", fp.upper())
    assert r.code == 0, r.err
    remotes = user_config / "ctctl" / "remotes.toml"
    assert stat.S_IMODE(remotes.stat().st_mode) == 0o600 and secret in remotes.read_text()
    name = daemon.unique("rem")

    def ok(*args: str) -> str:
        got = ctl(user_config, "--remote", "node1", *args)
        assert got.code == 0, f"ctctl {' '.join(args)}: {got.err}{got.out}"
        return got.out

    try:
        ok("create", name, "--template", "busybox")
        ok("start", name)
        assert name in ok("list")
        assert ok("exec", name, "--", "/bin/sh", "-c", "echo hello-$((6*7))").strip() == "hello-42"
        assert ctl(user_config, "--remote", "node1", "exec", name, "--", "/bin/sh", "-c", "exit 3").code == 3
        console = ctl(user_config, "--remote", "node1", "console", name, input="echo console-$((6*7))\n", timeout=30)
        assert console.code == 0 and "console-42" in console.out, console.err
        # An exec session is in the audit log while it runs, not only once it ends.
        def exec_lines() -> int:
            return sum(1 for line in (daemon.state_dir / "audit.log").read_text().splitlines()
                       if '"token:panel"' in line and line.count("/exec") and '"status":101' in line)

        before = exec_lines()
        env = {**os.environ, "XDG_CONFIG_HOME": str(user_config)}
        session = subprocess.Popen([sys.executable, "-m", "ctctl.main", "--remote", "node1", "exec", name, "--",
                                    "sleep", "30"], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while exec_lines() == before:
                assert time.monotonic() < deadline and session.poll() is None, "no audit line for the running exec"
                time.sleep(0.1)
            assert session.poll() is None, "the session still runs"
        finally:
            session.kill()
            session.wait(10)
        # remote switch makes it the default: no --remote needed
        assert ctl(user_config, "remote", "switch", "node1").code == 0
        assert name in ctl(user_config, "list").out
        assert "node1 *" in ctl(user_config, "remote", "list").out
        ok("stop", name, "--kill")
        ok("destroy", name)
    finally:
        daemon.ctl("destroy", "--force", name)
    entries = [json.loads(line) for line in (daemon.state_dir / "audit.log").read_text().splitlines()]
    mine = [e for e in entries if e["identity"] == "token:panel"]
    assert {(e["method"], e["target"], e["status"]) for e in mine} >= {
        ("POST", name, 200), ("PUT", name, 200), ("DELETE", name, 200), ("GET", name, 101)}, mine
    assert all(e["source"] == "127.0.0.1" for e in mine)
    assert any(e["identity"] == "local:0" and e["target"] == "panel" for e in entries), "token create, locally"
    shown = daemon.ok("audit", "--since", "1h")
    assert "token:panel" in shown and name in shown and "local:0" in shown
    assert ctl(user_config, "remote", "remove", "node1").code == 0
    assert "node1" not in ctl(user_config, "remote", "list").out
    daemon.ok("token", "revoke", "panel")


def test_ctctl_refuses_a_server_whose_certificate_is_not_the_pinned_one(daemon: Daemon, user_config: Path) -> None:
    secret = make_token(daemon, "pinned")
    url = f"https://127.0.0.1:{daemon.port}"  # type: ignore[attr-defined]
    r = ctl(user_config, "remote", "add", "n", url, "--token", secret)
    assert r.code == 1 and fingerprint(daemon) in r.err and "--accept-certificate" in r.err, "no tty: no guess"
    r = ctl(user_config, "remote", "add", "n", url, "--token", secret, "--accept-certificate", "ab" * 32)
    assert r.code == 1 and "not added" in r.err
    assert not (user_config / "ctctl" / "remotes.toml").exists()
    # A remotes file pinning another certificate (as if someone sat between ctctl and ctd):
    (user_config / "ctctl").mkdir(parents=True)
    (user_config / "ctctl" / "remotes.toml").write_text(
        f'[remotes.n]\nurl = "{url}"\ntoken = "{secret}"\nfingerprint = "{"ab" * 32}"\n')
    before = (daemon.state_dir / "audit.log").read_text()
    for args in (("list",), ("create", "mitm", "--template", "busybox"), ("exec", "x", "--", "id")):
        r = ctl(user_config, "--remote", "n", *args)
        assert r.code == 1 and "not the pinned" in r.err, (args, r.err)
    assert (daemon.state_dir / "audit.log").read_text() == before, "no request reached ctd"
    daemon.ok("token", "revoke", "pinned")


def _bare_daemon(tmp: Path, settings: str) -> Daemon:
    import uuid
    return Daemon(tmp / "state", tmp / "ctd.sock", f"ctd-test-{uuid.uuid4().hex[:8]}", extra_config=settings)


def test_an_operators_certificate_replaces_ctds_own(tmp_path: Path) -> None:
    from ctd.remote.tls import make_self_signed
    cert, key = tmp_path / "operator.crt", tmp_path / "operator.key"
    make_self_signed(cert, key)  # stands in for a CA-issued one: any PEM pair
    expected = hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()
    port = free_port()
    d = _bare_daemon(tmp_path, f'https_address = "127.0.0.1:{port}"\nhttps_cert = "{cert}"\nhttps_key = "{key}"\n')
    d.start()
    try:
        assert fetch_fingerprint("127.0.0.1", port) == expected == fingerprint(d)
        assert d.client.get("/1.0")["https"]["self_signed"] is False
        assert not (d.state_dir / "tls").exists(), "no certificate of its own made"
    finally:
        _teardown(d)


@pytest.mark.parametrize("settings, message", [
    ('https_address = "localhost:8443"\n', "not an IP address"),
    ('https_address = "127.0.0.1:{port}"\nhttps_cert = "/nonexistent.crt"\n', "go together"),
    ('https_address = "127.0.0.1:{port}"\nhttps_cert = "/etc/hostname"\nhttps_key = "/etc/hostname"\n',
     "not a readable PEM"),
])
def test_bad_https_settings_stop_ctd_at_start_with_a_clear_error(tmp_path: Path, settings: str, message: str) -> None:
    d = _bare_daemon(tmp_path, settings.format(port=free_port()))
    with pytest.raises(RuntimeError, match=message):
        d.start()
    assert d.proc is not None and d.proc.wait(10) == 1
    assert not d.socket.exists() and not (d.state_dir / "ctd.db").exists(), "it touched nothing"
