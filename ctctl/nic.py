"""ctctl nic add|remove NAME: NICs after create; and the NIC spec `create --nic` takes too.

    ctctl create web --template busybox --nic network=lan0 --nic network=san0,mtu=9000
    ctctl nic add web network=lan1,ip=10.21.0.5,vlan=10
    ctctl nic remove web eth1

A spec is comma-separated: network=NET, ip=ADDR (repeatable), mtu=N, vlan=ID, rate=RATE, and
the flags routed and no-filter.
"""

from __future__ import annotations

from typing import Any

import click

from ctctl.output import emit
from ctctl.refs import instance_ref
from ctctl.shared import FORMAT, client, complete_instance

SPEC_HELP = "network=NET,ip=ADDR,mtu=N,vlan=ID,rate=RATE,routed,no-filter (all optional; ip repeatable)"


def parse_spec(spec: str) -> dict[str, Any]:
    """One NIC of a create or add request from its spec (the server checks the values)."""
    nic: dict[str, Any] = {"addresses": []}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq and key in ("routed", "no-filter"):
            nic["mode" if key == "routed" else "filter"] = "routed" if key == "routed" else False
        elif eq and key in ("network", "net"):
            nic["network"] = value
        elif eq and key in ("ip", "ipadd"):
            nic["addresses"].append(value)
        elif eq and key in ("mtu", "vlan"):
            if not value.isdigit():
                raise click.BadParameter(f"{key} must be a number, not {value!r}", param_hint="NIC spec")
            nic[key] = int(value)
        elif eq and key == "rate":
            nic["rate"] = value
        else:
            raise click.BadParameter(f"unknown part {part!r}; use {SPEC_HELP}", param_hint="NIC spec")
    if nic.get("mode") == "routed" and "network" not in nic:
        return nic
    if "network" not in nic and nic["addresses"] and "mode" not in nic:
        nic["mode"] = "routed"  # as --ipadd without --net: addresses with no network are routed
    return nic


@click.group()
def nic() -> None:
    """Add or remove an instance's NICs (a running container's at once)."""


@nic.command(name="add")
@click.argument("name", shell_complete=complete_instance, callback=instance_ref)
@click.argument("spec", default="", metavar="[SPEC]")
@FORMAT
def add(name: str, spec: str, fmt: str) -> None:
    """Add a NIC: SPEC is network=NET,ip=ADDR,mtu=N,vlan=ID,rate=RATE,routed,no-filter (default:
    a bridged NIC on ctd's default network with the next free address)."""
    result = client().run("POST", f"/1.0/instances/{name}/nics", parse_spec(spec))["nic"]
    emit(fmt, result, lambda r: f"Added {r['name']} to {name}"
         f"{' on ' + r['network'] if r['network'] else ''}: {', '.join(r['addresses']) or 'no address'}")


@nic.command(name="remove")
@click.argument("name", shell_complete=complete_instance, callback=instance_ref)
@click.argument("nic_name", metavar="NIC")
def remove(name: str, nic_name: str) -> None:
    """Remove NIC (eth1 …); its addresses go back to the network's pool."""
    client().run("DELETE", f"/1.0/instances/{name}/nics/{nic_name}")
    click.echo(f"Removed {nic_name} from {name}")


COMMANDS = (nic,)
