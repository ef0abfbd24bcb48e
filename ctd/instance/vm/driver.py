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
from ctd.instance.consolelog import log_path, open_ring
from ctd.instance.vm import applier, datadisks, firmware, livesnap, media, process, resize, userdata
from ctd.instance.vm.agent import GuestAgent
from ctd.instance.vm.kernel import extract_vmlinux
from ctd.instance.vm.qmp import Qmp
from ctd.instance.vm.seed import Seed, SeedNic, build_seed_iso, content_id
from ctd.instance.vm.serial import SerialConsole
from ctd.instance.vm.spec import Disk, Firmware, Nic, VmSpec, pick_accel
from ctd.limits import UNLIMITED
from ctd.linux.proc import start_time
from ctd.network.manager import NetworkManager
from ctd.state import InstanceRecord
from ctd.state.options import VmOptions
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
    console: SerialConsole | None = None
    agent: GuestAgent | None = None   # its guest agent's channel (answering or not)
    exited: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def _ram_limit(size: int) -> Resources:
    """A VM's memory cgroup limit for a guest of size bytes."""
    return Resources(memory_max=size + QEMU_OVERHEAD)


def vm_group(rec: InstanceRecord) -> str:
    return f"vm-{rec.name}"


def vm_uuid(rec: InstanceRecord) -> str:
    """Stable for the VM's life, new for a clone (new id and creation time)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ctd:{rec.id}:{rec.created_at}"))


def is_linux(rec: InstanceRecord) -> bool:
    return not (rec.options.vm or VmOptions()).windows


class VmDriver:
    def __init__(self, cgroups: CgroupManager, network: NetworkManager, storage: StorageDriver,
                 run_root: Path, state_dir: Path | None = None) -> None:
        """state_dir: where the console logs are kept (None: not kept)."""
        self.cgroups = cgroups
        self.state_dir = state_dir
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
        nameservers = list(rec.options.nameservers)
        nics = [SeedNic(nic.mac, list(inside.addresses), inside.gateway4, inside.gateway6,
                        nameservers if i == 0 else [], onlink=inside.onlink_gateway)
                for i, (nic, inside) in enumerate(zip(self.network.db.nics_of(rec.id),
                                                      self.network.inside_config(rec), strict=False))]
        passwd = (rec.options.vm or VmOptions()).passwd
        vm_dir = self.storage.instance_path(rec.name)
        seed = Seed(instance_id="ctd", hostname=rec.hostname, ssh_authorized_keys=list(rec.options.ssh_keys),
                    nics=nics, root_password_hash=passwd.hash if passwd else None,
                    password_user=passwd.user if passwd else "root", timezone=rec.options.timezone,
                    admin_user_data=userdata.load(vm_dir, "user_data"),
                    vendor_data=userdata.load(vm_dir, "vendor_data"))
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
            nameservers=list(rec.options.nameservers), network_style="networkd",
            ssh_keys=list(rec.options.ssh_keys), timezone=rec.options.timezone)
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
        files[f"{applier.SEED_DIR}/grow-root"] = "1\n"   # the applier grows ext4 on /dev/vda to the disk
        if seed.root_password_hash:
            files[f"{applier.SEED_DIR}/passwd"] = f"{seed.password_user}:{seed.root_password_hash}\n"
        return files

    def spec(self, rec: InstanceRecord, paused: bool = False) -> VmSpec:
        vm = rec.options.vm or VmOptions()
        base = self.storage.instance_path(rec.name)
        nics = [Nic(self.network.host_name(n), n.mac, "e1000" if vm.compat else "virtio-net-pci")
                for n in self.network.db.nics_of(rec.id)]
        media_iso, boot_media = media.stored(vm)
        # booting the rescue ISO: the firmware boots it, not the host's kernel
        kernel = None if boot_media else vm.kernel
        windows = vm.windows
        fw = firmware.settings(vm)
        return VmSpec(
            name=rec.name, uuid=vm_uuid(rec),
            ram=rec.limits.get("ram", DEFAULT_RAM) // (1 << 20) * (1 << 20), cpus=rec.limits.get("cpus", 1),
            # room to hot-add vCPUs up to what `set --cpus` accepts (the host's count)
            max_cpus=len(self.cgroups.host_cpus()),
            seed_iso=None if windows else self.seed_path(rec),
            run_dir=self.run_dir(rec), profile="windows" if windows else "linux", accel=self.accel,
            machine="q35" if fw.uefi else "pc",
            disks=[Disk(self.disk_path(rec), "raw", "ahci" if vm.compat else "virtio"),
                   *datadisks.spec_disks(base, vm)],
            cdroms=[Path(vm.iso)] if vm.iso else [],
            kernel=Path(kernel) if kernel else None, initrd=Path(vm.initrd) if kernel and vm.initrd else None,
            append=vm.append if kernel else None, nics=nics,
            firmware=Firmware.ovmf(fw.secure_boot) if fw.uefi else None,
            nvram=base / "OVMF_VARS.fd" if fw.uefi else None,
            tpm=fw.tpm, tpm_state_dir=base / "tpm" if fw.tpm else None,
            compat=vm.compat, drivers_iso=Path(vm.drivers_iso) if vm.drivers_iso else None,
            paused=paused, boot_cdrom_first=bool(vm.iso) and not kernel, serial_logfile=False,
            media_slot=True, media=media_iso, boot_media=boot_media)

    # ------------------------------------------------------------- start / stop

    async def start(self, rec: InstanceRecord, resources: Resources, paused: bool = False,
                    incoming: bool = False) -> RunningVm:
        """incoming: a live migration's target (waits for QMP migrate-incoming; ctd/cluster/vm_live.py)."""
        if rec.name in self.running:
            raise Conflict(f"{rec.name} is already running")
        # Rebuilt at each start: whatever `set` changed since is in it (a changed seed has a new
        # instance-id, so cloud-init applies it again; an unchanged one is left alone by it).
        await asyncio.to_thread(self.write_seed, rec)
        spec = self.spec(rec, paused)
        spec.incoming = incoming
        if spec.kernel is not None and spec.uefi is None:   # OVMF boots the bzImage (EFI stub) only
            spec.kernel = await asyncio.to_thread(self.boot_kernel, spec.kernel)
        spec.validate()
        group = self.cgroups.group(vm_group(rec))
        memory = spec.ram + QEMU_OVERHEAD
        with contextlib.ExitStack() as undo:
            await asyncio.to_thread(group.create)
            undo.callback(_destroy_group, group)
            await asyncio.to_thread(group.apply, Resources(
                memory_max=memory, cpu_quota_pct=resources.cpu_quota_pct, cpu_weight=resources.cpu_weight,
                io_weight=resources.io_weight, io_limits=resources.io_limits))
            await asyncio.to_thread(self.network.setup_taps, rec)
            undo.callback(self.network.teardown_taps, rec)
            pid = await process.start(spec, group.procs_files())
            undo.callback(process._kill, pid)
            pidfd = os.pidfd_open(pid)
            undo.pop_all()
        vm = RunningVm(rec.name, pid, pidfd, start_time(pid) or 0, spec)
        await self._attach(vm, rec)
        return vm

    async def _attach(self, vm: RunningVm, rec: InstanceRecord) -> None:
        self.running[vm.name] = vm
        ring = open_ring(log_path(self.state_dir, rec.id)) if self.state_dir else None
        vm.console = SerialConsole(vm.spec.serial_socket, ring)
        try:
            await vm.console.connect()
        except OSError as exc:
            log.warning("VM %s: no serial console: %s", vm.name, exc)
            vm.console.close()
            vm.console = None
        vm.agent = GuestAgent(vm.spec.agent_socket, vm.name, port_open=lambda: _agent_port_open(vm))
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
        # vm.console ends by itself: it reads the guest's last words up to the socket's end
        if not vm.exited.done():
            vm.exited.set_result(None)
        if self.on_stopped:
            self.on_stopped(vm.name, None)

    async def stop(self, rec: InstanceRecord, timeout: float, kill: bool) -> str:
        vm = self.running.get(rec.name)
        if vm is None:
            return "gone"
        how = await process.stop(vm.spec, vm.pid, timeout=timeout, qmp=vm.qmp, force=kill,
                                 fallback=lambda: livesnap.agent_shutdown(vm.agent, vm.pid, max(timeout, 30)))
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
        await self._attach(vm, rec)
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
                "vcpus": await q.vcpu_count(), "ram": ram, "balloon": balloon,
                "firmware": firmware.settings(rec.options.vm or VmOptions()).words(),
                "tpm_version": "2.0" if vm.spec.has_tpm else None}

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
            before = await vm.qmp.vcpu_count()
            r = await resize.set_vcpus(vm.qmp, cpus)
            note = r.note or resize.online_note((rec.options.vm or VmOptions()).guest_udev, r.value - before)
            if note:
                notes.append(f"cpus {r.wanted}: {note}")
        if ram is not None:
            boot = vm.spec.ram
            try:
                actual = await vm.qmp.balloon_actual()
            except OperationFailed:   # no balloon (compat): set_ram says so
                actual = boot
            if ram > actual:   # room first, then the guest grows into it
                await asyncio.to_thread(group.apply, _ram_limit(min(ram, boot)))
            r = await resize.set_ram(vm.qmp, boot, ram)
            # never below what the guest still holds: the kernel would reclaim QEMU to death
            await asyncio.to_thread(group.apply, _ram_limit(max(r.value, min(ram, boot))))
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


async def _agent_port_open(vm: RunningVm) -> bool | None:
    """Has the guest opened its agent port? None: QMP cannot tell (then a ping decides)."""
    if vm.qmp is None or not vm.qmp.connected:
        return None
    return await vm.qmp.frontend_open("agent0")


def _destroy_group(group: CgroupGroup) -> None:
    with contextlib.suppress(Exception):
        if group.exists():
            group.kill_all()
            group.destroy()
