"""What every noun module of ctctl shares: the current client, the options several commands take
(--format, an instance argument with completion, the limit and guest options) and the progress line
of a long operation.

Nothing here registers a command: ctctl/main.py does that, so a noun module never imports main."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from ctctl.client import ApiError, Client, default_socket
from ctctl.refs import instance_ref

Command = TypeVar("Command", bound=Callable[..., Any])

FORMAT = click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
                      show_default=True, help="output format")


def client() -> Client:
    """The client the group's callback made for this invocation (socket or remote)."""
    return cast(Client, click.get_current_context().find_object(Client))


def complete_instance(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Instance names for shell completion; none when ctd cannot be asked within 2 s."""
    try:
        socket_path = ctx.find_root().params.get("socket_path") or default_socket()
        names = [i["name"] for i in Client(socket_path, timeout=2).get("/1.0/instances")["instances"]]
    except (ApiError, OSError):
        return []
    return [n for n in names if n.startswith(incomplete)]


INSTANCE = click.argument("instance", shell_complete=complete_instance, callback=instance_ref)  # or REMOTE:NAME


def guest_options(func: Command) -> Command:
    """--userpasswd, --ssh-key, --timezone on create and set."""
    func = click.option("--timezone", help="zone for /etc/localtime, e.g. Europe/Berlin")(func)
    func = click.option("--ssh-key", "ssh_key", multiple=True, type=click.Path(exists=True, dir_okay=False),
                        help="public key file for root's authorized_keys")(func)
    func = click.option("--userpasswd", help="USER:PASSWORD (hashed into the guest's /etc/shadow; for a VM also into "
                        "its cloud-init seed; the clear text is kept nowhere)")(func)
    return func


def add_guest(body: dict[str, Any], userpasswd: str | None, ssh_key: tuple[str, ...], timezone: str | None) -> None:
    """Put the guest options that were given into a request body (ssh keys read from their files)."""
    if userpasswd:
        body["userpasswd"] = userpasswd
    if ssh_key:
        keys = []
        for path in ssh_key:
            lines = Path(path).read_text().splitlines()
            keys += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        body["ssh_keys"] = keys
    if timezone:
        body["timezone"] = timezone


def boot_options(func: Command) -> Command:
    """--onboot, --boot-order, --boot-delay on create and set (checked by the server)."""
    func = click.option("--boot-delay", "boot_delay", type=int,
                        help="seconds the next boot-order group waits after this one started (0-3600)")(func)
    func = click.option("--boot-order", "boot_order", type=int,
                        help="start order after a host boot, lower first, 0-10000 (default 10000: last)")(func)
    func = click.option("--onboot", type=click.Choice(["yes", "no"]),
                        help="start it when the host boots (ctd starts after a reboot)")(func)
    return func


def add_boot(body: dict[str, Any], onboot: str | None, boot_order: int | None, boot_delay: int | None) -> None:
    """Put the autostart options that were given into a request body."""
    if onboot is not None:
        body["onboot"] = onboot == "yes"
    if boot_order is not None:
        body["boot_order"] = boot_order
    if boot_delay is not None:
        body["boot_delay"] = boot_delay


LIMIT_OPTIONS = (
    ("ram", "memory limit, e.g. 512M, 1G, or barrier:limit"),
    ("swap", "swap on top of ram, e.g. 256M"),
    ("cpus", "number of CPUs (a cpuset)"),
    ("cpulimit", "CPU time in % of one CPU, e.g. 50 or 150"),
    ("cpuunits", "relative CPU weight, 8-500000 (default 1000)"),
    ("numproc", "process limit, e.g. 100 or 90:100"),
    ("numfile", "open files per process"),
    ("numpty", "pseudo-terminals open at once (default 256)"),
    ("iolimit", "disk bandwidth, bytes/s, e.g. 10M"),
    ("iopslimit", "disk operations per second"),
    ("ioprio", "disk priority 0-7 (default 4)"),
    ("diskspace", "disk space, e.g. 10G (needs the btrfs pool)"),
)


def limit_options(func: Command) -> Command:
    """--ram, --cpus … on create and set; 'unlimited' removes a limit."""
    for name, text in reversed(LIMIT_OPTIONS):
        func = click.option(f"--{name}", help=text)(func)
    return func


def given_limits(options: Mapping[str, Any]) -> dict[str, str]:
    """The limit options that were given, by name (the request's "limits")."""
    return {name: options[name] for name, _ in LIMIT_OPTIONS if options.get(name) is not None}


def limits_text(limits: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in limits.items()) or "-"


def run_with_progress(method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """An operation, its progress line shown on stderr while it runs (Ctrl-C cancels)."""
    tty = sys.stderr.isatty()
    last = [""]

    def show(line: str) -> None:
        if line == last[0]:
            return
        last[0] = line
        if tty:
            width = max(20, shutil.get_terminal_size().columns - 1)
            click.echo("\r" + line[:width].ljust(width), err=True, nl=False)
        else:
            click.echo(f"  {line}", err=True)

    try:
        return client().run(method, path, body, progress=show)
    finally:
        if tty and last[0]:
            click.echo("", err=True)
