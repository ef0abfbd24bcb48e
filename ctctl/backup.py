"""ctctl backup, backup-list and restore: a container (btrfs send or tar.zst) or a VM (its disk
as qcow2, UEFI variables, TPM state) to a file and back, with ctd's progress line while it runs.
Without FILE a backup goes to the node's backup_dir as the next link of the instance's chain
(incremental on btrfs), as scheduled backups do. A restore is checked by ctd like a create
request; an incremental backup restores with its chain."""

from __future__ import annotations

from typing import Any

import click

from ctctl.output import emit, human_bytes, notes, table
from ctctl.shared import FORMAT, INSTANCE, client, given_limits, limit_options, run_with_progress


@click.command()
@INSTANCE
@click.argument("file", required=False, type=click.Path(dir_okay=False, resolve_path=True))
@click.option("--snapshot", help="back up this snapshot (the instance keeps running)")
@click.option("--tar", "as_tar", is_flag=True, help="a .tar.zst stream even on btrfs (restores on any pool; "
              "containers only)")
def backup(instance: str, file: str | None, snapshot: str | None, as_tar: bool) -> None:
    """Write a backup of an instance to FILE: a container's root (btrfs send where possible, else
    tar.zst), or a VM's disk, UEFI variables and TPM state (a running VM keeps running: QEMU copies
    its disk as it was at one instant, crash-consistent). Without FILE: into the node's backup_dir,
    incremental against the previous one where it can be, and --backup-keep applied (see backup-list)."""
    body: dict[str, Any] = {}
    if file:
        body = {"file": file, "driver": "tar" if as_tar else "auto"}
        if snapshot:
            body["snapshot"] = snapshot
    elif snapshot or as_tar:
        raise click.UsageError("--snapshot and --tar need a FILE (a backup into backup_dir is of the live root)")
    result = run_with_progress("POST", f"/1.0/instances/{instance}/backup", body)
    kind = f"{result['kind']}, " if result.get("kind") else ""
    click.echo(f"Backed up {instance} to {result['file']} ({kind}{result['driver']}, {human_bytes(result['size'])})")
    if result.get("consistency"):
        click.echo(f"Consistency: {result['consistency']}")
    notes(result)
    for removed in result.get("removed") or []:
        click.echo(f"Removed {removed} (--backup-keep)")


@click.command(name="backup-list")
@INSTANCE
@FORMAT
def backup_list(instance: str, fmt: str) -> None:
    """The backups of an instance in the node's backup_dir, oldest first: time, kind, parent, size."""
    emit(fmt, client().get(f"/1.0/instances/{instance}/backups")["backups"],
         lambda rows: _backup_table(rows) if rows else f"{instance} has no backups in the node's backup_dir")


def _backup_table(rows: list[dict[str, Any]]) -> str:
    """#, created, kind, parent (#n of this list), size, who made it, file (missing if gone)."""
    ids = {b["id"]: n for n, b in enumerate(rows, 1)}
    return table(["#", "CREATED", "KIND", "PARENT", "SIZE", "BY", "FILE"],
                 [[ids[b["id"]], b["created"], b["kind"], f"#{ids[b['parent']]}" if b["parent"] in ids else "-",
                   human_bytes(b["size"]), "schedule" if b["scheduled"] else "manual",
                   b["file"] + ("" if b["present"] else " (missing)")] for b in rows])


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, resolve_path=True))
@click.option("--name", help="name of the restored instance (default: the backed-up one's); another name "
              "makes a copy with a new machine-id and no ssh host keys, as clone does")
@limit_options
@click.option("--no-filter", is_flag=True, help="no MAC/IP anti-spoofing on the NICs (default: on, whatever "
              "the file says)")
@click.option("--privileged", is_flag=True, help="restore as a privileged container (never taken from the file; "
              "not for VMs)")
@click.option("--project", help="the project it lands in (default: default), within that project's limits")
def restore(file: str, name: str | None, no_filter: bool, privileged: bool, project: str | None,
            **limits: Any) -> None:
    """Make a container or VM from a backup file (new id, id range, MACs, addresses). The file's
    settings are checked like a create request; limits given here replace the file's."""
    body: dict[str, Any] = {"file": file}
    if name:
        body["name"] = name
    if given_limits(limits):
        body["limits"] = given_limits(limits)
    if no_filter:
        body["filter"] = False
    if privileged:
        body["privileged"] = True
    if project:
        body["project"] = project
    result = run_with_progress("POST", "/1.0/restore", body)
    click.echo(f"Restored {result['name']} (id {result['id']})")
    notes(result)


COMMANDS = (backup, backup_list, restore)
