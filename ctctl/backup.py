"""ctctl backup and restore: a container to a file and back (btrfs send or tar.zst), with ctd's
progress line while it runs. A restore is checked by ctd like a create request."""

from __future__ import annotations

from typing import Any

import click

from ctctl.output import human_bytes
from ctctl.shared import INSTANCE, given_limits, limit_options, run_with_progress


@click.command()
@INSTANCE
@click.argument("file", type=click.Path(dir_okay=False, resolve_path=True))
@click.option("--snapshot", help="back up this snapshot (the instance keeps running)")
@click.option("--tar", "as_tar", is_flag=True, help="a .tar.zst stream even on btrfs (restores on any pool)")
def backup(instance: str, file: str, snapshot: str | None, as_tar: bool) -> None:
    """Write a backup of a container to FILE (btrfs send where possible, else tar.zst; not VMs)."""
    body: dict[str, Any] = {"file": file, "driver": "tar" if as_tar else "auto"}
    if snapshot:
        body["snapshot"] = snapshot
    result = run_with_progress("POST", f"/1.0/instances/{instance}/backup", body)
    click.echo(f"Backed up {instance} to {result['file']} ({result['driver']}, {human_bytes(result['size'])})")


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, resolve_path=True))
@click.option("--name", help="name of the restored instance (default: the backed-up one's); another name "
              "makes a copy with a new machine-id and no ssh host keys, as clone does")
@limit_options
@click.option("--no-filter", is_flag=True, help="no MAC/IP anti-spoofing on the NICs (default: on, whatever "
              "the file says)")
@click.option("--privileged", is_flag=True, help="restore as a privileged container (never taken from the file)")
def restore(file: str, name: str | None, no_filter: bool, privileged: bool, **limits: Any) -> None:
    """Make a container from a backup file (new id, id range, MACs, addresses). The file's settings
    are checked like a create request; limits given here replace the file's."""
    body: dict[str, Any] = {"file": file}
    if name:
        body["name"] = name
    if given_limits(limits):
        body["limits"] = given_limits(limits)
    if no_filter:
        body["filter"] = False
    if privileged:
        body["privileged"] = True
    result = run_with_progress("POST", "/1.0/restore", body)
    click.echo(f"Restored {result['name']} (id {result['id']})")
    for note in result.get("notes") or []:
        click.echo(f"Note: {note}")


COMMANDS = (backup, restore)
