"""ctctl's VM-only commands: vnc (a loopback port to a running VM's display), hardware (what
QEMU says the VM has), media (the removable CD-ROM) and disk (data disks). asyncio is imported
by vnc alone, when it runs."""

from __future__ import annotations

import os
from typing import Any

import click

from ctctl.client import ApiError
from ctctl.output import emit, human_bytes, notes
from ctctl.shared import FORMAT, INSTANCE, client


@click.command()
@INSTANCE
@click.option("--listen", default="127.0.0.1:5900", show_default=True, help="loopback address:port to offer VNC on")
def vnc(instance: str, listen: str) -> None:
    """Offer a VM's display to a VNC viewer on a loopback port (until Ctrl-C)."""
    import asyncio

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


@click.command()
@INSTANCE
@FORMAT
def hardware(instance: str, fmt: str) -> None:
    """What QEMU says a running VM has (TPM, disks, CD-ROMs, NICs)."""
    hw = client().get(f"/1.0/instances/{instance}/hardware")["hardware"]

    def render(h: dict[str, Any]) -> str:
        lines = [f"status: {h['status']} ({h['accel']})", f"vcpus: {h.get('vcpus')}",
                 f"ram: {(h.get('ram') or 0) >> 20} MiB" + (" (balloon)" if h.get("balloon") else "")]
        lines.append(f"firmware: {h.get('firmware', '?')}")
        lines.append(f"tpm: TPM {h['tpm_version']}" if h.get("tpm_version") else "tpm: none")
        lines += [f"tpm: {t.get('model')} {t.get('options', {}).get('type', '')}" for t in h["tpm"]]
        for b in h["block"]:
            media = (b.get("inserted") or {}).get("file", "(empty)")
            read_only = " (ro)" if (b.get("inserted") or {}).get("ro") else ""
            lines.append(f"block {b['device'] or b.get('qdev', '')}: {media}{read_only}")
        lines += [f"pci {d.get('qdev_id') or d['class_info'].get('desc', '')}" for d in h["pci"] if d.get("qdev_id")]
        return "\n".join(lines)

    emit(fmt, hw, render)


@click.group()
def media() -> None:
    """A VM's removable CD-ROM: insert an ISO (e.g. a rescue system), eject it."""


@media.command(name="insert")
@INSTANCE
@click.argument("iso", type=click.Path(exists=True, dir_okay=False, resolve_path=False))
@click.option("--boot", is_flag=True, help="boot from the ISO at the next start (until it is ejected)")
def media_insert(instance: str, iso: str, boot: bool) -> None:
    """Put ISO into the VM's CD-ROM drive (at once if it runs; kept across restarts)."""
    path = os.path.abspath(iso)   # not resolved: ctd refuses a path through a symlink, and says so
    result = client().request("POST", f"/1.0/instances/{instance}/media", {"iso": path, "boot": boot})["instance"]
    click.echo(f"{result['name']}: {path} in the CD-ROM drive" + ("; boots from it" if boot else ""))
    notes(result)


@media.command(name="eject")
@INSTANCE
def media_eject(instance: str) -> None:
    """Empty the VM's CD-ROM drive; it boots from its disk again."""
    result = client().request("DELETE", f"/1.0/instances/{instance}/media")["instance"]
    click.echo(f"{result['name']}: CD-ROM drive empty")
    notes(result)


@click.group()
def disk() -> None:
    """A VM's data disks (virtio, after its root disk): add one, remove one."""


@disk.command(name="add")
@INSTANCE
@click.option("--size", required=True, help="e.g. 20G")
@click.option("--name", "disk_name", help="the disk's name (default: data1, data2 …)")
def disk_add(instance: str, size: str, disk_name: str | None) -> None:
    """Add a data disk (hot-plugged if the VM runs where QEMU can; else at its next start)."""
    body: dict[str, Any] = {"size": size, **({"name": disk_name} if disk_name else {})}
    result = client().request("POST", f"/1.0/instances/{instance}/disks", body)["instance"]
    added = result["vm"]["data_disks"][-1]
    click.echo(f"{result['name']}: data disk {added['name']} ({human_bytes(added['size'])}) added")
    notes(result)


@disk.command(name="remove")
@INSTANCE
@click.argument("disk_name", metavar="DISK")
def disk_remove(instance: str, disk_name: str) -> None:
    """Remove a data disk: the guest gives it back, then its file (and data) is deleted."""
    result = client().request("DELETE", f"/1.0/instances/{instance}/disks/{disk_name}")["instance"]
    click.echo(f"{result['name']}: data disk {disk_name} removed")


COMMANDS = (vnc, hardware, media, disk)
