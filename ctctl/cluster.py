"""ctctl cluster: membership of the etcd-backed cluster (docs/cluster.md; admin only)."""

from __future__ import annotations

from typing import Any

import click

from ctctl.output import emit, human_bytes, table
from ctctl.shared import FORMAT, client, run_with_progress


@click.group()
def cluster() -> None:
    """Nodes of the cluster: init, add, join, list, remove, evacuate, restore (needs etcd_endpoints in
    ctd.toml)."""


@cluster.command(name="init")
def cluster_init() -> None:
    """Make the cluster in etcd, with this node as its first member."""
    shown = client().request("POST", "/1.0/cluster/init", {})["cluster"]
    click.echo(f"Cluster made; {shown['node']} is its first node (etcd {', '.join(shown['etcd_endpoints'])})")


@cluster.command(name="add")
@click.argument("node")
@click.option("--expires", default="1h", show_default=True, help="how long the token is valid: 30m, 1h, 2d")
def cluster_add(node: str, expires: str) -> None:
    """Print a one-time join token for NODE (run 'ctctl cluster join TOKEN' on it)."""
    made = client().request("POST", "/1.0/cluster/nodes", {"name": node, "expires": expires})
    click.echo(made["token"])
    click.echo(f"On {node}: ctctl cluster join TOKEN (valid once, until {made['expires_at']})", err=True)


@cluster.command(name="join")
@click.argument("token")
def cluster_join(token: str) -> None:
    """Join the cluster with a token from 'ctctl cluster add NODE'."""
    shown = client().request("POST", "/1.0/cluster/join", {"token": token})["cluster"]
    click.echo(f"{shown['node']} joined the cluster")


def _free(n: dict[str, Any]) -> str:
    if n.get("cpu_free") is None:
        return "-"
    return f"{n['cpu_free']}/{n['cpus']} CPU, {human_bytes(n['ram_free'])} RAM, {human_bytes(n['disk_free'])} disk"


@cluster.command(name="list")
@FORMAT
def cluster_list(fmt: str) -> None:
    """The nodes: address, online/offline, load, free CPU/RAM/disk, instances, ctd version."""
    nodes = client().get("/1.0/cluster/nodes")["nodes"]
    emit(fmt, nodes, lambda rows: table(
        ["NAME", "ADDRESS", "STATE", "LOAD", "FREE", "INSTANCES", "VERSION"],
        [[n["name"] + (" *" if n.get("self") else ""), n["address"],
          n["state"] + (", evacuating" if n.get("evacuating") else ""), n["load1"], _free(n),
          n["instances"], n["version"]] for n in rows]))


@cluster.command(name="remove")
@click.argument("node")
@click.option("--force", is_flag=True, help="remove it even while it is online (its instances' names are freed)")
def cluster_remove(node: str, force: bool) -> None:
    """Remove NODE from the cluster (normally an offline one)."""
    done = client().request("DELETE", f"/1.0/cluster/nodes/{node}", query={"force": "true"} if force else None)
    released = done.get("released_names") or []
    click.echo(f"Removed {node}" + (f"; names released: {', '.join(released)}" if released else ""))


@cluster.command(name="evacuate")
@click.argument("node")
def cluster_evacuate(node: str) -> None:
    """Move every instance off NODE (for maintenance): it is marked evacuating (no new instance goes
    there) and each instance migrates to the node with room, running ones running, stopped ones
    stopped. One that cannot move stays where it was; the exit status is then 1."""
    result = run_with_progress("POST", f"/1.0/cluster/nodes/{node}/evacuate", {})
    for row in result.get("moved") or []:
        took = f", downtime {row['downtime']:.3f} s" if row.get("downtime") is not None else ""
        click.echo(f"{row['instance']}: moved to {row['node']} ({'running' if row.get('was_running') else 'stopped'}"
                   f"{took})")
    failed = result.get("failed") or []
    for row in failed:
        click.echo(f"{row['instance']}: stays on {node}: {row['error']}")
    if failed:
        raise click.ClickException(f"{len(failed)} instance(s) stay on {node}: "
                                   f"{', '.join(row['instance'] for row in failed)}")
    click.echo(f"{node} is evacuated ({len(result.get('moved') or [])} instance(s) moved); "
               f"'ctctl cluster restore {node}' ends the evacuation")


@cluster.command(name="restore")
@click.argument("node")
def cluster_restore(node: str) -> None:
    """End NODE's evacuation: new instances may go there again (none moves back)."""
    client().request("POST", f"/1.0/cluster/nodes/{node}/restore", {})
    click.echo(f"{node} takes instances again; those evacuated stay where they went "
               f"('ctctl migrate NAME --to {node}' moves one back)")


COMMANDS = (cluster,)
