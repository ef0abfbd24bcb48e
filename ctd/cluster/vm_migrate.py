"""`ctctl migrate VM --to NODE`: the source node's side of a VM migration (docs/cluster.md,
"Migration"; the target's is ctd/cluster/vm_migrate_receive.py).

A stopped VM moves with its disks (the root disk, its data disks), its UEFI variables and TPM
state, its settings (as a VM backup's header: limits, cpus/ram, firmware, profile, tags,
description, guest options), its cloud-init user-data/vendor-data, its numeric id and creation time (its
SMBIOS uuid and its seed's instance-id follow from them: the guest sees the same machine), its
NICs with their addresses and MACs (checked free on the target, as a container's). The files go
sparse (vm_files.py) over the nodes' mutual-TLS HTTPS, the same channel and pinning as a
container's btrfs streams. The VM's lock is held throughout: it cannot be started meanwhile.

Once the target has it (stopped), the instance's keys in etcd move to the target in one
transaction (migrate._switch, shared with containers); only then is this node's copy deleted.
Anything failing before aborts the migration on the target (nothing is left there) and the VM
stays here as it was. Host files the VM points at (an installer ISO, an inserted CD-ROM's ISO)
are not moved: the answer says so; the VM boots its disk there.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctd.cluster import migrate, vm_files, vm_live
from ctd.cluster.migrate import Target
from ctd.errors import Conflict, CtdError, NotSupported
from ctd.instance.vm import datadisks, userdata
from ctd.instance.vm.backup import VmBackups
from ctd.instance.vm.firmware import settings as firmware_settings
from ctd.state import InstanceRecord, InstanceType, PowerState
from ctd.state.options import VmOptions
from ctd.storage.backup.format import FORMAT, VERSION, VM_DISK, VM_DRIVER, VM_VARS
from ctd.storage.backup.vmarchive import TPM_NAME

if TYPE_CHECKING:
    from ctd.api.context import ApiContext
    from ctd.operations import Operation

log = logging.getLogger("ctd.cluster.migrate")

BASE = "/1.0/cluster/vm-migrations"


def check(c: ApiContext, rec: InstanceRecord) -> None:
    """What can migrate (before the operation starts: refusals are the request's answer)."""
    if c.cluster is None or not c.cluster.member:
        raise Conflict("this node is no member of a cluster: there is nowhere to migrate to")
    if rec.type is not InstanceType.VM:
        raise NotSupported(f"{rec.name} is not a VM")
    if rec.state is PowerState.RUNNING:
        vm_live.refuse(rec)
    elif rec.state is not PowerState.STOPPED:
        raise Conflict(f"{rec.name} is {rec.state.value}: a VM migrates running (live) or stopped")
    snaps = c.instances.storage.list_snapshots(rec.name)
    if snaps:
        raise Conflict(f"{rec.name} has snapshots ({', '.join(snaps[:5])}), which do not migrate: delete them "
                       "(or back the VM up first)")


def files_of(base: Path, vm: VmOptions) -> dict[str, Path]:
    """The VM's files that move, by their name on the wire (and in its directory)."""
    out = {"disk.raw": base / "disk.raw"}
    for disk in vm.data_disks:
        path = datadisks.path(base, disk.name)
        out[path.name] = path
    fw = firmware_settings(vm)
    if fw.uefi and (base / VM_VARS).is_file():
        out[VM_VARS] = base / VM_VARS
    if fw.tpm and (base / "tpm").is_dir():
        for path in sorted((base / "tpm").iterdir()):
            if path.is_file() and not path.is_symlink() and TPM_NAME.fullmatch(path.name):
                out[f"tpm/{path.name}"] = path
    for name, path in out.items():
        if not path.is_file() or path.is_symlink():
            raise Conflict(f"the VM's file {name} is missing or not a regular file ({path})")
    return out


def _put(target: Target, path: str, body: Iterator[bytes]) -> dict[str, Any]:
    """One file's record stream as a chunked PUT to the target (blocking: run in a thread)."""
    return migrate._answer(target.node, migrate.put_body(target, path, body, chunked=True))


def begin_body(c: ApiContext, rec: InstanceRecord, files: dict[str, Path]) -> dict[str, Any]:
    vm = rec.options.vm or VmOptions()
    base = c.instances.storage.instance_path(rec.name)
    sizes = {name: path.stat().st_size for name, path in files.items()}
    meta = VmBackups.meta(rec, c.transfers.meta(rec))
    meta["vm"]["disk_size"] = sizes["disk.raw"]
    header = {"format": FORMAT, "version": VERSION, "type": "vm", "driver": VM_DRIVER, "member": VM_DISK,
              "name": rec.name, "kind": "full", "meta": meta,
              "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    return {"header": header, "id": rec.id, "project": rec.project, "created_at": rec.created_at,
            "macs": [n.mac for n in c.db.nics_of(rec.id)],
            "data_disks": [{"name": d.name, "size": sizes[datadisks.path(base, d.name).name]} for d in vm.data_disks],
            "files": sizes, "data": sum(vm_files.data_bytes(p) for p in files.values()),
            **{k: text for k in userdata.KINDS if (text := userdata.load(base, k)) is not None}}


async def migrate_vm(c: ApiContext, rec: InstanceRecord, node: str, op: Operation) -> dict[str, Any]:
    """The operation's work (after migrate.claim(rec)): its result says what was sent."""
    try:
        return await _migrate(c, rec, node, op)
    finally:
        migrate.MIGRATING.discard(rec.id)


async def _migrate(c: ApiContext, rec: InstanceRecord, node: str, op: Operation) -> dict[str, Any]:
    cluster, instances = c.cluster, c.instances
    assert cluster is not None
    target = await migrate.target_of(cluster, node)
    t0 = time.monotonic()
    async with instances.lock(rec):   # no start (or anything else) of it meanwhile
        rec = instances.get(rec.id)
        check(c, rec)
        vm = rec.options.vm or VmOptions()
        running = instances.kinds.vm.driver.running.get(rec.name) if instances.kinds.vm.driver else None
        if rec.state is PowerState.RUNNING and running is None:
            raise Conflict(f"{rec.name} is not running under this ctd (its QEMU is gone?)")
        files = files_of(instances.storage.instance_path(rec.name), vm)
        body = await asyncio.to_thread(begin_body, c, rec, files)
        begun = await target.json("POST", BASE, {**body, "live": running is not None})
        sid = str(begun["migration"]["id"])
        sent, live = [0], None
        try:
            if running is None:
                for index, (name, path) in enumerate(files.items(), 1):
                    op.progress = f"file {index}/{len(files)} ({name}) to {node}"
                    await asyncio.to_thread(_put, target, f"{BASE}/{sid}/file?name={urllib.parse.quote(name)}",
                                            vm_files.records(path, sent))
            op.progress = f"making {rec.name} on {node}"
            made = await target.json("POST", f"{BASE}/{sid}/finish", {})
            if running is not None:
                live = await vm_live.send(c, running, rec, target, sid, BASE, op)
                made = {"instance": None}
            await migrate._switch(cluster, rec, node)
        except BaseException as exc:
            log.warning("migration of VM %s to %s failed (%s); undoing it", rec.name, node,
                        exc.message if isinstance(exc, CtdError) else repr(exc))
            with contextlib.suppress(CtdError):
                await target.json("DELETE", f"{BASE}/{sid}")
            if running is not None and running.qmp is not None:
                await vm_live.undo(running.qmp, [])   # the guest runs here again (after a failed switch too)
            raise
    with contextlib.suppress(CtdError):
        await target.json("POST", f"{BASE}/{sid}/done")
    try:
        await instances.destroy(instances.get(rec.id), force=True)
    except CtdError as exc:   # the target has it: this copy is garbage now, never started again
        log.error("%s migrated to %s, but its copy here could not be removed: %s", rec.name, node, exc.message)
    cluster.poke()
    took = time.monotonic() - t0
    notes = []
    if vm.iso or vm.drivers_iso or vm.media:
        notes.append("the VM's ISO files (installer, drivers, inserted CD-ROM) are host files and did not move: "
                     "copy them to the target and insert them there if it still needs them")
    if live is not None:
        log.info("migrated VM %s live to %s: downtime %.3f s, %.3f s in all", rec.name, node, live["downtime"], took)
        return {"instance": made.get("instance"), "node": node, "was_running": True, "live": True,
                "memory": live["memory"], "downtime": round(live["downtime"], 3),
                "downtime_parts": {k: round(v, 3) for k, v in live["parts"].items()},
                "duration": round(took, 3), "notes": notes}
    log.info("migrated VM %s to %s: %d files, %d bytes of data, %.3f s", rec.name, node, len(files), sent[0], took)
    return {"instance": made.get("instance"), "node": node, "was_running": False, "rounds": [sent[0]],
            "files": sorted(files), "downtime": None, "duration": round(took, 3), "notes": notes}
