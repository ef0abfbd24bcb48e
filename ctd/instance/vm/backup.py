"""Backups and restores of VMs: the VM side of ctd/instance/transfer.py.

The file is a ctd backup of type "vm" (ctd/storage/backup/vmarchive.py): the disk as qcow2, the
UEFI variables and the TPM state when the VM has them, and its settings in the header's meta
(the container fields plus "vm": profile, compat, disk_size, kernel, and a Linux VM's firmware,
secure_boot, tpm).

Consistency. A running VM, or a suspended one, is copied by QEMU itself: one QMP `transaction`
starts a `blockdev-backup` job (sync full) for the disk and one for the UEFI variables' flash,
so both are copies of the same instant while the guest keeps running (copy-before-write: a
guest write to a block not copied yet first sends the old block to the copy). ctd's VMs have
no When the guest agent answers, the guest's filesystems are frozen while the jobs start
(livesnap.frozen) and the answer says "filesystems frozen"; without one the copy is
crash-consistent (the disk as after a power cut, which journaling filesystems and databases
recover from), and the answer says so. The TPM state is swtpm's files, copied as they are. A stopped VM (or a
snapshot's disk) is converted with qemu-img, under the instance's lock: it cannot start
meanwhile. Work files live in STORAGE/.backup-NAME-XXXX (removed afterwards, or by
discard_partial after a crash).

Restore. The header is a tenant's file, checked like a create request: the container fields
through restore_plan.plan_restore, the VM's here. "vm" may hold only profile (linux|windows),
compat (a boolean), disk_size (checked as --disk is at create), kernel (a boolean: the VM boots
a kernel of the host's, as a template VM does; the paths are this host's, never the file's) and
firmware, secure_boot, tpm (checked as at create: vm/firmware.py). Any other field, a host path
(an installer ISO, a kernel, a firmware or NVRAM file), refuses the restore: a backup never
chooses a host file. privileged is refused for a VM. The disk image is checked before anything
opens it (ctd/storage/backup/qcow2.py) and must have exactly the header's disk size; UEFI
variables must have this host's template's size and are only taken for a UEFI VM, TPM state
only for a VM with a TPM. The new VM has a new id, uuid, MACs and addresses, and a new seed
(whose instance-id makes the guest's applier or cloud-init treat it as a new machine); its disk
is never mounted on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener

from ctd import validate
from ctd.errors import Conflict, CtdError, InvalidRequest, NotFound, NotSupported, OperationFailed
from ctd.instance.context import InstanceContext
from ctd.instance.requests import BackupRequest
from ctd.instance.reserve import NewInstance
from ctd.instance.restore_plan import RestorePlan, plan_restore
from ctd.instance.vm import firmware as fwmod
from ctd.instance.vm import livesnap, rootdisk
from ctd.instance.vm.driver import RunningVm
from ctd.instance.vm.kind import VmKind, check_disk_size
from ctd.instance.vm.qmp import Qmp
from ctd.instance.vm.spec import Firmware
from ctd.state import InstanceRecord, InstanceType
from ctd.state.options import FirmwareType, InstanceOptions, VmOptions
from ctd.storage.backup.format import (
    BACKUP_PREFIX,
    FORMAT,
    VERSION,
    VM_DISK,
    VM_DRIVER,
    VM_TPM,
    VM_VARS,
    BackupHeader,
    BackupMeta,
    Progress,
)
from ctd.storage.backup.qcow2 import create_qcow2, raw_to_qcow2
from ctd.storage.backup.vmarchive import VmExpect, restore_vm_backup, tar_tpm, write_vm_backup
from ctd.storage.base import unique_suffix

VM_META = frozenset({"profile", "compat", "disk_size", "kernel", *fwmod.FIELDS})
CRASH_CONSISTENT = ("crash-consistent: copied by QEMU while the VM ran, as the disk was at one instant "
                    "(no guest agent froze the guest's filesystems)")
JOB_EVENTS = ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")
FROZEN = "consistent: filesystems frozen by the guest agent ({n}) while QEMU's copy began, the VM running"


@dataclass
class VmRestorePlan:
    """A VM's backup header, checked: the shared settings and the VM's own."""

    base: RestorePlan
    vm: VmOptions               # rec.options.vm of the new VM
    expect: VmExpect
    notes: list[str] = field(default_factory=list)


class VmBackups:
    def __init__(self, ctx: InstanceContext, kind: VmKind) -> None:
        self.ctx, self.kind = ctx, kind

    # ------------------------------------------------------------- backup

    def check_backup(self, driver: str) -> None:
        if driver != "auto":
            raise InvalidRequest("a VM's backup is its disk image (qcow2) and state; --tar is for containers")

    @staticmethod
    def meta(rec: InstanceRecord, common: BackupMeta) -> BackupMeta:
        """The container fields a VM has (no init, no stop signal, never privileged) and "vm"."""
        vm = rec.options.vm or VmOptions()
        meta = common.copy()
        meta.pop("init", None)
        meta.pop("stop_signal", None)
        meta.pop("privileged", None)
        if vm.passwd is not None:
            meta["options"] = {**meta.get("options", {}), "passwd": vm.passwd.to_stored()}
        meta["vm"] = {"profile": vm.profile, "compat": vm.compat, "disk_size": vm.disk_size,
                      "kernel": bool(vm.kernel)}
        if not vm.windows:   # the windows profile's firmware is fixed (and refused if named)
            meta["vm"] |= {"firmware": vm.firmware.value, "secure_boot": vm.secure_boot, "tpm": vm.tpm}
        return meta

    async def backup(self, rec: InstanceRecord, checked: BackupRequest, meta: BackupMeta,
                     progress: Progress) -> dict[str, Any]:
        """The backup file of rec (the caller holds its lock); a running VM stays running."""
        storage = self.ctx.storage
        base = storage.instance_path(rec.name)
        disk = base / "disk.raw" if checked.snapshot is None else \
            storage.snapshot_path(rec.name, checked.snapshot) / "disk.raw"
        if not disk.is_file():
            raise NotFound(f"{rec.name} has no disk"
                           + (f" in snapshot {checked.snapshot!r}" if checked.snapshot else ""))
        disk_size = disk.stat().st_size
        meta["vm"]["disk_size"] = disk_size
        fw = fwmod.settings(rec.options.vm or VmOptions())
        nvram = base / VM_VARS if fw.uefi and (base / VM_VARS).is_file() else None
        tpm = base / "tpm" if fw.tpm and (base / "tpm").is_dir() else None
        running = self.kind.driver.running.get(rec.name) if self.kind.driver else None
        now = dt.datetime.now(dt.UTC)
        header: BackupHeader = {
            "format": FORMAT, "version": VERSION, "type": "vm", "driver": VM_DRIVER, "member": VM_DISK,
            "name": rec.name, "snapshot": checked.snapshot, "source_storage": storage.name,
            "created": now.isoformat(timespec="seconds"), "created_ts": int(now.timestamp()), "meta": meta}
        work = storage.root / f"{BACKUP_PREFIX}{rec.name}-{unique_suffix()}"
        work.mkdir(mode=0o700)
        notes: list[str] = []
        try:
            if running is not None and checked.snapshot is None:
                consistency = await self._copy_running(running, work, disk_size, nvram, progress, notes)
            else:
                await asyncio.to_thread(raw_to_qcow2, disk, work / VM_DISK)
                if nvram is not None:
                    await asyncio.to_thread(shutil.copyfile, nvram, work / VM_VARS)
                consistency = "consistent: the VM was stopped" if running is None else \
                    "consistent: a snapshot's disk (the VM runs on)"
            members = [(VM_DISK, work / VM_DISK)]
            if nvram is not None:
                members.append((VM_VARS, work / VM_VARS))
            if tpm is not None:
                await asyncio.to_thread(tar_tpm, tpm, work / VM_TPM)
                members.append((VM_TPM, work / VM_TPM))
            size = await asyncio.to_thread(write_vm_backup, checked.out, header, members)
        except OSError as exc:
            raise OperationFailed(f"writing the backup of {rec.name!r} failed: {exc.strerror or exc}") from None
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        if rec.options.vm is not None and rec.options.vm.data_disks:
            names = ", ".join(d.name for d in rec.options.vm.data_disks)
            notes.append(f"the VM's data disks ({names}) are not in the backup (its root disk only): back up "
                         "their data from inside the guest")
        if rec.options.vm is not None and rec.options.vm.iso:
            notes.append("the VM's installer ISO is not in the backup (a host file): a restored VM boots its disk")
        progress(size, size)
        return {"file": str(checked.out), "driver": VM_DRIVER, "size": size, "consistency": consistency,
                "notes": notes}

    async def _copy_running(self, vm: RunningVm, work: Path, disk_size: int, nvram: Path | None,
                            progress: Progress, notes: list[str]) -> str:
        """QEMU copies the disk (and the UEFI flash) of the running or paused VM into work."""
        q = vm.qmp
        if q is None or not q.connected:
            raise Conflict(f"{vm.name} runs without a QMP session to ctd; stop it to back it up")
        await asyncio.to_thread(create_qcow2, work / VM_DISK, disk_size)
        # (QEMU's device, the job and target node's name, the target node)
        jobs = [("drive-disk0", "ctd-backup-disk",
                 {"driver": "qcow2", "file": {"driver": "file", "filename": str(work / VM_DISK)}})]
        if nvram is not None:
            with open(work / VM_VARS, "wb") as fh:
                fh.truncate(nvram.stat().st_size)
            jobs.append(("ovmf-vars", "ctd-backup-vars", {"driver": "file", "filename": str(work / VM_VARS)}))
        nodes = [node for _, node, _ in jobs]
        await _release(q, nodes, cancel=True)   # left by a ctd killed during a backup of this QEMU
        done = False
        try:
            for _, node, target in jobs:
                await q.execute("blockdev-add", {"node-name": node, **target})
            async with q.events(*JOB_EVENTS) as events:
                # the copy is of the disk as it is when the jobs start: frozen just for that instant
                async with livesnap.frozen(vm.agent, notes) as count:
                    await q.execute("transaction", {"actions": [
                        {"type": "blockdev-backup", "data": {"job-id": node, "device": device, "target": node,
                                                             "sync": "full"}} for device, node, _ in jobs]})
                await self._wait_jobs(vm, q, events, set(nodes), progress)
            done = True
        finally:
            await _release(q, nodes, cancel=not done)
        return CRASH_CONSISTENT if count is None else FROZEN.format(n=count)

    @staticmethod
    async def _wait_jobs(vm: RunningVm, q: Qmp, events: EventListener, pending: set[str], progress: Progress) -> None:
        while pending:
            event = await q.wait_event(events, 1.0)
            if event is None:
                if vm.exited.done():
                    raise OperationFailed(f"{vm.name} stopped during its backup; the backup is not made")
                jobs = [j for j in await q.query_block_jobs() if j.get("device") in pending]
                if jobs:
                    progress(sum(j.get("offset", 0) for j in jobs), sum(j.get("len", 0) for j in jobs))
                continue
            data = event.get("data", {})
            if data.get("device") not in pending:
                continue
            if event.get("event") == "BLOCK_JOB_CANCELLED" or data.get("error"):
                raise OperationFailed(f"QEMU's copy of {vm.name}'s disk failed: {data.get('error', 'cancelled')}")
            pending.discard(data["device"])

    # ------------------------------------------------------------- restore

    def plan(self, header: BackupHeader, body: dict[str, Any]) -> VmRestorePlan:
        """The VM a restore of header makes, checked (see the module docstring)."""
        self.kind._vms   # noqa: B018 - NotSupported without QEMU
        if validate.boolean(body, "privileged"):
            raise InvalidRequest("privileged is a container option; VMs are isolated by QEMU")
        meta = dict(header.get("meta") or {})
        raw = meta.pop("vm", None)
        for key in ("init", "stop_signal", "privileged"):
            meta.pop(key, None)
        if not isinstance(raw, dict):
            raise InvalidRequest("backup header, vm: missing or not an object")
        unknown = sorted(str(k)[:40] for k in set(raw) - VM_META)
        if unknown:
            raise InvalidRequest(f"backup header, vm: unknown field(s) {', '.join(unknown[:5])}; a VM's backup "
                                 f"holds only {', '.join(sorted(VM_META))} (never a host path)")
        profile, size = raw.get("profile", "linux"), raw.get("disk_size")
        if profile not in ("linux", "windows"):
            raise InvalidRequest(f"backup header, vm: invalid profile {str(profile)[:40]!r}: linux or windows")
        if not isinstance(size, int) or isinstance(size, bool):
            raise InvalidRequest("backup header, vm: disk_size must be a number of bytes")
        try:
            check_disk_size(self.ctx, size)
        except InvalidRequest as exc:
            raise InvalidRequest(f"backup header, vm: disk_size: {exc.message}") from None
        try:
            fw = fwmod.check({k: raw[k] for k in fwmod.FIELDS if k in raw}, profile, validate.boolean(raw, "kernel"))
        except InvalidRequest as exc:
            raise InvalidRequest(f"backup header, vm: {exc.message}") from None
        vm = VmOptions(profile=profile, compat=validate.boolean(raw, "compat"), disk_size=size,
                       firmware=FirmwareType.UEFI if fw.uefi else FirmwareType.BIOS, secure_boot=fw.secure_boot,
                       tpm=fw.tpm)
        if validate.boolean(raw, "kernel"):
            kernel = rootdisk.host_kernel()
            vm = replace(vm, kernel=str(kernel.vmlinuz), initrd=str(kernel.initrd), append=rootdisk.kernel_cmdline())
        base = plan_restore(self.ctx, {**header, "meta": meta}, {k: v for k, v in body.items() if k != "privileged"})
        try:
            self.kind.check_limits(base.limits)
        except InvalidRequest as exc:
            raise InvalidRequest(f"limits (the backup header's, or given at restore): {exc.message}") from None
        vm = replace(vm, passwd=base.options.passwd)
        base.options = InstanceOptions(network_style="networkd", ssh_keys=base.options.ssh_keys,
                                       timezone=base.options.timezone, nameservers=base.options.nameservers, vm=vm)
        vars_size = None
        if fw.uefi:
            template = Firmware.ovmf(fw.secure_boot).vars_template
            if not template.is_file():
                raise NotSupported(f"the VM has UEFI firmware and this host has none ({template}): "
                                   "apt-get install ovmf")
            vars_size = template.stat().st_size
        return VmRestorePlan(base, vm, VmExpect(size, vars_size, tpm=fw.tpm), base.notes)

    async def restore(self, file: Path, plan: VmRestorePlan, name: str, instance_id: int, new: NewInstance,
                      progress: Progress) -> InstanceRecord:
        """The VM of a checked plan, made inside the caller's new_instance block."""
        ctx, p = self.ctx, plan.base
        rec = InstanceRecord(
            id=instance_id, name=name, type=InstanceType.VM, template=p.template, hostname=p.hostname,
            privileged=False, idmap_base=None, limits=p.limits,
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), init=[],
            stop_signal="ACPI", options=p.options, description=p.description, tags=p.tags)
        await asyncio.to_thread(ctx.network.prepare, p.nics)
        await asyncio.to_thread(restore_vm_backup, ctx.storage, file, name, plan.expect, progress)
        new.storage_made()
        new.mark_creating()
        new.add_record(rec, p.nics)
        await asyncio.to_thread(self.kind._vms.write_seed, rec)
        new.commit()
        return rec


async def _release(q: Qmp, nodes: list[str], cancel: bool) -> None:
    """The backup's jobs cancelled (if asked) and its target nodes removed; what is not there
    (or a QEMU gone meanwhile) is fine."""
    for node in nodes if cancel else []:
        with contextlib.suppress(CtdError):
            await q.execute("block-job-cancel", {"device": node, "force": True})
    for node in nodes:
        for _ in range(50):   # a cancelled job lets go of its target a moment later
            try:
                await q.execute("blockdev-del", {"node-name": node})
                break
            except OperationFailed as exc:
                if "in use" not in exc.message and "busy" not in exc.message:
                    break
                await asyncio.sleep(0.1)


__all__ = ["VmBackups", "VmRestorePlan"]
