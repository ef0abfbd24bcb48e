"""ctctl migrate NAME --to NODE: move a container to another node of the cluster (docs/cluster.md)."""

from __future__ import annotations

import click

from ctctl.output import human_bytes
from ctctl.shared import run_with_progress


@click.command()
@click.argument("instance")
@click.option("--to", "node", required=True, help="the node to move it to ('ctctl cluster list' shows them)")
def migrate(instance: str, node: str) -> None:
    """Move a container or VM (running or stopped) to NODE: its disk(s), addresses and settings go
    with it. A running container is copied while it runs, then stopped briefly and started there
    (its processes start afresh); a running VM moves live (QEMU migration: the guest runs on).
    The downtime is printed."""
    result = run_with_progress("POST", f"/1.0/instances/{instance}/migrate", {"to": node})
    rounds = result.get("rounds") or []
    sent = ", ".join(human_bytes(n) for n in rounds)
    line = f"Migrated {instance} to {result.get('node', node)} ({len(rounds)} round(s): {sent})"
    if result.get("live"):   # a VM's live migration (QEMU): disks mirrored, then its memory
        line = (f"Migrated {instance} to {result.get('node', node)} live (disks mirrored, "
                f"{human_bytes(result.get('memory') or 0)} of memory)")
    if result.get("downtime") is not None:
        parts = result.get("downtime_parts") or {}
        line += f"; downtime {result['downtime']:.3f} s"
        if parts:
            line += " (" + ", ".join(f"{k.replace('_', ' ')} {v:.3f} s" for k, v in parts.items()) + ")"
    click.echo(line)
    for note in result.get("notes") or []:
        click.echo(f"Note: {note}")


COMMANDS = (migrate,)
