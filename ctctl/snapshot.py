"""ctctl's commands on an instance's root copies: snapshot, snapshot-list, snapshot-delete,
rollback and clone (a new instance from an instance or one of its snapshots)."""

from __future__ import annotations

from typing import Any

import click

from ctctl.output import emit, notes
from ctctl.refs import instance_ref
from ctctl.shared import FORMAT, INSTANCE, client, complete_instance


@click.command()
@click.argument("instance", shell_complete=complete_instance, callback=instance_ref)
@click.argument("snapshot")
def snapshot(instance: str, snapshot: str) -> None:
    """Take a snapshot of an instance's root or disk (instant on btrfs); containers and VMs may keep
    running (a running VM is frozen by its guest agent, if any, and paused for the copy)."""
    result = client().run("POST", f"/1.0/instances/{instance}/snapshots", {"name": snapshot}) or {}
    click.echo(f"Snapshot {snapshot} of {instance} taken")
    if result.get("live"):
        click.echo(f"  {result.get('consistency')}; the VM was paused {result.get('paused_ms')} ms")
    notes(result, indent="  ")


@click.command(name="snapshot-list")
@INSTANCE
@FORMAT
def snapshot_list(instance: str, fmt: str) -> None:
    """List an instance's snapshots."""
    snaps = client().get(f"/1.0/instances/{instance}/snapshots")["snapshots"]
    emit(fmt, snaps, lambda rows: "\n".join(rows) if rows else f"{instance} has no snapshots")


@click.command(name="snapshot-delete")
@INSTANCE
@click.argument("snapshot")
def snapshot_delete(instance: str, snapshot: str) -> None:
    """Delete a snapshot."""
    client().request("DELETE", f"/1.0/instances/{instance}/snapshots/{snapshot}")
    click.echo(f"Deleted snapshot {snapshot} of {instance}")


@click.command()
@INSTANCE
@click.argument("snapshot")
@click.option("--restart", is_flag=True, help="stop a running instance, roll back, start it again")
def rollback(instance: str, snapshot: str, restart: bool) -> None:
    """Put an instance's root back to a snapshot (the snapshot stays)."""
    client().run("POST", f"/1.0/instances/{instance}/rollback", {"snapshot": snapshot, "restart": restart})
    click.echo(f"Rolled {instance} back to {snapshot}")


@click.command()
@click.argument("source", shell_complete=complete_instance, callback=instance_ref)
@click.argument("name", callback=instance_ref)
@click.option("--snapshot", help="clone this snapshot of SOURCE (works while SOURCE runs)")
def clone(source: str, name: str, snapshot: str | None) -> None:
    """A new instance from SOURCE: new id, id range, hostname, MAC and addresses."""
    body: dict[str, Any] = {"name": name}
    if snapshot:
        body["snapshot"] = snapshot
    result = client().run("POST", f"/1.0/instances/{source}/clone", body)
    click.echo(f"Cloned {source} to {result['name']} (id {result['id']})")


COMMANDS = (snapshot, snapshot_list, snapshot_delete, rollback, clone)
