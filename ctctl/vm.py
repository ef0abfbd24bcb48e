"""ctctl's VM-only commands: vnc (a loopback port to a running VM's display) and hardware (what
QEMU says the VM has). asyncio is imported by vnc alone, when it runs."""

from __future__ import annotations

from typing import Any

import click

from ctctl.client import ApiError
from ctctl.output import emit
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
        lines += [f"tpm: {t.get('model')} {t.get('options', {}).get('type', '')}" for t in h["tpm"]]
        for b in h["block"]:
            media = (b.get("inserted") or {}).get("file", "(empty)")
            read_only = " (ro)" if (b.get("inserted") or {}).get("ro") else ""
            lines.append(f"block {b['device'] or b.get('qdev', '')}: {media}{read_only}")
        lines += [f"pci {d.get('qdev_id') or d['class_info'].get('desc', '')}" for d in h["pci"] if d.get("qdev_id")]
        return "\n".join(lines)

    emit(fmt, hw, render)


COMMANDS = (vnc, hardware)
