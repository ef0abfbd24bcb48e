"""The audit log: one JSON line per mutating request, in STATE/audit.log (0600), rotated by size
(audit_max_size, audit_keep) into audit.log.1 ... audit.log.N."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

from ctd.errors import InvalidRequest

MAX_ENTRIES = 10000  # what one read returns at most (the newest)
DEFAULT_MAX_SIZE = 10 << 20
DEFAULT_KEEP = 5
MIN_MAX_SIZE = 1024  # a few lines
MAX_KEEP = 1000


@dataclass(frozen=True)
class AuditEntry:
    time: str
    identity: str
    source: str
    method: str
    path: str
    target: str | None
    status: int
    fingerprint: str | None = None  # a client certificate's SHA-256, when one authenticated
    role: str | None = None         # the identity's role (admin, operator, tenant)
    denied: str | None = None       # a role's refusal (403): what it lacked
    project: str | None = None      # the project acted in: the target instance's, else the identity's


class AuditLog:
    """Appends to `path`; when a line would take it past `max_size` bytes, the file becomes
    path.1 (path.1 becomes path.2, ...; at most `keep` old files, the oldest dropped) and a new one
    starts. Reads go across all of them, oldest first."""

    def __init__(self, path: Path, max_size: int = DEFAULT_MAX_SIZE, keep: int = DEFAULT_KEEP) -> None:
        if max_size < MIN_MAX_SIZE or not 1 <= keep <= MAX_KEEP:
            raise InvalidRequest(f"audit_max_size must be at least {MIN_MAX_SIZE} bytes and audit_keep "
                                 f"1 to {MAX_KEEP}")
        self.path = path
        self.max_size = max_size
        self.keep = keep
        self._fd = -1
        self._size = 0
        self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)
        self._fd, self._size = fd, os.fstat(fd).st_size

    def rotated(self, n: int) -> Path:
        return self.path if n == 0 else self.path.with_name(f"{self.path.name}.{n}")

    def write(self, entry: AuditEntry) -> None:
        line = (json.dumps(asdict(entry), separators=(",", ":")) + "\n").encode()
        if self._fd < 0:
            self._open()  # a rotation that failed half-way (full disk) is retried here
        elif self._size and self._size + len(line) > self.max_size:
            self._rotate()
        # One write() per line on an O_APPEND file: lines never interleave or tear.
        os.write(self._fd, line)
        self._size += len(line)

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        for n in range(self.keep, 0, -1):  # path.(keep-1) replaces the oldest, ..., path becomes path.1
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.rotated(n - 1), self.rotated(n))
        self._open()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def files(self) -> list[Path]:
        """The log's files, oldest first."""
        return [p for p in (self.rotated(n) for n in range(self.keep, -1, -1)) if p.exists()]

    def read(self, since: datetime.datetime | None = None, limit: int = MAX_ENTRIES) -> list[dict[str, object]]:
        """Entries at or after `since` (oldest first, across rotated files), at most the newest `limit`."""
        handles = []
        for path in self.files():  # opened first: a rotation meanwhile renames, it does not move lines
            with contextlib.suppress(FileNotFoundError):
                if since is None or _modified(path) >= since:  # older files hold only older lines
                    handles.append(path.open("rb"))
        found: deque[dict[str, object]] = deque(maxlen=limit)
        for fh in handles:
            with fh:
                for line in fh:
                    try:
                        entry = json.loads(line)
                        when = datetime.datetime.fromisoformat(entry["time"])
                    except (ValueError, KeyError, TypeError):
                        continue  # a line torn by a full disk: skip it, keep the rest
                    if since is None or when >= since:
                        found.append(entry)
        return list(found)


def _modified(path: Path) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.UTC)


def parse_since(text: str, now: datetime.datetime) -> datetime.datetime:
    """"1h", "30m", "2d" back from now, or an ISO 8601 time (UTC when no zone is given)."""
    from ctd.remote.tokens import DURATION_RE, parse_duration
    if DURATION_RE.fullmatch(text.strip()):
        return now - parse_duration(text)
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"since {text!r} must be a duration such as 1h or 2d, or a time such as "
                             "2026-01-31T12:00:00") from None
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)
