"""Growing a VM's root disk: `ctctl set VM --disk 40G` (PATCH body {"disk": "40G"}).

The disk is a sparse raw file in the pool. A stopped VM's file is extended; a running VM's
through QMP block_resize (QEMU extends the file and tells the guest, which sees the larger
virtio disk at once). The filesystem inside is the guest's: in a disk ctd built from a template
(ext4 on the whole of /dev/vda), ctd's seed applier runs resize2fs at every boot (applier.py),
so the root filesystem grows at the next boot; an installed guest grows its own partition and
filesystem (cloud-init's growpart/resizefs do it at boot).

Refused, with nothing changed: a size below the disk's current size (shrinking would cut the
guest's filesystem, which ctd never reads), a size create would refuse for this pool
(kind.check_disk_size), a VM whose disk is not a file ctd made. Abuse: an admin of a tenant
with `set` rights could ask for a huge sparse disk to fill the pool later; the pool rule is the
same as at create (sparse overcommit is bounded), and the quota/monitoring of the pool is the
provider's.

The size create chose, and every grow since, is the VM's options' disk_size (what project
limits and backups count).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from cgroups import parse_size
from ctd import limits as limits_mod
from ctd.errors import Conflict, InvalidRequest
from ctd.instance.vm.qmp import Qmp
from ctd.state import InstanceRecord
from ctd.state.options import VmOptions

ROOT_DRIVE = "drive-disk0"   # argv.py names the first -drive so


def parse_disk_size(value: object) -> int:
    """A disk size from a request ("40G", "40960M", bytes); 400 naming the value otherwise."""
    try:
        size = parse_size(str(value))
    except ValueError as exc:
        raise InvalidRequest(f"invalid disk size {str(value)[:40]!r}: {exc}; e.g. 40G") from None
    if size <= 0:
        raise InvalidRequest(f"invalid disk size {str(value)[:40]!r}: give a size such as 40G")
    return size


def store_size(rec: InstanceRecord, size: int) -> None:
    vm = rec.options.vm or VmOptions()
    rec.options = dataclasses.replace(rec.options, vm=dataclasses.replace(vm, disk_size=size))


@dataclass(frozen=True)
class Grow:
    """A checked grow of one VM's root disk."""

    path: Path
    old: int      # bytes the file has now
    new: int

    @property
    def changes(self) -> bool:
        return self.new != self.old


def plan(rec: InstanceRecord, path: Path, new: int) -> Grow:
    """The grow, or InvalidRequest (shrink) / Conflict (no disk file)."""
    if not path.is_file() or path.is_symlink():
        raise Conflict(f"{rec.name} has no disk file ctd can resize ({path.name})")
    old = path.stat().st_size
    if new < old:
        raise InvalidRequest(f"{rec.name}'s disk is {limits_mod.human_size(old)}: ctd grows disks, never shrinks "
                             f"them (that would cut the guest's filesystem); give at least "
                             f"{limits_mod.human_size(old)}")
    if new % 512:
        raise InvalidRequest(f"disk size {new} is not a whole number of 512-byte sectors; e.g. 40G")
    return Grow(path, old, new)


async def apply(grow: Grow, qmp: Qmp | None) -> None:
    """The file grown: by QEMU when it runs (qmp given), else here."""
    if qmp is not None:
        await qmp.execute("block_resize", {"device": ROOT_DRIVE, "size": grow.new})
    else:
        await asyncio.to_thread(os.truncate, grow.path, grow.new)


async def undo(grow: Grow, qmp: Qmp | None) -> None:
    """Back to the old size, right after apply() (a later step of the same set failed): the
    guest has had no time to put data in the new space."""
    if qmp is not None:
        await qmp.execute("block_resize", {"device": ROOT_DRIVE, "size": grow.old})
    else:
        await asyncio.to_thread(os.truncate, grow.path, grow.old)


def note(rec: InstanceRecord, grow: Grow, running: bool) -> str:
    """What the user must know: when the guest's filesystem follows."""
    size = limits_mod.human_size(grow.new)
    vm = rec.options.vm or VmOptions()
    if vm.windows:
        return f"disk {size}: extend the volume in Windows (Disk Management or diskpart)"
    if vm.kernel:   # a template disk: ext4 on the whole disk, ctd's applier grows it
        if running:
            return f"disk {size}: the guest sees it now; ctd's applier grows the root filesystem at its next boot"
        return f"disk {size}: ctd's applier grows the root filesystem when the VM starts"
    return (f"disk {size}: grow the partition and filesystem inside the guest (cloud-init's growpart "
            "does it at boot)")
