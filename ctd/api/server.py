"""The aiohttp application and its unix socket listener."""

from __future__ import annotations

import contextlib
import grp
import os
import socket
from pathlib import Path

from aiohttp import web

from ctd.api import stream  # noqa: F401 — registers the exec and console routes
from ctd.api.context import ApiContext
from ctd.api.errors import error_middleware
from ctd.api.handlers import CTX, routes
from ctd.api.metrics import METRICS, exporter_for
from ctd.api.metrics import routes as metrics_routes
from ctd.errors import OperationFailed
from ctd.remote.api import ACCESS, RemoteAccess, access_middleware, audit_response
from ctd.remote.api import routes as remote_routes
from ctd.remote.trust_api import routes as trust_routes


def make_app(context: ApiContext, access: RemoteAccess | None = None) -> web.Application:
    """With `access` (the daemon always gives it): every request gets an identity (a token on
    HTTPS), mutating ones are audited, and the token and audit endpoints exist."""
    middlewares = [error_middleware] if access is None else [access_middleware, error_middleware]
    app = web.Application(middlewares=middlewares, client_max_size=1 << 20)
    app[CTX] = context
    app.add_routes(routes)
    app[METRICS] = exporter_for(context)
    app.add_routes(metrics_routes)
    if access is not None:
        app[ACCESS] = access
        app.add_routes(remote_routes)
        app.add_routes(trust_routes)
        app.on_response_prepare.append(audit_response)
    return app


def socket_in_use(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def prepare_socket_path(path: Path, group: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if socket_in_use(path):
            raise OperationFailed(f"another ctd is already listening on {path}")
        path.unlink()


def secure_socket(path: Path, group: str) -> None:
    """root and group `group` (when it exists) may talk to ctd; nobody else."""
    gid = 0
    with contextlib.suppress(KeyError):
        gid = grp.getgrnam(group).gr_gid
    os.chown(path, 0, gid)
    os.chmod(path, 0o660)
