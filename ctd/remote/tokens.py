"""API tokens: a random secret shown once; the state DB keeps only its SHA-256."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

from ctd.errors import Conflict, InvalidRequest, NotFound
from ctd.remote.identity import DEFAULT_PROJECT, Identity, IdentityKind, Role

SECRET_PREFIX = "ctd_"  # recognisable in a leaked file or a secret scanner
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
DURATION_RE = re.compile(r"(\d{1,6})([smhdw])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_LIFETIME = datetime.timedelta(days=3650)

Clock = Callable[[], datetime.datetime]


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def parse_duration(text: str) -> datetime.timedelta:
    """"30d", "12h", "90m", "45s", "2w"."""
    match = DURATION_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if not match or int(match.group(1)) == 0:
        raise InvalidRequest(f"expires {text!r} must be a positive number with a unit s, m, h, d or w, e.g. 30d")
    span = datetime.timedelta(seconds=int(match.group(1)) * UNIT_SECONDS[match.group(2)])
    if span > MAX_LIFETIME:
        raise InvalidRequest(f"expires {text!r} is too long: at most 3650d")
    return span


def check_project(conn: sqlite3.Connection, project: object) -> str:
    """A project a token or certificate is given: it must exist (ctctl project create)."""
    if not isinstance(project, str) or conn.execute("SELECT 1 FROM projects WHERE name = ?",
                                                    (project,)).fetchone() is None:
        raise InvalidRequest(f"no project named {project!r}; 'ctctl project list' shows them, "
                             "'ctctl project create' makes one")
    return project


def hash_secret(secret: str) -> str:
    # The secret has 256 bits of entropy: a plain SHA-256 cannot be brute-forced back.
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    name: str
    role: Role
    project: str
    created_at: str
    expires_at: str | None
    secret_sha256: str = field(default="", repr=False)  # never in an answer

    def expired(self, now: datetime.datetime) -> bool:
        return self.expires_at is not None and datetime.datetime.fromisoformat(self.expires_at) <= now

    def to_json(self, now: datetime.datetime) -> dict[str, object]:
        return {"name": self.name, "role": self.role.value, "project": self.project,
                "created_at": self.created_at, "expires_at": self.expires_at, "expired": self.expired(now)}


class TokenStore:
    """Tokens in the api_tokens table, with an in-memory index by hash (ctd is the only writer)."""

    def __init__(self, conn: sqlite3.Connection, clock: Clock = utcnow) -> None:
        self.conn = conn
        self.clock = clock
        self._by_hash: dict[str, TokenRecord] = {}
        self._load()

    def _load(self) -> None:
        self._by_hash = {
            row["secret_sha256"]: TokenRecord(row["name"], Role(row["role"]), row["project"], row["created_at"],
                                              row["expires_at"], row["secret_sha256"])
            for row in self.conn.execute("SELECT * FROM api_tokens")}

    def create(self, name: object, role: object = "admin", expires: object = None,
               project: object = DEFAULT_PROJECT) -> tuple[TokenRecord, str]:
        """A new token and its secret (the only time the secret exists outside the client);
        `project` must exist (ctctl project create)."""
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise InvalidRequest("token name must be 1-63 characters of a-z, 0-9, '.', '_', '-', "
                                 "starting with a letter or digit")
        try:
            role_value = Role(role)
        except ValueError:
            raise InvalidRequest(f"role {role!r} is not known; roles: {', '.join(r.value for r in Role)}") from None
        now = self.clock()
        expires_at = None
        if expires is not None:
            if not isinstance(expires, str):
                raise InvalidRequest("expires must be a string such as \"30d\"")
            expires_at = (now + parse_duration(expires)).isoformat(timespec="seconds")
        project = check_project(self.conn, project)
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        digest = hash_secret(secret)
        record = TokenRecord(name, role_value, project, now.isoformat(timespec="seconds"), expires_at, digest)
        try:
            self.conn.execute("INSERT INTO api_tokens (name, secret_sha256, role, project, created_at, expires_at) "
                              "VALUES (?, ?, ?, ?, ?, ?)", (name, digest, role_value.value,
                                                            record.project, record.created_at, expires_at))
        except sqlite3.IntegrityError:
            raise Conflict(f"a token named {name} exists; revoke it first or pick another name") from None
        self._by_hash[digest] = record
        return record, secret

    def forget_project(self, project: str) -> int:
        """Revoke every token of a project being deleted (a new project of that name must not
        inherit them); how many."""
        gone = self.conn.execute("DELETE FROM api_tokens WHERE project = ?", (project,)).rowcount
        self._load()
        return gone

    def list(self) -> list[TokenRecord]:
        return sorted(self._by_hash.values(), key=lambda r: r.name)

    def revoke(self, name: str) -> None:
        if self.conn.execute("DELETE FROM api_tokens WHERE name = ?", (name,)).rowcount == 0:
            raise NotFound(f"no token named {name!r}; 'ctctl token list' shows them")
        self._by_hash = {h: r for h, r in self._by_hash.items() if r.name != name}

    def authenticate(self, secret: str) -> Identity | None:
        """The identity of a valid, unexpired token; None for anything else."""
        digest = hash_secret(secret)
        # The lookup compares hashes, not secrets: its timing says nothing an attacker could use
        # to build a secret; the final check is constant-time all the same.
        record = self._by_hash.get(digest)
        if record is None or not hmac.compare_digest(record.secret_sha256, digest) or record.expired(self.clock()):
            return None
        return Identity(record.name, IdentityKind.TOKEN, record.role, record.project)
