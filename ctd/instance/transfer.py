"""Backups, restores, and template tarballs: files on the daemon's host, long work with progress."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ctd import guest, validate
from ctd.errors import Conflict, InvalidRequest, NotFound
from ctd.events.model import Lifecycle
from ctd.hostfiles import input_file, output_file
from ctd.instance import snapshots
from ctd.instance.manager import InstanceManager
from ctd.instance.requests import BackupRequest, RestoreRequest, TemplateExport, TemplateImport
from ctd.instance.restore_plan import plan_restore
from ctd.instance.vm.backup import VmBackups, VmRestorePlan
from ctd.operations import Operation
from ctd.state import InstanceRecord, InstanceType, NicRecord, PowerState, TemplateRecord
from ctd.storage import archive, backup
from ctd.template.manager import tree_size


def progress_of(op: Operation) -> Callable[[int, int], None]:
    """A (done, total) callback that keeps the operation's progress line current (any thread)."""
    def report(done: int, total: int) -> None:
        percent = f" ({100 * done // total}%)" if total else ""
        op.progress = f"{done / 1e6:.1f} MB of {total / 1e6:.1f} MB{percent}"
    return report


class Transfers:
    def __init__(self, instances: InstanceManager) -> None:
        self.instances = instances
        self.storage = instances.storage
        self.db = instances.db

    @functools.cached_property
    def vms(self) -> VmBackups:
        """A VM's backups and restores (made on first use)."""
        return VmBackups(self.instances.ctx, self.instances.kinds.vm)

    # ------------------------------------------------------------- backup

    def check_backup(self, rec: InstanceRecord, body: Any) -> BackupRequest:
        body = validate.body_fields(body, {"file", "snapshot", "driver"})
        if "file" not in body:   # the next backup of its chain, into the node's backup_dir
            if set(body) - {"driver"} or body.get("driver", "auto") != "auto":
                raise InvalidRequest("a backup into the node's backup_dir (no file named) is of the live root "
                                     "with the auto driver; name a file for a snapshot or a tar backup")
            if rec.type is InstanceType.CONTAINER and self.storage.name != "btrfs" \
                    and rec.state is not PowerState.STOPPED:
                raise Conflict(f"{rec.name} is running and this host's storage cannot snapshot it: stop it first")
            return BackupRequest(out=self.instances.backups.target(rec), snapshot=None, driver=None, chain=True)
        out = output_file(body["file"], "file")
        snap = body.get("snapshot")
        if snap is not None:
            snap = snapshots.check_name(snap)
            if snap not in self.storage.list_snapshots(rec.name):
                raise NotFound(f"{rec.name} has no snapshot {snap!r}")
        driver = body.get("driver", "auto")
        if rec.type is InstanceType.VM:
            self.vms.check_backup(driver)
            return BackupRequest(out=out, snapshot=snap, driver=None)
        if driver not in ("auto", "tar"):
            raise InvalidRequest("driver must be auto (btrfs send where possible) or tar")
        if snap is None and self.storage.name != "btrfs" and rec.state is not PowerState.STOPPED:
            raise Conflict(f"{rec.name} is running: back up a snapshot (--snapshot) or stop it first")
        return BackupRequest(out=out, snapshot=snap, driver=None if driver == "auto" else "tar")

    def meta(self, rec: InstanceRecord) -> backup.BackupMeta:
        """The settings a restore reads back (and checks: see restore_plan). Runtime state of a
        running instance (its cgroup names, VM state) stays out of the file."""
        nics = [_nic_meta(n) for n in self.db.nics_of(rec.id)]
        return {"name": rec.name, "template": rec.template, "hostname": rec.hostname,
                "privileged": rec.privileged, "limits": rec.limits, "init": rec.init,
                "stop_signal": rec.stop_signal, "options": rec.options.guest_stored(), "nics": nics,
                "description": rec.description, "tags": rec.tags}   # never disabled/protected

    async def backup(self, rec: InstanceRecord, checked: BackupRequest, op: Operation) -> dict[str, Any]:
        async with self.instances.lock(rec):
            rec = self.instances.get(rec.id)   # its name as it is now (a rename may have come first)
            if checked.chain and rec.type is InstanceType.VM:   # a VM's: full each time (its disk as qcow2)
                vm_meta, progress = VmBackups.meta(rec, self.meta(rec)), progress_of(op)

                async def write_vm(out: Path, parent: backup.Parent | None, keep: Path | None, backup_id: str
                                   ) -> dict[str, Any]:
                    del parent, keep, backup_id
                    done = await self.vms.backup(rec, BackupRequest(out=out, snapshot=None, driver=None), vm_meta,
                                                 progress)
                    return {**done, "kind": "full"}
                return await self.instances.backups.make(rec, self.instances.backups.target(rec), write_vm,
                                                         checked.scheduled)
            if checked.chain:
                meta, name = self.meta(rec), rec.name

                def write(out: Path, parent: backup.Parent | None, keep: Path | None, backup_id: str
                          ) -> backup.BackupHeader:
                    return backup.create_backup(self.storage, name, out, None, progress_of(op), meta=meta,
                                                parent=parent, keep=keep, backup_id=backup_id)
                # the target by the name as it is now (a rename may have come first)
                return await self.instances.backups.make(rec, self.instances.backups.target(rec), write,
                                                         checked.scheduled)
            if rec.type is InstanceType.VM:
                return await self.vms.backup(rec, checked, VmBackups.meta(rec, self.meta(rec)), progress_of(op))
            header = await asyncio.to_thread(
                backup.create_backup, self.storage, rec.name, checked.out, checked.snapshot,
                progress_of(op), meta=self.meta(rec), driver=checked.driver)
        return {"file": str(checked.out), "driver": header.get("driver"), "size": header.get("size")}

    # ------------------------------------------------------------- restore

    def check_restore(self, body: Any, project: str = "default") -> RestoreRequest:
        """The restore request and the backup's header, checked like a create request (runs in
        a thread: it reads the file's header)."""
        body = validate.body_fields(body, {"file", "name", "privileged", "filter", "limits"}, {"file"})
        source = input_file(body["file"], "backup file")
        header = backup.read_backup_header(source)
        vm: VmRestorePlan | None = None
        if header.get("type") == "vm":
            vm = self.vms.plan(header, body)
            plan = vm.base
        else:
            plan = plan_restore(self.instances.ctx, header, body)
        instance_id = self.instances.reserve(plan.name, None, "restore with --name NEW")
        return RestoreRequest(file=source, name=plan.name, id=instance_id, plan=plan, vm=vm, project=project)

    async def restore(self, checked: RestoreRequest, op: Operation) -> dict[str, Any]:
        name, instance_id, plan = checked.name, checked.id, checked.plan
        with self.instances.new_instance(name, instance_id, checked.project) as new:
            if isinstance(checked.vm, VmRestorePlan):
                rec = await self.vms.restore(checked.file, checked.vm, name, instance_id, new, progress_of(op))
                return {**self.instances.brief(rec), "notes": plan.notes}
            base = self.instances.reserve_idmap(instance_id, plan.privileged)
            rec = InstanceRecord(
                id=instance_id, name=name, type=InstanceType.CONTAINER, template=plan.template,
                hostname=plan.hostname, privileged=plan.privileged, idmap_base=base, limits=plan.limits,
                created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                init=plan.init, stop_signal=plan.stop_signal, options=plan.options,
                description=plan.description, tags=plan.tags)
            await asyncio.to_thread(backup.restore_backup, self.storage, checked.file, name, progress_of(op))
            new.storage_made()
            if "diskspace" in rec.limits:
                await asyncio.to_thread(self.storage.set_quota, name, rec.limits["diskspace"])
            new.mark_creating()
            new.add_record(rec, plan.nics)
            rootfs = self.storage.rootfs(name)
            if plan.new_identity:  # a copy beside its source must not pass for it (as clone)
                await asyncio.to_thread(guest.new_identity, rootfs)
            await asyncio.to_thread(self.instances.setup_guest, rec, rootfs)
            new.commit()
            self.instances.emit(rec, Lifecycle.CREATED, via="restore")
            return {**self.instances.brief(rec), "notes": plan.notes}

    # ------------------------------------------------------------- template tarballs

    def check_import(self, body: dict[str, Any]) -> TemplateImport:
        source = input_file(body["import"], "template tarball")
        default = source.name.split(".tar")[0] if ".tar" in source.name else source.stem
        name = validate.instance_name(body.get("name") or default.lower().replace("_", "-"), "template name")
        templates = self.instances.templates
        if self.db.get_template(name) is not None or name in templates.recipes() or name in templates.building:
            raise Conflict(f"a template named {name!r} exists already; import with --name NEW")
        return TemplateImport(file=source, name=name)

    def import_template(self, checked: TemplateImport, op: Operation) -> tuple[TemplateRecord, int]:
        """The template, and how many device nodes the tarball had that were left out. Runs
        in a thread."""
        name = checked.name
        staging = self.storage.new_template_dir(name)
        try:
            result = archive.import_rootfs(checked.file, staging / "rootfs", progress_of(op))
            path = self.storage.commit_template(name, staging)
        except BaseException:
            self.storage.discard_template_staging(staging)
            raise
        distro, release = _os_release(path / "rootfs")
        return TemplateRecord(name=name, recipe=f"import:{checked.file.name}", path=str(path),
                              size=tree_size(path), built_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                              distro=distro, release=release, arch=os.uname().machine), result["skipped_devices"]

    def check_export(self, name: str, body: Any) -> TemplateExport:
        body = validate.body_fields(body, {"file"}, {"file"})
        self.instances.templates.get(name)
        return TemplateExport(name=name, out=output_file(body["file"], "file"))

    def export_template(self, checked: TemplateExport, op: Operation) -> dict[str, Any]:
        """Runs in a thread; the operation's result."""
        size = archive.export_rootfs(self.storage.template_path(checked.name) / "rootfs", checked.out, None,
                                     progress_of(op))
        return {"file": str(checked.out), "size": size}


def _os_release(rootfs: Path) -> tuple[str, str]:
    from ctd import guestfs
    text = guestfs.read_file(rootfs, "/etc/os-release") or ""
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return values.get("ID", "").strip('"'), values.get("VERSION_CODENAME", values.get("VERSION_ID", "")).strip('"')


__all__ = ["Transfers"]


def _nic_meta(nic: NicRecord) -> backup.NicMeta:
    meta: backup.NicMeta = {"network": nic.network, "mode": nic.mode.value, "filter": nic.filter, "rate": nic.rate,
                            "addresses": nic.addresses}
    if nic.mtu:
        meta["mtu"] = nic.mtu
    if nic.vlan:
        meta["vlan"] = nic.vlan
    return meta
