"""ctctl, the command line for ctd: the click root. It speaks only HTTP to ctd's socket (or a
remote's HTTPS). ctctl/main.py is the entry point: it answers a plain `ctctl list` itself
(ctctl/listing.py) and loads this module for every other command line.

This module is the root group: the global options (--socket, --remote), how errors end a run
(one line on stderr; exit 1, 2 for a usage error, 130 for Ctrl-C) and the registration of the
commands, one module per noun (instance, admin, vm, inside, monitor, template, snapshot, backup, storage,
network, completion, remote_cmds, check). Those modules never import this one.

A noun's module is imported when one of its commands runs (COMMANDS below names them), not at
start: `ctctl list --state running` loads click, the client and ctctl/instance.py only (no
asyncio, ssl, http.client, tarfile, hostcheck); help and completion load them all.
tests/unit/test_ctctl_imports.py checks the table against the modules and the import set."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from ctctl.client import ApiError, default_socket
from ctctl.connect import make_client

# noun module -> its commands (each module's COMMANDS; the unit test keeps the two equal)
NOUNS: dict[str, tuple[str, ...]] = {
    "instance": ("create", "start", "suspend", "resume", "stop", "restart", "reinstall", "destroy", "set", "list",
                 "status", "shutdown-all"),
    "admin": ("rename",),
    "vm": ("vnc", "hardware", "media", "disk"),
    "inside": ("exec", "enter", "console"),
    "monitor": ("beancounters", "metrics", "monitor"),
    "template": ("template",),
    "snapshot": ("snapshot", "snapshot-list", "snapshot-delete", "rollback", "clone"),
    "backup": ("backup", "backup-list", "restore"),
    "storage": ("storage",),
    "network": ("network",),
    "nic": ("nic",),
    "firewall": ("firewall",),
    "completion": ("completion",),
    "remote_cmds": ("info", "token", "audit", "remote", "trust"),
    "project": ("project",),
    "cluster": ("cluster",),
    "migrate": ("migrate",),
    "replica": ("replica",),
}
MODULE_OF = {command: noun for noun, commands in NOUNS.items() for command in commands}


def _has_hostcheck() -> bool:
    # `ctctl check` needs hostcheck, which a ctctl-only install may lack; ctctl.check imports it
    # only when the command runs, so look for it here without loading it.
    from importlib.util import find_spec
    return find_spec("hostcheck") is not None


class CtlGroup(click.Group):
    """Loads a command's module when the command is asked for; turns ApiError into one line on
    stderr and exit status 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *MODULE_OF, *(["check"] if _has_hostcheck() else [])})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            if cmd_name in MODULE_OF:
                module = importlib.import_module(f"ctctl.{MODULE_OF[cmd_name]}")
                for command in module.COMMANDS:
                    self.add_command(command)
            elif cmd_name == "check" and _has_hostcheck():
                from ctctl.check import check
                self.add_command(check)
        return self.commands.get(cmd_name)

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


def run() -> None:
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
