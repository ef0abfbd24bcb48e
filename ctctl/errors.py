"""The one error ctctl prints as a line and exits non-zero for (client.py re-exports it)."""

from __future__ import annotations


class ApiError(Exception):
    """Anything ctctl should print as one line and exit non-zero for."""

    def __init__(self, message: str, code: str = "error", status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
