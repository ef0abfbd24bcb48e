"""TLS client certificates the HTTPS listener trusts, and one-time join tokens that add one.

A certificate is trusted by the exact SHA-256 fingerprint of its DER bytes: no CA, no chain (a
self-signed certificate is the normal case), and it authenticates only inside its validity
period. A join token is a random secret bound to a name, a role and an expiry; the state DB keeps
only its hash. A client redeems it once, presenting its certificate at the TLS level (so it proves
it holds the key); the token is spent and the certificate added, or neither.
"""

from __future__ import annotations

import base64
import builtins
import datetime
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ctd.errors import Conflict, InvalidRequest, NotFound
from ctd.remote.identity import DEFAULT_PROJECT, Identity, IdentityKind, Role
from ctd.remote.tokens import NAME_RE, Clock, check_project, hash_secret, parse_duration, utcnow

if TYPE_CHECKING:  # cryptography loads only where certificates are read
    from cryptography import x509

JOIN_PREFIX = "ctdjoin_"
MAX_PEM = 64 * 1024  # a certificate is ~1 kB; anything this big is not one
DEFAULT_JOIN_LIFETIME = "1h"
NAME_HINT = "1-63 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit"


def _iso(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).isoformat(timespec="seconds")


def _role(role: object) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise InvalidRequest(f"role {role!r} is not known; roles: {', '.join(r.value for r in Role)}") from None


def _name(name: object, what: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidRequest(f"{what} name {name!r} must be {NAME_HINT}")
    return name


def _validity(cert: x509.Certificate) -> tuple[datetime.datetime, datetime.datetime]:
    """(not before, not after) as aware UTC times, on cryptography before and after 42."""
    before = getattr(cert, "not_valid_before_utc", None)
    after = getattr(cert, "not_valid_after_utc", None)
    if before is None or after is None:
        before = cert.not_valid_before.replace(tzinfo=datetime.UTC)
        after = cert.not_valid_after.replace(tzinfo=datetime.UTC)
    return before, after


@dataclass(frozen=True)
class ParsedCertificate:
    pem: str
    fingerprint: str
    common_name: str
    not_before: datetime.datetime
    not_after: datetime.datetime


def parse_pem(pem: object) -> ParsedCertificate:
    """One X.509 certificate in PEM (what 'ctctl trust add FILE' sends)."""
    if not isinstance(pem, str) or not pem.strip():
        raise InvalidRequest("certificate must be a PEM text (-----BEGIN CERTIFICATE----- ...)")
    if len(pem) > MAX_PEM or pem.count("-----BEGIN") != 1:
        raise InvalidRequest("certificate must be exactly one PEM certificate (no key, no chain), under 64 kB")
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
        der = cert.public_bytes(Encoding.DER)
    except (ValueError, UnicodeEncodeError) as exc:
        raise InvalidRequest(f"certificate is not a readable PEM certificate ({exc}); pass the client's "
                             "certificate file (PEM), not its key") from None
    return _parsed(cert, der)


def parse_der(der: bytes) -> ParsedCertificate:
    """The certificate a client presented in its TLS handshake."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise InvalidRequest(f"the client certificate cannot be read ({exc})") from None
    return _parsed(cert, der, cert.public_bytes(Encoding.PEM).decode("ascii"))


def _parsed(cert: x509.Certificate, der: bytes, pem: str | None = None) -> ParsedCertificate:
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common = str(names[0].value) if names else ""
    before, after = _validity(cert)
    return ParsedCertificate(pem or cert.public_bytes(Encoding.PEM).decode("ascii"), hashlib.sha256(der).hexdigest(),
                             common, before, after)


def name_from(common_name: str) -> str:
    """A trust name from a certificate's CN ("ctctl@laptop" -> "ctctl-laptop"); "" when none fits."""
    name = re.sub(r"[^a-z0-9._-]+", "-", common_name.lower()).strip("-._")[:63]
    return name if NAME_RE.fullmatch(name) else ""


@dataclass(frozen=True)
class TrustedCertificate:
    fingerprint: str
    name: str
    role: Role
    project: str
    not_before: str
    not_after: str
    added_at: str

    def valid(self, now: datetime.datetime) -> bool:
        return (datetime.datetime.fromisoformat(self.not_before) <= now
                < datetime.datetime.fromisoformat(self.not_after))

    def to_json(self, now: datetime.datetime) -> dict[str, object]:
        return {"name": self.name, "fingerprint": self.fingerprint, "role": self.role.value,
                "project": self.project, "not_before": self.not_before, "not_after": self.not_after,
                "added_at": self.added_at, "expired": not self.valid(now)}


@dataclass(frozen=True)
class JoinToken:
    name: str
    role: Role
    project: str
    created_at: str
    expires_at: str

    def expired(self, now: datetime.datetime) -> bool:
        return datetime.datetime.fromisoformat(self.expires_at) <= now

    def to_json(self, now: datetime.datetime) -> dict[str, object]:
        return {"name": self.name, "role": self.role.value, "project": self.project,
                "created_at": self.created_at, "expires_at": self.expires_at, "expired": self.expired(now)}


def encode_join_token(name: str, secret: str, server_fingerprint: str, expires_at: str) -> str:
    """What 'ctctl trust token' prints: base64 of a JSON object (like Incus' trust tokens)."""
    data = {"client_name": name, "fingerprint": server_fingerprint, "secret": secret, "expires_at": expires_at}
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")


class TrustStore:
    """The trusted_certificates and trust_tokens tables, with an in-memory index of the certificates
    by fingerprint (ctd is the only writer)."""

    def __init__(self, conn: sqlite3.Connection, clock: Clock = utcnow) -> None:
        self.conn = conn
        self.clock = clock
        self._by_fingerprint: dict[str, TrustedCertificate] = {}
        self._load()

    def _load(self) -> None:
        self._by_fingerprint = {
            row["fingerprint"]: TrustedCertificate(row["fingerprint"], row["name"], Role(row["role"]),
                                                   row["project"], row["not_before"], row["not_after"],
                                                   row["added_at"])
            for row in self.conn.execute("SELECT * FROM trusted_certificates")}

    # -------------------------------------------------------------- certificates

    def add(self, pem: object, name: object = None, role: object = "admin",
            project: object = DEFAULT_PROJECT) -> TrustedCertificate:
        cert = parse_pem(pem)
        if name is None:
            name = name_from(cert.common_name)
            if not name:
                raise InvalidRequest("the certificate's common name gives no usable name: pass one (--name)")
        return self._insert(cert, _name(name, "certificate"), _role(role), check_project(self.conn, project))

    def _check_new(self, cert: ParsedCertificate, name: str) -> None:
        if cert.not_after <= self.clock():
            raise InvalidRequest(f"the certificate expired at {_iso(cert.not_after)}: make a new one")
        known = self._by_fingerprint.get(cert.fingerprint)
        if known is not None:
            raise Conflict(f"this certificate (SHA-256 {cert.fingerprint}) is trusted already, as {known.name}")
        if any(r.name == name for r in self._by_fingerprint.values()):
            raise Conflict(f"a trusted certificate named {name} exists; remove it first or pick another name")

    def _insert(self, cert: ParsedCertificate, name: str, role: Role, project: str) -> TrustedCertificate:
        now = self.clock()
        self._check_new(cert, name)
        record = TrustedCertificate(cert.fingerprint, name, role, project, _iso(cert.not_before),
                                    _iso(cert.not_after), _iso(now))
        try:
            self.conn.execute("INSERT INTO trusted_certificates (fingerprint, name, role, project, certificate, "
                              "not_before, not_after, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                              (record.fingerprint, name, role.value, project, cert.pem, record.not_before,
                               record.not_after, record.added_at))
        except sqlite3.IntegrityError:
            raise Conflict(f"a trusted certificate named {name} exists; remove it first or pick another "
                           "name") from None
        self._by_fingerprint[record.fingerprint] = record
        return record

    def forget_project(self, project: str) -> int:
        """Untrust the certificates and drop the join tokens of a project being deleted."""
        gone = self.conn.execute("DELETE FROM trusted_certificates WHERE project = ?", (project,)).rowcount
        gone += self.conn.execute("DELETE FROM trust_tokens WHERE project = ?", (project,)).rowcount
        self._load()
        return gone

    def list(self) -> list[TrustedCertificate]:
        return sorted(self._by_fingerprint.values(), key=lambda r: r.name)

    def remove(self, ref: str) -> TrustedCertificate:
        """By name, or by the full fingerprint (colons allowed)."""
        wanted = ref.lower().replace(":", "")
        for record in self._by_fingerprint.values():
            if record.name == ref or record.fingerprint == wanted:
                self.conn.execute("DELETE FROM trusted_certificates WHERE fingerprint = ?", (record.fingerprint,))
                del self._by_fingerprint[record.fingerprint]
                return record
        raise NotFound(f"no trusted certificate named {ref!r}; 'ctctl trust list' shows them")

    def authenticate(self, der: bytes) -> Identity | None:
        """The identity of a trusted certificate inside its validity; None for anything else."""
        digest = hashlib.sha256(der).hexdigest()
        record = self._by_fingerprint.get(digest)
        if record is None or not hmac.compare_digest(record.fingerprint, digest) or not record.valid(self.clock()):
            return None
        return Identity(record.name, IdentityKind.CERTIFICATE, record.role, record.project, fingerprint=digest)

    # -------------------------------------------------------------- join tokens

    def create_token(self, name: object, role: object = "admin", expires: object = DEFAULT_JOIN_LIFETIME,
                     project: object = DEFAULT_PROJECT) -> tuple[JoinToken, str]:
        """A join token and its secret (the only time the secret exists outside the client)."""
        name = _name(name, "join token")
        role_value = _role(role)
        if not isinstance(expires, str):
            raise InvalidRequest("expires must be a string such as \"1h\"")
        now = self.clock()
        expires_at = _iso(now + parse_duration(expires))
        self._purge(now)
        if any(r.name == name for r in self._by_fingerprint.values()):
            raise Conflict(f"a trusted certificate named {name} exists; 'ctctl trust remove {name}' first "
                           "or pick another name")
        secret = JOIN_PREFIX + secrets.token_urlsafe(32)
        token = JoinToken(name, role_value, check_project(self.conn, project), _iso(now), expires_at)
        try:
            self.conn.execute("INSERT INTO trust_tokens (name, secret_sha256, role, project, created_at, expires_at) "
                              "VALUES (?, ?, ?, ?, ?, ?)", (name, hash_secret(secret), role_value.value,
                                                            token.project, token.created_at, expires_at))
        except sqlite3.IntegrityError:
            raise Conflict(f"a join token named {name} is pending; 'ctctl trust revoke-token {name}' "
                           "first") from None
        return token, secret

    def _purge(self, now: datetime.datetime) -> None:
        self.conn.execute("DELETE FROM trust_tokens WHERE expires_at <= ?", (_iso(now),))

    def tokens(self) -> builtins.list[JoinToken]:  # builtins: `list` here is the method above
        """Pending join tokens (expired ones are dropped)."""
        self._purge(self.clock())
        return [JoinToken(r["name"], Role(r["role"]), r["project"], r["created_at"], r["expires_at"])
                for r in self.conn.execute("SELECT * FROM trust_tokens ORDER BY name")]

    def revoke_token(self, name: str) -> None:
        if self.conn.execute("DELETE FROM trust_tokens WHERE name = ?", (name,)).rowcount == 0:
            raise NotFound(f"no pending join token named {name!r}; 'ctctl trust list' shows them")

    def redeem(self, secret: str, der: bytes) -> TrustedCertificate | None:
        """Spend the token and trust the certificate (both or neither); None for an unknown, used or
        expired secret (then nothing changed)."""
        digest = hash_secret(secret)
        row = self.conn.execute("SELECT * FROM trust_tokens WHERE secret_sha256 = ?", (digest,)).fetchone()
        now = self.clock()
        if row is None or not hmac.compare_digest(row["secret_sha256"], digest):
            return None
        if datetime.datetime.fromisoformat(row["expires_at"]) <= now:
            self._purge(now)
            return None
        cert = parse_der(der)  # before the token is spent: a bad certificate leaves it usable
        name, role = row["name"], Role(row["role"])
        self._check_new(cert, name)  # so the insert below cannot fail on a conflict
        # No BEGIN: a statement is atomic, and an explicit transaction could collide with one that
        # a worker thread holds on the shared connection. The DELETE's row count makes the token
        # single-use; ctd's event loop is the only writer of these tables.
        if self.conn.execute("DELETE FROM trust_tokens WHERE secret_sha256 = ?", (digest,)).rowcount != 1:
            return None
        try:
            record = self._insert(cert, name, role, row["project"])
        except BaseException:
            self.conn.execute("INSERT OR IGNORE INTO trust_tokens (name, secret_sha256, role, project, created_at, "
                              "expires_at) VALUES (?, ?, ?, ?, ?, ?)", tuple(row))  # unspent after all
            raise
        return record
