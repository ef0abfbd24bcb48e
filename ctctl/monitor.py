"""ctctl's read-outs of resource use and of what happens: beancounters (OpenVZ's
user_beancounters table), metrics (the Prometheus text ctd serves, whole or one instance's
samples) and monitor (the node's events live, from GET /1.0/events)."""

from __future__ import annotations

import json
import sys
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


EVENT_TYPES = ("lifecycle", "operation", "limit", "exit", "log")


def _summary(event: dict[str, Any]) -> str:
    meta = event.get("metadata") or {}
    kind = event.get("type")
    if kind == "lifecycle":
        extra = {k: v for k, v in meta.items() if k in ("old_name", "snapshot", "source", "template", "via")}
        return " ".join([str(meta.get("action")), *(f"{k}={v}" for k, v in extra.items())])
    if kind == "operation":
        line = f"{meta.get('kind')} {meta.get('target')} {meta.get('action')}"
        if meta.get("action") == "progress" and meta.get("progress"):
            line += f": {meta['progress']}"
        return line + (f": {meta['error']}" if meta.get("error") else "")
    if kind == "limit":
        return f"{meta.get('resource')} failcnt {meta.get('previous')} -> {meta.get('failcnt')}"
    if kind == "exit":
        return f"{meta.get('kind')}: {meta.get('text')}"
    return f"{meta.get('level')}: {meta.get('message')}"


def event_line(event: dict[str, Any]) -> str:
    """One line: time, type, instance (project/instance outside the default project), what."""
    who = event.get("instance") or "-"
    if event.get("project") not in (None, "default"):
        who = f"{event['project']}/{who}"
    return f"{event.get('timestamp')} {event.get('type'):<9} {who} {_summary(event)}"


def _types(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> list[str]:
    wanted = [part.strip() for item in value for part in item.split(",") if part.strip()]
    unknown = [t for t in wanted if t not in EVENT_TYPES]
    if unknown:
        raise click.BadParameter(f"unknown type(s) {', '.join(unknown)}; the types are {', '.join(EVENT_TYPES)}")
    return wanted


@click.command()
@click.argument("instance", required=False, shell_complete=complete_instance, callback=instance_ref)
@click.option("--type", "types", multiple=True, callback=_types, metavar="TYPE[,TYPE]",
              help=f"only these event types ({', '.join(EVENT_TYPES)}); default all")
@click.option("--format", "fmt", type=click.Choice(["line", "json"]), default="line", show_default=True,
              help="one line per event, or its JSON on one line")
def monitor(instance: str | None, types: list[str], fmt: str) -> None:
    """Print the node's events live (of one instance with NAME) until interrupted."""
    import asyncio  # here: only the commands that stream load asyncio and aiohttp

    from ctctl.stream import run_events

    def show(event: dict[str, Any]) -> None:
        click.echo(json.dumps(event, sort_keys=True) if fmt == "json" else event_line(event))
        sys.stdout.flush()

    try:
        asyncio.run(run_events(client(), types, instance, show))
    except KeyboardInterrupt:
        pass


COMMANDS = (beancounters, metrics, monitor)
