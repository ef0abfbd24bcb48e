"""The VM driver: a VmSpec from the instance, QEMU started in the VM's cgroup, QMP held,
exit learned through a pidfd, and QEMU found again after a ctd restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cgroups import CgroupManager, Resources

from ctd.errors import Conflict, OperationFailed
from ctd.instance.vm import process
from ctd.instance.vm.qmp import Qmp
from ctd.instance.vm.spec import Disk, Firmware, Nic, VmSpec, pick_accel
from ctd.linux.proc import start_time
from ctd.network.manager import NetworkManager
from ctd.state import InstanceRecord
from ctd.storage.base import StorageDriver

log = logging.getLogger("ctd.vm")
DEFAULT_RAM = 1 << 30
QEMU_OVERHEAD = 256 << 20  # QEMU's own memory on top of the guest's, for the cgroup limit
StoppedCallback = Callable[[str, "int | None"], None]


@dataclass
class RunningVm:
    name: str
    pid: int
    pidfd: int
    start_time: int
    spec: VmSpec
    qmp: Qmp | None = None
    exited: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def vm_group(rec: InstanceRecord) -> str:
    return f"vm-{rec.name}"


class VmDriver:
    def __init__(self, cgroups: CgroupManager, network: NetworkManager, storage: StorageDriver,
                 run_root: Path) -> None:
        self.cgroups = cgroups
        self.network = network
        self.storage = storage
        self.run_root = run_root
        self.running: dict[str, RunningVm] = {}
        self.on_stopped: StoppedCallback | None = None
        self.accel, self.accel_reason = pick_accel()

    # ------------------------------------------------------------- the spec

    def disk_path(self, rec: InstanceRecord) -> Path:
        return self.storage.instance_path(rec.name) / "disk.raw"

    def spec(self, rec: InstanceRecord, paused: bool = False) -> VmSpec:
        vm: dict[str, Any] = rec.options.get("vm", {})
        base = self.storage.instance_path(rec.name)
        nics = [Nic(self.network.host_name(n), n.mac, "e1000" if vm.get("compat") else "virtio-net-pci")
                for n in self.network.db.nics_of(rec.id)]
        kernel = vm.get("kernel")
        windows = vm.get("profile") == "windows"
        return VmSpec(
            name=rec.name, uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"ctd:{rec.id}:{rec.created_at}")),
            ram=rec.limits.get("ram", DEFAULT_RAM) // (1 << 20) * (1 << 20), cpus=rec.limits.get("cpus", 1),
            run_dir=self.run_root / str(rec.id), profile="windows" if windows else "linux", accel=self.accel,
            machine="q35" if windows else "pc",
            disks=[Disk(self.disk_path(rec), "raw", "ahci" if vm.get("compat") else "virtio")],
            cdroms=[Path(vm["iso"])] if vm.get("iso") else [],
            kernel=Path(kernel) if kernel else None, initrd=Path(vm["initrd"]) if vm.get("initrd") else None,
            append=vm.get("append"), nics=nics,
            firmware=Firmware.ovmf() if windows else None,
            nvram=base / "OVMF_VARS.fd" if windows else None,
            tpm_state_dir=base / "tpm" if windows else None,
            compat=bool(vm.get("compat")), drivers_iso=Path(vm["drivers_iso"]) if vm.get("drivers_iso") else None,
            paused=paused, boot_cdrom_first=bool(vm.get("iso")) and not kernel)

    # ------------------------------------------------------------- start / stop

    async def start(self, rec: InstanceRecord, resources: Resources, paused: bool = False) -> RunningVm:
        if rec.name in self.running:
            raise Conflict(f"{rec.name} is already running")
        spec = self.spec(rec, paused)
        spec.validate()
        group = self.cgroups.group(vm_group(rec))
        memory = spec.ram + QEMU_OVERHEAD
        with contextlib.ExitStack() as undo:
            await asyncio.to_thread(group.create)
            undo.callback(_destroy_group, group)
            await asyncio.to_thread(group.apply, Resources(memory_max=memory, cpu_quota_pct=resources.cpu_quota_pct,
                                                           cpu_weight=resources.cpu_weight, io_weight=resources.io_weight,
                                                           io_limits=resources.io_limits))
            await asyncio.to_thread(self.network.setup_taps, rec)
            undo.callback(self.network.teardown_taps, rec)
            pid = await process.start(spec, group.procs_files())
            undo.callback(process._kill, pid)
            pidfd = os.pidfd_open(pid)
            undo.pop_all()
        vm = RunningVm(rec.name, pid, pidfd, start_time(pid) or 0, spec)
        await self._attach(vm)
        return vm

    async def _attach(self, vm: RunningVm) -> None:
        self.running[vm.name] = vm
        vm.qmp = Qmp(vm.spec.qmp_socket)
        try:
            await vm.qmp.connect(timeout=10)
        except OperationFailed as exc:
            log.warning("VM %s: no QMP session: %s", vm.name, exc.message)
            vm.qmp = None
        asyncio.get_running_loop().add_reader(vm.pidfd, self._exited, vm)

    def _exited(self, vm: RunningVm) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(vm.pidfd)
        os.close(vm.pidfd)
        self.running.pop(vm.name, None)
        if vm.qmp is not None:
            loop.create_task(vm.qmp.close())
        if not vm.exited.done():
            vm.exited.set_result(None)
        if self.on_stopped:
            self.on_stopped(vm.name, None)

    async def stop(self, rec: InstanceRecord, timeout: float, kill: bool) -> str:
        vm = self.running.get(rec.name)
        if vm is None:
            return "gone"
        how = await process.stop(vm.spec, vm.pid, timeout=timeout, qmp=vm.qmp, force=kill)
        await asyncio.wait_for(asyncio.shield(vm.exited), 10)
        return how

    async def cleanup(self, rec: InstanceRecord) -> None:
        """After QEMU is gone: the swtpm, the taps, the cgroup."""
        with contextlib.suppress(Exception):
            await process.stop_swtpm(self.spec(rec))
        await asyncio.to_thread(self.network.teardown_taps, rec)
        await asyncio.to_thread(_destroy_group, self.cgroups.group(vm_group(rec)))

    # ------------------------------------------------------------- after a ctd restart

    async def adopt(self, rec: InstanceRecord) -> RunningVm | None:
        spec = self.spec(rec)
        pid = process.find_qemu(spec)
        if pid is None or (rec.pid_start is not None and start_time(pid) != rec.pid_start):
            return None
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        vm = RunningVm(rec.name, pid, pidfd, start_time(pid) or 0, spec)
        await self._attach(vm)
        await asyncio.to_thread(self.network.adopt_taps, rec)
        return vm

    # ------------------------------------------------------------- looking inside

    async def status(self, rec: InstanceRecord) -> str | None:
        vm = self.running.get(rec.name)
        if vm is None or vm.qmp is None:
            return None
        with contextlib.suppress(OperationFailed, OSError):
            return await vm.qmp.status()
        return None

    async def hardware(self, rec: InstanceRecord) -> dict[str, Any]:
        vm = self.running.get(rec.name)
        if vm is None or vm.qmp is None:
            raise Conflict(f"{rec.name} is not running")
        q = vm.qmp
        return {"status": await q.status(), "tpm": await q.query_tpm(), "block": await q.query_block(),
                "pci": await q.query_pci(), "chardev": await q.query_chardev(), "accel": vm.spec.accel}

    async def cont(self, rec: InstanceRecord) -> None:
        vm = self.running.get(rec.name)
        if vm is None or vm.qmp is None:
            raise Conflict(f"{rec.name} is not running")
        await vm.qmp.cont()


def _destroy_group(group) -> None:  # type: ignore[no-untyped-def]
    with contextlib.suppress(Exception):
        if group.exists():
            group.kill_all()
            group.destroy()
