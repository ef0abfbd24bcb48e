"""REMOTE:INSTANCE references: 'ctctl start lab:web1' is 'ctctl --remote lab start web1'.

Instance names never hold ':', so a prefix is unambiguous; 'local:web1' is the socket. One
command talks to one remote: every reference in it must name the same one (or none after the
first that does), and --remote, if given, must agree.
"""

from __future__ import annotations

import click

REF_REMOTE = "ctctl.ref_remote"  # ctx.meta keys (shared by every context of one invocation)
PLAIN_SEEN = "ctctl.plain_ref_seen"


def split_ref(text: str) -> tuple[str | None, str]:
    """("lab", "web1") for "lab:web1"; (None, "web1") for "web1"."""
    if ":" not in text:
        return None, text
    remote, _, name = text.partition(":")
    if not remote or not name:
        raise click.BadParameter(f"{text!r}: write REMOTE:INSTANCE (e.g. lab:web1) or just INSTANCE")
    return remote, name


def instance_ref(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback on instance arguments: strips a REMOTE: prefix and points this command's
    client at that remote (the client is looked up when the command runs, after its arguments)."""
    if value is None:
        return None
    remote, name = split_ref(value)
    if remote is None:
        ctx.meta[PLAIN_SEEN] = True
        return value
    root = ctx.find_root()
    explicit = root.params.get("remote_name")
    earlier = ctx.meta.get(REF_REMOTE)
    for other in (explicit, earlier):
        if other is not None and other != remote:
            raise click.UsageError(f"{value!r} names remote {remote}, but this command already talks to {other}: "
                                   "one command works on one remote")
    if earlier is None and ctx.meta.get(PLAIN_SEEN) and explicit is None:
        raise click.UsageError(f"{value!r} names remote {remote} after an instance without one: put the "
                               "REMOTE: prefix on the first instance too")
    if earlier is None:
        from ctctl.connect import make_client
        chosen = make_client(root, root.params["socket_path"], remote)
        context: click.Context | None = ctx
        while context is not None:  # every level: the command finds its client on its own context
            context.obj = chosen
            context = context.parent
        ctx.meta[REF_REMOTE] = remote
    return name
