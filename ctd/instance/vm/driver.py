"""The VM driver: a VmSpec from the instance, QEMU started in the VM's cgroup, QMP held,
exit learned through a pidfd, and QEMU found again after a ctd restart."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cgroups import CgroupGroup, CgroupManager, Resources
from ctd import guest, guestfs
from ctd.errors import Conflict, InvalidRequest, NotFound, OperationFailed
from ctd.instance.vm import applier, process, resize
from ctd.instance.vm.kernel import extract_vmlinux
from ctd.instance.vm.qmp import Qmp
from ctd.instance.vm.seed import Seed, SeedNic, build_seed_iso, content_id
from ctd.instance.vm.spec import Disk, Firmware, Nic, VmSpec, pick_accel
from ctd.limits import UNLIMITED
from ctd.linux.proc import start_time
from ctd.network.manager import NetworkManager
from ctd.state import InstanceRecord
from ctd.storage.base import StorageDriver

log = logging.getLogger("ctd.vm")
DEFAULT_RAM = 1 << 30
QEMU_OVERHEAD = 256 << 20  # QEMU's own memory on top of the guest's, for the cgroup limit
SEED_FILE = "seed.iso"
KERNEL_CACHE = "vm-kernels"   # in the pool: uncompressed kernels (vmlinux), one per bzImage
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


def vm_uuid(rec: InstanceRecord) -> str:
    """Stable for the VM's life, new for a clone (new id and creation time)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ctd:{rec.id}:{rec.created_at}"))


def is_linux(rec: InstanceRecord) -> bool:
    return rec.options.get("vm", {}).get("profile", "linux") != "windows"


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

    def boot_kernel(self, kernel: Path) -> Path:
        """The uncompressed vmlinux inside a bzImage, extracted once into the pool (a cache keyed
        by the bzImage's hash): QEMU boots it through its PVH entry, skipping the decompression
        that is half a TCG boot. The bzImage itself when it holds no vmlinux ctd can extract."""
        try:
            return extract_vmlinux(kernel, self.storage.root / KERNEL_CACHE)
        except (InvalidRequest, NotFound, OSError) as exc:
            log.warning("booting %s as it is: %s", kernel, exc)
            return kernel

    def seed_path(self, rec: InstanceRecord) -> Path:
        return self.storage.instance_path(rec.name) / SEED_FILE

    def seed(self, rec: InstanceRecord) -> Seed:
        """What a container of the same settings gets, for cloud-init: hostname, addresses per
        MAC, DNS, root's keys, the password hash, the timezone."""
        nameservers = list(rec.options.get("nameservers") or [])
        nics = [SeedNic(nic.mac, list(inside.addresses), inside.gateway4, inside.gateway6,
                        nameservers if i == 0 else [], onlink=inside.onlink_gateway)
                for i, (nic, inside) in enumerate(zip(self.network.db.nics_of(rec.id),
                                                      self.network.inside_config(rec)))]
        passwd = rec.options.get("vm", {}).get("passwd") or {}
        seed = Seed(instance_id="ctd", hostname=rec.hostname, ssh_authorized_keys=list(rec.options.get("ssh_keys") or []),
                    nics=nics, root_password_hash=passwd.get("hash"), password_user=passwd.get("user", "root"),
                    timezone=rec.options.get("timezone"))
        return dataclasses.replace(seed, instance_id=f"{vm_uuid(rec)}-{content_id(seed)}")

    def write_seed(self, rec: InstanceRecord) -> Path | None:
        """The NoCloud ISO in the VM's directory, rebuilt from the current settings (runs in a
        thread). Windows VMs get none (cloudbase-init is not set up by ctd)."""
        path = self.seed_path(rec)
        if not is_linux(rec):
            path.unlink(missing_ok=True)
            return None
        seed = self.seed(rec)
        return build_seed_iso(seed, path, files=self.applier_files(rec, seed))

    def applier_files(self, rec: InstanceRecord, seed: Seed) -> dict[str, str]:
        """What the in-guest seed applier (applier.py) copies into place, under ctd/ on the seed:
        the files ctd.guest writes into a container of these settings, made in a scratch root."""
        settings = guest.GuestSettings(
            hostname=rec.hostname, nics=self.network.inside_config(rec),
            nameservers=rec.options.get("nameservers") or [], network_style="networkd",
            ssh_keys=rec.options.get("ssh_keys") or [], timezone=rec.options.get("timezone"))
        with tempfile.TemporaryDirectory(prefix="ctd-guest-") as tmp:
            root = Path(tmp)
            for d in ("/etc", "/root"):
                guestfs.make_dirs(root, d)
            guest.apply(root, settings)
            guest.write_ip_script(root, settings.nics)   # for guests without networkd (busybox)
            picked = {"hostname": "/etc/hostname", "hosts": "/etc/hosts", "resolv.conf": "/etc/resolv.conf",
                      "network.sh": "/etc/ctd/network.sh", "authorized_keys": "/root/.ssh/authorized_keys",
                      "timezone": "/etc/timezone"}
            files = {name: text for name, path in picked.items()
                     if (text := guestfs.read_file(root, path)) is not None}
            files |= {f"network/{p.name}": p.read_text() for p in (root / "etc/systemd/network").glob("*.network")}
        files = {f"{applier.SEED_DIR}/{name}": text for name, text in files.items()}
        files[f"{applier.SEED_DIR}/instance-id"] = seed.instance_id + "\n"
        files[f"{applier.SEED_DIR}/uuid"] = vm_uuid(rec) + "\n"   # a clone's differs: a new identity
        if seed.root_password_hash:
            files[f"{applier.SEED_DIR}/passwd"] = f"{seed.password_user}:{seed.root_password_hash}\n"
        return files

    def spec(self, rec: InstanceRecord, paused: bool = False) -> VmSpec:
        vm: dict[str, Any] = rec.options.get("vm", {})
        base = self.storage.instance_path(rec.name)
        nics = [Nic(self.network.host_name(n), n.mac, "e1000" if vm.get("compat") else "virtio-net-pci")
                for n in self.network.db.nics_of(rec.id)]
        kernel = vm.get("kernel")
        windows = vm.get("profile") == "windows"
        return VmSpec(
            name=rec.name, uuid=vm_uuid(rec),
            ram=rec.limits.get("ram", DEFAULT_RAM) // (1 << 20) * (1 << 20), cpus=rec.limits.get("cpus", 1),
            # room to hot-add vCPUs up to what `set --cpus` accepts (the host's count)
            max_cpus=len(self.cgroups.host_cpus()),
            seed_iso=None if windows else self.seed_path(rec),
            run_dir=self.run_dir(rec), profile="windows" if windows else "linux", accel=self.accel,
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
        # Rebuilt at each start: whatever `set` changed since is in it (a changed seed has a new
        # instance-id, so cloud-init applies it again; an unchanged one is left alone by it).
        await asyncio.to_thread(self.write_seed, rec)
        spec = self.spec(rec, paused)
        if spec.kernel is not None:
            spec.kernel = await asyncio.to_thread(self.boot_kernel, spec.kernel)
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

    def run_dir(self, rec: InstanceRecord) -> Path:
        return self.run_root / str(rec.id)

    def remove_run_dir(self, rec: InstanceRecord) -> None:
        """At destroy, once QEMU is gone: the VM's run directory (serial.log, swtpm.log,
        sockets) goes with it; its id, and so the directory's name, may be reused."""
        shutil.rmtree(self.run_dir(rec), ignore_errors=True)

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
        try:   # what the guest has now (the balloon lowers it), else the boot size
            ram, balloon = await q.balloon_actual(), True
        except OperationFailed:
            ram, balloon = vm.spec.ram, False
        return {"status": await q.status(), "tpm": await q.query_tpm(), "block": await q.query_block(),
                "pci": await q.query_pci(), "chardev": await q.query_chardev(), "accel": vm.spec.accel,
                "vcpus": await q.vcpu_count(), "ram": ram, "balloon": balloon}

    # ------------------------------------------------------------- live resizing

    async def resize(self, rec: InstanceRecord, cpus: int | None, ram: int | None,
                     resources: Resources) -> list[str]:
        """vCPUs and RAM of a running VM changed where QEMU and the guest allow; the cgroup's
        memory limit follows what the guest has. Returns a note per value not reached live."""
        vm = self.running.get(rec.name)
        if vm is None:
            return []
        if vm.qmp is None:
            return ["cpus/ram: no QMP session to the running VM; applies at next start"]
        group = self.cgroups.group(vm_group(rec))
        await asyncio.to_thread(group.apply, Resources(
            cpu_quota_pct=resources.cpu_quota_pct, cpu_weight=resources.cpu_weight,
            io_weight=resources.io_weight, io_limits=resources.io_limits))
        notes: list[str] = []
        for what, value in (("cpus", cpus), ("ram", ram)):
            if value == UNLIMITED:   # back to the default size: no live equivalent
                notes.append(f"{what}: the default applies at next start")
        cpus, ram = (None if v == UNLIMITED else v for v in (cpus, ram))
        if cpus is not None:
            r = await resize.set_vcpus(vm.qmp, cpus)
            if r.note:
                notes.append(f"cpus {r.wanted}: {r.note}")
        if ram is not None:
            boot = vm.spec.ram
            limit = lambda size: Resources(memory_max=size + QEMU_OVERHEAD)  # noqa: E731
            try:
                actual = await vm.qmp.balloon_actual()
            except OperationFailed:   # no balloon (compat): set_ram says so
                actual = boot
            if ram > actual:   # room first, then the guest grows into it
                await asyncio.to_thread(group.apply, limit(min(ram, boot)))
            r = await resize.set_ram(vm.qmp, boot, ram)
            # never below what the guest still holds: the kernel would reclaim QEMU to death
            await asyncio.to_thread(group.apply, limit(max(r.value, min(ram, boot))))
            if r.note:
                notes.append(f"ram: {r.note}")
        return notes

    async def pause(self, rec: InstanceRecord) -> None:
        vm = self.running.get(rec.name)
        if vm is None or vm.qmp is None:
            raise Conflict(f"{rec.name} is not running")
        await vm.qmp.pause()

    async def cont(self, rec: InstanceRecord) -> None:
        vm = self.running.get(rec.name)
        if vm is None or vm.qmp is None:
            raise Conflict(f"{rec.name} is not running")
        await vm.qmp.cont()


def _destroy_group(group: CgroupGroup) -> None:
    with contextlib.suppress(Exception):
        if group.exists():
            group.kill_all()
            group.destroy()
