"""Tables and JSON for read commands."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from ctctl.listing import human_bytes as human_bytes  # re-exported: the commands take them from here
from ctctl.listing import table as table

Data = TypeVar("Data")


def emit(fmt: str, data: Data, render: Callable[[Data], str]) -> None:
    """data as JSON with --format json, else as render makes it (a table, "key: value" lines)."""
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(render(data))


def notes(result: Mapping[str, Any], indent: str = "") -> None:
    """The answer's notes (what ctd did other than asked, or later), one "Note:" line each."""
    for note in result.get("notes") or []:
        click.echo(f"{indent}Note: {note}")
