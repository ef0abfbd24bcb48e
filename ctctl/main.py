"""ctctl: the command line for ctd. It speaks only HTTP to ctd's socket (or a remote's HTTPS).

This module is the root group: the global options (--socket, --remote), how errors end a run
(one line on stderr; exit 1, 2 for a usage error, 130 for Ctrl-C) and the registration of the
commands, one module per noun (instance, admin, vm, inside, monitor, template, snapshot, backup, storage,
network, completion, remote_cmds, check). Those modules never import this one."""

from __future__ import annotations

import sys
from importlib.util import find_spec
from typing import Any

import click

from ctctl import (
    admin,
    backup,
    completion,
    inside,
    instance,
    monitor,
    network,
    remote_cmds,
    snapshot,
    storage,
    template,
    vm,
)
from ctctl.client import ApiError, default_socket
from ctctl.connect import make_client


class CtlGroup(click.Group):
    """Turns ApiError into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            click.echo(f"ctctl: {exc.message}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("ctctl: interrupted", err=True)
            sys.exit(130)


@click.group(cls=CtlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", "socket_path", default=default_socket, show_default="/run/ctd/ctd.sock or $CTD_SOCKET",
              help="ctd's API socket")
@click.option("--remote", "remote_name", help="talk to this remote over HTTPS ('ctctl remote list'; 'local': "
              "the socket)")
@click.pass_context
def cli(ctx: click.Context, socket_path: str, remote_name: str | None) -> None:
    """Manage ctd's system containers."""
    ctx.obj = make_client(ctx, socket_path, remote_name)


NOUNS = (instance, admin, vm, inside, monitor, template, snapshot, backup, storage, network, completion, remote_cmds)


def _register() -> None:
    for noun in NOUNS:
        for command in noun.COMMANDS:
            cli.add_command(command)
    # `ctctl check` needs hostcheck, which a ctctl-only install may lack; ctctl.check imports it
    # only when the command runs, so look for it here without loading it.
    if find_spec("hostcheck") is not None:
        from ctctl.check import check
        cli.add_command(check)


_register()


def main() -> None:
    try:
        code = cli.main(prog_name="ctctl", standalone_mode=False)
    except click.UsageError as exc:
        # One line, like every other ctctl error; the hint names the help to read.
        where = f"ctctl {exc.ctx.command_path.split(' ', 1)[1]}" if exc.ctx and " " in exc.ctx.command_path else "ctctl"
        click.echo(f"ctctl: {' '.join(exc.format_message().split())} (see '{where} --help')", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"ctctl: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("ctctl: aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
