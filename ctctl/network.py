"""ctctl network: create, list, show and delete host networks (bridges with an address pool)."""

from __future__ import annotations

from typing import Any

import click

from ctctl.output import emit, table
from ctctl.shared import FORMAT, client


@click.group()
def network() -> None:
    """Host networks: bridges with an address pool."""


@network.command(name="create")
@click.argument("name")
@click.option("--subnet", help="IPv4 subnet, e.g. 10.20.0.0/24 (default: a free private /24)")
@click.option("--ipv6", help="IPv6 subnet, e.g. fd42:20::/64")
@click.option("--nat", is_flag=True, help="masquerade the subnet toward the outside (switches on IPv4 forwarding; "
              "it stays on after delete)")
@click.option("--mtu", type=int, help="MTU of the bridge and its NICs (default 1500; up to 65535 on a "
              "bridge with no physical port: faster host<->container traffic)")
def network_create(name: str, subnet: str | None, ipv6: str | None, nat: bool, mtu: int | None) -> None:
    """Create a bridge NAME; the host takes the subnet's first address as gateway."""
    body: dict[str, Any] = {"name": name, "nat": nat}
    if mtu is not None:
        body["mtu"] = mtu
    if subnet:
        body["subnet"] = subnet
    if ipv6:
        body["ipv6"] = ipv6
    net = client().request("POST", "/1.0/networks", body)["network"]
    click.echo(f"Created network {net['name']} ({net['subnet']}, gateway {net['gateway']})")


def _net_rows(nets: list[dict[str, Any]]) -> str:
    return table(["NAME", "SUBNET", "GATEWAY", "IPV6", "MTU", "NAT", "USED BY"],
                 [[n["name"], n["subnet"], n["gateway"], n["ipv6"], n.get("mtu"), "yes" if n["nat"] else "no",
                   ",".join(n["used_by"]) or None] for n in nets])


@network.command(name="list")
@FORMAT
def network_list(fmt: str) -> None:
    """List networks."""
    emit(fmt, client().get("/1.0/networks")["networks"], _net_rows)


@network.command(name="show")
@click.argument("name")
@FORMAT
def network_show(name: str, fmt: str) -> None:
    """Show one network."""
    emit(fmt, client().get(f"/1.0/networks/{name}")["network"], lambda n: _net_rows([n]))


@network.command(name="delete")
@click.argument("name")
def network_delete(name: str) -> None:
    """Delete a network (refused while instances use it)."""
    client().request("DELETE", f"/1.0/networks/{name}")
    click.echo(f"Deleted network {name}")


COMMANDS = (network,)
