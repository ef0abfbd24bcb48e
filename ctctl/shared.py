"""What every noun module of ctctl shares: the current client, the options several commands take
(--format, an instance argument with completion, the limit and guest options) and the progress line
of a long operation.

Nothing here registers a command: ctctl/cli.py does that, so a noun module never imports it."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from ctctl.client import ApiError, Client, default_socket
from ctctl.listing import limits_text as limits_text  # re-exported (ctctl/instance.py)
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
    """--onboot, --boot-order, --boot-delay, --stop-timeout, --backup-schedule, --backup-keep on
    create and set (checked by the server)."""
    func = click.option("--backup-keep", "backup_keep", type=int,
                        help="backups kept in the node's backup_dir, 1-1000 (default 7; the parents a kept "
                             "increment needs stay too)")(func)
    func = click.option("--backup-schedule", "backup_schedule",
                        help="when ctd backs it up: hourly, daily@HH:MM, 'weekly@sun 03:00' or cron's "
                             "'M H DOM MON DOW' (host's local time); none removes it")(func)
    func = click.option("--stop-timeout", "stop_timeout",
                        help="seconds a stop waits for a clean shutdown before it kills (0-3600), or 'default' "
                             "for the server's stop_timeout; used by stop, restart and shutdown-all")(func)
    func = click.option("--boot-delay", "boot_delay", type=int,
                        help="seconds the next boot-order group waits after this one started (0-3600)")(func)
    func = click.option("--boot-order", "boot_order", type=int,
                        help="start order after a host boot, lower first, 0-10000 (default 10000: last)")(func)
    func = click.option("--onboot", type=click.Choice(["yes", "no"]),
                        help="start it when the host boots (ctd starts after a reboot)")(func)
    return func


def features_option(func: Command) -> Command:
    """--features on create and set (its value arrives in the command's **kwargs)."""
    return click.option("--features", help="container features, comma-separated: tun (/dev/net/tun: VPNs), "
                        "fuse (/dev/fuse: sshfs, rclone); at set the whole new set, '' for none (applies at "
                        "the next start)")(func)


def mount_options(func: Command) -> Command:
    """--mount (create and set) and --unmount (set only: `unmount` is popped by add_mounts)."""
    return click.option("--mount", "mount", multiple=True,
                        help="SOURCE:TARGET[:ro][,idmap]: bind a host directory or file into a container (repeatable; "
                             "at set: added; applies at the next start); idmap: host uid N is uid N inside")(func)


def add_mounts(body: dict[str, Any], options: dict[str, Any]) -> None:
    mounts = options.pop("mount", ()) or ()
    unmount = options.pop("unmount", ()) or ()
    if mounts:
        body["mounts"] = list(mounts)
    if unmount:
        body["unmount"] = list(unmount)


def add_features(body: dict[str, Any], options: dict[str, Any]) -> None:
    """--features (taken out of the options before they are read as limits); checked by the server."""
    value = options.pop("features", None)
    if value is not None:
        body["features"] = [n.strip() for n in value.split(",") if n.strip()]


def add_stop_timeout(body: dict[str, Any], options: dict[str, Any]) -> None:
    """--stop-timeout SECONDS|default (taken out of the options before they are read as limits)."""
    value = options.pop("stop_timeout", None)
    if value is not None:
        body["stop_timeout"] = int(value) if value.strip().isdigit() else value


def add_backup_settings(body: dict[str, Any], options: dict[str, Any]) -> None:
    """--backup-schedule, --backup-keep (taken out of the options before they are read as limits)."""
    for key in ("backup_schedule", "backup_keep"):
        value = options.pop(key, None)
        if value is not None:
            body[key] = value


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


# ------------------------------------------------------------------ replication (ctctl/replica.py)

def replication_options(func: Command) -> Command:
    """--replicate-to, --every, --ha of `ctctl set`."""
    func = click.option("--ha", "ha", type=click.Choice(["yes", "no"]),
                        help="start it on its replica node when this node goes offline (needs --replicate-to)")(func)
    func = click.option("--every", "every", help="replication interval: 30s, 5m, 1h (default 5m)")(func)
    return click.option("--replicate-to", "replicate_to",
                        help="keep a replica on this node, updated every --every; \"\" stops it")(func)


def apply_replication(instance: str, options: dict[str, Any]) -> str | None:
    """Sends the replication options given (taken out of options); the line to print, or None."""
    to, every, ha = options.pop("replicate_to", None), options.pop("every", None), options.pop("ha", None)
    if to is None and every is None and ha is None:
        return None
    body: dict[str, Any] = {}
    if to is not None:
        body["to"] = to
    if every is not None:
        body["every"] = every
    if ha is not None:
        body["ha"] = ha == "yes"
    shown = client().request("PUT", f"/1.0/instances/{instance}/replication", body)
    settings = shown.get("replication")
    if settings is None:
        return f"Replication of {instance} stopped"
    return (f"{instance} replicates to {settings['target']} every {every_text(settings['every'])}"
            f"{', HA' if settings.get('ha') else ''}")


def every_text(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
