"""ctctl's read-outs of resource use: beancounters (OpenVZ's user_beancounters table) and metrics
(the Prometheus text ctd serves, whole or one instance's samples)."""

from __future__ import annotations

from typing import Any

import click

from ctctl.output import emit, table
from ctctl.refs import instance_ref
from ctctl.shared import FORMAT, client, complete_instance

LONG_MAX = 9223372036854775807


def _bc_value(value: Any) -> str:
    return str(LONG_MAX) if value == -1 else ("-" if value is None else str(value))


def _bc_table(instances: list[dict[str, Any]]) -> str:
    rows = []
    for inst in instances:
        for i, row in enumerate(inst["beancounters"]):
            rows.append([f"{inst['id']}:" if i == 0 else "", row["name"], _bc_value(row["held"]),
                         _bc_value(row["maxheld"]), _bc_value(row["barrier"]), _bc_value(row["limit"]),
                         _bc_value(row["failcnt"])])
    return table(["uid", "resource", "held", "maxheld", "barrier", "limit", "failcnt"], rows)


@click.command()
@click.argument("instance", required=False, shell_complete=complete_instance, callback=instance_ref)
@click.option("--failing", "-q", is_flag=True, help="only counters that hit their limit, across all containers")
@FORMAT
def beancounters(instance: str | None, failing: bool, fmt: str) -> None:
    """OpenVZ's user_beancounters: held, maxheld, barrier, limit, failcnt per resource."""
    if instance and not failing:
        data = [client().get(f"/1.0/instances/{instance}/beancounters")]
    else:
        data = client().get("/1.0/beancounters", **({"failing": "true"} if failing else {}))["instances"]
        if instance:
            data = [d for d in data if instance in (d["name"], str(d["id"]))]
    emit(fmt, data, lambda rows: _bc_table(rows) if rows else "no counter has hit its limit")


@click.command()
@click.argument("instance", required=False, shell_complete=complete_instance, callback=instance_ref)
def metrics(instance: str | None) -> None:
    """Prometheus metrics as ctd serves them at /1.0/metrics; with NAME, that instance's samples."""
    text = client().text("/1.0/metrics")
    if instance:
        label = f'name="{instance}"'
        text = "".join(line + "\n" for line in text.splitlines() if not line.startswith("#") and label in line)
    click.echo(text, nl=False)


COMMANDS = (beancounters, metrics)
