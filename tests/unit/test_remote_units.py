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
