"""A VM's extra (data) disks: `ctctl disk add VM --size 20G [--name NAME]` and `ctctl disk
remove VM NAME` (POST /1.0/instances/{ref}/disks, DELETE /1.0/instances/{ref}/disks/{disk}).

Each is a sparse raw file data-NAME.raw beside the root disk, a virtio disk after it (AHCI with
--compat): at a start the guest sees them as /dev/vdb, /dev/vdc … in the order they were added.
A running VM on machine pc (BIOS) takes a new one at once (QMP blockdev-add, then device_add of
a virtio-blk-pci: ACPI PCI hotplug) and gives one back when its guest releases it (device_del,
then DEVICE_DELETED); a q35 (UEFI) VM has no hotplug slot for it, so there the change applies at
its next start, said in a note. Removing deletes the file: its data is gone.

Snapshots, rollbacks and clones take the data disks with the root disk (storage's
vm_disk_files); a backup holds the root disk only, and its answer says which it left out.
The size rule is create's (kind.check_disk_size); the names are short so that QEMU's ids
(data-NAME, drive-data-NAME) stay valid.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
from pathlib import Path

from ctd.errors import Conflict, InvalidRequest, NotFound, OperationFailed
from ctd.instance.vm.qmp import Qmp
from ctd.instance.vm.spec import Disk, DiskBus, VmSpec
from ctd.state import InstanceRecord
from ctd.state.options import DataDisk, VmOptions

NAME = re.compile(r"[a-z][a-z0-9]{0,15}")
MAX_DISKS = 8
UNPLUG_TIMEOUT = 20.0   # seconds the guest has to release a disk (ACPI eject)


def check_name(value: object, vm: VmOptions) -> str:
    """The new disk's name (given, or the first free data1, data2 …); 400/409 naming the problem."""
    taken = {d.name for d in vm.data_disks}
    if len(taken) >= MAX_DISKS:
        raise Conflict(f"the VM has {MAX_DISKS} data disks already: remove one first")
    if value is None:
        return next(f"data{i}" for i in range(1, MAX_DISKS + 2) if f"data{i}" not in taken)
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise InvalidRequest(f"invalid disk name {str(value)[:40]!r}: a lowercase letter, then up to 15 lowercase "
                             "letters or digits (e.g. data1)")
    if value in taken:
        raise Conflict(f"the VM has a data disk named {value} already")
    return value


def find(vm: VmOptions, name: str) -> DataDisk:
    disk = next((d for d in vm.data_disks if d.name == name), None)
    if disk is None:
        names = ", ".join(d.name for d in vm.data_disks) or "none"
        raise NotFound(f"no data disk {name[:40]!r} (the VM's data disks: {names})")
    return disk


def path(vm_dir: Path, name: str) -> Path:
    return vm_dir / f"data-{name}.raw"


def device_id(name: str) -> str:
    return f"data-{name}"


def spec_disks(vm_dir: Path, vm: VmOptions) -> list[Disk]:
    """The data disks as VmSpec disks (after the root disk)."""
    bus: DiskBus = "ahci" if vm.compat else "virtio"
    return [Disk(path(vm_dir, d.name), "raw", bus, id=device_id(d.name)) for d in vm.data_disks]


def make(file: Path, size: int) -> None:
    """A sparse raw file of size bytes; refuses to replace one."""
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def stored(rec: InstanceRecord, disks: tuple[DataDisk, ...]) -> None:
    vm = dataclasses.replace(rec.options.vm or VmOptions(), data_disks=disks)
    rec.options = dataclasses.replace(rec.options, vm=vm)


async def plug(qmp: Qmp, file: Path, name: str) -> None:
    """A running VM takes the disk at once; nothing is left in QEMU if it cannot."""
    node = f"drive-{device_id(name)}"
    await qmp.execute("blockdev-add", {"node-name": node, "driver": "raw", "discard": "unmap",
                                       "file": {"driver": "file", "filename": str(file)}})
    try:
        await qmp.execute("device_add", {"driver": "virtio-blk-pci", "drive": node, "id": device_id(name)})
    except BaseException:
        await qmp.execute("blockdev-del", {"node-name": node})
        raise


async def unplug(qmp: Qmp, name: str, timeout: float = UNPLUG_TIMEOUT) -> None:
    """The guest releases the disk (ACPI eject), then QEMU closes the file; Conflict if it does not."""
    dev = device_id(name)
    async with qmp.events("DEVICE_DELETED") as events:
        await qmp.execute("device_del", {"id": dev})
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            event = await qmp.wait_event(events, left) if left > 0 else None
            if event is None:
                raise Conflict(f"the guest did not release data disk {name} within {timeout:.0f} s (it may be "
                               "mounted): unmount it inside, or stop the VM, and remove it again")
            if event.get("data", {}).get("device") == dev:
                break
    try:   # a hot-plugged disk's node outlives its device; one from the command line went with it
        await qmp.execute("blockdev-del", {"node-name": f"drive-{dev}"})
    except OperationFailed:
        pass


async def add(rec: InstanceRecord, vm_dir: Path, name: str, size: int, spec: VmSpec | None,
              qmp: Qmp | None) -> list[str]:
    """The disk's file made and, in a running VM (spec: the one it runs with) that can take it,
    plugged in; rec's options name it (the caller stores rec). Nothing is left if it fails."""
    vm, file = rec.options.vm or VmOptions(), path(vm_dir, name)
    notes: list[str] = []
    await asyncio.to_thread(make, file, size)
    try:
        if spec is not None and (qmp is None or spec.machine_type != "pc"):
            notes.append(f"disk {name}: the running VM has no hotplug slot for it (machine {spec.machine_type}); "
                         f"it gets it at its next start (ctctl restart {rec.name})")
        elif qmp is not None:
            await plug(qmp, file, name)
    except BaseException:
        file.unlink(missing_ok=True)
        raise
    stored(rec, (*vm.data_disks, DataDisk(name, size)))
    return notes


async def remove(rec: InstanceRecord, vm_dir: Path, name: str, spec: VmSpec | None, qmp: Qmp | None) -> None:
    """The disk taken from the running VM (its guest releases it), its file deleted, rec's options
    without it (the caller stores rec). Conflict, nothing changed, when the guest holds on."""
    vm = rec.options.vm or VmOptions()
    find(vm, name)
    if spec is not None:
        at_start = device_id(name) in {d.id for d in spec.disks}
        if qmp is None or (spec.machine_type != "pc" and at_start):
            raise Conflict(f"{rec.name} cannot give data disk {name} back while it runs (machine "
                           f"{spec.machine_type}): stop it first")
        try:
            await unplug(qmp, name)
        except OperationFailed as exc:
            if "not found" not in exc.message:   # added after this start (q35): never plugged in
                raise
    await asyncio.to_thread(path(vm_dir, name).unlink, True)
    stored(rec, tuple(d for d in vm.data_disks if d.name != name))
