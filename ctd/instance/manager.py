"""Instance lifecycle: validation, state rows, per-instance locks, undo on failure."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime as dt
import enum
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

from cgroups import CgroupError, CgroupManager

from cgroups import parse_size

from ctd import faults, guest, limits as limits_mod, validate
from ctd.config import DaemonConfig
from ctd.errors import Conflict, CtdError, InvalidRequest, NotFound, NotSupported
from ctd.hostfiles import input_file as transfer_input
from ctd.instance import exits
from ctd.instance.container.driver import STANDBY_GROUP, ContainerDriver, ExecProcess, cgroup_name
from ctd.instance.container.spec import DEFAULT_NUMPTY
from ctd.instance.provision import CREATING, NewInstance, Reservations, new_instance
from ctd.instance.rollback import Rollback
from ctd.lxcfs import LXCFS_GROUP
from ctd.instance.vm import applier, rootdisk
from ctd.instance.vm.driver import VmDriver, vm_group
from ctd.network import ipam
from ctd.network.manager import NetworkManager, NicRequest
from ctd.network.tc import parse_rate
from ctd.storage.backup import discard_partial as discard_partial_backups
from ctd.state import InstanceRecord, InstanceType, PowerState, StateDB
from ctd.state.records import RUNTIME_OPTIONS, copyable_options
from ctd.storage.base import StorageDriver
from ctd.template.manager import TemplateManager

log = logging.getLogger("ctd.instances")
DISK_CACHE_SECONDS = 5.0
# What a VM's size and cgroup take; the rest (numproc, numfile, diskspace …) is for containers.
QEMU_BINARY, QEMU_PACKAGE = "qemu-system-x86_64", "qemu-system-x86"
VM_LIMITS = frozenset({"ram", "ram_high", "cpus", "cpulimit", "cpuunits", "iolimit", "iopslimit", "ioprio"})


def open_files(pids: set[int]) -> int:
    """Open file descriptors of these processes (OpenVZ's numfile 'held')."""
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return total


def _remove_if_empty(cgroups: CgroupManager, name: str) -> bool:
    """rmdir a group that holds no process (the kernel refuses a populated one); never kills."""
    try:
        cgroups.group(name).destroy(timeout=0.2)
        return True
    except CgroupError:
        return False


def _removed_limits(changes: dict[str, int]) -> frozenset[str]:
    """The limits a set lifts ('unlimited'); no ram limit lifts its barrier and swap too."""
    removed = frozenset(k for k, v in changes.items() if v == limits_mod.UNLIMITED)
    return removed | {"ram_high", "swap"} if "ram" in removed else removed


def _network_step(checked: dict[str, Any]) -> str:
    """How a set's address/rate step is named in its error."""
    parts = [f"--ipadd {a}" for a in checked["ipadd"]] + [f"--ipdel {a}" for a in checked["ipdel"]]
    if checked["rate"] != "keep":
        parts.append(f"--rate {checked['rate'] or 'unlimited'}")
    return " ".join(parts)


class StopOutcome(enum.Enum):
    """How a stop ended (ctctl says so: a forced stop is not a clean shutdown)."""

    CLEAN = "clean"              # the guest shut down on its stop signal / the ACPI button
    FORCED = "forced"            # it ignored that until the timeout and was killed
    KILLED = "killed"            # --kill: killed at once
    NOT_RUNNING = "not running"


def ptys_held(pids: set[int]) -> int:
    """ptys these processes hold (OpenVZ's numpty 'held'): distinct pty masters among their
    open files, by the tty-index the kernel shows for each (no walk into the tenant's /dev)."""
    held: set[str] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd}").endswith("ptmx"):
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    held.update(line.split()[1] for line in info if line.startswith("tty-index:"))
            except (OSError, IndexError):
                pass
    return len(held)


class InstanceManager:
    def __init__(self, config: DaemonConfig, db: StateDB, storage: StorageDriver,
                 templates: TemplateManager, containers: ContainerDriver, cgroups: CgroupManager,
                 network: NetworkManager) -> None:
        self.config = config
        self.network = network
        self.vms: VmDriver | None = None  # set by the daemon when QEMU is usable
        self.db = db
        self.storage = storage
        self.templates = templates
        self.containers = containers
        self.cgroups = cgroups
        self.host_cpus = cgroups.host_cpus()
        self._locks: dict[int, asyncio.Lock] = {}
        self._probe_lock = threading.Lock()
        self.vm_state: dict[str, Any] = {}  # the VM driver as last probed (probe_vms)
        self.reservations = Reservations(config, db)
        self._exit_tasks: dict[str, asyncio.Task] = {}
        self._starting: set[str] = set()
        self._numfile_peak: dict[str, int] = {}
        self._numpty_peak: dict[str, int] = {}
        self._disk_peak: dict[str, int] = {}
        self._disk_cache: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self.io_device = limits_mod.block_device_of(storage.root)
        containers.on_stopped = self._container_exited

    def attach_vms(self, vms: VmDriver) -> None:
        self.vms = vms
        vms.on_stopped = self._container_exited

    def probe_vms(self) -> dict[str, Any]:
        """The VM driver's state; attached as soon as QEMU is installed, also while ctd runs
        (a create refused for want of QEMU, or `ctctl check`, asks again: no restart needed)."""
        with self._probe_lock:   # ctctl check probes in a thread
            if self.vms is None and shutil.which(QEMU_BINARY):
                self._attach_new_vm_driver()
            state = ({"usable": True, "accel": self.vms.accel, "reason": self.vms.accel_reason} if self.vms else
                     {"usable": False, "reason": f"{QEMU_BINARY} is not installed",
                      "fix": f"apt-get install {QEMU_PACKAGE}"})
            # one dict, updated in place: the daemon's info (GET /1.0) shows it as it is now
            self.vm_state.clear()
            self.vm_state.update(state)
        return self.vm_state

    def _attach_new_vm_driver(self) -> None:
        vms = VmDriver(self.cgroups, self.network, self.storage, self.config.run_dir / "vm")
        if vms.accel != "kvm":
            log.warning("VMs run under TCG (software emulation, slow): %s", vms.accel_reason)
        self.attach_vms(vms)

    def _vms_or_refuse(self) -> VmDriver:
        if self.vms is None and not self.probe_vms()["usable"]:
            raise NotSupported(f"virtual machines are not available on this host: apt-get install {QEMU_PACKAGE} "
                               f"({QEMU_BINARY} is missing)")
        assert self.vms is not None
        return self.vms

    def is_running(self, rec: InstanceRecord) -> bool:
        if rec.type is InstanceType.VM:
            return self.vms is not None and rec.name in self.vms.running
        return rec.name in self.containers.running

    def _has_storage(self, rec: InstanceRecord) -> bool:
        if rec.type is InstanceType.VM:
            return self.storage.instance_path(rec.name).is_dir()
        return self.storage.rootfs(rec.name).is_dir()

    # ------------------------------------------------------------- lookup

    def get(self, ref: str | int) -> InstanceRecord:
        validate.instance_ref(str(ref))
        rec = self.db.get_instance(ref)
        if rec is None:
            raise NotFound(f"no instance named {ref!r}; 'ctctl list' shows the instances")
        return rec

    def lock(self, rec: InstanceRecord) -> asyncio.Lock:
        return self._locks.setdefault(rec.id, asyncio.Lock())

    def view(self, rec: InstanceRecord, cached: bool = False) -> dict[str, Any]:
        rc = self.containers.running.get(rec.name)
        vm = self.vms.running.get(rec.name) if (self.vms and rec.type is InstanceType.VM) else None
        shown_limits = limits_mod.shown(rec.limits)
        return {
            "id": rec.id, "name": rec.name, "type": rec.type.value, "state": rec.state.value,
            "pid": rec.pid if rec.state is PowerState.RUNNING else None,
            "template": rec.template, "hostname": rec.hostname, "privileged": rec.privileged,
            # VMs have no id range (QEMU isolates them), privileged containers the host's ids
            "idmap": None if rec.idmap_base is None else {"uid_base": rec.idmap_base, "gid_base": rec.idmap_base,
                                                          "count": self.config.idmap_size},
            "limits": shown_limits, "created_at": rec.created_at, "usage": self.usage(rec),
            "last_exit": rec.last_exit or None,
            "nics": self.network.counters(rec),
            "disk": self.disk(rec, cached),
            "console": bool(rc and rc.console) or vm is not None,
            "cgroups": self.cgroup_dirs(rec),
            "vm": None if rec.type is not InstanceType.VM else {
                **{k: v for k, v in rec.options.get("vm", {}).items() if k in ("profile", "iso", "drivers_iso",
                                                                              "compat", "disk_size")},
                "accel": self.vms.accel if self.vms else None,
                "vnc_socket": str(vm.spec.vnc_socket) if vm else None,
                "serial_socket": str(vm.spec.serial_socket) if vm else None},
        }

    def cgroup_dirs(self, rec: InstanceRecord) -> dict[str, str] | None:
        """Where a running instance's cgroup is, per hierarchy (for monitoring; a container's
        cgroup2 directory may carry the name of the standby it started in)."""
        if not self.is_running(rec):
            return None
        return self.group_of(rec).dirs()

    def group_of(self, rec: InstanceRecord):  # type: ignore[no-untyped-def]
        """The instance's cgroup handle (no side effect)."""
        if rec.type is InstanceType.VM:
            return self.cgroups.group(vm_group(rec))
        return self.containers.group(rec)

    def disk(self, rec: InstanceRecord, cached: bool = False) -> dict[str, Any] | None:
        """Disk use of the root (btrfs: from its qgroup); list asks for it cached a few seconds."""
        now = time.monotonic()
        hit = self._disk_cache.get(rec.name)
        if cached and hit and now - hit[0] < DISK_CACHE_SECONDS:
            return hit[1]
        try:
            value = {"used": self.storage.usage(rec.name), "limit": self.storage.quota(rec.name)}
        except (CtdError, OSError):  # OSError: its root is going (a destroy in progress)
            value = None
        self._disk_cache[rec.name] = (now, value)
        return value

    def brief(self, rec: InstanceRecord) -> dict[str, Any]:
        """What a state change answers with: cheap, no counters read (start is a hot path)."""
        return {"id": rec.id, "name": rec.name, "type": rec.type.value, "state": rec.state.value,
                "pid": rec.pid if rec.state is PowerState.RUNNING else None, "template": rec.template}

    def list(self) -> list[dict[str, Any]]:
        return [self.view(r, cached=True) for r in self.db.list_instances()]

    # ------------------------------------------------------------- create

    def check_create(self, body: Any) -> dict[str, Any]:
        """Everything that can be checked before work starts; raises 4xx errors."""
        body = validate.body_fields(body, {"name", "template", "id", "hostname", "privileged", "limits", "type",
                                           "nics", "nameservers", "userpasswd", "ssh_keys", "timezone",
                                           "vm", "io_uring"}, {"name"})
        name = validate.instance_name(body["name"])
        kind = body.get("type", "container")
        if kind not in ("container", "vm"):
            raise InvalidRequest(f"invalid type {kind!r}: use container or vm")
        vm = self._check_vm(body) if kind == "vm" else None
        if kind == "container" and body.get("vm") is not None:
            raise InvalidRequest("vm options (disk, iso, profile …) are for --type vm only")
        template_name = body.get("template")
        if template_name is None and kind == "container":
            raise InvalidRequest("missing field(s): template (e.g. 'busybox')")
        template = None
        if template_name is not None:
            if not isinstance(template_name, str) or not template_name:
                raise InvalidRequest("template must be a template name, e.g. 'busybox'")
            template = self.templates.get(validate.instance_name(template_name, "template name"))
        hostname = validate.hostname(body.get("hostname") or name)
        privileged = validate.boolean(body, "privileged")
        io_uring = validate.boolean(body, "io_uring")
        if io_uring and kind == "vm":
            raise InvalidRequest("io_uring is a container option; a VM has its own kernel")
        limits = limits_mod.merge({}, limits_mod.normalise(body.get("limits") or {}, len(self.host_cpus)))
        self._check_io_device(limits)
        if kind == "vm":
            wrong = sorted(set(limits) - VM_LIMITS)
            if wrong:
                raise InvalidRequest(f"{', '.join(wrong)}: container limits; a VM takes "
                                     f"{', '.join(sorted(VM_LIMITS - {'ram_high'}))}")
        nics = self.network.check_nics(body.get("nics"))
        nameservers = [str(ipam.parse_address(a)) for a in validate.string_list(body, "nameservers")]
        userpasswd = guest.check_userpasswd(body["userpasswd"]) if body.get("userpasswd") is not None else None
        ssh_keys = [guest.check_ssh_key(k) for k in validate.string_list(body, "ssh_keys")]
        timezone = guest.check_timezone(body["timezone"]) if body.get("timezone") is not None else None
        wanted_id = validate.instance_id(body["id"]) if body.get("id") is not None else None
        instance_id = self.reserve(name, wanted_id, "choose another name")
        return {"name": name, "id": instance_id, "template": template.name if template else "",
                "hostname": hostname, "privileged": privileged, "limits": limits, "nics": nics,
                "nameservers": nameservers, "userpasswd": userpasswd, "ssh_keys": ssh_keys, "timezone": timezone,
                "type": kind, "vm": vm, "io_uring": io_uring}

    def _check_vm(self, body: dict[str, Any]) -> dict[str, Any]:
        """--type vm options: disk size, ISO, profile, drivers ISO, compat."""
        raw = body.get("vm") or {}
        raw = validate.body_fields(raw, {"disk", "iso", "profile", "drivers_iso", "compat"})
        self._vms_or_refuse()
        out: dict[str, Any] = {"profile": raw.get("profile", "linux"), "compat": validate.boolean(raw, "compat")}
        if out["profile"] not in ("linux", "windows"):
            raise InvalidRequest(f"invalid profile {out['profile']!r}: use linux or windows")
        try:
            out["disk_size"] = parse_size(str(raw.get("disk", "10G")))
        except ValueError as exc:
            raise InvalidRequest(f"invalid disk size: {exc}") from None
        if out["disk_size"] < (64 << 20):
            raise InvalidRequest("the disk must be at least 64M")
        free = self.storage.pool_info().get("free")
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
        return out

    async def create(self, checked: dict[str, Any]) -> dict[str, Any]:
        name, instance_id = checked["name"], checked["id"]
        with self.new_instance(name, instance_id) as new:
            if checked.get("type") == "vm":
                return await self._create_vm(checked, new)
            recipe = self.templates.recipe_of(checked["template"])
            base = self.reserve_idmap(instance_id, checked["privileged"])
            rec = InstanceRecord(
                id=instance_id, name=name, type=InstanceType.CONTAINER, template=checked["template"],
                hostname=checked["hostname"], privileged=checked["privileged"], idmap_base=base,
                limits=checked["limits"], created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                init=list(recipe.init), stop_signal=recipe.stop_signal,
                options={"systemd": recipe.systemd, "network_style": recipe.network_style,
                         "ssh_keys": checked["ssh_keys"], "timezone": checked["timezone"],
                         "nameservers": checked["nameservers"],
                         **({"io_uring": True} if checked.get("io_uring") else {})},
            )
            rootfs = await asyncio.to_thread(self.storage.create_instance, name, checked["template"])
            new.storage_made()
            faults.point("create.after_storage")
            if "diskspace" in checked["limits"]:
                await asyncio.to_thread(self.storage.set_quota, name, checked["limits"]["diskspace"])
                faults.point("create.after_quota")
            new.mark_creating()
            await asyncio.to_thread(self.network.prepare, checked["nics"])
            new.add_record(rec, checked["nics"])
            faults.point("create.after_db")
            await asyncio.to_thread(self.setup_guest, rec, rootfs, checked["userpasswd"])
            if checked["userpasswd"] is not None:
                self.db.update_instance(rec)  # the password's hash, for reinstall
            new.commit()
            faults.point("create.after_guest")
            return self.brief(rec)

    def reserve(self, name: str, instance_id: int | None, hint: str) -> int:
        """Hold a name and an id for a new instance until release() (see Reservations)."""
        return self.reservations.reserve(name, instance_id, hint)

    def reserve_idmap(self, instance_id: int, privileged: bool) -> int | None:
        return self.reservations.reserve_idmap(instance_id, privileged)

    def release(self, name: str, instance_id: int) -> None:
        self.reservations.release(name, instance_id)

    def new_instance(self, name: str, instance_id: int) -> contextlib.AbstractContextManager[NewInstance]:
        return new_instance(self.reservations, self.storage, self.db, self.network, name, instance_id)

    async def _create_vm(self, checked: dict[str, Any], new: NewInstance) -> dict[str, Any]:
        """A VM: its disk in the pool, made from a template's root (configured like a container
        of that template, booting the host's Debian kernel) or blank for an installer ISO."""
        name, vm = checked["name"], dict(checked["vm"])
        template = checked["template"] or None
        if checked["userpasswd"] is not None:   # the seed carries the hash, never the clear text
            user, password = checked["userpasswd"]
            vm["passwd"] = {"user": user, "hash": guest.hash_password(password)}
        rec = InstanceRecord(
            id=checked["id"], name=name, type=InstanceType.VM, template=template or "",
            hostname=checked["hostname"], privileged=False, idmap_base=None, limits=checked["limits"],
            created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            init=[], stop_signal="ACPI",
            options={"network_style": "networkd", "ssh_keys": checked["ssh_keys"], "timezone": checked["timezone"],
                     "nameservers": checked["nameservers"], "vm": vm})
        await asyncio.to_thread(self.network.prepare, checked["nics"])
        new.add_record(rec, checked["nics"])
        base = self.storage.instance_path(name)
        new.storage_made()
        if template:
            kernel = rootdisk.host_kernel()
            rootfs = await asyncio.to_thread(self.storage.create_instance, name, template)
            await asyncio.to_thread(self.setup_guest, rec, rootfs, checked["userpasswd"])
            await asyncio.to_thread(rootdisk.add_kernel_modules, rootfs, kernel)
            await asyncio.to_thread(applier.install, rootfs)
            await asyncio.to_thread(rootdisk.make_disk, rootfs, base / "disk.raw", vm["disk_size"])
            await asyncio.to_thread(self.storage.drop_root, name)
            # no guest has run on this disk yet: ctd may still write into it (until the first start)
            vm.update({"kernel": str(kernel.vmlinuz), "initrd": str(kernel.initrd),
                       "append": rootdisk.kernel_cmdline(), "pristine": True})
        else:
            await asyncio.to_thread(self.storage.new_vm_dir, name)
            await asyncio.to_thread(rootdisk.blank_disk, base / "disk.raw", vm["disk_size"])
        rec.options["vm"] = vm
        assert self.vms is not None
        await asyncio.to_thread(self.vms.write_seed, rec)
        self.db.update_instance(rec)
        new.commit()
        return self.brief(rec)

    def setup_guest(self, rec: InstanceRecord, rootfs: Path, userpasswd: tuple[str, str] | None = None) -> None:
        """Write the instance's settings into its root (runs in a thread). A container's new
        password is kept as its hash in rec.options["passwd"] (reinstall puts it back; the
        caller saves rec)."""
        options = rec.options
        guest.apply(rootfs, guest.GuestSettings(
            hostname=rec.hostname, nics=self.network.inside_config(rec),
            nameservers=options.get("nameservers") or [], network_style=options.get("network_style", "none"),
            ssh_keys=options.get("ssh_keys") or [], timezone=options.get("timezone")))
        if userpasswd is not None:
            self.set_password(rec, rootfs, userpasswd)

    @staticmethod
    def set_password(rec: InstanceRecord, rootfs: Path, userpasswd: tuple[str, str]) -> None:
        """The hash into the guest's shadow, and into rec.options["passwd"] of a container
        (reinstall puts it back; the caller saves rec). Runs in a thread."""
        hashed = guest.hash_password(userpasswd[1])
        guest.set_password_hash(rootfs, userpasswd[0], hashed)
        if rec.type is InstanceType.CONTAINER:
            rec.options["passwd"] = {"user": userpasswd[0], "hash": hashed}

    def _configure_vm_disk(self, rec: InstanceRecord, userpasswd: tuple[str, str] | None = None,
                           new_identity: bool = False) -> bool:
        """A template VM no guest has run on yet: its settings written into its disk, as at
        create (in a thread); True if so. Once a guest has run, the disk is the tenant's and the
        host never mounts it again: the seed (and the applier in the guest) carries the settings.
        Installed VMs (blank disk + ISO) get them from the cloud-init seed only."""
        vm = rec.options.get("vm", {})
        if not vm.get("kernel") or not vm.get("pristine"):
            return False
        with rootdisk.mounted(self.vms.disk_path(rec)) as root:  # type: ignore[union-attr]
            if new_identity:  # a clone of a VM that never booted
                guest.new_identity(root)
            self.setup_guest(rec, root, userpasswd)
            if userpasswd is None and vm.get("passwd"):
                guest.set_password_hash(root, vm["passwd"]["user"], vm["passwd"]["hash"])
        return True

    # ------------------------------------------------------------- start / stop

    def check_start(self, rec: InstanceRecord) -> None:
        if rec.state is PowerState.RUNNING or rec.name in self._starting:
            raise Conflict(f"{rec.name} is already running")
        if "ioprio" in rec.limits and self.cgroups.io_weight_file() is None:  # bfq gone since (a reboot)
            raise Conflict(f"{rec.name} has an ioprio: " + limits_mod.ioprio_unsupported(
                self.io_device, f"recreate it without --ioprio (its limits are shown by 'ctctl status {rec.name}')"))

    async def start(self, rec: InstanceRecord, paused: bool = False) -> dict[str, Any]:
        async with self.lock(rec):
            rec = self.get(rec.id)
            self.check_start(rec)
            await self._start_locked(rec, paused)
            return self.brief(rec)

    async def resume(self, rec: InstanceRecord) -> dict[str, Any]:
        """A VM started paused (or paused since) runs on."""
        if rec.type is not InstanceType.VM or self.vms is None:
            raise InvalidRequest("resume is for VMs started with --paused")
        await self.vms.cont(rec)
        return self.brief(rec)

    async def hardware(self, rec: InstanceRecord) -> dict[str, Any]:
        if rec.type is not InstanceType.VM or self.vms is None:
            raise InvalidRequest(f"{rec.name} is not a VM")
        return await self.vms.hardware(rec)

    async def _start_locked(self, rec: InstanceRecord, paused: bool = False) -> None:
        self._starting.add(rec.name)
        try:
            resources = self.resources(rec)
            if rec.type is InstanceType.VM:
                self._vms_or_refuse()
                vm_options = rec.options.setdefault("vm", {})
                # from now on the guest may write its disk: ctd never mounts it again
                stale = {"pristine", "guest_pending"} & vm_options.keys()   # guest_pending: older records
                for key in stale:
                    del vm_options[key]
                if stale:
                    self.db.update_instance(rec)
                vm = await self.vms.start(rec, resources, paused)
                rec.state, rec.pid, rec.pid_start = PowerState.RUNNING, vm.pid, vm.start_time
                self.db.update_instance(rec)
                return

            async def plug_nics(pid: int) -> list:
                began = time.perf_counter()
                inside = await asyncio.to_thread(self.network.setup, rec, pid)
                faults.point("start.after_nics")
                if inside:
                    log.debug("%s: NICs host side %.1f ms", rec.name, (time.perf_counter() - began) * 1000)
                return inside  # init addresses them itself before it execs

            try:
                rc = await self.containers.start(rec, self.storage.rootfs(rec.name), resources, plug_nics)
            except BaseException:
                await asyncio.to_thread(self.network.teardown, rec)
                raise
            rec.state, rec.pid, rec.pid_start = PowerState.RUNNING, rc.pid, rc.start_time
            self.db.update_instance(rec)
            faults.point("start.after_db")
        finally:
            self._starting.discard(rec.name)

    async def stop(self, rec: InstanceRecord, timeout: float, kill: bool) -> dict[str, Any]:
        async with self.lock(rec):
            rec = self.get(rec.id)
            how = await self._stop_locked(rec, timeout, kill)
            return {**self.brief(self.get(rec.id)), "stop": {"how": how.value, "timeout": timeout}}

    async def _stop_locked(self, rec: InstanceRecord, timeout: float, kill: bool) -> StopOutcome:
        if not self.is_running(rec):
            if rec.state is not PowerState.STOPPED:
                await self._mark_stopped(rec)
            return StopOutcome.NOT_RUNNING
        rec.state = PowerState.STOPPING
        self.db.update_instance(rec)
        faults.point("stop.after_mark_stopping")
        if rec.type is InstanceType.VM and self.vms is not None:
            # 'powerdown': the guest obeyed the ACPI button; 'quit'/'killed': QEMU was ended
            ended = await self.vms.stop(rec, timeout, kill)
            forced = ended in ("quit", "killed")
        else:
            rc = self.containers.running.get(rec.name)
            await self.containers.stop(rec, timeout, kill)
            forced = rc is not None and rc.forced
        task = self._exit_tasks.get(rec.name)
        if task is not None:
            await asyncio.shield(task)
        if kill:
            return StopOutcome.KILLED
        return StopOutcome.FORCED if forced else StopOutcome.CLEAN

    async def restart(self, rec: InstanceRecord, timeout: float, kill: bool) -> dict[str, Any]:
        async with self.lock(rec):
            rec = self.get(rec.id)
            await self._stop_locked(rec, timeout, kill)
            rec = self.get(rec.id)
            await self._start_locked(rec)
            return self.brief(rec)

    def _container_exited(self, name: str, status: int | None) -> None:
        rc_stopping = self.db.get_instance(name)
        facts = self.containers.exit_facts.pop(name, None)
        report = exits.describe(status, requested=rc_stopping is not None and rc_stopping.state is PowerState.STOPPING,
                                killed=bool(facts and facts.killed), oom_kills=facts.oom_kills if facts else 0,
                                what="QEMU" if rc_stopping is not None and rc_stopping.type is InstanceType.VM else "init")
        log.info("%s: %s", name, report.text)
        task = asyncio.get_running_loop().create_task(self._after_exit(name, status, rc_stopping, report))
        self._exit_tasks[name] = task
        task.add_done_callback(lambda t: self._exit_tasks.pop(name, None) if self._exit_tasks.get(name) is t else None)

    async def _after_exit(self, name: str, status: int | None, rec: InstanceRecord | None,
                          report: exits.ExitReport) -> None:
        if rec is None:
            return
        requested = rec.state is PowerState.STOPPING
        faults.point("stop.after_exit")
        await self._mark_stopped(rec, report)
        # reboot(2) inside a pid namespace ends its init with SIGHUP: the guest asked to reboot.
        rebooted = status is not None and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGHUP
        if rebooted and not requested:
            log.info("%s rebooted itself; starting it again", name)
            async with self.lock(rec):
                fresh = self.db.get_instance(rec.id)
                if fresh and fresh.state is PowerState.STOPPED:
                    try:
                        await self._start_locked(fresh)
                    except Exception:  # noqa: BLE001
                        log.exception("restarting %s after its reboot failed", name)

    async def _mark_stopped(self, rec: InstanceRecord, report: exits.ExitReport | None = None) -> None:
        # a container's veths go with its network namespace; a VM's taps stay until deleted
        await asyncio.to_thread(self.network.teardown, rec, rec.type is InstanceType.CONTAINER)
        faults.point("stop.after_nic_teardown")
        if rec.type is InstanceType.VM and self.vms is not None:
            await self.vms.cleanup(rec)
        await self.containers.cleanup(rec)
        faults.point("stop.after_cgroup_cleanup")
        fresh = self.db.get_instance(rec.id)
        if fresh is not None:
            fresh.state, fresh.pid, fresh.pid_start = PowerState.STOPPED, None, None
            for key in RUNTIME_OPTIONS:  # what the run recorded ends with it
                fresh.options.pop(key, None)
            if report is not None:
                fresh.last_exit = report.as_dict()
            self.db.update_instance(fresh)

    # ------------------------------------------------------------- limits

    def resources(self, rec: InstanceRecord, removed: frozenset[str] = frozenset()):  # type: ignore[no-untyped-def]
        return limits_mod.to_resources(rec.limits, self.host_cpus, rec.id, self.io_device, removed)

    def check_set(self, body: Any) -> dict[str, Any]:
        body = validate.body_fields(body, {"limits", "ipadd", "ipdel", "rate", "nameservers", "userpasswd",
                                           "ssh_keys", "timezone", "hostname"})
        hostname = validate.hostname(body["hostname"]) if body.get("hostname") is not None else None
        changes = limits_mod.normalise(body.get("limits") or {}, len(self.host_cpus))
        ipadd = [str(ipam.parse_address(a)) for a in validate.string_list(body, "ipadd")]
        ipdel = [str(ipam.parse_address(a)) for a in validate.string_list(body, "ipdel")]
        rate: int | None | str = "keep"
        if body.get("rate") is not None:
            rate = None if str(body["rate"]).lower() in ("unlimited", "none", "0") else parse_rate(body["rate"])
        nameservers = [str(ipam.parse_address(a)) for a in validate.string_list(body, "nameservers")]
        userpasswd = guest.check_userpasswd(body["userpasswd"]) if body.get("userpasswd") is not None else None
        ssh_keys = [guest.check_ssh_key(k) for k in validate.string_list(body, "ssh_keys")]
        timezone = guest.check_timezone(body["timezone"]) if body.get("timezone") is not None else None
        if not (changes or ipadd or ipdel or rate != "keep" or nameservers or userpasswd or ssh_keys or timezone
                or hostname):
            raise InvalidRequest("nothing to change: give a limit, address, rate, nameserver, password, key, "
                                 "timezone or hostname")
        self._check_io_device(changes)
        return {"limits": changes, "ipadd": ipadd, "ipdel": ipdel, "rate": rate, "nameservers": nameservers,
                "userpasswd": userpasswd, "ssh_keys": ssh_keys, "timezone": timezone, "hostname": hostname}

    async def set_config(self, rec: InstanceRecord, checked: dict[str, Any]) -> dict[str, Any]:
        """Limits, addresses, rate, guest settings — all or nothing. Every option is checked
        against the instance before anything changes; then each is applied (live where it
        runs), and a failure half-way takes back what was applied and says so in the error
        (a password hashed into the guest is the one step that cannot be taken back: it goes
        last). A running VM's cpus/ram follow after everything is stored, as far as QEMU can."""
        async with self.lock(rec):
            rec = self.get(rec.id)
            await self._check_set_for(rec, checked)
            before = copy.deepcopy(rec)
            done = Rollback(rec.name)
            notes: list[str] = []
            step = "set"
            try:
                if "diskspace" in checked["limits"]:
                    step = "diskspace"
                    await self._set_quota_step(rec, checked["limits"]["diskspace"], done)
                if checked["ipadd"] or checked["ipdel"] or checked["rate"] != "keep":
                    step = _network_step(checked)
                    await self._set_network_step(rec, checked, done)
                if checked["limits"]:
                    step = "limits"
                    await self._set_limits_step(rec, before, checked["limits"], done)
                step = "guest settings"
                await self._set_guest_step(rec, before, checked, done, notes)
                step = "saving the settings"
                self.db.update_instance(rec)
            except BaseException as exc:
                raise await done.fail(exc, step) from None
            if rec.type is InstanceType.VM and self.vms is not None and self.is_running(rec) and checked["limits"]:
                notes += await self._resize_vm(rec, checked["limits"])
            return {**self.view(self.get(rec.id)), "notes": notes}

    async def _check_set_for(self, rec: InstanceRecord, checked: dict[str, Any]) -> None:
        """What check_set could not know without the instance: refused before any change."""
        limits = checked["limits"]
        if rec.type is InstanceType.VM:
            wrong = sorted(set(limits) - VM_LIMITS)
            if wrong:
                raise InvalidRequest(f"{', '.join(wrong)}: container limits; a VM takes "
                                     f"{', '.join(sorted(VM_LIMITS - {'ram_high'}))}")
        if limits.get("diskspace", limits_mod.UNLIMITED) != limits_mod.UNLIMITED:
            if self.storage.name != "btrfs":
                raise NotSupported(f"the {self.storage.name} storage driver cannot limit disk space; disk quotas "
                                   "need the btrfs driver")
            used = await asyncio.to_thread(self.storage.usage, rec.name, True)
            if limits["diskspace"] < used:
                raise InvalidRequest(f"{rec.name} already uses {limits_mod.human_size(used) if used % 1024 == 0 else used}"
                                     f" bytes on disk; the disk limit must be at least that")
        if checked["ipadd"] or checked["ipdel"] or checked["rate"] != "keep":
            self.network.check_change(rec, checked["ipadd"], checked["ipdel"], checked["rate"], self.is_running(rec))
        if checked["userpasswd"] is not None and rec.type is InstanceType.CONTAINER:
            guest.check_guest_has_user(self.storage.rootfs(rec.name), checked["userpasswd"][0])

    async def _set_quota_step(self, rec: InstanceRecord, limit: int, done: Rollback) -> None:
        old = await asyncio.to_thread(self.storage.quota, rec.name)

        async def undo() -> None:
            await asyncio.to_thread(self.storage.set_quota, rec.name, old)

        done.done("diskspace", undo)
        await asyncio.to_thread(self.storage.set_quota, rec.name, None if limit == limits_mod.UNLIMITED else limit)

    async def _set_network_step(self, rec: InstanceRecord, checked: dict[str, Any], done: Rollback) -> None:
        """--ipadd/--ipdel/--rate: the state, the host side (a running VM's tap too) and, in a
        running container, its interface; a VM's guest takes its addresses at next start."""
        before = self.db.nics_of(rec.id)
        live = self.is_running(rec)
        container = self.containers.running.get(rec.name)

        async def undo() -> None:
            inside = await asyncio.to_thread(self.network.restore_nics, rec, before, live)
            if container is not None:
                await self.containers.netconf(container.pid, inside)

        done.done(_network_step(checked), undo)   # before the change: undoes a half-made one too
        inside = await asyncio.to_thread(self.network.change, rec, checked["ipadd"], checked["ipdel"],
                                         checked["rate"], live)
        if container is not None:
            await self.containers.netconf(container.pid, inside)

    async def _set_limits_step(self, rec: InstanceRecord, before: InstanceRecord, changes: dict[str, int],
                               done: Rollback) -> None:
        """New limits into rec, and into a running container's cgroup at once (the kernel may
        refuse one: then none of them stays)."""
        old_limits = dict(before.limits)
        new_limits = limits_mod.merge(old_limits, changes)
        removed = _removed_limits(changes)
        if "ram" in removed:
            new_limits.pop("swap", None)
        if rec.name in self.containers.running:
            rec.limits = new_limits
            wanted = self.resources(rec, removed)
            # the old limits, with those that are new lifted again
            rec.limits = old_limits
            previous = self.resources(rec, frozenset(new_limits) - frozenset(old_limits))

            async def undo() -> None:
                await self.containers.update(before, previous, previous)

            done.done("limits", undo)
            rec.limits = new_limits  # update() reads more than cgroups from it (numpty, numfile)
            await self.containers.update(rec, wanted, previous)
        rec.limits = new_limits

    async def _set_guest_step(self, rec: InstanceRecord, before: InstanceRecord, checked: dict[str, Any],
                              done: Rollback, notes: list[str]) -> None:
        """Hostname, DNS, keys, timezone (and addresses) into the guest's files — a VM's seed —
        and the password last (its old hash is gone once the new one is written)."""
        guest_changed = bool(checked["ipadd"] or checked["ipdel"] or checked["nameservers"]
                             or checked["ssh_keys"] or checked["timezone"] or checked["hostname"])
        userpasswd = checked["userpasswd"]
        if not (guest_changed or userpasswd):
            return
        for key in ("nameservers", "ssh_keys", "timezone"):
            if checked[key]:
                rec.options[key] = checked[key]
        if checked["hostname"]:
            rec.hostname = checked["hostname"]
            if self.is_running(rec):
                notes.append("hostname: applies at next start")
        if rec.type is InstanceType.VM:
            await self._set_vm_guest(rec, before, userpasswd, notes, done)
            return
        rootfs = self.storage.rootfs(rec.name)

        async def undo() -> None:   # the old settings (and NICs, by then restored) written again
            await asyncio.to_thread(self.setup_guest, before, rootfs)

        done.done("guest settings", undo)
        await asyncio.to_thread(self.setup_guest, rec, rootfs)
        if userpasswd is not None:
            done.done(f"password of {userpasswd[0]}", None)
            await asyncio.to_thread(self.set_password, rec, rootfs, userpasswd)

    async def _set_vm_guest(self, rec: InstanceRecord, before: InstanceRecord,
                            userpasswd: tuple[str, str] | None, notes: list[str], done: Rollback) -> None:
        """Guest settings of a VM: into the cloud-init seed at once, into a template VM's disk now
        if it is stopped, else at its next start."""
        assert self.vms is not None
        vms = self.vms
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
        if not self.is_running(rec) and await asyncio.to_thread(self._configure_vm_disk, rec, userpasswd):
            # the disk of a template VM no guest has run on yet, written now

            async def undo_disk() -> None:
                await asyncio.to_thread(self._configure_vm_disk, before)

            done.done("guest settings (disk)", undo_disk)
            if userpasswd is not None:
                done.done(f"password of {userpasswd[0]}", None)
            return
        notes.append("guest settings: on the VM's seed CD-ROM; the guest applies them at its next boot")

    async def _resize_vm(self, rec: InstanceRecord, changes: dict[str, int]) -> list[str]:
        """A running VM's cpus/ram as far as QEMU allows; they are stored already, so a refusal
        here is a note (they apply at next start), not an error."""
        assert self.vms is not None
        try:
            return await self.vms.resize(rec, changes.get("cpus"), changes.get("ram"),
                                         self.resources(rec, _removed_limits(changes)))
        except CtdError as exc:
            return [f"cpus/ram: stored; applying them to the running VM failed ({exc.message}): they apply at "
                    "next start"]

    def _check_io_device(self, limits: dict[str, int]) -> None:
        if ({"iolimit", "iopslimit"} & set(limits)) and self.io_device is None:
            raise InvalidRequest("iolimit/iopslimit need the storage pool on a block device; "
                                 f"{self.storage.root} is not")
        # io weights exist only with bfq (or v2's iocost), asked now: a host may lack or gain them
        limits_mod.check_io_weight(limits, self.cgroups, self.io_device)

    def usage(self, rec: InstanceRecord) -> dict[str, Any] | None:
        if not self.is_running(rec):
            return None
        group = self.group_of(rec)
        try:
            return dataclasses.asdict(group.usage())
        except (OSError, ValueError):
            return None

    def beancounters(self, rec: InstanceRecord) -> list[dict[str, Any]]:
        """OpenVZ's /proc/user_beancounters rows for one running container."""
        if rec.name not in self.containers.running:
            raise Conflict(f"{rec.name} is not running: its counters live in its cgroup")
        group = self.containers.group(rec)
        rows = [dataclasses.asdict(b) for b in group.beancounters(self.resources(rec))]
        held = open_files(group.pids())
        limit = rec.limits.get("numfile")
        peak = self._numfile_peak[rec.name] = max(self._numfile_peak.get(rec.name, 0), held)
        rows.append({"name": "numfile", "held": held, "maxheld": peak, "barrier": limit or limits_mod.UNLIMITED,
                     "limit": limit or limits_mod.UNLIMITED, "failcnt": 0})
        ptys = ptys_held(group.pids())
        numpty = rec.limits.get("numpty", DEFAULT_NUMPTY)
        peak = self._numpty_peak[rec.name] = max(self._numpty_peak.get(rec.name, 0), ptys)
        rows.append({"name": "numpty", "held": ptys, "maxheld": peak, "barrier": numpty, "limit": numpty,
                     "failcnt": 0})
        disk = self.disk(rec, cached=True)
        if disk is not None:
            quota = disk["limit"] or limits_mod.UNLIMITED
            full = int(quota != limits_mod.UNLIMITED and disk["used"] >= quota - (1 << 20))
            peak = self._disk_peak[rec.name] = max(self._disk_peak.get(rec.name, 0), disk["used"])
            rows.append({"name": "diskspace", "held": disk["used"], "maxheld": peak, "barrier": quota,
                         "limit": quota, "failcnt": full})
        return rows

    # ------------------------------------------------------------- snapshots and clones

    def snapshot_name(self, value: Any) -> str:
        return validate.instance_name(value, "snapshot name")

    async def snapshot(self, rec: InstanceRecord, snap: str) -> dict[str, Any]:
        async with self.lock(rec):
            if rec.type is InstanceType.VM:
                if self.is_running(rec):
                    raise Conflict(f"{rec.name} is running: stop the VM to snapshot its disk")
                await asyncio.to_thread(self.storage.snapshot_vm_disk, rec.name, snap)
                return {"instance": rec.name, "snapshot": snap}
            await asyncio.to_thread(self.storage.snapshot_instance, rec.name, snap)
            faults.point("snapshot.after_create")
        return {"instance": rec.name, "snapshot": snap}

    def snapshots(self, rec: InstanceRecord) -> list[str]:
        return self.storage.list_snapshots(rec.name)

    async def delete_snapshot(self, rec: InstanceRecord, snap: str) -> None:
        if snap not in self.storage.list_snapshots(rec.name):
            raise NotFound(f"{rec.name} has no snapshot {snap!r}; 'ctctl snapshot-list {rec.name}' shows them")
        async with self.lock(rec):
            await asyncio.to_thread(self.storage.delete_snapshot, rec.name, snap)

    def check_rollback(self, rec: InstanceRecord, snap: str, restart: bool) -> None:
        if snap not in self.storage.list_snapshots(rec.name):
            raise NotFound(f"{rec.name} has no snapshot {snap!r}; 'ctctl snapshot-list {rec.name}' shows them")
        if rec.state is not PowerState.STOPPED and not restart:
            raise Conflict(f"{rec.name} is running; stop it first or roll back with --restart")

    async def rollback(self, rec: InstanceRecord, snap: str, restart: bool) -> dict[str, Any]:
        async with self.lock(rec):
            rec = self.get(rec.id)
            self.check_rollback(rec, snap, restart)
            was_running = self.is_running(rec)
            if was_running:
                await self._stop_locked(rec, self.config.stop_timeout, kill=False)
            if rec.type is InstanceType.VM:
                await asyncio.to_thread(self.storage.rollback_vm_disk, rec.name, snap)
            else:
                await asyncio.to_thread(self.storage.rollback, rec.name, snap)
            if was_running:
                await self._start_locked(self.get(rec.id))
            return self.view(self.get(rec.id))

    def check_clone(self, src: InstanceRecord, body: Any) -> dict[str, Any]:
        body = validate.body_fields(body, {"name", "snapshot"}, {"name"})
        snap = body.get("snapshot")
        if snap is not None:
            snap = self.snapshot_name(snap)
            if snap not in self.storage.list_snapshots(src.name):
                raise NotFound(f"{src.name} has no snapshot {snap!r}")
        elif src.state is not PowerState.STOPPED:
            raise Conflict(f"{src.name} is running: a copy of a live root is not consistent; stop it, "
                           "or snapshot it and clone the snapshot (--snapshot)")
        if src.type is InstanceType.VM:
            vm = src.options.get("vm", {})
            # name, id and pool space checked as for a new VM; profile, ISOs and template are the
            # source's (copied as they are, even if the ISO or template has gone since)
            checked = self.check_create({"name": body["name"], "hostname": body["name"], "type": "vm",
                                         "vm": {"disk": str(vm.get("disk_size", 64 << 20))}})
            checked["source"], checked["snapshot"] = src, snap
            return checked
        checked = self.check_create({"name": body["name"], "template": src.template, "hostname": body["name"],
                                     "privileged": src.privileged})
        checked["source"], checked["snapshot"] = src, snap
        return checked

    async def clone(self, checked: dict[str, Any]) -> dict[str, Any]:
        """A new instance from another's root (or snapshot): new id, id range, hostname, MAC, IP."""
        src: InstanceRecord = checked["source"]
        name, instance_id = checked["name"], checked["id"]
        with self.new_instance(name, instance_id) as new:
            if src.type is InstanceType.VM:
                return await self._clone_vm(checked, new)
            base = self.reserve_idmap(instance_id, src.privileged)
            rec = InstanceRecord(
                id=instance_id, name=name, type=src.type, template=src.template, hostname=name,
                privileged=src.privileged, idmap_base=base, limits=dict(src.limits),
                created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                init=list(src.init), stop_signal=src.stop_signal, options=copyable_options(src.options))
            nics = [NicRequest(n.network, n.mode, [] if n.network else [], n.filter, n.rate)
                    for n in self.db.nics_of(src.id)]
            async with self.lock(src):
                rootfs = await asyncio.to_thread(self.storage.clone_instance, src.name, name, checked["snapshot"])
            new.storage_made()
            faults.point("clone.after_storage")
            if "diskspace" in rec.limits:
                await asyncio.to_thread(self.storage.set_quota, name, rec.limits["diskspace"])
            faults.point("clone.before_db")
            new.mark_creating()
            new.add_record(rec, [n for n in nics if n.network])
            faults.point("clone.after_db")
            await asyncio.to_thread(guest.new_identity, rootfs)
            await asyncio.to_thread(self.setup_guest, rec, rootfs)
            new.commit()
            return self.brief(rec)

    async def _clone_vm(self, checked: dict[str, Any], new: NewInstance) -> dict[str, Any]:
        """A stopped VM's copy: reflinked disk, copied UEFI variables and TPM state; new id, uuid,
        MACs, addresses and hostname, in a new seed (whose new instance-id makes cloud-init, or
        ctd's applier in a template disk, treat the clone as a new machine), and written into
        the disk only if no guest has run on it yet."""
        assert self.vms is not None
        src: InstanceRecord = checked["source"]
        name = checked["name"]
        vm = {k: v for k, v in src.options.get("vm", {}).items() if k != "guest_pending"}
        rec = InstanceRecord(
            id=checked["id"], name=name, type=InstanceType.VM, template=src.template, hostname=name,
            privileged=False, idmap_base=None, limits=dict(src.limits),
            created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            init=[], stop_signal=src.stop_signal, options={**copyable_options(src.options), "vm": vm})
        nics = [NicRequest(n.network, n.mode, [], n.filter, n.rate) for n in self.db.nics_of(src.id) if n.network]
        async with self.lock(src):
            await asyncio.to_thread(self.storage.clone_vm_dir, src.name, name, checked["snapshot"])
        new.storage_made()
        new.mark_creating()
        new.add_record(rec, nics)
        await asyncio.to_thread(self._configure_vm_disk, rec, None, True)
        await asyncio.to_thread(self.vms.write_seed, rec)
        new.commit()
        return self.brief(rec)

    # ------------------------------------------------------------- reinstall

    def check_reinstall(self, rec: InstanceRecord, template: Any, restart: bool = False) -> None:
        if rec.type is InstanceType.VM:
            raise InvalidRequest(f"{rec.name} is a VM: reinstall is for containers; make a new VM from the "
                                 "template (ctctl create NAME --type vm --template T) and destroy this one")
        self.templates.get(validate.instance_name(template, "template name"))
        if rec.state is not PowerState.STOPPED and not restart:
            raise Conflict(f"{rec.name} is running; stop it first or reinstall with --restart")

    async def reinstall(self, rec: InstanceRecord, template: str, restart: bool = False) -> dict[str, Any]:
        """A fresh root from the template (OpenVZ's reinstall): id, limits, NICs, keys and
        passwords stay; with restart, a running instance is stopped first and started after."""
        async with self.lock(rec):
            rec = self.get(rec.id)
            self.check_reinstall(rec, template, restart)
            was_running = self.is_running(rec)
            if was_running:
                await self._stop_locked(rec, self.config.stop_timeout, kill=False)
                rec = self.get(rec.id)
            recipe = self.templates.recipe_of(template)
            passwords = await asyncio.to_thread(self._passwords_of, rec, self.storage.rootfs(rec.name))
            rootfs = await asyncio.to_thread(self.storage.reinstall_root, rec.name, template)
            rec.template, rec.init, rec.stop_signal = template, list(recipe.init), recipe.stop_signal
            rec.options.update({"systemd": recipe.systemd, "network_style": recipe.network_style})
            self.db.update_instance(rec)
            await asyncio.to_thread(self.setup_guest, rec, rootfs)
            notes = await asyncio.to_thread(self._put_passwords, rootfs, passwords, template)
            if was_running:
                await self._start_locked(self.get(rec.id))
            return {**self.brief(self.get(rec.id)), "notes": notes}

    @staticmethod
    def _passwords_of(rec: InstanceRecord, rootfs: Path) -> dict[str, str]:
        """The hashes a reinstall keeps: root's, and the user's set with --userpasswd, as they
        are in the old root (the tenant may have changed them, or locked them: then none), else
        (no such user or no readable shadow there) the hash ctd kept when it set the password."""
        kept = rec.options.get("passwd") or {}
        users = ["root"] + ([kept["user"]] if kept.get("user") not in (None, "root") else [])
        out = {}
        for user in users:
            current = guest.password_field(rootfs, user)
            if current is None and kept.get("user") == user:
                current = kept.get("hash")
            if guest.is_password_hash(current):
                out[user] = current
        return out

    @staticmethod
    def _put_passwords(rootfs: Path, passwords: dict[str, str], template: str) -> list[str]:
        notes = []
        for user, hashed in passwords.items():
            try:
                guest.set_password_hash(rootfs, user, hashed)
            except InvalidRequest:  # the new template has no such user (or no /etc/shadow)
                notes.append(f"the password of {user!r} was not kept: template {template} has no such user")
        return notes

    # ------------------------------------------------------------- destroy

    def check_destroy(self, rec: InstanceRecord, force: bool) -> None:
        if rec.state is not PowerState.STOPPED and not force:
            raise Conflict(f"{rec.name} is running; stop it first or destroy with --force")

    async def destroy(self, rec: InstanceRecord, force: bool) -> None:
        async with self.lock(rec):
            rec = self.get(rec.id)
            self.check_destroy(rec, force)
            if self.is_running(rec):
                await self._stop_locked(rec, 0, kill=True)
            if rec.type is InstanceType.VM and self.vms is not None:
                await self.vms.cleanup(rec)
                await asyncio.to_thread(self.vms.remove_run_dir, rec)  # serial.log and all
            faults.point("destroy.after_stop")
            await self.containers.cleanup(rec)
            faults.point("destroy.after_cgroup")
            await asyncio.to_thread(self.storage.delete_instance, rec.name)
            faults.point("destroy.after_storage")
            self.db.delete_instance(rec.id)
        self._locks.pop(rec.id, None)

    # ------------------------------------------------------------- exec / console

    async def exec(self, ref: str, command: list[str], env: dict[str, str], cwd: str, tty: bool) -> ExecProcess:
        rec = self.get(ref)
        if rec.type is InstanceType.VM:
            raise NotSupported(f"{rec.name} is a VM: exec works for containers; use ssh or 'ctctl console {rec.name}'")
        return await self.containers.exec(rec, command, env, cwd, tty)

    def console(self, ref: str):  # type: ignore[no-untyped-def]
        rec = self.get(ref)
        if rec.type is InstanceType.VM:
            vm = self.vms.running.get(rec.name) if self.vms else None
            if vm is None:
                raise Conflict(f"{rec.name} is not running; start it first")
            return vm.spec.serial_socket  # the stream handler connects to QEMU's serial socket
        rc = self.containers.running.get(rec.name)
        if rc is None:
            raise Conflict(f"{rec.name} is not running; start it first")
        if rc.console is None:
            raise Conflict(f"the console of {rec.name} was lost when ctd restarted; "
                           f"'ctctl restart {rec.name}' gives it a new one")
        return rc.console

    # ------------------------------------------------------------- after a daemon restart

    @staticmethod
    def _lost(rec: InstanceRecord) -> exits.ExitReport:
        report = exits.describe(None, requested=rec.state is PowerState.STOPPING, killed=False, lost=True)
        log.info("%s: %s", rec.name, report.text)
        return report

    async def recover(self) -> dict[str, list[str]]:
        """Adopt containers that kept running; clean up what a crash left half-done."""
        report: dict[str, list[str]] = {"adopted": [], "stopped": [], "removed_dirs": [], "removed_cgroups": [],
                                        "removed_records": [], "left_cgroups": []}
        records = self.db.list_instances()
        for rec in records:
            if rec.type is InstanceType.VM and rootdisk.release_stale_mount(self.storage.instance_path(rec.name)):
                report["removed_dirs"].append(f"{rec.name}/{rootdisk.MOUNT_DIR}")
            if rec.state is PowerState.STOPPED:
                continue
            if rec.type is InstanceType.VM:
                if self.vms is not None and await self.vms.adopt(rec) is not None:
                    rec.state = PowerState.RUNNING
                    self.db.update_instance(rec)
                    report["adopted"].append(rec.name)
                else:
                    await self._mark_stopped(rec, self._lost(rec))
                    report["stopped"].append(rec.name)
                continue
            if self.containers.adopt(rec) is not None:
                await asyncio.to_thread(self.network.adopt, rec, rec.pid)
                rec.state = PowerState.RUNNING
                self.db.update_instance(rec)
                report["adopted"].append(rec.name)
            else:
                await self._mark_stopped(rec, self._lost(rec))
                report["stopped"].append(rec.name)
        # Filters of NICs whose container died with the old ctd go; those of adopted ones stay.
        if self.network.filters:
            await asyncio.to_thread(self.network._refilter, [], False)
        else:
            await asyncio.to_thread(self.network.remove_filters)
        known = {r.name for r in records}
        for name in self.storage.instance_names():
            if name not in known:
                await asyncio.to_thread(self.storage.delete_instance, name)
                report["removed_dirs"].append(name)
        report["removed_dirs"] += await asyncio.to_thread(self.storage.discard_staging)
        report["removed_dirs"] += await asyncio.to_thread(self.storage.recover_partial)
        report["removed_dirs"] += await asyncio.to_thread(discard_partial_backups, self.storage)
        for rec in records:  # a destroy the crash interrupted after the root was deleted: finish it;
            # a create or clone it interrupted before the guest was set up: undo it
            if not self.is_running(rec) and (not self._has_storage(rec)
                                             or (self.storage.instance_path(rec.name) / CREATING).exists()):
                await asyncio.to_thread(self.storage.delete_instance, rec.name)
                self.db.delete_instance(rec.id)
                report["removed_records"].append(rec.name)
        # Only groups of instances this state records are ctd's to end; a standby group (ctd's
        # own naming) goes only if empty; anything else under the base is left alone and named.
        own = {cgroup_name(r) if r.type is InstanceType.CONTAINER else vm_group(r) for r in records}
        in_use = {os.path.basename(d) for r in records if self.is_running(r) for d in self.group_of(r).dirs().values()}
        for group_name in self.cgroups.list_groups():
            if group_name in in_use or group_name == LXCFS_GROUP:  # lxcfs outlives ctd
                continue
            if group_name in own:
                await asyncio.to_thread(ContainerDriver._destroy_group_quietly, self.cgroups.group(group_name))
                report["removed_cgroups"].append(group_name)
            elif STANDBY_GROUP.fullmatch(group_name) and await asyncio.to_thread(_remove_if_empty, self.cgroups,
                                                                                 group_name):
                report["removed_cgroups"].append(group_name)
            else:
                report["left_cgroups"].append(group_name)
        if report["left_cgroups"]:
            log.warning("recovery: cgroups under the base that no instance of %s records were left alone: %s",
                        self.config.state_dir, ", ".join(report["left_cgroups"]))
        for key, names in report.items():
            if names:
                log.info("recovery: %s: %s", key, ", ".join(names))
        return report
