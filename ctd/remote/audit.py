"""The audit log: one JSON line per mutating request, in STATE/audit.log (0600)."""

from __future__ import annotations

import datetime
import json
import os
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

from ctd.errors import InvalidRequest

MAX_ENTRIES = 10000  # what one read returns at most (the newest)


@dataclass(frozen=True)
class AuditEntry:
    time: str
    identity: str
    source: str
    method: str
    path: str
    target: str | None
    status: int


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)
        self._fd = fd

    def write(self, entry: AuditEntry) -> None:
        # One write() per line on an O_APPEND file: lines never interleave or tear.
        os.write(self._fd, (json.dumps(asdict(entry), separators=(",", ":")) + "\n").encode())

    def close(self) -> None:
        os.close(self._fd)

    def read(self, since: datetime.datetime | None = None, limit: int = MAX_ENTRIES) -> list[dict]:
        """Entries at or after `since` (oldest first), at most the newest `limit`."""
        found: deque[dict] = deque(maxlen=limit)
        with self.path.open("rb") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                    when = datetime.datetime.fromisoformat(entry["time"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a full disk: skip it, keep the rest
                if since is None or when >= since:
                    found.append(entry)
        return list(found)


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
