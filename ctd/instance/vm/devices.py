"""A VM's devices changed after create: its removable CD-ROM (POST/DELETE
/1.0/instances/REF/media) and its data disks (POST /1.0/instances/REF/disks, DELETE
/1.0/instances/REF/disks/NAME). Live in a running VM where QEMU can, stored either way.

The manager knows none of this: the API reaches it (ctd/api/context.py) with the manager as
`Power` (ctd/instance/power.py) for lookup, lock, event and view, and the VM kind for the
driver. Checks raise 4xx before the lock is taken; each change takes the instance's lock,
re-reads its record, stores it and publishes a `set` lifecycle event with its notes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ctd import validate
from ctd.errors import InvalidRequest
from ctd.events import model as ev
from ctd.instance.power import Power
from ctd.instance.vm import datadisks, media
from ctd.instance.vm.disks import parse_disk_size
from ctd.instance.vm.kind import VmKind, check_disk_size
from ctd.state import InstanceRecord, InstanceType, StateDB
from ctd.state.options import VmOptions


class VmDevices:
    """Media and data disks of VMs."""

    def __init__(self, power: Power, db: StateDB, vms: VmKind) -> None:
        self.power = power
        self.db = db
        self.vms = vms

    async def media(self, rec: InstanceRecord, body: Any | None) -> dict[str, Any]:
        """A VM's removable ISO: inserted (body: iso, boot) or ejected (None); see media.py."""
        if rec.type is not InstanceType.VM:
            raise InvalidRequest(f"{rec.name} is a container: media are a VM's CD-ROM (host files go in with --mount)")
        iso, boot = None, False
        if body is not None:
            body = validate.body_fields(body, {"iso", "boot"})
            iso, boot = media.check_iso(body.get("iso"), self.vms.forbidden_media()), validate.boolean(body, "boot")
        p = self.power
        async with p.lock(rec):
            rec = p.get(rec.id)
            return self._changed(rec, await self.change_media(rec, iso, boot))

    async def data_disk(self, rec: InstanceRecord, body: Any | None, name: str | None = None) -> dict[str, Any]:
        """A VM's data disk added (body: size, name) or removed (name); see datadisks.py."""
        if rec.type is not InstanceType.VM:
            raise InvalidRequest(f"{rec.name} is a container: data disks are a VM's (a container's space is its "
                                 "diskspace limit; host directories go in with --mount)")
        size = None
        if body is not None:
            body = validate.body_fields(body, {"name", "size"}, {"size"})
            size = parse_disk_size(body["size"])
        p = self.power
        async with p.lock(rec):
            rec = p.get(rec.id)
            if size is not None:
                assert body is not None
                notes = await self.add_disk(rec, datadisks.check_name(body.get("name"), rec.options.vm or VmOptions()),
                                            size)
            else:
                assert name is not None
                notes = await self.remove_disk(rec, name)
            return self._changed(rec, notes)

    def _changed(self, rec: InstanceRecord, notes: list[str]) -> dict[str, Any]:
        """rec stored, the change published, and the instance's view with the notes."""
        self.db.update_instance(rec)
        self.power.emit(rec, ev.Lifecycle.SET, notes=notes)
        return {**self.power.view(self.power.get(rec.id)), "notes": notes}

    async def add_disk(self, rec: InstanceRecord, name: str, size: int) -> list[str]:
        """A data disk made (and plugged into the running VM where it can be); the caller stores
        rec. Returns notes (datadisks.py)."""
        check_disk_size(self.vms.ctx, size)
        running = self.vms.running_or_none(rec)
        return await datadisks.add(rec, self.vms.ctx.storage.instance_path(rec.name), name, size,
                                   None if running is None else running.spec, None if running is None else running.qmp)

    async def remove_disk(self, rec: InstanceRecord, name: str) -> list[str]:
        """A data disk unplugged (the guest releases it) and its file deleted; the caller stores rec."""
        running = self.vms.running_or_none(rec)
        await datadisks.remove(rec, self.vms.ctx.storage.instance_path(rec.name), name,
                               None if running is None else running.spec, None if running is None else running.qmp)
        return []

    async def change_media(self, rec: InstanceRecord, iso: Path | None, boot: bool) -> list[str]:
        """Insert (iso) or eject (None) the removable CD-ROM's ISO: kept in the settings, and live
        in a running VM; the caller stores rec. Returns notes (media.py)."""
        running = self.vms.running_or_none(rec) if self.vms.driver else None
        notes: list[str] = []
        if running is not None:
            if running.qmp is None or not running.spec.media_slot:
                notes.append("media: this VM was started without a removable CD-ROM drive; the change applies at "
                             f"its next start (ctctl restart {rec.name})")
            elif iso is not None:
                await media.insert(running.qmp, iso)
            else:
                await media.eject(running.qmp)
        was_boot = media.stored(rec.options.vm or VmOptions())[1]
        media.store(rec, iso, boot)
        if boot or (was_boot and running is not None):
            when = f"at its next start (ctctl restart {rec.name})" if running is not None else "when it starts"
            notes.append(f"boot: from {'the ISO' if boot else 'its disk'} {when}")
        return notes
