"""Virtual machines as an instance kind (ctd/instance/kind.py): QEMU through VmDriver, a disk
image in the pool (from a template's root, or blank for an installer), a cloud-init seed.

The driver is attached as soon as QEMU is installed, also while ctd runs (probe()); until
then the registry refuses what needs it with NotSupported (unavailable() says why).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cgroups import CgroupGroup, Resources, parse_size
from ctd import guest, validate
from ctd import limits as limits_mod
from ctd.errors import Conflict, CtdError, InvalidRequest, NotSupported
from ctd.hostfiles import input_file as transfer_input
from ctd.instance.context import InstanceContext, removed_limits
from ctd.instance.requests import CloneRequest, CreateRequest
from ctd.instance.reserve import NewInstance
from ctd.instance.rollback import Rollback
from ctd.instance.vm import applier, rootdisk
from ctd.instance.vm.driver import VmDriver, vm_group
from ctd.network.manager import NicRequest
from ctd.network.netlink import InsideNic
from ctd.state import InstanceRecord, InstanceType
from ctd.state.records import copyable_options

log = logging.getLogger("ctd.instances")
QEMU_BINARY, QEMU_PACKAGE = "qemu-system-x86_64", "qemu-system-x86"
# What a VM's size and cgroup take; the rest (numproc, numfile, diskspace …) is for containers.
VM_LIMITS = frozenset({"ram", "ram_high", "cpus", "cpulimit", "cpuunits", "iolimit", "iopslimit", "ioprio"})


@dataclass(frozen=True)
class VmOptions:
    """--type vm options, checked (CreateRequest.options of a VM)."""

    profile: str            # linux or windows
    compat: bool            # emulated devices a guest without virtio drivers knows
    disk_size: int          # bytes
    iso: str | None = None
    drivers_iso: str | None = None

    def stored(self) -> dict[str, Any]:
        """As the instance's options keep them (rec.options["vm"])."""
        out: dict[str, Any] = {"profile": self.profile, "compat": self.compat, "disk_size": self.disk_size}
        for key in ("iso", "drivers_iso"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


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
        driver = VmDriver(ctx.cgroups, ctx.network, ctx.storage, ctx.config.run_dir / "vm")
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
        return {"console": vm is not None, "vm": {
            **{k: v for k, v in rec.options.get("vm", {}).items() if k in ("profile", "iso", "drivers_iso",
                                                                          "compat", "disk_size")},
            "accel": self.driver.accel if self.driver else None,
            "vnc_socket": str(vm.spec.vnc_socket) if vm else None,
            "serial_socket": str(vm.spec.serial_socket) if vm else None}}

    # ------------------------------------------------------------- provisioning

    def check_body(self, body: dict[str, Any]) -> VmOptions:
        """--type vm options: disk size, ISO, profile, drivers ISO, compat."""
        raw = body.get("vm") or {}
        raw = validate.body_fields(raw, {"disk", "iso", "profile", "drivers_iso", "compat"})
        self._vms   # noqa: B018 - refused here, before the pool is asked, if QEMU is missing
        out: dict[str, Any] = {"profile": raw.get("profile", "linux"), "compat": validate.boolean(raw, "compat")}
        if out["profile"] not in ("linux", "windows"):
            raise InvalidRequest(f"invalid profile {out['profile']!r}: use linux or windows")
        try:
            out["disk_size"] = parse_size(str(raw.get("disk", "10G")))
        except ValueError as exc:
            raise InvalidRequest(f"invalid disk size: {exc}") from None
        if out["disk_size"] < (64 << 20):
            raise InvalidRequest("the disk must be at least 64M")
        free = self.ctx.storage.pool_info().get("free")
        if free is not None and out["disk_size"] > free * 20:  # sparse, but not absurdly larger than the pool
            raise InvalidRequest(f"a disk of {limits_mod.human_size(out['disk_size'])} does not fit this pool "
                                 f"({limits_mod.human_size(free)} free)")
        for key in ("iso", "drivers_iso"):
            if raw.get(key) is not None:
                out[key] = str(transfer_input(raw[key], key.replace("_", " ")))
        if out["profile"] == "windows" and "iso" not in out and body.get("template") is None:
            raise InvalidRequest("a windows VM needs its installer: give --iso FILE")
        if body.get("privileged"):
            raise InvalidRequest("privileged is a container option; VMs are isolated by QEMU")
        return VmOptions(**out)

    def check_limits(self, limits: dict[str, int]) -> None:
        wrong = sorted(set(limits) - VM_LIMITS)
        if wrong:
            raise InvalidRequest(f"{', '.join(wrong)}: container limits; a VM takes "
                                 f"{', '.join(sorted(VM_LIMITS - {'ram_high'}))}")

    def clone_body(self, src: InstanceRecord, name: str) -> dict[str, Any]:
        # name, id and pool space checked as for a new VM; profile, ISOs and template are the
        # source's (copied as they are, even if the ISO or template has gone since)
        vm = src.options.get("vm", {})
        return {"name": name, "hostname": name, "type": "vm", "vm": {"disk": str(vm.get("disk_size", 64 << 20))}}

    def check_reinstall(self, rec: InstanceRecord) -> None:
        raise InvalidRequest(f"{rec.name} is a VM: reinstall is for containers; make a new VM from the "
                             "template (ctctl create NAME --type vm --template T) and destroy this one")

    async def create(self, req: CreateRequest, new: NewInstance) -> InstanceRecord:
        """A VM: its disk in the pool, made from a template's root (configured like a container
        of that template, booting the host's Debian kernel) or blank for an installer ISO."""
        assert isinstance(req.options, VmOptions)
        ctx, name, vm = self.ctx, req.name, req.options.stored()
        template = req.template or None
        if req.userpasswd is not None:   # the seed carries the hash, never the clear text
            user, password = req.userpasswd
            vm["passwd"] = {"user": user, "hash": guest.hash_password(password)}
        rec = InstanceRecord(
            id=req.id, name=name, type=InstanceType.VM, template=template or "",
            hostname=req.hostname, privileged=False, idmap_base=None, limits=req.limits,
            created_at=_now(), init=[], stop_signal="ACPI",
            options={"network_style": "networkd", "ssh_keys": req.ssh_keys, "timezone": req.timezone,
                     "nameservers": req.nameservers, "vm": vm})
        await asyncio.to_thread(ctx.network.prepare, req.nics)
        new.add_record(rec, req.nics)
        base = ctx.storage.instance_path(name)
        new.storage_made()
        if template:
            kernel = rootdisk.host_kernel()
            rootfs = await asyncio.to_thread(ctx.storage.create_instance, name, template)
            await asyncio.to_thread(ctx.setup_guest, rec, rootfs, req.userpasswd)
            await asyncio.to_thread(rootdisk.add_kernel_modules, rootfs, kernel)
            await asyncio.to_thread(applier.install, rootfs)
            await asyncio.to_thread(rootdisk.make_disk, rootfs, base / "disk.raw", vm["disk_size"])
            await asyncio.to_thread(ctx.storage.drop_root, name)
            # no guest has run on this disk yet: ctd may still write into it (until the first start)
            vm.update({"kernel": str(kernel.vmlinuz), "initrd": str(kernel.initrd),
                       "append": rootdisk.kernel_cmdline(), "pristine": True})
        else:
            await asyncio.to_thread(ctx.storage.new_vm_dir, name)
            await asyncio.to_thread(rootdisk.blank_disk, base / "disk.raw", vm["disk_size"])
        rec.options["vm"] = vm
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
        vm = {k: v for k, v in src.options.get("vm", {}).items() if k != "guest_pending"}
        rec = InstanceRecord(
            id=req.new.id, name=name, type=InstanceType.VM, template=src.template, hostname=name,
            privileged=False, idmap_base=None, limits=dict(src.limits), created_at=_now(),
            init=[], stop_signal=src.stop_signal, options={**copyable_options(src.options), "vm": vm})
        nics = [NicRequest(n.network, n.mode, [], n.filter, n.rate) for n in ctx.db.nics_of(src.id) if n.network]
        async with src_lock:
            await asyncio.to_thread(ctx.storage.clone_vm_dir, src.name, name, req.snapshot)
        new.storage_made()
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
        vm = rec.options.get("vm", {})
        if not vm.get("kernel") or not vm.get("pristine"):
            return False
        with rootdisk.mounted(self._vms.disk_path(rec)) as root:
            if new_identity:  # a clone of a VM that never booted
                guest.new_identity(root)
            self.ctx.setup_guest(rec, root, userpasswd)
            if userpasswd is None and vm.get("passwd"):
                guest.set_password_hash(root, vm["passwd"]["user"], vm["passwd"]["hash"])
        return True

    # ------------------------------------------------------------- power

    async def start(self, rec: InstanceRecord, resources: Resources, paused: bool) -> tuple[int, int | None]:
        vms = self._vms
        vm_options = rec.options.setdefault("vm", {})
        # from now on the guest may write its disk: ctd never mounts it again
        stale = {"pristine", "guest_pending"} & vm_options.keys()   # guest_pending: older records
        for key in stale:
            del vm_options[key]
        if stale:
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

    def console(self, rec: InstanceRecord) -> Any:
        vm = self.driver.running.get(rec.name) if self.driver else None
        if vm is None:
            raise Conflict(f"{rec.name} is not running; start it first")
        return vm.spec.serial_socket  # the stream handler connects to QEMU's serial socket

    async def exec(self, rec: InstanceRecord, command: list[str], env: dict[str, str], cwd: str,
                   tty: bool) -> Any:
        raise NotSupported(f"{rec.name} is a VM: exec works for containers; use ssh or 'ctctl console {rec.name}'")

    # ------------------------------------------------------------- storage

    async def snapshot(self, rec: InstanceRecord, snap: str) -> None:
        if self.is_running(rec):
            raise Conflict(f"{rec.name} is running: stop the VM to snapshot its disk")
        await asyncio.to_thread(self.ctx.storage.snapshot_vm_disk, rec.name, snap)

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

    async def write_guest(self, rec: InstanceRecord, before: InstanceRecord, userpasswd: tuple[str, str] | None,
                          notes: list[str], done: Rollback) -> None:
        """Guest settings of a VM: into the cloud-init seed at once, into a template VM's disk now
        if it is stopped, else at its next start."""
        vms = self._vms
        vm = rec.options.setdefault("vm", {})
        if userpasswd is not None:
            vm["passwd"] = {"user": userpasswd[0], "hash": guest.hash_password(userpasswd[1])}

        async def undo() -> None:
            await asyncio.to_thread(vms.write_seed, before)

        done.done("guest settings (seed)", undo)
        await asyncio.to_thread(vms.write_seed, rec)
        if vm.get("profile") == "windows":
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
