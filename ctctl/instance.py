"""ctctl's instance commands: create, start, suspend, resume, stop, restart, reinstall, destroy, set, list
and status. Each is one request to ctd (an operation waited for, or a plain GET/PATCH); what it
prints is built from ctd's reply only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ctctl import listing
from ctctl.admin import add_admin, admin_options, flags_text, set_only_options, status_rows
from ctctl.errors import ApiError
from ctctl.nic import SPEC_HELP, parse_spec
from ctctl.output import emit, human_bytes, notes
from ctctl.refs import instance_ref
from ctctl.shared import (
    FORMAT,
    INSTANCE,
    add_backup_settings,
    add_boot,
    add_features,
    add_guest,
    add_mounts,
    add_stop_timeout,
    apply_replication,
    boot_options,
    client,
    features_option,
    given_limits,
    guest_options,
    limit_options,
    limits_text,
    mount_options,
    replication_options,
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
@click.option("--user-data", "user_data", type=click.Path(exists=True, dir_okay=False),
              help="VM: cloud-init user-data FILE, merged after ctd's settings (ctd's keys win, lists append)")
@click.option("--vendor-data", "vendor_data", type=click.Path(exists=True, dir_okay=False),
              help="VM: cloud-init vendor-data FILE, put on the seed as it is")
@click.option("--firmware", "firmware", type=click.Choice(["bios", "uefi"]),
              help="VM: firmware (default bios; the windows profile is always uefi)")
@click.option("--secure-boot", "secure_boot", is_flag=True, default=None,
              help="VM: UEFI secure boot (Microsoft's keys enrolled: a signed shim boots)")
@click.option("--tpm", "tpm", is_flag=True, default=None, help="VM: a TPM 2.0 (swtpm)")
@click.option("--id", "instance_id", type=int, help="numeric id (default: the lowest free from 100)")
@click.option("--hostname", help="hostname inside (default: the name)")
@limit_options
@click.option("--net", "network", help="a NIC on this network (bridged); without --net a NIC on ctd's default "
              "network (default_network, 'ctbr0', made on first use); 'none': no NIC")
@click.option("--routed", is_flag=True, help="the NIC is routed (OpenVZ venet): no layer 2, host routes its addresses")
@click.option("--ipadd", multiple=True, help="address for the NIC (default: the next free one of --net)")
@click.option("--no-filter", is_flag=True, help="no MAC/IP anti-spoofing on the NIC")
@click.option("--rate", help="NIC bandwidth both ways, e.g. 10mbit")
@click.option("--nic", "nic_specs", multiple=True, metavar="SPEC", help="a NIC (repeatable, one per NIC, instead of "
              f"--net/--ipadd/--routed/--no-filter/--rate): {SPEC_HELP}")
@click.option("--nameserver", multiple=True, help="DNS server for /etc/resolv.conf")
@guest_options
@boot_options
@click.option("--privileged", is_flag=True, help="no user namespace: root inside is root outside (avoid)")
@click.option("--allow-io-uring", is_flag=True, help="let the container use io_uring (denied by default: "
              "a large kernel attack surface)")
@features_option
@mount_options
@admin_options
@click.option("--project", help="the project it belongs to (admins; others create in their own); its name "
              "must begin with PROJECT-")
@click.option("--node", help="in a cluster: the node to make it on, or 'auto' (the default: the online node "
              "with the most room for its limits; docs/cluster.md)")
@replication_options
def create(name: str, template: str | None, kind: str, disk: str | None, iso: str | None, profile: str | None,
           drivers_iso: str | None, compat: bool, instance_id: int | None, hostname: str | None, privileged: bool,
           network: str | None, routed: bool, ipadd: tuple[str, ...], no_filter: bool, rate: str | None,
           nic_specs: tuple[str, ...], nameserver: tuple[str, ...], userpasswd: str | None,
           ssh_key: tuple[str, ...], timezone: str | None,
           allow_io_uring: bool, onboot: str | None, boot_order: int | None, boot_delay: int | None,
           project: str | None, node: str | None, **limits: Any) -> None:
    """Create a container (or, with --type vm, a virtual machine)."""
    body: dict[str, Any] = {"name": name, "type": kind}
    replication = {k: limits.pop(k) for k in ("replicate_to", "every", "ha")}
    if node is not None:
        body["node"] = node
    if project is not None:
        body["project"] = project
    add_admin(body, limits)
    add_stop_timeout(body, limits)
    add_backup_settings(body, limits)
    add_features(body, limits)
    add_mounts(body, limits)
    vm_extra: dict[str, Any] = {key: _text_file(path) for key in ("user_data", "vendor_data")
                                   if (path := limits.pop(key, None))}
    vm_extra |= {key: value for key in ("firmware", "secure_boot", "tpm") if (value := limits.pop(key, None))}
    body["limits"] = given_limits(limits)
    add_boot(body, onboot, boot_order, boot_delay)
    if template:
        body["template"] = template
    vm = {**_vm_request(disk, iso, profile, drivers_iso, compat), **vm_extra}
    if vm:
        body["vm"] = vm
    add_guest(body, userpasswd, ssh_key, timezone)
    nics = _nics_request(network, routed, ipadd, no_filter, rate)
    if nic_specs:
        if nics is not None:
            raise click.UsageError("--nic describes each NIC whole: leave out --net, --ipadd, --routed, "
                                   "--no-filter and --rate")
        nics = [parse_spec(spec) for spec in nic_specs]
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
    try:   # its own route, once the instance exists (docs/cluster.md, "Replication and HA")
        replicated = apply_replication(result["name"], replication)
    except ApiError as exc:
        raise ApiError(f"{result['name']} was created, but its replication was refused: {exc.message}; "
                       f"set it with 'ctctl set {result['name']} --replicate-to NODE'", exc.code, exc.status) from None
    if replicated is not None:
        click.echo(replicated)


def _text_file(path: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.UsageError(f"cannot read {path} as text: {exc}") from None


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
@click.option("--timeout", type=click.FloatRange(0, 3600),
              help="seconds to wait for a clean shutdown before killing (default: the instance's --stop-timeout, "
                   "else the server's stop_timeout, 30 s)")
@click.option("--kill", is_flag=True, help="kill at once, no clean shutdown")
def stop(instance: str, timeout: float | None, kill: bool) -> None:
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
@click.option("--timeout", type=click.FloatRange(0, 3600),
              help="seconds the stop waits before killing (default: the instance's --stop-timeout, else 30 s)")
@click.option("--kill", is_flag=True)
def restart(instance: str, timeout: float | None, kill: bool) -> None:
    """Stop and start an instance."""
    result = _state(instance, "restart", timeout, kill)
    click.echo(f"Restarted {result['name']} (init pid {result['pid']})")


@click.command(name="shutdown-all")
@click.option("--timeout", type=click.FloatRange(0, 3600), help="seconds each instance has for a clean shutdown "
              "before it is killed (default: each its own --stop-timeout, else the server's stop_timeout)")
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
    notes(result)


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
@replication_options
@click.option("--ipadd", multiple=True, help="add an address to the first NIC")
@click.option("--ipdel", multiple=True, help="remove an address from the first NIC")
@click.option("--rate", help="NIC bandwidth both ways, e.g. 10mbit, or 'unlimited'")
@click.option("--nameserver", multiple=True, help="DNS servers for /etc/resolv.conf")
@click.option("--hostname", help="the guest's hostname (a running instance gets it at next start)")
@guest_options
@admin_options
@set_only_options
@boot_options
@features_option
@mount_options
@click.option("--unmount", multiple=True, help="TARGET: remove that host mount (repeatable; at the next start)")
@click.option("--disk", "disk", help="VM: grow the root disk to this size, e.g. 40G (live on a running VM; "
              "never shrinks)")
def set_(instance: str, ipadd: tuple[str, ...], ipdel: tuple[str, ...], rate: str | None,
         nameserver: tuple[str, ...], hostname: str | None, userpasswd: str | None, ssh_key: tuple[str, ...],
         timezone: str | None, onboot: str | None, boot_order: int | None, boot_delay: int | None,
         disk: str | None, **limits: Any) -> None:
    """Change limits and addresses; a running container gets them at once, a running VM its
    --cpus/--ram where QEMU can ('unlimited' removes a limit) and a larger --disk."""
    body: dict[str, Any] = {"disk": disk} if disk else {}
    replication = {k: limits.pop(k) for k in ("replicate_to", "every", "ha")}
    add_admin(body, limits)
    add_stop_timeout(body, limits)
    add_backup_settings(body, limits)
    add_features(body, limits)
    add_mounts(body, limits)
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
    replicated = apply_replication(instance, replication)   # its own route (the cluster's, docs/cluster.md)
    if replicated is not None:
        click.echo(replicated)
        if not body:
            return
    if not body:
        raise click.UsageError("give something to change, e.g. --ram 1G, --ipadd 10.0.0.5, --tag KEY=VALUE, "
                               "--onboot yes or --replicate-to NODE")
    result = client().request("PATCH", f"/1.0/instances/{instance}", body)["instance"]
    addresses = [a for n in result.get("nics", []) for a in n["addresses"]]
    click.echo(f"Set {result['name']}: {limits_text(result['limits'])}"
               + (f"; addresses {', '.join(addresses)}" if addresses else "") + flags_text(result)
               + (f"; onboot {_boot_text(result)}" if {"onboot", "boot_order", "boot_delay", "stop_timeout"} & set(body)
                  else "")
               + (f"; backups {_backup_text(result)}" if {"backup_schedule", "backup_keep"} & set(body) else "")
               + (f"; features {', '.join(result.get('features') or []) or 'none'}" if "features" in body else "")
               + (f"; mounts {_mounts_text(result)}" if {"mounts", "unmount"} & set(body) else "")
               + (f"; disk {human_bytes(result['vm']['disk_size'])}" if "disk" in body and result.get("vm") else ""))
    notes(result)   # what a running VM could not take live, features at next start


@click.command(name="list")
@FORMAT
@click.option("--tag", multiple=True, help="only instances with this tag: KEY=VALUE or KEY (repeatable: all)")
@click.option("--state", multiple=True, help="only instances in this state: running, stopped, … or disabled "
              "(repeatable: any)")
@click.option("--limit", type=click.IntRange(1, 10_000), help="show at most this many (one page)")
@click.option("--offset", type=click.IntRange(0), default=0, help="skip this many first (with --limit: a page)")
def list_(fmt: str, tag: tuple[str, ...], state: tuple[str, ...], limit: int | None, offset: int) -> None:
    """List instances."""
    filters = {**({"tag": list(tag)} if tag else {}), **({"state": list(state)} if state else {})}
    click.echo(listing.render(fmt, listing.fetch(client(), filters, limit, offset)))


def _vm_rows(i: dict[str, Any]) -> list[tuple[str, Any]]:
    """A VM's profile, root disk, firmware and removable CD-ROM, in words."""
    vm = i.get("vm") if i.get("type") == "vm" else None
    if not vm or "disk_size" not in vm:
        return []
    firmware = "UEFI" if vm.get("firmware") == "uefi" else "BIOS"
    if vm.get("firmware") == "uefi":
        firmware += f", secure boot {'on' if vm.get('secure_boot') else 'off'}"
    firmware += ", TPM 2.0" if vm.get("tpm") else ""
    media = vm.get("media")
    return [("vm", f"{vm.get('profile')}, disk {human_bytes(vm['disk_size'])}, {firmware}"),
            ("media", "empty" if not media else media + (" (boots from it)" if vm.get("boot_media") else "")),
            ("data disks", ", ".join(f"{d['name']} {human_bytes(d['size'])}" for d in vm.get("data_disks") or [])
             or "none")]


def _guest_rows(i: dict[str, Any]) -> list[tuple[str, Any]]:
    """A running VM's addresses as its guest agent reports them."""
    seen = (i.get("vm") or {}).get("guest")
    if not seen:
        return []
    if seen.get("agent") is None:
        return [("guest agent", "not asked yet (ask again in a moment)")]
    if not seen.get("agent"):
        return [("guest agent", "none answers (install qemu-guest-agent in the VM)")]
    rows: list[tuple[str, Any]] = [("guest agent", f"answers (seen {seen.get('age_s')} s ago)")]
    rows += [(f"guest {n['name']}", ", ".join(n["addresses"]) or "no address") for n in seen.get("interfaces", [])]
    return rows


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
                ("limits", limits_text(i["limits"])), ("disk", listing.disk_text(i.get("disk"))),
                ("created", i["created_at"]), ("onboot", _boot_text(i)),
                ("backups", _backup_text(i))] + status_rows(i)
        if i.get("features") is not None:   # containers only
            rows.append(("features", ", ".join(i["features"]) or "none"))
        if i.get("mounts") is not None:
            rows.append(("mounts", _mounts_text(i)))
        last = i.get("last_exit")
        if last:
            rows.append(("last exit", f"{last.get('at', '?')}: {last.get('text', last.get('kind', '?'))}"))
        rows += _vm_rows(i) + _guest_rows(i)
        for nic in i.get("nics", []):
            rows.append((nic["name"], f"{nic['mode']} {nic['network'] or ''} {nic['mac']} "
                                      f"{','.join(nic['addresses']) or 'no address'} (host {nic['host_name']}"
                                      f"{', filtered' if nic['filter'] else ''}"
                                      f"{', ' + str(nic['rate']) + ' bit/s' if nic['rate'] else ''}"
                                      f"{', mtu ' + str(nic['mtu']) if nic.get('mtu') else ''}"
                                      f"{', vlan ' + str(nic['vlan']) if nic.get('vlan') else ''})"))
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


def _backup_text(instance: dict[str, Any]) -> str:
    """'daily@02:00, keep 7, next 2026-12-08T01:00:00+00:00' or 'none (keep 7)'."""
    if "backup_keep" not in instance:
        return "-"
    if not instance.get("backup_schedule"):
        return f"no schedule (keep {instance['backup_keep']})"
    return f"{instance['backup_schedule']}, keep {instance['backup_keep']}, next {instance.get('backup_next') or '-'}"
def _mounts_text(instance: dict[str, Any]) -> str:
    texts = []
    for m in instance.get("mounts") or []:
        opts = [o for o, on in (("ro", m.get("readonly")), ("idmap", m.get("idmap"))) if on]
        texts.append(f"{m['source']} -> {m['target']}" + (f" ({', '.join(opts)})" if opts else ""))
    return ", ".join(texts) or "none"


def _boot_text(instance: dict[str, Any]) -> str:
    if "onboot" not in instance:
        return "-"
    stop = instance.get("stop_timeout")
    return (f"{'yes' if instance['onboot'] else 'no'} (order {instance['boot_order']}, "
            f"delay {instance['boot_delay']} s, stop timeout {'default' if stop is None else f'{stop} s'})")


def _host_ids(instance: dict[str, Any], idmap: dict[str, Any] | None) -> str:
    if instance.get("type") == "vm":
        return "- (a VM: QEMU isolates it)"
    if not idmap or idmap.get("uid_base") is None:
        return "host's own (privileged)"
    return f"{idmap['uid_base']}-{idmap['uid_base'] + idmap.get('count', 65536) - 1}"


COMMANDS = (create, start, suspend, resume, stop, restart, reinstall, destroy, set_, list_, status, shutdown_all)
