"""The aiohttp application and its unix socket listener."""

from __future__ import annotations

import contextlib
import grp
import os
import socket
from pathlib import Path

from aiohttp import web

from ctd.api import events, stream  # noqa: F401 — register the events, exec and console routes
from ctd.api.context import ApiContext
from ctd.api.errors import error_middleware
from ctd.api.firewall_api import routes as firewall_routes
from ctd.api.handlers import CTX, routes
from ctd.api.metrics import METRICS, exporter_for
from ctd.api.metrics import routes as metrics_routes
from ctd.api.nics_api import routes as nic_routes
from ctd.api.scoping import scope_middleware
from ctd.cluster.api import routes as cluster_routes
from ctd.cluster.evacuate import routes as evacuate_routes
from ctd.cluster.migrate_api import routes as migrate_routes
from ctd.cluster.replicate_api import routes as replicate_routes
from ctd.cluster.vm_migrate_api import routes as vm_migrate_routes
from ctd.errors import OperationFailed
from ctd.project.api import routes as project_routes
from ctd.remote.api import ACCESS, RemoteAccess, access_middleware, audit_response
from ctd.remote.api import routes as remote_routes
from ctd.remote.enforce import policy_middleware
from ctd.remote.trust_api import routes as trust_routes
from ctd.remote.whoami import routes as whoami_routes
from ctd.web.serve import origin_middleware, security_headers
from ctd.web.serve import routes as web_routes


def make_app(context: ApiContext, access: RemoteAccess | None = None) -> web.Application:
    """With `access` (the daemon always gives it): every request gets an identity (a token on
    HTTPS) and is checked against its role (ctd/remote/policy.py), mutating and refused ones are
    audited, and the token and audit endpoints exist."""
    # the role check (policy_middleware) runs inside error_middleware: its 403 is a JSON error
    # the Origin check comes first: a cross-site browser request is refused before anything else;
    # scope_middleware after the policy: another project's instance answers as one that does not exist
    middlewares = [origin_middleware, error_middleware, scope_middleware] if access is None else \
        [origin_middleware, access_middleware, error_middleware, policy_middleware, scope_middleware]
    app = web.Application(middlewares=middlewares, client_max_size=1 << 20)
    app[CTX] = context
    app.add_routes(routes)
    app.add_routes(firewall_routes)
    app.add_routes(whoami_routes)
    app.add_routes(web_routes)   # the web console's static files (ctd/web/serve.py)
    app.on_response_prepare.append(security_headers)
    app.add_routes(nic_routes)
    app.on_shutdown.append(events.end_streams)
    app[METRICS] = exporter_for(context)
    app.add_routes(metrics_routes)
    app.add_routes(project_routes)
    app.add_routes(cluster_routes)
    app.add_routes(migrate_routes)
    app.add_routes(evacuate_routes)
    app.add_routes(vm_migrate_routes)
    app.add_routes(replicate_routes)
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
