"""Backups, restores, and template tarballs: files on the daemon's host, long work with progress."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ctd import guest, validate
from ctd.errors import Conflict, InvalidRequest, NotFound
from ctd.hostfiles import input_file, output_file
from ctd.instance.manager import InstanceManager
from ctd.instance.requests import BackupRequest, RestoreRequest
from ctd.instance.restore_plan import GUEST_OPTIONS, plan_restore
from ctd.operations import Operation
from ctd.state import InstanceRecord, InstanceType, PowerState, TemplateRecord
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

    # ------------------------------------------------------------- backup

    def check_backup(self, rec: InstanceRecord, body: Any) -> BackupRequest:
        if rec.type is InstanceType.VM:
            raise InvalidRequest(f"{rec.name} is a VM: backup and restore are for containers; stop the VM "
                                 f"and keep its disk with 'ctctl snapshot {rec.name} NAME' or 'ctctl clone'")
        body = validate.body_fields(body, {"file", "snapshot", "driver"}, {"file"})
        out = output_file(body["file"], "file")
        snap = body.get("snapshot")
        if snap is not None:
            snap = self.instances.snapshot_name(snap)
            if snap not in self.storage.list_snapshots(rec.name):
                raise NotFound(f"{rec.name} has no snapshot {snap!r}")
        driver = body.get("driver", "auto")
        if driver not in ("auto", "tar"):
            raise InvalidRequest("driver must be auto (btrfs send where possible) or tar")
        if snap is None and self.storage.name != "btrfs" and rec.state is not PowerState.STOPPED:
            raise Conflict(f"{rec.name} is running: back up a snapshot (--snapshot) or stop it first")
        return BackupRequest(out=out, snapshot=snap, driver=None if driver == "auto" else "tar")

    def meta(self, rec: InstanceRecord) -> dict[str, Any]:
        """The settings a restore reads back (and checks: see restore_plan). Runtime state of a
        running instance (its cgroup names, VM state) stays out of the file."""
        nics = [{"network": n.network, "mode": n.mode.value, "filter": n.filter, "rate": n.rate,
                 "addresses": n.addresses} for n in self.db.nics_of(rec.id)]
        options = {k: v for k, v in rec.options.items() if k in GUEST_OPTIONS}
        return {"name": rec.name, "template": rec.template, "hostname": rec.hostname,
                "privileged": rec.privileged, "limits": rec.limits, "init": rec.init,
                "stop_signal": rec.stop_signal, "options": options, "nics": nics,
                "description": rec.description, "tags": rec.tags}   # never disabled/protected

    async def backup(self, rec: InstanceRecord, checked: BackupRequest, op: Operation) -> dict[str, Any]:
        async with self.instances.lock(rec):
            rec = self.instances.get(rec.id)   # its name as it is now (a rename may have come first)
            header = await asyncio.to_thread(
                backup.create_backup, self.storage, rec.name, checked.out, checked.snapshot,
                progress_of(op), meta=self.meta(rec), driver=checked.driver)
        return {"file": str(checked.out), "driver": header.get("driver"), "size": header.get("size")}

    # ------------------------------------------------------------- restore

    def check_restore(self, body: Any) -> RestoreRequest:
        """The restore request and the backup's header, checked like a create request (runs in
        a thread: it reads the file's header)."""
        body = validate.body_fields(body, {"file", "name", "privileged", "filter", "limits"}, {"file"})
        source = input_file(body["file"], "backup file")
        header = backup.read_backup_header(source)
        plan = plan_restore(self.instances.ctx, header, body)
        instance_id = self.instances.reserve(plan.name, None, "restore with --name NEW")
        return RestoreRequest(file=source, name=plan.name, id=instance_id, plan=plan)

    async def restore(self, checked: RestoreRequest, op: Operation) -> dict[str, Any]:
        name, instance_id, plan = checked.name, checked.id, checked.plan
        with self.instances.new_instance(name, instance_id) as new:
            base = self.instances.reserve_idmap(instance_id, plan.privileged)
            rec = InstanceRecord(
                id=instance_id, name=name, type=InstanceType.CONTAINER, template=plan.template,
                hostname=plan.hostname, privileged=plan.privileged, idmap_base=base, limits=plan.limits,
                created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
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
            return {**self.instances.brief(rec), "notes": plan.notes}

    # ------------------------------------------------------------- template tarballs

    def check_import(self, body: dict[str, Any]) -> dict[str, Any]:
        source = input_file(body["import"], "template tarball")
        default = source.name.split(".tar")[0] if ".tar" in source.name else source.stem
        name = validate.instance_name(body.get("name") or default.lower().replace("_", "-"), "template name")
        templates = self.instances.templates
        if self.db.get_template(name) is not None or name in templates.recipes() or name in templates.building:
            raise Conflict(f"a template named {name!r} exists already; import with --name NEW")
        return {"file": source, "name": name}

    def import_template(self, checked: dict[str, Any], op: Operation) -> TemplateRecord:
        """Runs in a thread."""
        name = checked["name"]
        staging = self.storage.new_template_dir(name)
        try:
            result = archive.import_rootfs(checked["file"], staging / "rootfs", progress_of(op))
            checked["dropped_devices"] = result["skipped_devices"]  # for the operation's result
            path = self.storage.commit_template(name, staging)
        except BaseException:
            self.storage.discard_template_staging(staging)
            raise
        distro, release = _os_release(path / "rootfs")
        return TemplateRecord(name=name, recipe=f"import:{checked['file'].name}", path=str(path),
                              size=tree_size(path), built_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              distro=distro, release=release, arch=os.uname().machine)

    def check_export(self, name: str, body: Any) -> dict[str, Any]:
        body = validate.body_fields(body, {"file"}, {"file"})
        self.instances.templates.get(name)
        return {"name": name, "out": output_file(body["file"], "file")}

    def export_template(self, checked: dict[str, Any], op: Operation) -> dict[str, Any]:
        """Runs in a thread."""
        size = archive.export_rootfs(self.storage.template_path(checked["name"]) / "rootfs", checked["out"], None,
                                     progress_of(op))
        return {"file": str(checked["out"]), "size": size}


def _os_release(rootfs: Path) -> tuple[str, str]:
    from ctd import guestfs
    text = guestfs.read_file(rootfs, "/etc/os-release") or ""
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return values.get("ID", "").strip('"'), values.get("VERSION_CODENAME", values.get("VERSION_ID", "")).strip('"')


__all__ = ["Transfers"]
