"""ctctl's administrative flags: --disabled/--reason/--protected/--description/--tag/--untag
(on create and set), the `rename` command, and how list and status show the flags. ctd checks
every value; this module only turns options into the request and the reply into text."""

from __future__ import annotations

from typing import Any

import click

from ctctl.listing import state_text as state_text  # re-exported (ctctl/instance.py)
from ctctl.listing import tags_text as tags_text
from ctctl.output import notes
from ctctl.shared import INSTANCE, client

YES_NO = click.Choice(["yes", "no"])
ADMIN_KEYS = ("disabled", "reason", "protected", "description", "tag", "untag", "stop")


def admin_options(func: Any) -> Any:
    """The flags on create and set (their values arrive in the command's **kwargs)."""
    options = [
        click.option("--disabled", type=YES_NO, help="yes: the instance cannot be started (by anyone, autostart "
                     "too) until 'set NAME --disabled no'; a running one needs --stop"),
        click.option("--reason", help="why it is disabled (shown by list and status, and in the refusal)"),
        click.option("--protected", type=YES_NO, help="yes: destroy, reinstall and rollback are refused"),
        click.option("--description", help="free text (at most 4096 printable characters)"),
        click.option("--tag", multiple=True, help="KEY=VALUE (repeatable); KEY= removes the tag"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def set_only_options(func: Any) -> Any:
    func = click.option("--stop", "stop", is_flag=True, help="with --disabled yes: stop a running instance "
                        "first (stopped and disabled in one request)")(func)
    return click.option("--untag", multiple=True, help="remove the tag KEY (repeatable)")(func)


def add_admin(body: dict[str, Any], options: dict[str, Any]) -> None:
    """Move the admin options out of a command's **kwargs into the request body."""
    values = {key: options.pop(key, None) for key in ADMIN_KEYS}
    for flag in ("disabled", "protected"):
        if values[flag] is not None:
            body[flag] = values[flag] == "yes"
    for key in ("reason", "description"):
        if values[key] is not None:
            body[key] = values[key]
    tags: dict[str, str | None] = {}
    for item in values["tag"] or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise click.UsageError(f"--tag {item!r}: use KEY=VALUE (KEY= removes it)")
        tags[key] = value or None
    for key in values["untag"] or ():
        tags[key] = None
    if tags:
        body["tags"] = tags
    if values["stop"]:
        body["stop"] = True


def status_rows(instance: dict[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    if instance.get("disabled"):
        rows.append(("disabled", f"yes ({instance['disabled_reason']})" if instance.get("disabled_reason")
                     else "yes"))
    if instance.get("protected"):
        rows.append(("protected", "yes"))
    if instance.get("description"):
        rows.append(("description", instance["description"]))
    for key, value in sorted((instance.get("tags") or {}).items()):
        rows.append(("tag", f"{key}={value}"))
    return rows


def flags_text(instance: dict[str, Any]) -> str:
    """What set answers about the flags: '; disabled (unpaid); protected' or ''."""
    parts = []
    if instance.get("disabled"):
        parts.append(f"disabled ({instance['disabled_reason']})" if instance.get("disabled_reason") else "disabled")
    if instance.get("protected"):
        parts.append("protected")
    if instance.get("tags"):
        parts.append(f"tags {tags_text(instance)}")
    return "".join(f"; {p}" for p in parts)


@click.command()
@INSTANCE
@click.argument("new")
def rename(instance: str, new: str) -> None:
    """Give a stopped instance a new name (its storage, snapshots and state follow; the hostname stays)."""
    result = client().request("POST", f"/1.0/instances/{instance}/rename", {"name": new})["instance"]
    click.echo(f"Renamed {instance} to {result['name']}")
    notes(result)


COMMANDS = (rename,)
