"""TLS client certificates and join tokens from outside: real TLS on 127.0.0.0/8, a real daemon,
ctctl as a remote user with a config dir of its own.

Attempts: an unknown self-signed certificate, a certificate signed by a trusted one (no chains),
a trusted certificate after its expiry or removal, a join token used twice, expired or guessed,
a join token carrying another server's fingerprint, trust management without authentication.
Each asserts what an attacker sees (status, body) and that nothing changed. Also: REMOTE:INSTANCE
references, and the audit log's rotation by size. Tests that fail authentications on purpose talk
from addresses of their own, so the rate limit they trip blocks no other test.
"""
from __future__ import annotations

import base64
import datetime
import http.client
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ctctl.client import ApiError, pinning_context
from tests.conftest import REPO, CtlResult, Daemon, _start_daemon, _teardown
from tests.security.test_remote_access import free_port, make_token

AUDIT_MAX = 4096
AUDIT_KEEP = 3
COUNT = 150


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    port = free_port()
    d = _start_daemon(tmp_path_factory.mktemp("trust"), "trust",
                      f'https_address = "127.0.0.1:{port}"\naudit_max_size = "4K"\naudit_keep = {AUDIT_KEEP}\n')
    d.port = port  # type: ignore[attr-defined]
    try:
        yield d
    finally:
        _teardown(d)


Issuer = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def make_cert(directory: Path, name: str, *, days: float = 30, issuer: Issuer | None = None,
              ca: bool = False) -> tuple[Path, Path, str]:
    """(certificate, key, SHA-256) of a new client certificate, self-signed unless `issuer` signs it."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject)
            .issuer_name(issuer[0].subject if issuer else subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer[1] if issuer else key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, cert.fingerprint(hashes.SHA256()).hex()


def https(d: Daemon, method: str, path: str, cert: tuple[Path, Path] | None = None, body: object = None,
          token: str | None = None, source: str = "127.0.0.1") -> tuple[int, bytes]:
    context = pinning_context((str(cert[0]), str(cert[1])) if cert else None)
    conn = http.client.HTTPSConnection("127.0.0.1", d.port, timeout=30, context=context,  # type: ignore[attr-defined]
                                       source_address=(source, 0))
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, path, None if body is None else json.dumps(body), headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def ctl(config: Path, *args: str, timeout: float = 120) -> CtlResult:
    """ctctl as a user on another machine: its own config dir, no socket given."""
    env = {k: v for k, v in os.environ.items() if k != "CTD_SOCKET"}
    env["XDG_CONFIG_HOME"] = str(config)
    r = subprocess.run([sys.executable, "-m", "ctctl.main", *args], capture_output=True, text=True, input="",
                       timeout=timeout, cwd=REPO, env=env)
    return CtlResult(r.returncode, r.stdout, r.stderr)


def audit_entries(d: Daemon) -> list[dict]:
    return json.loads(d.ok("audit", "--format", "json"))


def url(d: Daemon) -> str:
    return f"https://127.0.0.1:{d.port}"  # type: ignore[attr-defined]


def test_a_trusted_certificate_logs_in_and_the_audit_log_names_its_fingerprint(daemon: Daemon, tmp_path: Path) -> None:
    cert, key, fp = make_cert(tmp_path, "laptop")
    added = daemon.ok("trust", "add", str(cert), "--name", "laptop")
    assert fp in added
    assert https(daemon, "GET", "/1.0/instances", (cert, key))[0] == 200
    status, raw = https(daemon, "POST", "/1.0/instances", (cert, key), {"name": "bad name!"})
    assert status == 400, raw
    mine = [e for e in audit_entries(daemon) if e["identity"] == "certificate:laptop"]
    assert mine and all(e["fingerprint"] == fp for e in mine), mine
    assert f"sha256:{fp}" in daemon.ok("audit")
    listed = daemon.ok("trust", "list")
    assert "laptop" in listed and fp in listed
    # A trusted admin certificate may manage trust over HTTPS, as the local admin does.
    status, raw = https(daemon, "GET", "/1.0/trust", (cert, key))
    assert status == 200 and fp in raw.decode()
    daemon.ok("trust", "remove", "laptop")


def test_unknown_chained_expired_and_removed_certificates_get_401(daemon: Daemon, tmp_path: Path) -> None:
    name = daemon.unique("hidden")
    daemon.ok("create", name, "--template", "busybox")
    stranger = make_cert(tmp_path, "stranger")
    ca_cert, ca_key, _ = make_cert(tmp_path, "issuer", ca=True)
    daemon.ok("trust", "add", str(ca_cert), "--name", "issuer")
    ca = (x509.load_pem_x509_certificate(ca_cert.read_bytes()),
          serialization.load_pem_private_key(ca_key.read_bytes(), None))
    child = make_cert(tmp_path, "child", issuer=ca)  # type: ignore[arg-type]
    short = make_cert(tmp_path, "short", days=4 / 86400)  # valid for 4 more seconds
    daemon.ok("trust", "add", str(short[0]), "--name", "short")
    assert https(daemon, "GET", "/1.0/instances", short[:2], source="127.0.0.21")[0] == 200
    removed = make_cert(tmp_path, "removed")
    daemon.ok("trust", "add", str(removed[0]), "--name", "removed")
    daemon.ok("trust", "remove", removed[2])  # by fingerprint
    time.sleep(4.5)
    sources = {}
    for n, who in enumerate((stranger, child, short, removed)):
        sources[who[0].name] = source = f"127.0.0.{21 + n}"  # 4 failures each: under the rate limit
        for method, path in (("GET", "/1.0/instances"), ("GET", f"/1.0/instances/{name}"),
                             ("PUT", f"/1.0/instances/{name}/state"), ("POST", "/1.0/trust")):
            status, raw = https(daemon, method, path, who[:2], {"action": "start"}, source=source)
            assert status == 401, (who[0].name, method, path, status, raw)
            assert json.loads(raw)["code"] == "unauthorized" and name.encode() not in raw
    assert daemon.instance(name)["state"] == "stopped", "nothing changed"
    assert "expired" in daemon.ok("trust", "list"), "shown as expired"
    log = daemon.log.read_text()  # type: ignore[union-attr]
    assert stranger[2] in log and "not trusted" in log, "the refused fingerprint is logged"
    refused = [e for e in audit_entries(daemon) if e["source"] in sources.values() and e["status"] == 401]
    assert len(refused) == 8 and all(e["identity"] == "anonymous" for e in refused), refused
    # Failures count against their source: after 10, it is blocked, even with a trusted certificate.
    good = make_cert(tmp_path, "good")
    daemon.ok("trust", "add", str(good[0]), "--name", "good")
    attacker = "127.0.0.25"
    statuses = [https(daemon, "GET", "/1.0", stranger[:2], source=attacker)[0] for _ in range(10)]
    assert statuses == [401] * 10
    assert https(daemon, "GET", "/1.0/instances", good[:2], source=attacker)[0] == 429
    assert https(daemon, "GET", "/1.0/instances", good[:2])[0] == 200, "other sources are not"
    # A token still decides alone when one is sent, whatever certificate comes with it.
    token = make_token(daemon, "with-cert")
    assert https(daemon, "GET", "/1.0/instances", stranger[:2], token=token)[0] == 200
    for trusted in ("issuer", "short", "good"):
        daemon.ok("trust", "remove", trusted)
    daemon.ok("token", "revoke", "with-cert")
    daemon.ok("destroy", name)


def test_a_join_token_adds_one_certificate_once(daemon: Daemon, tmp_path: Path) -> None:
    user, other = tmp_path / "user", tmp_path / "other"
    token = daemon.ok("trust", "token", "joined").strip()
    assert "joined" in daemon.ok("trust", "list"), "pending"
    r = ctl(user, "remote", "add", "lab", url(daemon), "--join", token)
    assert r.code == 0, r.err
    config = user / "ctctl"
    for name in ("client.key", "client.crt", "remotes.toml"):
        assert stat.S_IMODE((config / name).stat().st_mode) == 0o600, name
    assert "token" not in (config / "remotes.toml").read_text()
    assert ctl(user, "--remote", "lab", "list").code == 0
    assert "certificate" in ctl(user, "remote", "list").out
    entries = [e for e in daemon.client.get("/1.0/trust")["certificates"] if e["name"] == "joined"]
    assert len(entries) == 1 and daemon.client.get("/1.0/trust")["tokens"] == [], "consumed"
    joined_fp = entries[0]["fingerprint"]
    assert any(e["identity"] == "certificate:joined" and e["fingerprint"] == joined_fp and e["path"] ==
               "/1.0/trust/join" for e in audit_entries(daemon)), "the join is audited with who joined"
    # The same token again, by another user (another certificate): refused, nothing added.
    r = ctl(other, "remote", "add", "lab", url(daemon), "--join", token)
    assert r.code == 1 and "refused the join token" in r.err, r.err
    assert [c["name"] for c in daemon.client.get("/1.0/trust")["certificates"]].count("joined") == 1
    assert not (other / "ctctl" / "remotes.toml").exists()
    assert ctl(other, "--remote", "lab", "list").code == 1
    daemon.ok("trust", "remove", "joined")
    r = ctl(user, "--remote", "lab", "list")
    assert r.code == 1 and "does not trust this user's client certificate" in r.err


def test_expired_guessed_and_misdirected_join_tokens_are_refused(daemon: Daemon, tmp_path: Path) -> None:
    user = tmp_path / "user"
    expiring = daemon.ok("trust", "token", "late", "--expires", "1s").strip()
    time.sleep(1.5)
    r = ctl(user, "remote", "add", "lab", url(daemon), "--join", expiring)
    assert r.code == 1 and "refused the join token" in r.err, r.err
    # A token that names another server's certificate: ctctl sends nothing, the token stays usable.
    token = daemon.ok("trust", "token", "pinned").strip()
    data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps({**data, "fingerprint": "ab" * 32}).encode()).decode()
    r = ctl(user, "remote", "add", "lab", url(daemon), "--join", forged)
    assert r.code == 1 and "not added" in r.err
    assert ctl(user, "remote", "add", "lab", url(daemon), "--join", token).code == 0, "not consumed"
    # Guesses, with a certificate of their own: 401 each, then the source is blocked.
    guesser = make_cert(tmp_path, "guesser")
    source = "127.0.0.31"  # failures of its own
    statuses = [https(daemon, "POST", "/1.0/trust/join", guesser[:2], {"secret": f"ctdjoin_{i}"}, source=source)[0]
                for i in range(12)]
    assert statuses[:9] == [401] * 9 and statuses[10:] == [429, 429], statuses
    fresh = daemon.ok("trust", "token", "blocked").strip()
    secret = json.loads(base64.urlsafe_b64decode(fresh + "=" * (-len(fresh) % 4)))["secret"]
    assert https(daemon, "POST", "/1.0/trust/join", guesser[:2], {"secret": secret}, source=source)[0] == 429
    names = [c["name"] for c in daemon.client.get("/1.0/trust")["certificates"]]
    assert "late" not in names and "blocked" not in names and "pinned" in names
    # Trust is not managed without authentication (only /1.0/trust/join is open, and only to a secret).
    for method, path, body in (("GET", "/1.0/trust", None), ("POST", "/1.0/trust/tokens", {"name": "x"}),
                               ("DELETE", "/1.0/trust/pinned", None)):
        assert https(daemon, method, path, guesser[:2], body, source="127.0.0.32")[0] == 401
    daemon.ok("trust", "revoke-token", "blocked")
    daemon.ok("trust", "remove", "pinned")


def test_remote_instance_references(daemon: Daemon, tmp_path: Path) -> None:
    user = tmp_path / "user"
    assert ctl(user, "remote", "add", "lab", url(daemon), "--join",
               daemon.ok("trust", "token", "refs").strip()).code == 0
    name = daemon.unique("ref")

    def ok(*args: str) -> str:
        got = ctl(user, *args)
        assert got.code == 0, f"ctctl {' '.join(args)}: {got.err}{got.out}"
        return got.out

    try:
        ok("create", f"lab:{name}", "--template", "busybox")
        ok("start", f"lab:{name}")
        assert daemon.instance(name)["state"] == "running", "on the remote, by the plain name"
        assert ok("exec", f"lab:{name}", "--", "/bin/sh", "-c", "echo ref-$((6*7))").strip() == "ref-42"
        assert name in ok("--remote", "lab", "list")
        for args, said in ((("--remote", "local", "stop", f"lab:{name}"), "one command works on one remote"),
                           (("clone", name, f"lab:{name}-2"), "on the first instance too"),
                           (("clone", f"lab:{name}", f"other:{name}-2"), "one command works on one remote"),
                           (("start", f":{name}"), "REMOTE:INSTANCE")):
            r = ctl(user, *args)
            assert r.code == 2 and said in r.err, (args, r.err)
        names = [i["name"] for i in daemon.client.get("/1.0/instances")["instances"]]
        assert daemon.instance(name)["state"] == "running" and f"{name}-2" not in names, "none did anything"
        ok("stop", f"lab:{name}", "--kill")
        ok("destroy", f"lab:{name}")
        assert name not in [i["name"] for i in daemon.client.get("/1.0/instances")["instances"]]
    finally:
        daemon.ctl("destroy", "--force", name)
        daemon.ok("trust", "remove", "refs")


def test_the_audit_log_rotates_by_size_and_is_read_across_its_files(daemon: Daemon) -> None:
    marker = daemon.unique("rot")
    for i in range(COUNT):  # ~200 bytes each: more than all the files hold
        with pytest.raises(ApiError):
            daemon.client.request("PUT", f"/1.0/instances/{marker}-{i}/state", {"action": "stop"})
    state = daemon.state_dir
    rotated = sorted(p.name for p in state.iterdir() if p.name.startswith("audit.log."))
    assert rotated == [f"audit.log.{n}" for n in range(1, AUDIT_KEEP + 1)], rotated
    for path in [state / "audit.log", *(state / n for n in rotated)]:
        assert path.stat().st_size <= AUDIT_MAX and stat.S_IMODE(path.stat().st_mode) == 0o600
    on_disk = sum(len(p.read_text().splitlines()) for p in [state / "audit.log", *(state / n for n in rotated)])
    shown = [e for e in json.loads(daemon.ok("audit", "--since", "1h", "--format", "json"))]
    assert len(shown) == on_disk > len((state / "audit.log").read_text().splitlines()), "across the files"
    mine = [e["target"] for e in shown if (e["target"] or "").startswith(marker)]
    assert mine[-1] == f"{marker}-{COUNT - 1}" and len(mine) < COUNT, "the newest kept, the oldest dropped"
    assert [e["time"] for e in shown] == sorted(e["time"] for e in shown), "oldest first"
