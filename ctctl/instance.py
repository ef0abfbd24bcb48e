"""ctctl's instance commands: create, start, suspend, resume, stop, restart, reinstall, destroy, set, list
and status. Each is one request to ctd (an operation waited for, or a plain GET/PATCH); what it
prints is built from ctd's reply only."""

from __future__ import annotations

from typing import Any

import click

from ctctl.admin import add_admin, admin_options, flags_text, set_only_options, state_text, status_rows, tags_text
from ctctl.output import emit, human_bytes, table
from ctctl.refs import instance_ref
from ctctl.shared import (
    FORMAT,
    INSTANCE,
    add_boot,
    add_guest,
    boot_options,
    client,
    given_limits,
    guest_options,
    limit_options,
    limits_text,
)


@click.command()
@click.argument("name", callback=instance_ref)
@click.option("--template", "-t", help="template to create from (see 'ctctl template list'); a VM made "
              "from one boots that system")
@click.option("--type", "kind", type=click.Choice(["container", "vm"]), default="container", show_default=True)
@click.option("--disk", help="VM: disk size, e.g. 20G (default 10G)")
@click.option("--iso", type=click.Path(exists=True, dir_okay=False, resolve_path=True), help="VM: installer ISO")
@click.option("--profile", type=click.Choice(["linux", "windows"]), help="VM: machine profile (windows: q35, "
              "UEFI secure boot, TPM 2.0, Hyper-V enlightenments)")
@click.option("--drivers-iso", type=click.Path(exists=True, dir_okay=False, resolve_path=True),
              help="VM: a second CD-ROM, e.g. virtio-win.iso")
@click.option("--compat", is_flag=True, help="VM: e1000 NIC and AHCI disk (guests without virtio drivers)")
@click.option("--id", "instance_id", type=int, help="numeric id (default: the lowest free from 100)")
@click.option("--hostname", help="hostname inside (default: the name)")
@limit_options
@click.option("--net", "network", help="a NIC on this network (bridged); without --net a NIC on ctd's default "
              "network (default_network, 'ctbr0', made on first use); 'none': no NIC")
@click.option("--routed", is_flag=True, help="the NIC is routed (OpenVZ venet): no layer 2, host routes its addresses")
@click.option("--ipadd", multiple=True, help="address for the NIC (default: the next free one of --net)")
@click.option("--no-filter", is_flag=True, help="no MAC/IP anti-spoofing on the NIC")
@click.option("--rate", help="NIC bandwidth both ways, e.g. 10mbit")
@click.option("--nameserver", multiple=True, help="DNS server for /etc/resolv.conf")
@guest_options
@boot_options
@click.option("--privileged", is_flag=True, help="no user namespace: root inside is root outside (avoid)")
@click.option("--allow-io-uring", is_flag=True, help="let the container use io_uring (denied by default: "
              "a large kernel attack surface)")
@admin_options
def create(name: str, template: str | None, kind: str, disk: str | None, iso: str | None, profile: str | None,
           drivers_iso: str | None, compat: bool, instance_id: int | None, hostname: str | None, privileged: bool,
           network: str | None, routed: bool, ipadd: tuple[str, ...], no_filter: bool, rate: str | None,
           nameserver: tuple[str, ...], userpasswd: str | None, ssh_key: tuple[str, ...], timezone: str | None,
           allow_io_uring: bool, onboot: str | None, boot_order: int | None, boot_delay: int | None,
           **limits: Any) -> None:
    """Create a container (or, with --type vm, a virtual machine)."""
    body: dict[str, Any] = {"name": name, "type": kind}
    add_admin(body, limits)
    body["limits"] = given_limits(limits)
    add_boot(body, onboot, boot_order, boot_delay)
    if template:
        body["template"] = template
    vm = _vm_request(disk, iso, profile, drivers_iso, compat)
    if vm:
        body["vm"] = vm
    add_guest(body, userpasswd, ssh_key, timezone)
    nics = _nics_request(network, routed, ipadd, no_filter, rate)
    if nics is not None:
        body["nics"] = nics
    if nameserver:
        body["nameservers"] = list(nameserver)
    if instance_id is not None:
        body["id"] = instance_id
    if hostname:
        body["hostname"] = hostname
    if privileged:
        body["privileged"] = True
    if allow_io_uring:
        body["io_uring"] = True
    result = client().run("POST", "/1.0/instances", body)
    what = f"template {result['template']}" if result["template"] else "a blank disk"
    click.echo(f"Created {result['type'] if result['type'] == 'vm' else ''}{' ' if result['type'] == 'vm' else ''}"
               f"{result['name']} (id {result['id']}, {what})")


def _vm_request(disk: str | None, iso: str | None, profile: str | None, drivers_iso: str | None,
                compat: bool) -> dict[str, Any]:
    """The create request's "vm" part: only the VM options that were given."""
    vm_options = (("disk", disk), ("iso", iso), ("profile", profile), ("drivers_iso", drivers_iso))
    vm: dict[str, Any] = {k: v for k, v in vm_options if v is not None}
    if compat:
        vm["compat"] = True
    return vm


def _nics_request(network: str | None, routed: bool, ipadd: tuple[str, ...], no_filter: bool,
                  rate: str | None) -> list[dict[str, Any]] | None:
    """The create request's "nics": none for --net none, one NIC when a NIC option is given, else
    None (ctd then gives a NIC on its default network)."""
    if network == "none":
        if ipadd or routed or no_filter or rate:
            raise click.UsageError("--net none gives no NIC: leave out --ipadd, --routed, --no-filter and --rate")
        return []
    if not (network or ipadd or routed or no_filter or rate):
        return None
    nic: dict[str, Any] = {"mode": "routed" if routed or (ipadd and not network) else "bridged",
                           "addresses": list(ipadd), "filter": not no_filter}
    if network:
        nic["network"] = network
    if rate:
        nic["rate"] = rate
    return [nic]


def _state(ref: str, action: str, timeout: float | None = None, force: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"action": action}
    if timeout is not None:
        body["timeout"] = timeout
    if force:
        body["force"] = True
    return client().run("PUT", f"/1.0/instances/{ref}/state", body)


@click.command()
@INSTANCE
@click.option("--paused", is_flag=True, help="VM: start with its CPUs stopped ('ctctl resume' runs it)")
def start(instance: str, paused: bool) -> None:
    """Start an instance."""
    result = client().run("PUT", f"/1.0/instances/{instance}/state",
                          {"action": "start", **({"paused": True} if paused else {})})
    click.echo(f"Started {result['name']} (init pid {result['pid']} on the host)")


@click.command()
@INSTANCE
def suspend(instance: str) -> None:
    """Freeze a running instance (container: cgroup freezer, VM: vCPUs stopped); memory stays."""
    _state(instance, "suspend")
    click.echo(f"Suspended {instance}")


@click.command()
@INSTANCE
def resume(instance: str) -> None:
    """Let a suspended instance (or a VM started with --paused) run on."""
    _state(instance, "resume")
    click.echo(f"Resumed {instance}")


@click.command()
@INSTANCE
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="seconds to wait for a clean shutdown before killing")
@click.option("--kill", is_flag=True, help="kill at once, no clean shutdown")
def stop(instance: str, timeout: float, kill: bool) -> None:
    """Stop an instance: a container gets its template's shutdown signal, a VM the ACPI power button;
    killed after --timeout."""
    result = _state(instance, "stop", timeout, kill)
    click.echo(f"Stopped {result['name']}{_stop_detail(result)}")


def _stop_detail(result: dict[str, Any]) -> str:
    """What a plain 'Stopped' would hide: the guest did not shut down by itself."""
    stop = result.get("stop") or {}
    how = stop.get("how")
    if how == "forced" and not stop.get("timeout"):
        return " (killed: --timeout 0 leaves it no time to shut down)"
    if how == "forced":
        ignored = "the guest ignored ACPI" if result.get("type") == "vm" else "init ignored its stop signal"
        return f" (forced after {stop.get('timeout', 0):g} s: {ignored})"
    if how == "killed":
        return " (killed at once)"
    if how == "not running":
        return " (it was not running)"
    return ""


@click.command()
@INSTANCE
@click.option("--timeout", type=float, default=30.0, show_default=True)
@click.option("--kill", is_flag=True)
def restart(instance: str, timeout: float, kill: bool) -> None:
    """Stop and start an instance."""
    result = _state(instance, "restart", timeout, kill)
    click.echo(f"Restarted {result['name']} (init pid {result['pid']})")


@click.command(name="shutdown-all")
@click.option("--timeout", type=click.FloatRange(0, 3600), help="seconds each instance has for a clean shutdown "
              "before it is killed (default: the server's stop_timeout)")
def shutdown_all(timeout: float | None) -> None:
    """Stop every running instance, highest boot order first (equal orders in parallel); containers get
    their stop signal, VMs the ACPI power button. For host shutdown (ctd.service runs it then)."""
    result = client().run("POST", "/1.0/shutdown", {} if timeout is None else {"timeout": timeout})
    for stopped in result["stopped"]:
        click.echo(f"Stopped {stopped['name']} ({stopped['how']})")
    for failed in result["failed"]:
        click.echo(f"Failed to stop {failed['name']}: {failed['error']}", err=True)
    if not result["stopped"] and not result["failed"]:
        click.echo("Nothing was running")
    if result["failed"]:
        raise SystemExit(1)


@click.command()
@INSTANCE
@click.option("--template", "-t", help="a different template (default: the one it was made from)")
@click.option("--restart", is_flag=True, help="stop a running container, reinstall, start it again")
def reinstall(instance: str, template: str | None, restart: bool) -> None:
    """A fresh root from the template, keeping id, limits, addresses, ssh keys and passwords (containers; not VMs)."""
    body: dict[str, Any] = {"template": template} if template else {}
    if restart:
        body["restart"] = True
    result = client().run("POST", f"/1.0/instances/{instance}/reinstall", body)
    click.echo(f"Reinstalled {result['name']} from {result['template']}")
    for note in result.get("notes") or []:
        click.echo(f"Note: {note}")


@click.command()
@INSTANCE
@click.option("--force", "-f", is_flag=True, help="stop it first if it is running")
def destroy(instance: str, force: bool) -> None:
    """Destroy an instance (container or VM) and its files."""
    client().run("DELETE", f"/1.0/instances/{instance}", query={"force": "true"} if force else None)
    click.echo(f"Destroyed {instance}")


@click.command(name="set")
@INSTANCE
@limit_options
@click.option("--ipadd", multiple=True, help="add an address to the first NIC")
@click.option("--ipdel", multiple=True, help="remove an address from the first NIC")
@click.option("--rate", help="NIC bandwidth both ways, e.g. 10mbit, or 'unlimited'")
@click.option("--nameserver", multiple=True, help="DNS servers for /etc/resolv.conf")
@click.option("--hostname", help="the guest's hostname (a running instance gets it at next start)")
@guest_options
@admin_options
@set_only_options
@boot_options
def set_(instance: str, ipadd: tuple[str, ...], ipdel: tuple[str, ...], rate: str | None,
         nameserver: tuple[str, ...], hostname: str | None, userpasswd: str | None, ssh_key: tuple[str, ...],
         timezone: str | None, onboot: str | None, boot_order: int | None, boot_delay: int | None,
         **limits: Any) -> None:
    """Change limits and addresses; a running container gets them at once, a running VM its
    --cpus/--ram where QEMU can ('unlimited' removes a limit)."""
    body: dict[str, Any] = {}
    add_admin(body, limits)
    add_guest(body, userpasswd, ssh_key, timezone)
    add_boot(body, onboot, boot_order, boot_delay)
    if hostname:
        body["hostname"] = hostname
    if given_limits(limits):
        body["limits"] = given_limits(limits)
    for key, value in (("ipadd", list(ipadd)), ("ipdel", list(ipdel)), ("nameservers", list(nameserver))):
        if value:
            body[key] = value
    if rate:
        body["rate"] = rate
    if not body:
        raise click.UsageError("give something to change, e.g. --ram 1G, --ipadd 10.0.0.5, --tag KEY=VALUE "
                               "or --onboot yes")
    result = client().request("PATCH", f"/1.0/instances/{instance}", body)["instance"]
    addresses = [a for n in result.get("nics", []) for a in n["addresses"]]
    click.echo(f"Set {result['name']}: {limits_text(result['limits'])}"
               + (f"; addresses {', '.join(addresses)}" if addresses else "") + flags_text(result)
               + (f"; onboot {_boot_text(result)}" if {"onboot", "boot_order", "boot_delay"} & set(body) else ""))
    for note in result.get("notes") or []:   # what a running VM could not take live
        click.echo(f"Note: {note}")


@click.command(name="list")
@FORMAT
@click.option("--tag", multiple=True, help="only instances with this tag: KEY=VALUE or KEY (repeatable: all)")
@click.option("--state", multiple=True, help="only instances in this state: running, stopped, … or disabled "
              "(repeatable: any)")
def list_(fmt: str, tag: tuple[str, ...], state: tuple[str, ...]) -> None:
    """List instances."""
    instances = client().get("/1.0/instances", **({"tag": list(tag)} if tag else {}),
                             **({"state": list(state)} if state else {}))["instances"]
    tagged = any(i.get("tags") for i in instances)   # a TAGS column only when some instance has tags
    emit(fmt, instances, lambda rows: table(
        ["ID", "NAME", "TYPE", "STATE", "PID", "IPV4", "DISK", "TEMPLATE", "LIMITS"] + (["TAGS"] if tagged else []),
        [[i["id"], i["name"], i["type"], state_text(i), i["pid"],
          ",".join(a for n in i.get("nics", []) for a in n["addresses"] if ":" not in a) or None,
          _disk_text(i.get("disk")), i["template"], limits_text(i["limits"])] + ([tags_text(i)] if tagged else [])
         for i in rows]))


def _disk_text(disk: dict[str, Any] | None) -> str | None:
    if not disk:
        return None
    used = human_bytes(disk["used"])
    return f"{used}/{human_bytes(disk['limit'])}" if disk.get("limit") else used


@click.command()
@INSTANCE
@FORMAT
def status(instance: str, fmt: str) -> None:
    """Show one instance."""
    data = client().get(f"/1.0/instances/{instance}")["instance"]

    def render(i: dict[str, Any]) -> str:
        idmap = i.get("idmap")
        rows = [("id", i["id"]), ("name", i["name"]), ("type", i["type"]), ("state", i["state"]),
                ("init pid", i["pid"]), ("template", i["template"]), ("hostname", i["hostname"]),
                ("privileged", "yes" if i["privileged"] else "no"),
                ("host ids", _host_ids(i, idmap)),
                ("limits", limits_text(i["limits"])), ("disk", _disk_text(i.get("disk"))),
                ("created", i["created_at"]), ("onboot", _boot_text(i))] + status_rows(i)
        last = i.get("last_exit")
        if last:
            rows.append(("last exit", f"{last.get('at', '?')}: {last.get('text', last.get('kind', '?'))}"))
        for nic in i.get("nics", []):
            rows.append((nic["name"], f"{nic['mode']} {nic['network'] or ''} {nic['mac']} "
                                      f"{','.join(nic['addresses']) or 'no address'} (host {nic['host_name']}"
                                      f"{', filtered' if nic['filter'] else ''}"
                                      f"{', ' + str(nic['rate']) + ' bit/s' if nic['rate'] else ''})"))
            rows.append((f"{nic['name']} traffic", f"rx {human_bytes(nic['rx_bytes'])} ({nic['rx_packets']} packets), "
                                                  f"tx {human_bytes(nic['tx_bytes'])} ({nic['tx_packets']} packets)"))
        usage = i.get("usage")
        if usage:
            rows += [("cpu time", f"{usage['cpu_seconds']:.2f} s" if usage.get("cpu_seconds") is not None else None),
                     ("memory", f"{human_bytes(usage.get('memory_current'))} "
                                f"(peak {human_bytes(usage.get('memory_peak'))})"),
                     ("processes", usage.get("pids_current")),
                     ("disk io", f"read {human_bytes(usage.get('io_read_bytes'))}, "
                                 f"written {human_bytes(usage.get('io_write_bytes'))}")]
        return "\n".join(f"{k + ':':<12} {'-' if v is None else v}" for k, v in rows)

    emit(fmt, data, render)


def _boot_text(instance: dict[str, Any]) -> str:
    if "onboot" not in instance:
        return "-"
    return (f"{'yes' if instance['onboot'] else 'no'} (order {instance['boot_order']}, "
            f"delay {instance['boot_delay']} s)")


def _host_ids(instance: dict[str, Any], idmap: dict[str, Any] | None) -> str:
    if instance.get("type") == "vm":
        return "- (a VM: QEMU isolates it)"
    if not idmap or idmap.get("uid_base") is None:
        return "host's own (privileged)"
    return f"{idmap['uid_base']}-{idmap['uid_base'] + idmap.get('count', 65536) - 1}"


COMMANDS = (create, start, suspend, resume, stop, restart, reinstall, destroy, set_, list_, status, shutdown_all)
