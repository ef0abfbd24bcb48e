"""ctctl: the command line for ctd. It speaks only HTTP to ctd's socket."""

from __future__ import annotations

import asyncio
import shutil
import sys
from typing import Any

import click

from ctctl import remote_cmds
from ctctl.client import ApiError, Client, default_socket
from ctctl.output import emit, human_bytes, table
from ctctl.refs import instance_ref

FORMAT = click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
                      show_default=True, help="output format")


class CtlGroup(click.Group):
    """Turns ApiError into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            click.echo(f"ctctl: {exc.message}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("ctctl: interrupted", err=True)
            sys.exit(130)


@click.group(cls=CtlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", "socket_path", default=default_socket, show_default="/run/ctd/ctd.sock or $CTD_SOCKET",
              help="ctd's API socket")
@click.option("--remote", "remote_name", help="talk to this remote over HTTPS ('ctctl remote list'; 'local': "
              "the socket)")
@click.pass_context
def cli(ctx: click.Context, socket_path: str, remote_name: str | None) -> None:
    """Manage ctd's system containers."""
    from ctctl.remote_cmds import make_client
    ctx.obj = make_client(ctx, socket_path, remote_name)


def client() -> Client:
    return click.get_current_context().find_object(Client)


def complete_instance(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    try:
        socket_path = ctx.find_root().params.get("socket_path") or default_socket()
        names = [i["name"] for i in Client(socket_path, timeout=2).get("/1.0/instances")["instances"]]
    except (ApiError, OSError):
        return []
    return [n for n in names if n.startswith(incomplete)]


INSTANCE = click.argument("instance", shell_complete=complete_instance, callback=instance_ref)  # or REMOTE:NAME


def guest_options(func):  # type: ignore[no-untyped-def]
    """--userpasswd, --ssh-key, --timezone on create and set."""
    func = click.option("--timezone", help="zone for /etc/localtime, e.g. Europe/Berlin")(func)
    func = click.option("--ssh-key", "ssh_key", multiple=True, type=click.Path(exists=True, dir_okay=False),
                        help="public key file for root's authorized_keys")(func)
    func = click.option("--userpasswd", help="USER:PASSWORD (hashed into the guest's /etc/shadow; for a VM also into "
                        "its cloud-init seed; the clear text is kept nowhere)")(func)
    return func


def _guest(body: dict[str, Any], userpasswd: str | None, ssh_key: tuple[str, ...], timezone: str | None) -> None:
    if userpasswd:
        body["userpasswd"] = userpasswd
    if ssh_key:
        keys = []
        for path in ssh_key:
            keys += [line.strip() for line in open(path).read().splitlines() if line.strip() and not line.startswith("#")]
        body["ssh_keys"] = keys
    if timezone:
        body["timezone"] = timezone


LIMIT_OPTIONS = (
    ("ram", "memory limit, e.g. 512M, 1G, or barrier:limit"),
    ("swap", "swap on top of ram, e.g. 256M"),
    ("cpus", "number of CPUs (a cpuset)"),
    ("cpulimit", "CPU time in % of one CPU, e.g. 50 or 150"),
    ("cpuunits", "relative CPU weight, 8-500000 (default 1000)"),
    ("numproc", "process limit, e.g. 100 or 90:100"),
    ("numfile", "open files per process"),
    ("numpty", "pseudo-terminals open at once (default 256)"),
    ("iolimit", "disk bandwidth, bytes/s, e.g. 10M"),
    ("iopslimit", "disk operations per second"),
    ("ioprio", "disk priority 0-7 (default 4)"),
    ("diskspace", "disk space, e.g. 10G (needs the btrfs pool)"),
)


def limit_options(func):  # type: ignore[no-untyped-def]
    """--ram, --cpus … on create and set; 'unlimited' removes a limit."""
    for name, text in reversed(LIMIT_OPTIONS):
        func = click.option(f"--{name}", help=text)(func)
    return func


def _limits(options: dict[str, Any]) -> dict[str, str]:
    return {name: options[name] for name, _ in LIMIT_OPTIONS if options.get(name) is not None}


# ------------------------------------------------------------------ lifecycle

@cli.command()
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
@click.option("--privileged", is_flag=True, help="no user namespace: root inside is root outside (avoid)")
@click.option("--allow-io-uring", is_flag=True, help="let the container use io_uring (denied by default: "
              "a large kernel attack surface)")
def create(name: str, template: str | None, kind: str, disk: str | None, iso: str | None, profile: str | None,
           drivers_iso: str | None, compat: bool, instance_id: int | None, hostname: str | None, privileged: bool,
           network: str | None, routed: bool, ipadd: tuple[str, ...], no_filter: bool, rate: str | None,
           nameserver: tuple[str, ...], userpasswd: str | None, ssh_key: tuple[str, ...], timezone: str | None,
           allow_io_uring: bool, **limits: Any) -> None:
    """Create a container (or, with --type vm, a virtual machine)."""
    body: dict[str, Any] = {"name": name, "type": kind, "limits": _limits(limits)}
    if template:
        body["template"] = template
    vm = {k: v for k, v in (("disk", disk), ("iso", iso), ("profile", profile), ("drivers_iso", drivers_iso))
          if v is not None}
    if compat:
        vm["compat"] = True
    if vm:
        body["vm"] = vm
    _guest(body, userpasswd, ssh_key, timezone)
    if network == "none":
        if ipadd or routed or no_filter or rate:
            raise click.UsageError("--net none gives no NIC: leave out --ipadd, --routed, --no-filter and --rate")
        body["nics"] = []
    elif network or ipadd or routed or no_filter or rate:
        nic: dict[str, Any] = {"mode": "routed" if routed or (ipadd and not network) else "bridged",
                               "addresses": list(ipadd), "filter": not no_filter}
        if network:
            nic["network"] = network
        if rate:
            nic["rate"] = rate
        body["nics"] = [nic]
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


def _state(ref: str, action: str, timeout: float | None = None, force: bool = False) -> dict:
    body: dict[str, Any] = {"action": action}
    if timeout is not None:
        body["timeout"] = timeout
    if force:
        body["force"] = True
    return client().run("PUT", f"/1.0/instances/{ref}/state", body)


@cli.command()
@INSTANCE
@click.option("--paused", is_flag=True, help="VM: start with its CPUs stopped ('ctctl resume' runs it)")
def start(instance: str, paused: bool) -> None:
    """Start an instance."""
    result = client().run("PUT", f"/1.0/instances/{instance}/state",
                          {"action": "start", **({"paused": True} if paused else {})})
    click.echo(f"Started {result['name']} (init pid {result['pid']} on the host)")


@cli.command()
@INSTANCE
def resume(instance: str) -> None:
    """Let a VM started with --paused run."""
    _state(instance, "resume")
    click.echo(f"Resumed {instance}")


@cli.command()
@INSTANCE
@click.option("--listen", default="127.0.0.1:5900", show_default=True, help="loopback address:port to offer VNC on")
def vnc(instance: str, listen: str) -> None:
    """Offer a VM's display to a VNC viewer on a loopback port (until Ctrl-C)."""
    from ctctl.stream import run_vnc_proxy
    info = client().get(f"/1.0/instances/{instance}")["instance"]
    socket_path = (info.get("vm") or {}).get("vnc_socket")
    if not socket_path:
        raise ApiError(f"{instance} is not a running VM")
    host, _, port = listen.rpartition(":")
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise click.UsageError("--listen must be a loopback address: VNC here has no password")
    click.echo(f"VNC of {instance} on {host}:{port}; Ctrl-C ends it")
    asyncio.run(run_vnc_proxy(socket_path, host, int(port)))


@cli.command()
@INSTANCE
@FORMAT
def hardware(instance: str, fmt: str) -> None:
    """What QEMU says a running VM has (TPM, disks, CD-ROMs, NICs)."""
    hw = client().get(f"/1.0/instances/{instance}/hardware")["hardware"]

    def render(h: dict) -> str:
        lines = [f"status: {h['status']} ({h['accel']})", f"vcpus: {h.get('vcpus')}",
                 f"ram: {(h.get('ram') or 0) >> 20} MiB" + (" (balloon)" if h.get("balloon") else "")]
        lines += [f"tpm: {t.get('model')} {t.get('options', {}).get('type', '')}" for t in h["tpm"]]
        for b in h["block"]:
            media = (b.get("inserted") or {}).get("file", "(empty)")
            lines.append(f"block {b['device'] or b.get('qdev', '')}: {media}{' (ro)' if (b.get('inserted') or {}).get('ro') else ''}")
        lines += [f"pci {d.get('qdev_id') or d['class_info'].get('desc', '')}" for d in h["pci"] if d.get("qdev_id")]
        return "\n".join(lines)

    emit(fmt, hw, render)


@cli.command()
@INSTANCE
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="seconds to wait for a clean shutdown before killing")
@click.option("--kill", is_flag=True, help="kill at once, no clean shutdown")
def stop(instance: str, timeout: float, kill: bool) -> None:
    """Stop an instance: a container gets its template's shutdown signal, a VM the ACPI power button; killed after --timeout."""
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


@cli.command()
@INSTANCE
@click.option("--timeout", type=float, default=30.0, show_default=True)
@click.option("--kill", is_flag=True)
def restart(instance: str, timeout: float, kill: bool) -> None:
    """Stop and start an instance."""
    result = _state(instance, "restart", timeout, kill)
    click.echo(f"Restarted {result['name']} (init pid {result['pid']})")


@cli.command()
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


@cli.command()
@INSTANCE
@click.option("--force", "-f", is_flag=True, help="stop it first if it is running")
def destroy(instance: str, force: bool) -> None:
    """Destroy an instance (container or VM) and its files."""
    client().run("DELETE", f"/1.0/instances/{instance}", query={"force": "true"} if force else None)
    click.echo(f"Destroyed {instance}")


@cli.command(name="set")
@INSTANCE
@limit_options
@click.option("--ipadd", multiple=True, help="add an address to the first NIC")
@click.option("--ipdel", multiple=True, help="remove an address from the first NIC")
@click.option("--rate", help="NIC bandwidth both ways, e.g. 10mbit, or 'unlimited'")
@click.option("--nameserver", multiple=True, help="DNS servers for /etc/resolv.conf")
@click.option("--hostname", help="the guest's hostname (a running instance gets it at next start)")
@guest_options
def set_(instance: str, ipadd: tuple[str, ...], ipdel: tuple[str, ...], rate: str | None,
         nameserver: tuple[str, ...], hostname: str | None, userpasswd: str | None, ssh_key: tuple[str, ...],
         timezone: str | None, **limits: Any) -> None:
    """Change limits and addresses; a running container gets them at once, a running VM its
    --cpus/--ram where QEMU can ('unlimited' removes a limit)."""
    body: dict[str, Any] = {}
    _guest(body, userpasswd, ssh_key, timezone)
    if hostname:
        body["hostname"] = hostname
    if _limits(limits):
        body["limits"] = _limits(limits)
    for key, value in (("ipadd", list(ipadd)), ("ipdel", list(ipdel)), ("nameservers", list(nameserver))):
        if value:
            body[key] = value
    if rate:
        body["rate"] = rate
    if not body:
        raise click.UsageError("give something to change, e.g. --ram 1G or --ipadd 10.0.0.5")
    result = client().request("PATCH", f"/1.0/instances/{instance}", body)["instance"]
    addresses = [a for n in result.get("nics", []) for a in n["addresses"]]
    click.echo(f"Set {result['name']}: {_limits_text(result['limits'])}"
               + (f"; addresses {', '.join(addresses)}" if addresses else ""))
    for note in result.get("notes") or []:   # what a running VM could not take live
        click.echo(f"Note: {note}")


# ------------------------------------------------------------------ reading

def _limits_text(limits: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in limits.items()) or "-"


@cli.command(name="list")
@FORMAT
def list_(fmt: str) -> None:
    """List instances."""
    instances = client().get("/1.0/instances")["instances"]
    emit(fmt, instances, lambda rows: table(
        ["ID", "NAME", "TYPE", "STATE", "PID", "IPV4", "DISK", "TEMPLATE", "LIMITS"],
        [[i["id"], i["name"], i["type"], i["state"], i["pid"],
          ",".join(a for n in i.get("nics", []) for a in n["addresses"] if ":" not in a) or None,
          _disk_text(i.get("disk")), i["template"], _limits_text(i["limits"])] for i in rows]))


def _disk_text(disk: dict | None) -> str | None:
    if not disk:
        return None
    used = human_bytes(disk["used"])
    return f"{used}/{human_bytes(disk['limit'])}" if disk.get("limit") else used


@cli.command()
@INSTANCE
@FORMAT
def status(instance: str, fmt: str) -> None:
    """Show one instance."""
    data = client().get(f"/1.0/instances/{instance}")["instance"]

    def render(i: dict) -> str:
        idmap = i.get("idmap")
        rows = [("id", i["id"]), ("name", i["name"]), ("type", i["type"]), ("state", i["state"]),
                ("init pid", i["pid"]), ("template", i["template"]), ("hostname", i["hostname"]),
                ("privileged", "yes" if i["privileged"] else "no"),
                ("host ids", _host_ids(i, idmap)),
                ("limits", _limits_text(i["limits"])), ("disk", _disk_text(i.get("disk"))),
                ("created", i["created_at"])]
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
                     ("memory", f"{human_bytes(usage.get('memory_current'))} (peak {human_bytes(usage.get('memory_peak'))})"),
                     ("processes", usage.get("pids_current")),
                     ("disk io", f"read {human_bytes(usage.get('io_read_bytes'))}, "
                                 f"written {human_bytes(usage.get('io_write_bytes'))}")]
        return "\n".join(f"{k + ':':<12} {'-' if v is None else v}" for k, v in rows)

    emit(fmt, data, render)


def _host_ids(instance: dict[str, Any], idmap: dict[str, Any] | None) -> str:
    if instance.get("type") == "vm":
        return "- (a VM: QEMU isolates it)"
    if not idmap or idmap.get("uid_base") is None:
        return "host's own (privileged)"
    return f"{idmap['uid_base']}-{idmap['uid_base'] + idmap.get('count', 65536) - 1}"


LONG_MAX = 9223372036854775807


def _bc_value(value: Any) -> str:
    return str(LONG_MAX) if value == -1 else ("-" if value is None else str(value))


def _bc_table(instances: list[dict]) -> str:
    rows = []
    for inst in instances:
        for i, row in enumerate(inst["beancounters"]):
            rows.append([f"{inst['id']}:" if i == 0 else "", row["name"], _bc_value(row["held"]),
                         _bc_value(row["maxheld"]), _bc_value(row["barrier"]), _bc_value(row["limit"]),
                         _bc_value(row["failcnt"])])
    return table(["uid", "resource", "held", "maxheld", "barrier", "limit", "failcnt"], rows)


@cli.command()
@click.argument("instance", required=False, shell_complete=complete_instance, callback=instance_ref)
@click.option("--failing", "-q", is_flag=True, help="only counters that hit their limit, across all containers")
@FORMAT
def beancounters(instance: str | None, failing: bool, fmt: str) -> None:
    """OpenVZ's user_beancounters: held, maxheld, barrier, limit, failcnt per resource."""
    if instance and not failing:
        data = [client().get(f"/1.0/instances/{instance}/beancounters")]
    else:
        data = client().get("/1.0/beancounters", **({"failing": "true"} if failing else {}))["instances"]
        if instance:
            data = [d for d in data if instance in (d["name"], str(d["id"]))]
    emit(fmt, data, lambda rows: _bc_table(rows) if rows else "no counter has hit its limit")


@cli.command()
@click.argument("instance", required=False, shell_complete=complete_instance, callback=instance_ref)
def metrics(instance: str | None) -> None:
    """Prometheus metrics as ctd serves them at /1.0/metrics; with NAME, that instance's samples."""
    text = client().text("/1.0/metrics")
    if instance:
        label = f'name="{instance}"'
        text = "".join(line + "\n" for line in text.splitlines() if not line.startswith("#") and label in line)
    click.echo(text, nl=False)


# ------------------------------------------------------------------ inside

@cli.command(name="exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@INSTANCE
@click.option("-t", "--tty", "use_tty", is_flag=True, help="allocate a terminal")
@click.option("--env", "-e", multiple=True, help="KEY=VALUE for the command's environment")
@click.option("--cwd", help="working directory inside (default /root)")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(instance: str, use_tty: bool, env: tuple[str, ...], cwd: str | None, command: tuple[str, ...]) -> None:
    """Run a command inside: ctctl exec NAME -- CMD [ARGS...]. Exits with its exit code."""
    from ctctl.stream import run_exec
    argv = list(command[1:] if command and command[0] == "--" else command)
    if not argv:
        raise click.UsageError("give the command after '--', e.g. ctctl exec NAME -- ps")
    code = asyncio.run(run_exec(client(), instance, argv, list(env), cwd, use_tty))
    sys.exit(code)


@cli.command()
@INSTANCE
def enter(instance: str) -> None:
    """An interactive root shell inside."""
    from ctctl.stream import run_exec
    shell = ["/bin/sh", "-c", "if [ -x /bin/bash ]; then exec /bin/bash -l; else exec /bin/sh -l; fi"]
    sys.exit(asyncio.run(run_exec(client(), instance, shell, [], None, sys.stdin.isatty())))


@cli.command()
@INSTANCE
def console(instance: str) -> None:
    """Attach to the container's /dev/console (detach with Ctrl-])."""
    from ctctl.stream import run_console
    asyncio.run(run_console(client(), instance))


# ------------------------------------------------------------------ templates

@cli.group()
def template() -> None:
    """Build, list and delete templates."""


@template.command(name="list")
@FORMAT
def template_list(fmt: str) -> None:
    """Known recipes and built templates."""
    rows = client().get("/1.0/templates")["templates"]
    emit(fmt, rows, lambda ts: table(
        ["NAME", "DISTRO", "RELEASE", "ARCH", "SIZE", "BUILT", "DESCRIPTION"],
        [[t["name"], t["distro"], t["release"], t["arch"], human_bytes(t["size"]) if t["size"] else None,
          t["built_at"] or "not built", t["description"]] for t in ts]))


@template.command(name="build")
@click.argument("name")
@click.option("--mirror", help="Debian mirror URL (default: the host's apt sources)")
def template_build(name: str, mirror: str | None) -> None:
    """Build a template from its recipe in templates/ (Ctrl-C cancels the build)."""
    click.echo(f"Building template {name} ...")
    body: dict[str, Any] = {"name": name}
    if mirror:
        body["mirror"] = mirror
    result = run_with_progress("POST", "/1.0/templates", body)
    click.echo(f"Built {result['name']} ({human_bytes(result['size'])})")


def run_with_progress(method: str, path: str, body: dict[str, Any]) -> dict:
    """An operation, its progress line shown on stderr while it runs (Ctrl-C cancels)."""
    tty = sys.stderr.isatty()
    last = [""]

    def show(line: str) -> None:
        if line == last[0]:
            return
        last[0] = line
        if tty:
            width = max(20, shutil.get_terminal_size().columns - 1)
            click.echo("\r" + line[:width].ljust(width), err=True, nl=False)
        else:
            click.echo(f"  {line}", err=True)

    try:
        return client().run(method, path, body, progress=show)
    finally:
        if tty and last[0]:
            click.echo("", err=True)


@template.command(name="create")
@click.argument("name")
@click.option("--from", "source", required=True, help="the (stopped) instance to make the template from")
def template_create(name: str, source: str) -> None:
    """Turn an instance into a template NAME."""
    result = client().run("POST", "/1.0/templates", {"name": name, "from": source})
    click.echo(f"Created template {result['name']} from {source} ({human_bytes(result['size'])})")


@template.command(name="import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, resolve_path=True))
@click.option("--name", help="template name (default: from the file name, e.g. debian-12-x86_64)")
def template_import(file: str, name: str | None) -> None:
    """Import a rootfs tarball (.tar.gz/.tar.xz/.tar.zst, OpenVZ/Proxmox layout) as a template."""
    body: dict[str, Any] = {"import": file}
    if name:
        body["name"] = name
    result = run_with_progress("POST", "/1.0/templates", body)
    dropped = result.get("dropped_devices") or 0
    note = f"; dropped {dropped} device node(s), ctd makes /dev itself" if dropped else ""
    click.echo(f"Imported {result['name']} ({human_bytes(result['size'])}){note}")


@template.command(name="export")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False, resolve_path=True))
def template_export(name: str, file: str) -> None:
    """Write a template as a rootfs tarball (.tar.zst, .tar.gz or .tar.xz by the file name)."""
    result = run_with_progress("POST", f"/1.0/templates/{name}/export", {"file": file})
    click.echo(f"Exported {name} to {result['file']} ({human_bytes(result['size'])})")


@template.command(name="delete")
@click.argument("name")
def template_delete(name: str) -> None:
    """Delete a built template (refused while instances use it)."""
    client().request("DELETE", f"/1.0/templates/{name}")
    click.echo(f"Deleted template {name}")


# ------------------------------------------------------------------ storage

@cli.command()
@click.argument("instance", shell_complete=complete_instance, callback=instance_ref)
@click.argument("snapshot")
def snapshot(instance: str, snapshot: str) -> None:
    """Take a snapshot of an instance's root (instant on btrfs): a container may keep running, a VM must be stopped."""
    client().run("POST", f"/1.0/instances/{instance}/snapshots", {"name": snapshot})
    click.echo(f"Snapshot {snapshot} of {instance} taken")


@cli.command(name="snapshot-list")
@INSTANCE
@FORMAT
def snapshot_list(instance: str, fmt: str) -> None:
    """List an instance's snapshots."""
    snaps = client().get(f"/1.0/instances/{instance}/snapshots")["snapshots"]
    emit(fmt, snaps, lambda rows: "\n".join(rows) if rows else f"{instance} has no snapshots")


@cli.command(name="snapshot-delete")
@INSTANCE
@click.argument("snapshot")
def snapshot_delete(instance: str, snapshot: str) -> None:
    """Delete a snapshot."""
    client().request("DELETE", f"/1.0/instances/{instance}/snapshots/{snapshot}")
    click.echo(f"Deleted snapshot {snapshot} of {instance}")


@cli.command()
@INSTANCE
@click.argument("snapshot")
@click.option("--restart", is_flag=True, help="stop a running instance, roll back, start it again")
def rollback(instance: str, snapshot: str, restart: bool) -> None:
    """Put an instance's root back to a snapshot (the snapshot stays)."""
    client().run("POST", f"/1.0/instances/{instance}/rollback", {"snapshot": snapshot, "restart": restart})
    click.echo(f"Rolled {instance} back to {snapshot}")


@cli.command()
@click.argument("source", shell_complete=complete_instance, callback=instance_ref)
@click.argument("name", callback=instance_ref)
@click.option("--snapshot", help="clone this snapshot of SOURCE (works while SOURCE runs)")
def clone(source: str, name: str, snapshot: str | None) -> None:
    """A new instance from SOURCE: new id, id range, hostname, MAC and addresses."""
    body: dict[str, Any] = {"name": name}
    if snapshot:
        body["snapshot"] = snapshot
    result = client().run("POST", f"/1.0/instances/{source}/clone", body)
    click.echo(f"Cloned {source} to {result['name']} (id {result['id']})")


@cli.command()
@INSTANCE
@click.argument("file", type=click.Path(dir_okay=False, resolve_path=True))
@click.option("--snapshot", help="back up this snapshot (the instance keeps running)")
@click.option("--tar", "as_tar", is_flag=True, help="a .tar.zst stream even on btrfs (restores on any pool)")
def backup(instance: str, file: str, snapshot: str | None, as_tar: bool) -> None:
    """Write a backup of a container to FILE (btrfs send where possible, else tar.zst; not VMs)."""
    body: dict[str, Any] = {"file": file, "driver": "tar" if as_tar else "auto"}
    if snapshot:
        body["snapshot"] = snapshot
    result = run_with_progress("POST", f"/1.0/instances/{instance}/backup", body)
    click.echo(f"Backed up {instance} to {result['file']} ({result['driver']}, {human_bytes(result['size'])})")


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, resolve_path=True))
@click.option("--name", help="name of the restored instance (default: the backed-up one's); another name "
              "makes a copy with a new machine-id and no ssh host keys, as clone does")
@limit_options
@click.option("--no-filter", is_flag=True, help="no MAC/IP anti-spoofing on the NICs (default: on, whatever "
              "the file says)")
@click.option("--privileged", is_flag=True, help="restore as a privileged container (never taken from the file)")
def restore(file: str, name: str | None, no_filter: bool, privileged: bool, **limits: Any) -> None:
    """Make a container from a backup file (new id, id range, MACs, addresses). The file's settings
    are checked like a create request; limits given here replace the file's."""
    body: dict[str, Any] = {"file": file}
    if name:
        body["name"] = name
    if _limits(limits):
        body["limits"] = _limits(limits)
    if no_filter:
        body["filter"] = False
    if privileged:
        body["privileged"] = True
    result = run_with_progress("POST", "/1.0/restore", body)
    click.echo(f"Restored {result['name']} (id {result['id']})")
    for note in result.get("notes") or []:
        click.echo(f"Note: {note}")


def _quota_state(info: dict) -> str:
    if not info.get("quota"):
        return "off"
    if info.get("quota_consistent") is False:
        return "on, numbers inconsistent: limits do not hold until the rescan ctd started ends"
    return "on"


@cli.command()
@FORMAT
def storage(fmt: str) -> None:
    """The storage pool: driver, path, size, used, free."""
    info = client().get("/1.0/storage")["storage"]

    def render(i: dict) -> str:
        rows = [("driver", i["driver"]), ("path", i["path"]), ("size", human_bytes(i.get("size"))),
                ("used", human_bytes(i.get("used"))), ("free", human_bytes(i.get("free"))),
                ("quota", _quota_state(i))]
        rows += [(k, i[k]) for k in ("image", "device", "reason") if i.get(k)]
        if "direct_io" in i:  # losetup's DIO column: the loop device reads the image with O_DIRECT
            rows.append(("dio", "on" if i["direct_io"] else f"off: {i.get('direct_io_reason', '')}"))
        return "\n".join(f"{k + ':':<8} {v}" for k, v in rows)

    emit(fmt, info, render)


# ------------------------------------------------------------------ networks

@cli.group()
def network() -> None:
    """Host networks: bridges with an address pool."""


@network.command(name="create")
@click.argument("name")
@click.option("--subnet", help="IPv4 subnet, e.g. 10.20.0.0/24 (default: a free private /24)")
@click.option("--ipv6", help="IPv6 subnet, e.g. fd42:20::/64")
@click.option("--nat", is_flag=True, help="masquerade the subnet toward the outside (switches on IPv4 forwarding; it stays on after delete)")
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


def _net_rows(nets: list[dict]) -> str:
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


# ------------------------------------------------------------------ misc

@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(ctctl completion bash)"."""
    from click.shell_completion import get_completion_class
    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(cli, {}, "ctctl", "_CTCTL_COMPLETE").source())


def _register_optional() -> None:
    try:
        from ctctl.check import check
    except ImportError:
        return
    cli.add_command(check)


_register_optional()
remote_cmds.register(cli)


def main() -> None:
    try:
        code = cli.main(prog_name="ctctl", standalone_mode=False)
    except click.UsageError as exc:
        # One line, like every other ctctl error; the hint names the help to read.
        where = f"ctctl {exc.ctx.command_path.split(' ', 1)[1]}" if exc.ctx and " " in exc.ctx.command_path else "ctctl"
        click.echo(f"ctctl: {' '.join(exc.format_message().split())} (see '{where} --help')", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"ctctl: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("ctctl: aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
