"""ctctl replica: storage replication of containers to another node, and HA (docs/cluster.md).
`ctctl set NAME --replicate-to NODE --every 5m --ha yes` sets it (ctctl/shared.py
replication_options)."""

from __future__ import annotations

import time

import click

from ctctl.output import emit, human_bytes, table
from ctctl.shared import FORMAT, client, every_text, run_with_progress


@click.group()
def replica() -> None:
    """Replicas of containers on other nodes: list, sync (set them up with 'ctctl set')."""


@replica.command(name="list")
@FORMAT
def replica_list(fmt: str) -> None:
    """Every replication of the cluster: node, target, interval, HA, last replicated and lag."""
    rows = client().get("/1.0/cluster/replicas")["replicas"]
    emit(fmt, rows, lambda rs: table(
        ["NAME", "NODE", "TARGET", "EVERY", "HA", "LAST REPLICATED", "LAG", "ERROR"],
        [[r["name"], r.get("node") or "-", r["target"], every_text(r["every"]), "yes" if r["ha"] else "no",
          r.get("last_replicated") or "never", f"{r['lag']:.0f}s" if r.get("lag") is not None else "-",
          r.get("last_error") or ""] for r in rs]))


@replica.command(name="sync")
@click.argument("instance")
def replica_sync(instance: str) -> None:
    """Replicate INSTANCE now (one round), not at its next interval."""
    started = time.monotonic()
    result = run_with_progress("POST", f"/1.0/instances/{instance}/replication/sync", {})
    click.echo(f"Replicated {instance} to {result['target']}: generation {result['generation']}, "
               f"{'incremental' if result['incremental'] else 'full'}, {human_bytes(result['bytes'])} "
               f"in {time.monotonic() - started:.1f} s")


COMMANDS = (replica,)
