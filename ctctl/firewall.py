"""ctctl firewall NAME add|list|delete|policy|enable|disable: the firewall of one instance.

    ctctl firewall web add in tcp 22 --from 203.0.113.0/24 accept --comment ssh
    ctctl firewall web policy in drop
    ctctl firewall web enable
"""

from __future__ import annotations

from typing import Any

import click

from ctctl.output import emit, human_bytes, table
from ctctl.refs import instance_ref
from ctctl.shared import FORMAT, client, complete_instance

DIRECTIONS = ("in", "out")
PROTOS = ("tcp", "udp", "icmp", "icmpv6", "any")
ACTIONS = ("accept", "drop", "reject")


@click.group()
@click.argument("instance", shell_complete=complete_instance, callback=instance_ref)
@click.pass_context
def firewall(ctx: click.Context, instance: str) -> None:
    """An instance's firewall on the host side of its NICs (after anti-spoofing). Rules are
    tried in the order added, the first match wins, then the direction's policy."""
    ctx.meta["ctctl.firewall"] = instance


def _path(suffix: str = "") -> str:
    return f"/1.0/instances/{click.get_current_context().meta['ctctl.firewall']}/firewall{suffix}"


@firewall.command(name="add")
@click.argument("direction", type=click.Choice(DIRECTIONS))
@click.argument("proto", type=click.Choice(PROTOS))
@click.argument("rest", nargs=-1, required=True, metavar="[PORT|PORT-PORT] accept|drop|reject")
@click.option("--from", "src", metavar="CIDR", help="source address or CIDR (IPv4 or IPv6)")
@click.option("--to", "dst", metavar="CIDR", help="destination address or CIDR")
@click.option("--comment", default="", help="a note shown by list (printable, at most 64 characters)")
def firewall_add(direction: str, proto: str, rest: tuple[str, ...], src: str | None, dst: str | None,
                 comment: str) -> None:
    """Add a rule: in (to the instance) or out (from it), a protocol, an optional destination
    port or range (tcp, udp), and what to do."""
    if len(rest) > 2 or rest[-1] not in ACTIONS:
        raise click.UsageError("give at most a port and then accept, drop or reject, e.g. 'add in tcp 22 accept'")
    body: dict[str, Any] = {"direction": direction, "proto": proto, "action": rest[-1]}
    if len(rest) == 2:
        body["port"] = rest[0]
    for key, value in (("from", src), ("to", dst)):
        if value:
            body[key] = value
    if comment:
        body["comment"] = comment
    rule = client().request("POST", _path("/rules"), body)["rule"]
    click.echo(f"Added rule {rule['id']}")


def _render(fw: dict[str, Any]) -> str:
    head = (f"firewall {'enabled' if fw['enabled'] else 'disabled'}"
            f"{'' if fw['active'] or not fw['enabled'] else ' (applied when the instance runs)'}; "
            f"policy in {fw['policy_in']}, out {fw['policy_out']}")
    rows = [[r["id"], r["direction"], r["proto"], r["port"], r["from"], r["to"], r["action"], r["packets"],
             human_bytes(r["bytes"]), r["comment"] or None] for r in fw["rules"]]
    for direction in ("in", "out"):
        counted = fw["policy_counters"][direction]
        rows.append(["-", direction, "policy", None, None, None, fw[f"policy_{direction}"], counted["packets"],
                     human_bytes(counted["bytes"]), None])
    return head + "\n" + table(["ID", "DIR", "PROTO", "PORT", "FROM", "TO", "ACTION", "PACKETS", "BYTES", "COMMENT"],
                               rows)


@firewall.command(name="list")
@FORMAT
def firewall_list(fmt: str) -> None:
    """Settings and rules with their packet and byte counters (since the instance last started)."""
    emit(fmt, client().get(_path())["firewall"], _render)


@firewall.command(name="delete")
@click.argument("rule_id", type=int)
def firewall_delete(rule_id: int) -> None:
    """Delete rule RULE_ID ('list' shows the ids)."""
    client().request("DELETE", _path(f"/rules/{rule_id}"))
    click.echo(f"Deleted rule {rule_id}")


@firewall.command(name="policy")
@click.argument("direction", type=click.Choice(DIRECTIONS))
@click.argument("policy", type=click.Choice(("accept", "drop")))
def firewall_policy(direction: str, policy: str) -> None:
    """What happens to traffic no rule matched (default: accept both ways)."""
    client().request("PATCH", _path(), {f"policy_{direction}": policy})
    click.echo(f"Policy {direction} is {policy}")


@firewall.command(name="enable")
def firewall_enable() -> None:
    """Apply the rules and policies (live on a running instance)."""
    client().request("PATCH", _path(), {"enabled": True})
    click.echo("Firewall enabled")


@firewall.command(name="disable")
def firewall_disable() -> None:
    """Stop filtering (the rules are kept); anti-spoofing stays on."""
    client().request("PATCH", _path(), {"enabled": False})
    click.echo("Firewall disabled")


COMMANDS = (firewall,)
