"""Virtual machines as an instance kind (ctd/instance/kind.py): QEMU through VmDriver, a disk
image in the pool (from a template's root, or blank for an installer), a cloud-init seed.

The driver is attached as soon as QEMU is installed, also while ctd runs (probe()); until
then the registry refuses what needs it with NotSupported (unavailable() says why).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cgroups import CgroupGroup, Resources, parse_size
from ctd import guest, validate
from ctd import limits as limits_mod
from ctd.errors import Conflict, CtdError, InvalidRequest, NotSupported
from ctd.instance.consolehub import ConsoleHub
from ctd.instance.context import InstanceContext, removed_limits
from ctd.instance.requests import CloneRequest, CreateRequest, VmRequest
from ctd.instance.reserve import NewInstance
from ctd.instance.rollback import Rollback
from ctd.instance.shapes import LiveSnapshot
from ctd.instance.vm import applier, datadisks, disks, guestexec, livesnap, media, rootdisk, userdata
from ctd.instance.vm import firmware as fwmod
from ctd.instance.vm.agent import MISSING_HINT, NoAgent
from ctd.instance.vm.driver import RunningVm, VmDriver, is_linux, vm_group
from ctd.network.manager import NicRequest
from ctd.network.netlink import InsideNic
from ctd.state import InstanceRecord, InstanceType
from ctd.state.options import FirmwareType, InstanceOptions, Passwd, VmOptions

log = logging.getLogger("ctd.instances")
QEMU_BINARY, QEMU_PACKAGE = "qemu-system-x86_64", "qemu-system-x86"
# What a VM's size and cgroup take; the rest (numproc, numfile, diskspace …) is for containers.
# Windows 11's minimum (2 cores, 4 GB, 64 GB): the profile's defaults where create gives none.
WINDOWS_CPUS, WINDOWS_RAM, WINDOWS_DISK = 2, 4 << 30, "64G"
VM_LIMITS = frozenset({"ram", "ram_high", "cpus", "cpulimit", "cpuunits", "iolimit", "iopslimit", "ioprio"})


def check_disk_size(ctx: InstanceContext, size: int) -> None:
    """A VM disk's size as create (and a restore's header) may ask for it."""
    if size < (64 << 20):
        raise InvalidRequest("the disk must be at least 64M")
    free = ctx.storage.pool_info().get("free")
    if free is not None and size > free * 20:  # sparse, but not absurdly larger than the pool
        raise InvalidRequest(f"a disk of {limits_mod.human_size(size)} does not fit this pool "
                             f"({limits_mod.human_size(free)} free)")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class VmKind:
    """QEMU virtual machines."""

    type = InstanceType.VM
    process_name = "QEMU"
    takes_io_uring = False
    nics_go_with_it = False   # a VM's taps stay until deleted

    def __init__(self, ctx: InstanceContext, on_stopped: Callable[[str, int | None], None]) -> None:
        self.ctx = ctx
        self.driver: VmDriver | None = None   # attached by probe() when QEMU is usable
        self.on_stopped = on_stopped
        self.state: dict[str, Any] = {}        # the driver as last probed (the daemon's info shows it)
        self._probe_lock = threading.Lock()

    # ------------------------------------------------------------- availability

    def attach(self, driver: VmDriver) -> None:
        self.driver = driver
        driver.on_stopped = self.on_stopped

    def probe(self) -> dict[str, Any]:
        """The VM driver's state; attached as soon as QEMU is installed, also while ctd runs
        (a create refused for want of QEMU, or `ctctl check`, asks again: no restart needed)."""
        with self._probe_lock:   # ctctl check probes in a thread
            if self.driver is None and shutil.which(QEMU_BINARY):
                self._attach_new_driver()
            state = ({"usable": True, "accel": self.driver.accel, "reason": self.driver.accel_reason}
                     if self.driver else
                     {"usable": False, "reason": f"{QEMU_BINARY} is not installed",
                      "fix": f"apt-get install {QEMU_PACKAGE}"})
            # one dict, updated in place: the daemon's info (GET /1.0) shows it as it is now
            self.state.clear()
            self.state.update(state)
        return self.state

    def _attach_new_driver(self) -> None:
        ctx = self.ctx
        driver = VmDriver(ctx.cgroups, ctx.network, ctx.storage, ctx.config.run_dir / "vm", ctx.config.state_dir)
        if driver.accel != "kvm":
            log.warning("VMs run under TCG (software emulation, slow): %s", driver.accel_reason)
        self.attach(driver)

    def unavailable(self) -> str | None:
        """Why VMs cannot run here and what to do, or None (asks again: QEMU may be new)."""
        if self.driver is None and not self.probe()["usable"]:
            return (f"virtual machines are not available on this host: apt-get install {QEMU_PACKAGE} "
                    f"({QEMU_BINARY} is missing)")
        return None

    @property
    def _vms(self) -> VmDriver:
        """The driver, for work the registry let through (require()) or that needs a VM running."""
        reason = self.unavailable()
        if reason is not None:
            raise NotSupported(reason)
        assert self.driver is not None
        return self.driver

    # ------------------------------------------------------------- shown

    def is_running(self, rec: InstanceRecord) -> bool:
        return self.driver is not None and rec.name in self.driver.running

    def has_storage(self, rec: InstanceRecord) -> bool:
        return self.ctx.storage.instance_path(rec.name).is_dir()

    def group(self, rec: InstanceRecord) -> CgroupGroup:
        return self.ctx.cgroups.group(vm_group(rec))

    def group_name(self, rec: InstanceRecord) -> str:
        return vm_group(rec)

    def view_fields(self, rec: InstanceRecord) -> dict[str, Any]:
        vm = self.driver.running.get(rec.name) if self.driver else None
        options = rec.options.vm or VmOptions()
        stored, fw = options.to_stored(), fwmod.settings(options)
        return {"console": vm is not None and vm.console is not None, "vm": {
            **{k: v for k, v in stored.items() if k in ("profile", "iso", "drivers_iso", "compat", "disk_size")},
            "media": options.media, "boot_media": options.boot_media,
            "data_disks": [d.to_stored() for d in options.data_disks],
            "firmware": FirmwareType.UEFI.value if fw.uefi else FirmwareType.BIOS.value,
            "secure_boot": fw.secure_boot, "tpm": fw.tpm,
            "accel": self.driver.accel if self.driver else None,
            "vnc_socket": str(vm.spec.vnc_socket) if vm else None,
            "serial_socket": str(vm.spec.serial_socket) if vm else None,
            # the guest's own view through its agent (cached; None while stopped)
            "guest": vm.agent.shown() if vm and vm.agent else None}}

    # ------------------------------------------------------------- provisioning

    def check_body(self, body: dict[str, Any]) -> VmRequest:
        """--type vm options: disk size, ISO, profile, drivers ISO, compat, cloud-init files."""
        raw = body.get("vm") or {}
        raw = validate.body_fields(raw, {"disk", "iso", "profile", "drivers_iso", "compat", *userdata.KINDS,
                                         *fwmod.FIELDS})
        self._vms   # noqa: B018 - refused here, before the pool is asked, if QEMU is missing
        profile = raw.get("profile", "linux")
        if profile not in ("linux", "windows"):
            raise InvalidRequest(f"invalid profile {profile!r}: use linux or windows")
        compat = validate.boolean(raw, "compat")
        try:
            disk_size = parse_size(str(raw.get("disk", WINDOWS_DISK if profile == "windows" else "10G")))
        except ValueError as exc:
            raise InvalidRequest(f"invalid disk size: {exc}") from None
        check_disk_size(self.ctx, disk_size)
        iso, drivers_iso = (None if raw.get(key) is None else
                            str(media.check_iso(raw[key], self.forbidden_media(), key.replace("_", " ")))
                            for key in ("iso", "drivers_iso"))
        user_data, vendor_data = (None if raw.get(key) is None else userdata.check(raw[key], key)
                                  for key in userdata.KINDS)
        fw = fwmod.check(raw, profile, body.get("template") is not None)
        if profile == "windows" and (user_data or vendor_data):
            raise InvalidRequest("user-data and vendor-data are for cloud-init in Linux guests; ctd gives Windows "
                                 "VMs no seed")
        if profile == "windows" and iso is None and body.get("template") is None:
            raise InvalidRequest("a windows VM needs its installer: give --iso FILE")
        if body.get("privileged"):
            raise InvalidRequest("privileged is a container option; VMs are isolated by QEMU")
        options = VmOptions(profile=profile, compat=compat, disk_size=disk_size, iso=iso, drivers_iso=drivers_iso,
                            firmware=FirmwareType.UEFI if fw.uefi else FirmwareType.BIOS,
                            secure_boot=fw.secure_boot, tpm=fw.tpm)
        defaults = ({"cpus": min(WINDOWS_CPUS, len(self.ctx.host_cpus)), "ram": WINDOWS_RAM}
                    if profile == "windows" else {})
        return VmRequest(options, user_data, vendor_data, defaults)

    def forbidden_media(self) -> list[Path]:
        """Where no ISO may come from: ctd's state directory and its storage pool."""
        return [self.ctx.config.state_dir, self.ctx.storage.root]

    def check_limits(self, limits: dict[str, int]) -> None:
        wrong = sorted(set(limits) - VM_LIMITS)
        if wrong:
            raise InvalidRequest(f"{', '.join(wrong)}: container limits; a VM takes "
                                 f"{', '.join(sorted(VM_LIMITS - {'ram_high'}))}")

    def clone_body(self, src: InstanceRecord, name: str) -> dict[str, Any]:
        # name, id and pool space checked as for a new VM; profile, ISOs and template are the
        # source's (copied as they are, even if the ISO or template has gone since)
        vm = src.options.vm or VmOptions()
        return {"name": name, "hostname": name, "type": "vm", "vm": {"disk": str(vm.disk_size)}}

    def check_reinstall(self, rec: InstanceRecord) -> None:
        raise InvalidRequest(f"{rec.name} is a VM: reinstall is for containers; make a new VM from the "
                             "template (ctctl create NAME --type vm --template T) and destroy this one")

    async def create(self, req: CreateRequest, new: NewInstance) -> InstanceRecord:
        """A VM: its disk in the pool, made from a template's root (configured like a container
        of that template, booting the host's Debian kernel) or blank for an installer ISO."""
        assert req.vm is not None
        ctx, name, vm = self.ctx, req.name, req.vm.options
        template = req.template or None
        if req.userpasswd is not None:   # the seed carries the hash, never the clear text
            user, password = req.userpasswd
            vm = dataclasses.replace(vm, passwd=Passwd(user, guest.hash_password(password)))
        rec = InstanceRecord(
            id=req.id, name=name, type=InstanceType.VM, template=template or "",
            hostname=req.hostname, privileged=False, idmap_base=None, limits=req.limits,
            created_at=_now(), init=[], stop_signal="ACPI",
            options=InstanceOptions(network_style="networkd", ssh_keys=tuple(req.ssh_keys), timezone=req.timezone,
                                    nameservers=tuple(req.nameservers), vm=vm))
        await asyncio.to_thread(ctx.network.prepare, req.nics)
        new.add_record(rec, req.nics)
        base = ctx.storage.instance_path(name)
        new.storage_made()
        if template:
            kernel = rootdisk.host_kernel()
            rootfs = await asyncio.to_thread(ctx.storage.create_instance, name, template)
            if (req.vm.user_data or req.vm.vendor_data) and not (rootfs / "usr/bin/cloud-init").exists():
                raise InvalidRequest(f"template {template} has no cloud-init to read user-data or vendor-data "
                                     "(install cloud-init in the template, or install the VM from an ISO)")
            await asyncio.to_thread(ctx.setup_guest, rec, rootfs, req.userpasswd)
            await asyncio.to_thread(rootdisk.add_kernel_modules, rootfs, kernel)
            await asyncio.to_thread(applier.install, rootfs)
            udev = rootdisk.has_udev(rootfs)   # before the root goes (drop_root)
            await asyncio.to_thread(rootdisk.make_disk, rootfs, base / "disk.raw", vm.disk_size)
            await asyncio.to_thread(ctx.storage.drop_root, name)
            # no guest has run on this disk yet: ctd may still write into it (until the first start)
            vm = dataclasses.replace(vm, kernel=str(kernel.vmlinuz), initrd=str(kernel.initrd),
                                     append=rootdisk.kernel_cmdline(), pristine=True,
                                     # ctd's udev rule onlines hot-added vCPUs only where udev runs (resize.py)
                                     guest_udev=udev)
        else:
            await asyncio.to_thread(ctx.storage.new_vm_dir, name)
            await asyncio.to_thread(rootdisk.blank_disk, base / "disk.raw", vm.disk_size)
        rec.options = dataclasses.replace(rec.options, vm=vm)
        for key, text in (("user_data", req.vm.user_data), ("vendor_data", req.vm.vendor_data)):
            if text is not None:
                await asyncio.to_thread(userdata.save, base, key, text)
        await asyncio.to_thread(self._vms.write_seed, rec)
        ctx.db.update_instance(rec)
        new.commit()
        return rec

    async def clone(self, req: CloneRequest, new: NewInstance, src_lock: asyncio.Lock) -> InstanceRecord:
        """A stopped VM's copy: reflinked disk, copied UEFI variables and TPM state; new id, uuid,
        MACs, addresses and hostname, in a new seed (whose new instance-id makes cloud-init, or
        ctd's applier in a template disk, treat the clone as a new machine), and written into
        the disk only if no guest has run on it yet."""
        ctx, src, name = self.ctx, req.source, req.name
        vms = self._vms
        rec = InstanceRecord(
            id=req.new.id, name=name, type=InstanceType.VM, template=src.template, hostname=name,
            privileged=False, idmap_base=None, limits=dict(src.limits), created_at=_now(),
            init=[], stop_signal=src.stop_signal, options=src.options.copyable())
        nics = [NicRequest(n.network, n.mode, [], n.filter, n.rate, n.mtu, n.vlan)
                for n in ctx.db.nics_of(src.id) if n.network]
        async with src_lock:
            await asyncio.to_thread(ctx.storage.clone_vm_dir, src.name, name, req.snapshot)
            await asyncio.to_thread(userdata.copy, ctx.storage.instance_path(src.name), ctx.storage.instance_path(name))
        new.storage_made()
        vm = rec.options.vm
        if vm is not None and vm.data_disks:   # a snapshot from before a data disk was added lacks it
            target = ctx.storage.instance_path(name)
            datadisks.stored(rec, tuple(d for d in vm.data_disks if datadisks.path(target, d.name).is_file()))
        new.mark_creating()
        new.add_record(rec, nics)
        await asyncio.to_thread(self._configure_disk, rec, None, True)
        await asyncio.to_thread(vms.write_seed, rec)
        new.commit()
        return rec

    def _configure_disk(self, rec: InstanceRecord, userpasswd: tuple[str, str] | None = None,
                        new_identity: bool = False) -> bool:
        """A template VM no guest has run on yet: its settings written into its disk, as at
        create (in a thread); True if so. Once a guest has run, the disk is the tenant's and the
        host never mounts it again: the seed (and the applier in the guest) carries the settings.
        Installed VMs (blank disk + ISO) get them from the cloud-init seed only."""
        vm = rec.options.vm
        if vm is None or not vm.kernel or not vm.pristine:
            return False
        with rootdisk.mounted(self._vms.disk_path(rec)) as root:
            if new_identity:  # a clone of a VM that never booted
                guest.new_identity(root)
            self.ctx.setup_guest(rec, root, userpasswd)
            if userpasswd is None and vm.passwd is not None:
                guest.set_password_hash(root, vm.passwd.user, vm.passwd.hash)
        return True

    # ------------------------------------------------------------- power

    async def start(self, rec: InstanceRecord, resources: Resources, paused: bool) -> tuple[int, int | None]:
        vms = self._vms
        # from now on the guest may write its disk: ctd never mounts it again
        if rec.options.vm is not None and rec.options.vm.pristine:
            rec.options = dataclasses.replace(rec.options, vm=dataclasses.replace(rec.options.vm, pristine=False))
            self.ctx.db.update_instance(rec)
        vm = await vms.start(rec, resources, paused)
        return vm.pid, vm.start_time

    async def stop(self, rec: InstanceRecord, timeout: float, kill: bool) -> bool:
        """True if QEMU was ended ('powerdown': the guest obeyed the ACPI button)."""
        ended = await self._vms.stop(rec, timeout, kill)
        return ended in ("quit", "killed")

    async def cleanup(self, rec: InstanceRecord) -> None:
        if self.driver is not None:
            await self.driver.cleanup(rec)

    async def destroy(self, rec: InstanceRecord) -> None:
        if self.driver is not None:
            await self.driver.cleanup(rec)
            await asyncio.to_thread(self.driver.remove_run_dir, rec)  # serial.log and all

    async def suspend(self, rec: InstanceRecord) -> None:
        await self._vms.pause(rec)   # QMP 'stop': the vCPUs halt, QEMU and its memory stay

    async def resume(self, rec: InstanceRecord) -> None:
        await self._vms.cont(rec)    # QMP 'cont', also for a VM started --paused (prelaunch)

    async def is_suspended(self, rec: InstanceRecord) -> bool:
        """QEMU's word: its vCPUs stopped (paused) or never started (prelaunch, -S)."""
        return self.driver is not None and await self.driver.status(rec) in ("paused", "prelaunch")

    async def hardware(self, rec: InstanceRecord) -> dict[str, Any]:
        if self.driver is None:
            raise InvalidRequest(f"{rec.name} is not a VM")
        return await self.driver.hardware(rec)

    def console(self, rec: InstanceRecord) -> ConsoleHub:
        vm = self.driver.running.get(rec.name) if self.driver else None
        if vm is None:
            raise Conflict(f"{rec.name} is not running; start it first")
        if vm.console is None:
            raise Conflict(f"the serial console of {rec.name} is not reachable; "
                           f"'ctctl restart {rec.name}' gives it a new one")
        return vm.console

    async def exec(self, rec: InstanceRecord, command: list[str], env: dict[str, str], cwd: str,
                   tty: bool) -> Any:
        """Through the guest agent (guestexec.py); 409 naming what is missing without one."""
        if tty:
            guestexec.refuse_tty(rec.name)
        vm = self._running_vm(rec)
        assert vm.agent is not None
        if not await vm.agent.ping():
            raise NoAgent(f"{rec.name}: no guest agent answers, so ctd cannot run commands in it; {MISSING_HINT}")
        return await guestexec.start(vm.agent, command, env, cwd, is_linux(rec))

    def running_or_none(self, rec: InstanceRecord) -> RunningVm | None:
        """rec's QEMU if it runs, None if not; NotSupported without a driver (vm/devices.py)."""
        return self._vms.running.get(rec.name)

    def _running_vm(self, rec: InstanceRecord) -> RunningVm:
        vm = self.driver.running.get(rec.name) if self.driver else None
        if vm is None:
            raise Conflict(f"{rec.name} is not running; start it first with 'ctctl start {rec.name}'")
        return vm

    # ------------------------------------------------------------- storage

    async def snapshot(self, rec: InstanceRecord, snap: str) -> LiveSnapshot | None:
        """Stopped: a reflink of its disk. Running: the same, with the guest frozen by its agent
        (if any) and the vCPUs paused for the copy (livesnap.py)."""
        if self.is_running(rec):
            vm = self._running_vm(rec)
            return await livesnap.snapshot(self.ctx.storage, rec.name, vm.qmp, vm.agent, snap)
        await asyncio.to_thread(self.ctx.storage.snapshot_vm_disk, rec.name, snap)
        return None

    async def rollback(self, rec: InstanceRecord, snap: str) -> None:
        await asyncio.to_thread(self.ctx.storage.rollback_vm_disk, rec.name, snap)

    # ------------------------------------------------------------- settings

    async def configure_nics(self, rec: InstanceRecord, inside: list[InsideNic]) -> None:
        """The guest takes its addresses at next start (from the seed)."""

    def check_password_user(self, rec: InstanceRecord, user: str) -> None:
        """The seed makes the user if the guest lacks it."""

    async def apply_limits(self, rec: InstanceRecord, before: InstanceRecord, new_limits: dict[str, int],
                           removed: frozenset[str], done: Rollback) -> None:
        """Stored only; a running VM's cpus/ram follow in after_set()."""

    async def grow_disk(self, rec: InstanceRecord, size: int, done: Rollback, notes: list[str]) -> None:
        """`set --disk`: the root disk grown (live through QMP when the VM runs); see disks.py."""
        grow = disks.plan(rec, self._vms.disk_path(rec), size)
        if not grow.changes:
            return
        check_disk_size(self.ctx, size)
        running = self.running_or_none(rec)
        if running is not None and running.qmp is None:
            raise Conflict(f"{rec.name} runs without a QMP session: stop it to grow its disk")
        qmp = running.qmp if running is not None else None

        async def undo() -> None:
            await disks.undo(grow, qmp)

        await disks.apply(grow, qmp)
        done.done(f"disk {limits_mod.human_size(size)}", undo)
        disks.store_size(rec, size)
        notes.append(disks.note(rec, grow, running is not None))

    async def write_guest(self, rec: InstanceRecord, before: InstanceRecord, userpasswd: tuple[str, str] | None,
                          notes: list[str], done: Rollback) -> None:
        """Guest settings of a VM: into the cloud-init seed at once, into a template VM's disk now
        if it is stopped, else at its next start."""
        vms = self._vms
        vm = rec.options.vm or VmOptions()
        if userpasswd is not None:
            vm = dataclasses.replace(vm, passwd=Passwd(userpasswd[0], guest.hash_password(userpasswd[1])))
        rec.options = dataclasses.replace(rec.options, vm=vm)

        async def undo() -> None:
            await asyncio.to_thread(vms.write_seed, before)

        done.done("guest settings (seed)", undo)
        await asyncio.to_thread(vms.write_seed, rec)
        if userpasswd is not None and self.is_running(rec):
            notes.append(await self._live_password(rec, userpasswd))
        if vm.windows:
            notes.append("guest settings: stored, but ctd does not configure Windows guests (no seed)")
            return
        if not self.is_running(rec) and await asyncio.to_thread(self._configure_disk, rec, userpasswd):
            # the disk of a template VM no guest has run on yet, written now

            async def undo_disk() -> None:
                await asyncio.to_thread(self._configure_disk, before)

            done.done("guest settings (disk)", undo_disk)
            if userpasswd is not None:
                done.done(f"password of {userpasswd[0]}", None)
            return
        notes.append("guest settings: on the VM's seed CD-ROM; the guest applies them at its next boot")

    async def _live_password(self, rec: InstanceRecord, userpasswd: tuple[str, str]) -> str:
        """The password set in the running guest by its agent (guest-set-user-password); a note."""
        vm, (user, password) = self._running_vm(rec), userpasswd
        assert vm.agent is not None
        if not await vm.agent.ping():
            return (f"password of {user}: no guest agent answers, so it is not set in the running guest; it "
                    f"applies at next boot ({MISSING_HINT})")
        try:
            stored = rec.options.vm.passwd if rec.options.vm is not None else None
            if is_linux(rec) and stored is not None:
                await vm.agent.set_password(user, stored.hash, crypted=True)
            else:
                await vm.agent.set_password(user, password, crypted=False)
        except CtdError as exc:
            return f"password of {user}: the guest agent did not set it ({exc.message}); it applies at next boot"
        return f"password of {user}: set in the running guest by its agent"

    async def after_set(self, rec: InstanceRecord, changes: dict[str, int]) -> list[str]:
        """A running VM's cpus/ram as far as QEMU allows; they are stored already, so a refusal
        here is a note (they apply at next start), not an error."""
        if self.driver is None or not self.is_running(rec) or not changes:
            return []
        try:
            return await self.driver.resize(rec, changes.get("cpus"), changes.get("ram"),
                                           self.ctx.resources(rec, removed_limits(changes)))
        except CtdError as exc:
            return [f"cpus/ram: stored; applying them to the running VM failed ({exc.message}): they apply at "
                    "next start"]

    # ------------------------------------------------------------- after a daemon restart

    def release_leftovers(self, rec: InstanceRecord) -> list[str]:
        if rootdisk.release_stale_mount(self.ctx.storage.instance_path(rec.name)):
            return [f"{rec.name}/{rootdisk.MOUNT_DIR}"]
        return []

    async def adopt(self, rec: InstanceRecord) -> bool:
        return self.driver is not None and await self.driver.adopt(rec) is not None
