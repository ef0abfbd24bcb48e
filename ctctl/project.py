"""ctctl project: projects (tenants) with limits, usage and what their tenants may do."""

from __future__ import annotations

from typing import Any

import click

from ctctl.output import emit, table
from ctctl.shared import FORMAT, client

LIMIT_NAMES = ("instances", "ram", "cpus", "disk", "addresses", "snapshots", "backups")


def limit_options(f: Any) -> Any:
    for name in reversed(LIMIT_NAMES):
        f = click.option(f"--{name}", f"limit_{name}", metavar="N|unlimited",
                         help=f"limit on the project's {name}" + (" (a size, e.g. 8G)" if name in ("ram", "disk")
                                                                  else ""))(f)
    return f


def _body(description: str | None, allow_exec: bool | None, templates: str | None,
          limits: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    given = {k.removeprefix("limit_"): v for k, v in limits.items() if v is not None}
    if given:
        body["limits"] = {k: (int(v) if v.isdigit() else v) for k, v in given.items()}
    if description is not None:
        body["description"] = description
    if allow_exec is not None:
        body["allow_exec"] = allow_exec
    if templates is not None:
        body["templates"] = None if templates == "" else [t.strip() for t in templates.split(",") if t.strip()]
    return body


@click.group()
def project() -> None:
    """Projects (tenants): every instance belongs to one; 'default' always exists."""


@project.command(name="create")
@click.argument("name")
@click.option("--description", help="free text (the customer, the contract)")
@click.option("--allow-exec/--no-allow-exec", default=None, help="tenants may run commands (ctctl exec); default off")
@click.option("--templates", help="comma-separated templates its tenants may reinstall from (default: the host's "
              "recipes; '' resets to that)")
@limit_options
def project_create(name: str, description: str | None, allow_exec: bool | None, templates: str | None,
                   **limits: Any) -> None:
    """Make a project; its instances are named NAME-..."""
    body = {"name": name, **_body(description, allow_exec, templates, limits)}
    made = client().request("POST", "/1.0/projects", body)["project"]
    click.echo(f"Created project {made['name']}; its instances are named {made['name']}-...")


@project.command(name="set")
@click.argument("name")
@click.option("--description")
@click.option("--allow-exec/--no-allow-exec", default=None, help="tenants may run commands (ctctl exec)")
@click.option("--templates", help="comma-separated templates tenants may reinstall from; '' for the host's recipes")
@limit_options
def project_set(name: str, description: str | None, allow_exec: bool | None, templates: str | None,
                **limits: Any) -> None:
    """Change a project's limits and settings ('unlimited' removes a limit)."""
    body = _body(description, allow_exec, templates, limits)
    if not body:
        raise click.UsageError("nothing to change: give a limit (--instances 5, --ram 8G ...) or a setting")
    client().request("PATCH", f"/1.0/projects/{name}", body)
    click.echo(f"Changed project {name}")


def _limit(p: dict[str, Any], key: str) -> str:
    usage = p["usage"][key]
    limit = p["limits"].get(key)
    shown = _size(usage) if key in ("ram", "disk") else str(usage)
    return f"{shown}/{limit}" if limit is not None else f"{shown}"


def _size(n: int) -> str:
    for unit, scale in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return str(n)


@project.command(name="list")
@FORMAT
def project_list(fmt: str) -> None:
    """Projects with their usage/limit of each figure."""
    rows = client().get("/1.0/projects")["projects"]
    emit(fmt, rows, lambda ps: table(
        ["NAME", *(k.upper() for k in LIMIT_NAMES), "EXEC", "DESCRIPTION"],
        [[p["name"], *(_limit(p, k) for k in LIMIT_NAMES), "yes" if p["allow_exec"] else "no",
          p["description"]] for p in ps]))


@project.command(name="show")
@click.argument("name")
@FORMAT
def project_show(name: str, fmt: str) -> None:
    """A project: usage against each limit, what its tenants may do, its instances."""
    p = client().get(f"/1.0/projects/{name}")["project"]

    def render(p: dict[str, Any]) -> str:
        lines = [f"name:        {p['name']}", f"description: {p['description'] or '-'}",
                 f"created:     {p['created_at']}", "usage (used / limit):"]
        for key in LIMIT_NAMES:
            limit = p["limits"].get(key)
            used = _limit(p, key).split("/")[0]
            lines.append(f"  {key + ':':<11} {used} / {limit if limit is not None else 'unlimited'}")
        lines.append(f"tenant exec: {'allowed' if p['allow_exec'] else 'not allowed'}")
        templates = ", ".join(p["templates"]) if p["templates"] is not None else "the host's recipes"
        lines.append(f"reinstall:   {templates}")
        lines.append(f"instances:   {', '.join(p['instances']) or '-'}")
        return "\n".join(lines)

    emit(fmt, p, render)


@project.command(name="delete")
@click.argument("name")
def project_delete(name: str) -> None:
    """Delete a project without instances; its tokens and certificates are revoked."""
    done = client().request("DELETE", f"/1.0/projects/{name}")
    click.echo(f"Deleted project {name}" + (f"; revoked {done['revoked']} token(s)/certificate(s)"
                                            if done.get("revoked") else ""))


COMMANDS = (project,)
