"""`ctctl list` without click: the table, the paging, and the fast path.

`ctctl list` is what panels and scripts call in a loop, so its whole process is kept short: when
the command line is plain (`list`, optionally `--format json|table`, on the local socket, no
remote configured) main.py answers it from here before click and the other commands load.
Anything else (other options, --socket, --remote, a remotes file) goes the ordinary way, through
ctctl/instance.py's `list` command, which renders with the same functions: the two outputs are
the same bytes (tests/unit/test_ctctl_imports.py)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from ctctl.client import ApiError, Client, default_socket

PAGE = 500   # instances per request (the server's answer stays small however many there are)
HEADERS = ["ID", "NAME", "TYPE", "STATE", "PID", "IPV4", "DISK", "TEMPLATE", "LIMITS"]


def fetch(client: Client, filters: dict[str, Any], limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
    """One page (limit), else every instance, PAGE at a time ("next" is the next page's offset)."""
    out: list[dict[str, Any]] = []
    at: int | None = offset
    while at is not None:
        want = PAGE if limit is None else min(PAGE, limit - len(out))
        reply = client.get("/1.0/instances", **filters, limit=want, offset=at)
        if reply.get("cluster_error") and at == offset:   # a cluster node without etcd lists its own only
            print(f"ctctl: other nodes' instances are not shown: {reply['cluster_error']}", file=sys.stderr)
        out += reply["instances"]
        at = reply.get("next")
        if limit is not None and len(out) >= limit:
            break
    return out


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[("-" if v is None or v == "" else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)).rstrip() for r in cells]
    return "\n".join(lines)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return str(n)


def state_text(instance: dict[str, Any]) -> str:
    """list's STATE: the power state, '(disabled)' added."""
    return f"{instance['state']} (disabled)" if instance.get("disabled") else str(instance["state"])


def tags_text(instance: dict[str, Any]) -> str | None:
    return ",".join(f"{k}={v}" for k, v in sorted((instance.get("tags") or {}).items())) or None


def limits_text(limits: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in limits.items()) or "-"


def disk_text(disk: dict[str, Any] | None) -> str | None:
    if not disk:
        return None
    used = human_bytes(disk["used"])
    return f"{used}/{human_bytes(disk['limit'])}" if disk.get("limit") else used


def render(fmt: str, instances: list[dict[str, Any]]) -> str:
    """What `ctctl list` prints (without the final newline)."""
    if fmt == "json":
        return json.dumps(instances, indent=2, sort_keys=True)
    tagged = any(i.get("tags") for i in instances)   # a TAGS column only when some instance has tags
    nodes = any(i.get("node") for i in instances)    # a NODE column in a cluster (every node's instances)
    return table(HEADERS[:2] + (["NODE"] if nodes else []) + HEADERS[2:] + (["TAGS"] if tagged else []),
                 [[i["id"], i["name"]] + ([node_text(i)] if nodes else []) + [i["type"], state_text(i), i["pid"],
                   ",".join(a for n in i.get("nics", []) for a in n["addresses"] if ":" not in a) or None,
                   disk_text(i.get("disk")), i["template"], limits_text(i["limits"])]
                  + ([tags_text(i)] if tagged else []) for i in instances])


def node_text(instance: dict[str, Any]) -> str | None:
    """A cluster's NODE column; an offline node's rows are its last word, and say so."""
    node = instance.get("node")
    return f"{node} (offline)" if node and instance.get("node_online") is False else node


def plain_format(args: list[str]) -> str | None:
    """The format of a plain `list` command line, None for any other."""
    if args == ["list"]:
        return "table"
    if len(args) == 3 and args[:2] == ["list", "--format"] and args[2] in ("table", "json"):
        return args[2]
    if len(args) == 2 and args[0] == "list" and args[1] in ("--format=table", "--format=json"):
        return args[1].split("=", 1)[1]
    return None


def fast_path(args: list[str]) -> int | None:
    """The exit status of a plain `ctctl list` answered here; None: let click handle the line."""
    fmt = plain_format(args)
    if fmt is None or ("CTD_SOCKET" not in os.environ and _remotes_configured()):
        return None   # a remotes file may name a default remote: connect.py decides then
    try:
        instances = fetch(Client(default_socket()), {})
    except ApiError as exc:
        print(f"ctctl: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ctctl: interrupted", file=sys.stderr)
        return 130
    try:
        print(render(fmt, instances))
        sys.stdout.flush()
    except BrokenPipeError:   # `ctctl list | head`: like click.echo, no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _remotes_configured() -> bool:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.exists(os.path.join(base, "ctctl", "remotes.toml"))
