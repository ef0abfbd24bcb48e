"""Error kinds raised by drivers; only ctd.api maps them to HTTP status codes."""

from __future__ import annotations


class CtdError(Exception):
    """Base of every error a client may see. The message says what was wrong and what to do."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(CtdError):
    code = "invalid"


class NotFound(CtdError):
    code = "not-found"


class Conflict(CtdError):
    code = "conflict"


class Forbidden(CtdError):
    """The caller is known but may not do this (e.g. token management over HTTPS)."""

    code = "forbidden"


class NotSupported(CtdError):
    code = "not-supported"


class Unavailable(CtdError):
    """A service this request needs cannot be reached now (the cluster's etcd); try again later."""

    code = "unavailable"


class OperationFailed(CtdError):
    """The request was fine but the host could not carry it out (spawn error, kernel refusal)."""

    code = "failed"
