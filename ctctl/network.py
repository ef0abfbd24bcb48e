"""ctctl network: create, list, show and delete host networks (bridges with an address pool),
and the port forwards of NAT networks (network forward add/list/delete)."""

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
@click.option("--dhcp/--no-dhcp", default=None, help="dnsmasq on the bridge: DHCP with ctd's addresses, DNS for "
              "instance names (default: on where dnsmasq is installed)")
def network_create(name: str, subnet: str | None, ipv6: str | None, nat: bool, mtu: int | None,
                   dhcp: bool | None) -> None:
    """Create a bridge NAME; the host takes the subnet's first address as gateway."""
    body: dict[str, Any] = {"name": name, "nat": nat}
    if dhcp is not None:
        body["dhcp"] = dhcp
    if mtu is not None:
        body["mtu"] = mtu
    if subnet:
        body["subnet"] = subnet
    if ipv6:
        body["ipv6"] = ipv6
    net = client().request("POST", "/1.0/networks", body)["network"]
    click.echo(f"Created network {net['name']} ({net['subnet']}, gateway {net['gateway']})")


def _net_rows(nets: list[dict[str, Any]]) -> str:
    return table(["NAME", "SUBNET", "GATEWAY", "IPV6", "MTU", "NAT", "DHCP", "USED BY"],
                 [[n["name"], n["subnet"], n["gateway"], n["ipv6"], n.get("mtu"), "yes" if n["nat"] else "no",
                   "yes" if n.get("dhcp") else "no", ",".join(n["used_by"]) or None] for n in nets])


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


@network.group(name="forward")
def forward() -> None:
    """Port forwards of a NAT network: a host port DNATed to an instance's port."""


def _split(text: str, what: str, example: str) -> tuple[str, str]:
    head, sep, tail = text.rpartition(":")
    if not sep or not tail:
        raise click.UsageError(f"{what} must look like {example}, not {text!r}")
    return head, tail


@forward.command(name="add")
@click.argument("net")
@click.argument("host", metavar="[HOSTADDR:]HOSTPORT")
@click.argument("target", metavar="NAME:PORT")
@click.option("--proto", type=click.Choice(("tcp", "udp")), default="tcp", show_default=True)
def forward_add(net: str, host: str, target: str, proto: str) -> None:
    """Forward HOSTPORT (on HOSTADDR, or every address of the host) to PORT of instance NAME,
    which has an address on the NAT network NET."""
    address, port = _split(host, "HOSTPORT", "8080 or 192.0.2.1:8080") if ":" in host else ("", host)
    name, inner = _split(target, "NAME:PORT", "web:80")
    body: dict[str, Any] = {"host_port": port, "instance": name, "port": inner, "proto": proto}
    if address:
        body["host_address"] = address
    fwd = client().request("POST", f"/1.0/networks/{net}/forwards", body)["forward"]
    click.echo(f"Added forward {fwd['id']}: {fwd['proto']} {fwd['host_address'] or '*'}:{fwd['host_port']} -> "
               f"{fwd['instance']} ({fwd['target']}:{fwd['port']})")


@forward.command(name="list")
@click.argument("net")
@FORMAT
def forward_list(net: str, fmt: str) -> None:
    """List a network's forwards."""
    emit(fmt, client().get(f"/1.0/networks/{net}/forwards")["forwards"],
         lambda rows: table(["ID", "PROTO", "HOST", "INSTANCE", "TARGET"],
                            [[f["id"], f["proto"], f"{f['host_address'] or '*'}:{f['host_port']}", f["instance"],
                              f"{f['target']}:{f['port']}"] for f in rows]))


@forward.command(name="delete")
@click.argument("net")
@click.argument("forward_id", type=int)
def forward_delete(net: str, forward_id: int) -> None:
    """Delete forward FORWARD_ID ('forward list' shows the ids)."""
    client().request("DELETE", f"/1.0/networks/{net}/forwards/{forward_id}")
    click.echo(f"Deleted forward {forward_id}")


COMMANDS = (network,)
