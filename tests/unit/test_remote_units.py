"""The remote API's pieces on their own: token store, failure limiter, listen address, certificate,
audit log, ctctl's remotes file."""
from __future__ import annotations

import datetime
import hashlib
import ssl
import stat
from pathlib import Path

import pytest

from ctctl.client import ApiError
from ctctl.remotes import Remote, RemoteConfig, config_file, normalize_fingerprint
from ctd.config import load_config
from ctd.errors import Conflict, InvalidRequest, NotFound
from ctd.remote.audit import AuditEntry, AuditLog, parse_since
from ctd.remote.identity import IdentityKind, Role
from ctd.remote.ratelimit import FailureLimiter, source_key
from ctd.remote.tls import make_self_signed, parse_listen_address, server_certificate
from ctd.remote.tokens import TokenStore, parse_duration
from ctd.state import StateDB

NOW = datetime.datetime(2026, 1, 31, 12, 0, tzinfo=datetime.UTC)


class Clock:
    def __init__(self, now: datetime.datetime | float) -> None:
        self.now = now

    def __call__(self):  # type: ignore[no-untyped-def]
        return self.now


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    db = StateDB(tmp_path / "ctd.db")
    clock = Clock(NOW)
    yield TokenStore(db.conn, clock), clock, db
    db.close()


# ---------------------------------------------------------------- tokens

def test_a_token_authenticates_as_itself_and_only_its_hash_is_stored(store, tmp_path: Path) -> None:
    tokens, _, db = store
    record, secret = tokens.create("panel", expires="30d")
    assert secret.startswith("ctd_") and len(secret) > 40
    assert record.expires_at == (NOW + datetime.timedelta(days=30)).isoformat(timespec="seconds")
    who = tokens.authenticate(secret)
    assert who is not None and (who.name, who.kind, who.role, who.project) == \
        ("panel", IdentityKind.TOKEN, Role.ADMIN, "default")
    db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("ctd.db"))
    assert secret.encode() not in raw and secret[4:].encode() not in raw
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in raw
    # A new store (a restarted ctd) knows it from the DB.
    assert TokenStore(db.conn, lambda: NOW).authenticate(secret) is not None


def test_garbage_expired_and_revoked_tokens_are_refused(store) -> None:
    tokens, clock, _ = store
    _, short = tokens.create("short", expires="1h")
    _, gone = tokens.create("gone")
    for garbage in ("", "ctd_", "x" * 5000, short[:-1], short + "A", "\udcff"):
        assert tokens.authenticate(garbage) is None
    assert tokens.authenticate(short) is not None
    clock.now = NOW + datetime.timedelta(hours=1)
    assert tokens.authenticate(short) is None, "expired at its expiry time"
    assert [t.expired(clock.now) for t in tokens.list()] == [False, True]
    tokens.revoke("gone")
    assert tokens.authenticate(gone) is None
    assert TokenStore(tokens.conn, clock).authenticate(gone) is None, "revocation is in the DB"
    with pytest.raises(NotFound):
        tokens.revoke("gone")


def test_bad_token_requests_are_refused_clearly(store) -> None:
    tokens, _, _ = store
    tokens.create("a")
    with pytest.raises(Conflict, match="exists"):
        tokens.create("a")
    for name in ("", "A", "-x", "a/b", "x" * 64, 5, None):
        with pytest.raises(InvalidRequest, match="token name"):
            tokens.create(name)
    with pytest.raises(InvalidRequest, match="role"):
        tokens.create("b", role="root")
    for expires in ("0d", "30", "d", "-1d", "99999w", "1y", 30):
        with pytest.raises(InvalidRequest, match="expires"):
            tokens.create("c", expires=expires)
    assert [t.name for t in tokens.list()] == ["a"]
    assert parse_duration("2w") == datetime.timedelta(days=14)


# ---------------------------------------------------------------- failure limiter

def test_limiter_blocks_a_source_after_too_many_failures_then_lets_it_go() -> None:
    clock = Clock(1000.0)
    limiter = FailureLimiter(max_failures=3, window=60, block=120, clock=clock)
    assert not limiter.failed("192.0.2.1") and not limiter.failed("192.0.2.1")
    assert limiter.retry_after("192.0.2.1") == 0
    assert limiter.failed("192.0.2.1"), "the third failure blocks"
    assert limiter.retry_after("192.0.2.1") == 120
    assert limiter.retry_after("192.0.2.2") == 0, "another source is not blocked"
    clock.now += 121
    assert limiter.retry_after("192.0.2.1") == 0


def test_limiter_forgets_old_failures_and_buckets_ipv6_by_64() -> None:
    clock = Clock(0.0)
    limiter = FailureLimiter(max_failures=3, window=60, block=120, clock=clock)
    limiter.failed("10.0.0.1")
    limiter.failed("10.0.0.1")
    clock.now = 61.0
    assert not limiter.failed("10.0.0.1"), "failures older than the window do not count"
    limiter.failed("2001:db8:1:2::1")
    limiter.failed("2001:db8:1:2::ffff")
    assert limiter.failed("2001:db8:1:2:abcd::9"), "one /64 is one source"
    assert limiter.retry_after("2001:db8:1:3::1") == 0
    assert source_key("::ffff:10.0.0.1") == "10.0.0.1"


def test_limiter_memory_is_bounded() -> None:
    limiter = FailureLimiter(max_failures=2, max_sources=100, clock=Clock(0.0))
    for i in range(1000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._sources) == 100


# ---------------------------------------------------------------- listener settings and certificate

def test_listen_addresses() -> None:
    assert parse_listen_address("[::]:8443").host is None, "[::] means every address, IPv4 too"
    assert (parse_listen_address("127.0.0.1:8443").host, parse_listen_address("[::1]:1").host) == ("127.0.0.1", "::1")
    for bad in ("8443", ":8443", "localhost:8443", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:x", "::1:8443x"):
        with pytest.raises(InvalidRequest, match="https_address"):
            parse_listen_address(bad)


def test_config_checks_https_settings(tmp_path: Path) -> None:
    file = tmp_path / "ctd.toml"
    file.write_text('https_address = "127.0.0.1:8443"\nhttps_cert = "/etc/c.pem"\nhttps_key = "/etc/k.pem"\n')
    cfg = load_config(file, {})
    assert cfg.https_address == "127.0.0.1:8443" and cfg.https_cert == Path("/etc/c.pem")
    assert load_config(tmp_path / "none.toml", {}).https_address == "", "off by default"
    file.write_text('https_address = "example.com:8443"\n')
    with pytest.raises(InvalidRequest, match="not an IP address"):
        load_config(file, {})


def test_own_certificate_is_made_once_0600_and_an_operators_replaces_it(tmp_path: Path) -> None:
    own = server_certificate(tmp_path / "tls", None, None)
    assert own.self_signed
    for name in ("server.crt", "server.key"):
        assert stat.S_IMODE((tmp_path / "tls" / name).stat().st_mode) == 0o600
    again = server_certificate(tmp_path / "tls", None, None)
    assert again.fingerprint == own.fingerprint, "kept across restarts (clients pin it)"
    der = ssl.PEM_cert_to_DER_cert((tmp_path / "tls/server.crt").read_text())
    assert own.fingerprint == hashlib.sha256(der).hexdigest()
    context = own.ssl_context()
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    make_self_signed(tmp_path / "op.crt", tmp_path / "op.key")
    operator = server_certificate(tmp_path / "tls", tmp_path / "op.crt", tmp_path / "op.key")
    assert not operator.self_signed and operator.fingerprint != own.fingerprint
    with pytest.raises(InvalidRequest, match="go together"):
        server_certificate(tmp_path / "tls", tmp_path / "op.crt", None)
    (tmp_path / "bad.crt").write_text("not a certificate")
    with pytest.raises(InvalidRequest, match="not a readable PEM"):
        server_certificate(tmp_path / "tls", tmp_path / "bad.crt", tmp_path / "op.key")


# ---------------------------------------------------------------- audit log

def test_audit_log_is_0600_json_lines_and_filters_by_time(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    for hour in (9, 11, 13):
        log.write(AuditEntry(NOW.replace(hour=hour).isoformat(), "token:panel", "127.0.0.1", "POST",
                             "/1.0/instances", "web", 202))
    with (tmp_path / "audit.log").open("a") as fh:
        fh.write('{"torn line\n')
    assert stat.S_IMODE((tmp_path / "audit.log").stat().st_mode) == 0o600
    assert [e["time"][11:13] for e in log.read(parse_since("2h", NOW))] == ["11", "13"]
    assert len(log.read()) == 3 and len(log.read(limit=1)) == 1
    assert parse_since("2026-01-31T12:30", NOW).tzinfo is not None
    with pytest.raises(InvalidRequest, match="since"):
        parse_since("yesterday", NOW)
    log.close()


# ---------------------------------------------------------------- ctctl's remotes file

def test_remotes_file_is_0600_under_xdg_config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert config_file() == tmp_path / "cfg/ctctl/remotes.toml"
    config = RemoteConfig.load()
    assert config.default == "local" and not config.remotes
    config.add(Remote("web1", "https://[::1]:8443", 'ctd_"odd\\token', "ab" * 32))
    config.default = "web1"
    config.save()
    assert stat.S_IMODE(config_file().stat().st_mode) == 0o600
    assert stat.S_IMODE(config_file().parent.stat().st_mode) == 0o700
    again = RemoteConfig.load()
    assert again.default == "web1" and again.get("web1") == config.get("web1")
    assert (again.get("web1").host, again.get("web1").port) == ("::1", 8443)
    for bad in ("local", "a b", ""):
        with pytest.raises(ApiError):
            config.add(Remote(bad, "https://h", "t", "ab" * 32))
    assert normalize_fingerprint("AB:" * 31 + "AB") == "ab" * 32
    with pytest.raises(ApiError, match="fingerprint"):
        normalize_fingerprint("abc")


# ---------------------------------------------------------------- trust store and join tokens

def _pem(tmp_path: Path, name: str = "c") -> str:
    make_self_signed(tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
    return (tmp_path / f"{name}.crt").read_text()


@pytest.fixture
def trust(tmp_path: Path):  # type: ignore[no-untyped-def]
    from ctd.remote.trust import TrustStore
    db = StateDB(tmp_path / "ctd.db")
    clock = Clock(datetime.datetime.now(datetime.UTC))
    yield TrustStore(db.conn, clock), clock, db
    db.close()


def test_a_trusted_certificate_authenticates_by_its_exact_fingerprint(trust, tmp_path: Path) -> None:
    from ctd.remote.trust import TrustStore
    store, clock, db = trust
    pem = _pem(tmp_path)
    der = ssl.PEM_cert_to_DER_cert(pem)
    record = store.add(pem, "laptop")
    assert record.fingerprint == hashlib.sha256(der).hexdigest()
    who = store.authenticate(der)
    assert who is not None and (who.name, who.kind, who.role, who.fingerprint) == \
        ("laptop", IdentityKind.CERTIFICATE, Role.ADMIN, record.fingerprint)
    assert who.label == "certificate:laptop"
    assert store.authenticate(der[:-1] + bytes([der[-1] ^ 1])) is None, "one bit off"
    assert store.authenticate(ssl.PEM_cert_to_DER_cert(_pem(tmp_path, "other"))) is None
    assert TrustStore(db.conn, clock).authenticate(der) is not None, "kept in the DB"
    with pytest.raises(Conflict, match="trusted already"):
        store.add(pem, "again")
    clock.now = datetime.datetime.fromisoformat(record.not_after)
    assert store.authenticate(der) is None, "not after its validity"
    clock.now = datetime.datetime.now(datetime.UTC)
    store.remove(record.fingerprint.upper())
    assert store.authenticate(der) is None and TrustStore(db.conn, clock).authenticate(der) is None
    with pytest.raises(NotFound):
        store.remove("laptop")


@pytest.mark.parametrize("pem, name, message", [
    (None, "x", "PEM text"), ("", "x", "PEM text"), ("garbage", "x", "exactly one PEM"),
    ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "x", "not a readable"),
    ("-----BEGIN CERTIFICATE-----\n" + "A" * 70000, "x", "exactly one PEM"),
    ("VALID", "Bad Name", "must be"), ("VALID", "x/../y", "must be"),
])
def test_bad_certificates_and_names_are_refused(trust, tmp_path: Path, pem, name, message) -> None:  # type: ignore[no-untyped-def]
    store, _, _ = trust
    with pytest.raises(InvalidRequest, match=message):
        store.add(_pem(tmp_path) if pem == "VALID" else pem, name)
    assert store.list() == []


def test_the_name_defaults_to_the_common_name(trust, tmp_path: Path) -> None:
    from ctd.remote.trust import name_from
    store, _, _ = trust
    assert store.add(_pem(tmp_path)).name == name_from(f"ctd@{__import__('socket').gethostname()}")
    assert name_from("ctctl-root@Host.example") == "ctctl-root-host.example" and name_from("@@") == ""


def test_a_join_token_is_redeemed_once_and_only_before_its_expiry(trust, tmp_path: Path) -> None:
    from ctd.remote.trust import TrustStore
    store, clock, db = trust
    token, secret = store.create_token("joiner", expires="1h")
    assert secret.startswith("ctdjoin_") and [t.name for t in store.tokens()] == ["joiner"]
    der = ssl.PEM_cert_to_DER_cert(_pem(tmp_path))
    assert store.redeem(secret + "x", der) is None and store.redeem("", der) is None
    with pytest.raises(InvalidRequest):
        store.redeem(secret, b"not a certificate")
    added = store.redeem(secret, der)  # the bad certificate above did not spend it
    assert added is not None and added.name == "joiner" and store.authenticate(der) is not None
    assert store.redeem(secret, ssl.PEM_cert_to_DER_cert(_pem(tmp_path, "second"))) is None, "used"
    assert store.tokens() == [] and [c.name for c in TrustStore(db.conn, clock).list()] == ["joiner"]
    with pytest.raises(Conflict, match="named joiner exists"):
        store.create_token("joiner")
    _, late = store.create_token("late", expires="1h")
    clock.now += datetime.timedelta(hours=1)
    assert store.redeem(late, ssl.PEM_cert_to_DER_cert(_pem(tmp_path, "third"))) is None, "expired"
    assert store.tokens() == []
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("ctd.db"))
    assert late.encode() not in raw and secret.encode() not in raw, "only hashes are kept"


def test_a_join_token_names_the_server_fingerprint(trust) -> None:
    import base64
    import json

    from ctctl.trust_cmds import decode_join_token
    from ctd.remote.trust import encode_join_token
    store, _, _ = trust
    token, secret = store.create_token("n")
    text = encode_join_token("n", secret, "ab" * 32, token.expires_at)
    decoded = decode_join_token(text)
    assert (decoded.client_name, decoded.fingerprint, decoded.secret) == ("n", "ab" * 32, secret)
    for bad in ("", "!!!", base64.urlsafe_b64encode(b"[]").decode(),
                base64.urlsafe_b64encode(json.dumps({"secret": "s", "fingerprint": "zz"}).encode()).decode()):
        with pytest.raises(ApiError, match="not one 'ctctl trust token' printed"):
            decode_join_token(bad)


# ---------------------------------------------------------------- audit rotation

def test_the_audit_log_rotates_by_size_keeps_n_files_and_reads_across_them(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, max_size=1024, keep=2)
    for i in range(40):
        log.write(AuditEntry(NOW.replace(minute=i).isoformat(), "local:0", "unix", "PUT", f"/1.0/instances/i{i}",
                             f"i{i}", 200))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.log", "audit.log.1", "audit.log.2"]
    assert all(p.stat().st_size <= 1024 and stat.S_IMODE(p.stat().st_mode) == 0o600 for p in tmp_path.iterdir())
    targets = [e["target"] for e in log.read()]
    assert targets[-1] == "i39" and targets == [f"i{n}" for n in range(40 - len(targets), 40)], "in order, newest kept"
    assert len(targets) > len(path.read_text().splitlines())
    assert [e["target"] for e in log.read(NOW.replace(minute=38))] == ["i38", "i39"]
    log.close()
    again = AuditLog(path, max_size=1024, keep=2)  # a restarted ctd goes on from the file's size
    again.write(AuditEntry(NOW.isoformat(), "local:0", "unix", "POST", "/", None, 200))
    assert path.stat().st_size <= 1024
    again.close()
    with pytest.raises(InvalidRequest):
        AuditLog(tmp_path / "x.log", max_size=10)


@pytest.mark.parametrize("settings, message", [
    ('audit_max_size = "tiny"\n', "audit_max_size"), ('audit_max_size = "100"\n', "at least 1K"),
    ('audit_max_size = 5\n', "audit_max_size"), ("audit_keep = 0\n", "audit_keep"),
    ('audit_keep = "3"\n', "audit_keep"),
])
def test_bad_audit_rotation_settings_are_refused(tmp_path: Path, settings: str, message: str) -> None:
    file = tmp_path / "ctd.toml"
    file.write_text(settings)
    with pytest.raises(InvalidRequest, match=message):
        load_config(file, {})


def test_audit_rotation_defaults(tmp_path: Path) -> None:
    from ctd.config import audit_rotation
    config = load_config(tmp_path / "none.toml", {})
    assert audit_rotation(config, tmp_path) == (10 << 20, 5)


# ---------------------------------------------------------------- REMOTE:INSTANCE

def test_remote_references_split_on_the_first_colon() -> None:
    import click

    from ctctl.refs import split_ref
    assert split_ref("web1") == (None, "web1") and split_ref("lab:web1") == ("lab", "web1")
    assert split_ref("local:web1") == ("local", "web1")
    for bad in (":web1", "lab:", ":"):
        with pytest.raises(click.BadParameter):
            split_ref(bad)


def test_a_remote_without_a_token_uses_the_client_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ctctl.client import Client
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    config = RemoteConfig.load()
    config.add(Remote("lab", "https://127.0.0.1:8443", None, "cd" * 32))
    config.save()
    assert "token" not in config_file().read_text()
    lab = RemoteConfig.load().get("lab")
    assert lab.token is None
    client = Client("", remote=lab)
    assert client.auth_headers() == {}
    assert client.client_cert() == (str(tmp_path / "cfg/ctctl/client.crt"), str(tmp_path / "cfg/ctctl/client.key"))
    assert Client("", remote=Remote("t", "https://[::1]:8443", "ctd_x", "cd" * 32)).client_cert() is None


def test_the_listener_takes_any_client_certificate_and_shows_it(tmp_path: Path) -> None:
    """The handshake succeeds with an unknown self-signed certificate (ctd answers it with a 401,
    not a TLS alert), and without one; the server sees exactly the certificate sent."""
    import socket
    import threading

    from ctctl.client import pinning_context
    own = server_certificate(tmp_path / "tls", None, None)
    context = own.ssl_context()
    assert context.verify_mode == ssl.CERT_OPTIONAL, "the hook is in place on this Python"
    pem = _pem(tmp_path, "client")
    seen: list[bytes | None] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        def serve() -> None:
            for _ in range(2):
                conn, _ = server.accept()
                with context.wrap_socket(conn, server_side=True) as tls:
                    seen.append(tls.getpeercert(binary_form=True))
                    tls.sendall(b"ok")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        port = server.getsockname()[1]
        for cert in ((str(tmp_path / "client.crt"), str(tmp_path / "client.key")), None):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    pinning_context(cert).wrap_socket(raw) as tls:
                assert tls.recv(2) == b"ok"
        thread.join(10)
    assert seen == [ssl.PEM_cert_to_DER_cert(pem), None]


def test_a_join_that_conflicts_spends_nothing(trust, tmp_path: Path) -> None:
    store, _, _ = trust
    _, secret = store.create_token("taken")
    store.add(_pem(tmp_path, "first"), "taken")  # the name went to another certificate meanwhile
    der = ssl.PEM_cert_to_DER_cert(_pem(tmp_path, "second"))
    with pytest.raises(Conflict, match="named taken exists"):
        store.redeem(secret, der)
    assert [t.name for t in store.tokens()] == ["taken"] and store.authenticate(der) is None
    store.remove("taken")
    assert store.redeem(secret, der) is not None, "still usable once the conflict is gone"
