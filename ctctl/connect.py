"""Which server an invocation talks to: --remote NAME (or a REMOTE: reference), else the socket
when --socket or $CTD_SOCKET says so, else the configured default remote."""

from __future__ import annotations

import os

import click

from ctctl.client import ApiError, Client
from ctctl.remotes import LOCAL, RemoteConfig


def make_client(ctx: click.Context, socket_path: str, remote_name: str | None) -> Client:
    """--remote NAME, else the socket when --socket or $CTD_SOCKET says so, else the default remote."""
    if remote_name is None:
        explicit_socket = (ctx.get_parameter_source("socket_path") is not click.core.ParameterSource.DEFAULT
                           or "CTD_SOCKET" in os.environ)
        if explicit_socket:
            return Client(socket_path)
        try:
            remote_name = RemoteConfig.load().default
        except ApiError as exc:
            click.echo(f"ctctl: warning: {exc.message}; using the local socket", err=True)
            return Client(socket_path)
    if remote_name == LOCAL:
        return Client(socket_path)
    return Client(socket_path, remote=RemoteConfig.load().get(remote_name))
