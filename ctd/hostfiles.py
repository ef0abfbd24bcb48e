"""Files on the daemon's host named in requests (ISOs, backups, tarballs): checked up front."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ctd.errors import Conflict, InvalidRequest, NotFound


def input_file(value: Any, what: str) -> Path:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise InvalidRequest(f"{what} must be an absolute path on the host")
    path = Path(value)
    if not path.is_file():
        raise NotFound(f"{what} {value} does not exist or is not a file")
    return path


def output_file(value: Any, what: str) -> Path:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise InvalidRequest(f"{what} must be an absolute path on the host")
    path = Path(value)
    if path.exists() or path.is_symlink():
        raise Conflict(f"{value} exists already; choose another file name")
    if not path.parent.is_dir():
        raise NotFound(f"the directory {path.parent} does not exist")
    return path
