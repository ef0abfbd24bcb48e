"""VmSpec -> QEMU argv: one builder per profile, made of small shared pieces.

The result is a list for execve, never a shell string: a path with spaces or quotes is one
element. Inside QEMU's own key=value option syntax a comma is the separator, so every value
placed there goes through esc() (a literal comma is written twice).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ctd.errors import InvalidRequest
from ctd.instance.vm.spec import Disk, MiB, VmSpec

# Hyper-V enlightenments for Windows (what libvirt/virt-manager turn on for Windows 10+).
HYPERV_KVM = ("hv_relaxed", "hv_vapic", "hv_spinlocks=0x1fff", "hv_time", "hv_vpindex",
              "hv_synic", "hv_stimer", "hv_reset", "hv_frequencies")
# Under TCG (QEMU 7.2) QEMU refuses hv_vpindex ("kernel doesn't allow setting HyperV
# VP_INDEX"), and hv_synic needs hv_vpindex, hv_stimer needs hv_synic: drop the three.
HYPERV_TCG = ("hv_relaxed", "hv_vapic", "hv_spinlocks=0x1fff", "hv_time", "hv_reset",
              "hv_frequencies")

SOCKET_OPTS = "server=on,wait=off"   # QEMU listens; ctd connects when it wants, never blocks start


def esc(value: object) -> str:
    """A value inside QEMU's comma-separated option syntax."""
    return str(value).replace(",", ",,")


def kv(head: str, opts: dict[str, object | None]) -> str:
    """'head,k=v,...' skipping None values; values escaped."""
    parts = [head] if head else []
    parts += [f"{k}={esc(v)}" for k, v in opts.items() if v is not None]
    return ",".join(parts)


def build_argv(spec: VmSpec, check_files: bool = True) -> list[str]:
    """The full argv (argv[0] is the QEMU binary); InvalidRequest/NotFound on bad specs."""
    spec.validate(check_files)
    return _BUILDERS[spec.profile](spec)


# --- profiles ------------------------------------------------------------------------------

def _linux(spec: VmSpec) -> list[str]:
    return [*_base(spec, _cpu(spec, hyperv=False)), "-rtc", "base=utc",
            *_firmware(spec), *_tpm(spec), *_display(spec), *_storage(spec),
            *_network(spec), *_balloon(spec), *_agent(spec), *_kernel(spec)]


def _windows(spec: VmSpec) -> list[str]:
    return [*_base(spec, _cpu(spec, hyperv=True)),
            # Windows keeps the RTC in local time.
            "-rtc", "base=localtime",
            # S3/S4 under QEMU are a known source of guests that never wake: hide them.
            "-global", "ICH9-LPC.disable_s3=1", "-global", "ICH9-LPC.disable_s4=1",
            *_firmware(spec), *_tpm(spec),
            # An absolute pointer: the VNC cursor and the guest's stay together.
            "-device", "qemu-xhci,id=xhci", "-device", "usb-tablet,id=tablet0,bus=xhci.0",
            *_display(spec), *_storage(spec), *_network(spec), *_balloon(spec), *_agent(spec), *_kernel(spec)]


_BUILDERS: dict[str, Callable[[VmSpec], list[str]]] = {"linux": _linux, "windows": _windows}


# --- shared pieces ----------------------------------------------------------------------------

def _machine(spec: VmSpec) -> str:
    machine = spec.machine_type
    opts: dict[str, object | None] = {}
    fw = spec.uefi
    if fw is not None:
        opts["pflash0"] = "ovmf-code"
        opts["pflash1"] = "ovmf-vars"
        if fw.secure_boot:
            opts["smm"] = "on"   # secure-boot OVMF is an SMM build; it will not start without it
    if spec.profile == "windows":
        opts["hpet"] = "off"     # Windows then uses the Hyper-V/ACPI timers: less CPU when idle
    if machine == "microvm":
        # ISA serial for the console, ACPI for system_powerdown; no option ROMs to scan.
        opts.update({"x-option-roms": "off", "isa-serial": "on", "acpi": "on"})
    return kv(machine, opts)


def _cpu(spec: VmSpec, hyperv: bool) -> str:
    model = "host" if spec.accel == "kvm" else "max"   # TCG cannot do "host"; max = everything it emulates
    if hyperv:
        return ",".join([model, *(HYPERV_KVM if spec.accel == "kvm" else HYPERV_TCG)])
    return model


def _accel(spec: VmSpec) -> str:
    if spec.accel == "tcg":
        # TCG's translated-code cache grows to 1 GiB by default: more than the guest's RAM for a
        # small VM, and past the cgroup limit (RAM + QEMU's allowance) it gets QEMU OOM-killed.
        return f"tcg,tb-size={spec.tcg_cache_mib}"
    return spec.accel


def _base(spec: VmSpec, cpu: str) -> list[str]:
    argv = [spec.qemu,
            "-name", f"{esc(spec.name)},process=qemu-{esc(spec.name)}",
            "-uuid", spec.uuid,
            # Only the devices listed here: no default NIC, VGA, floppy, CD or monitor.
            "-nodefaults", "-no-user-config",
            "-machine", _machine(spec),
            "-accel", _accel(spec),
            "-cpu", cpu,
            # One socket with N cores: Windows client editions use at most two sockets. Cores
            # past the boot count are empty slots that QMP device_add fills while it runs.
            "-smp", f"{spec.cpus},sockets=1,cores={spec.cpu_slots},threads=1,maxcpus={spec.cpu_slots}",
            "-m", f"{spec.ram // MiB}M",
            # Console: a unix socket ctd reads all the time (vm/serial.py: its console log is a
            # fixed-size ring); QEMU's logfile, which grows without end, only if asked for.
            "-chardev", kv("socket", {"id": "serial0", "path": spec.serial_socket, "server": "on", "wait": "off",
                                      **({"logfile": spec.serial_log} if spec.serial_logfile else {})}),
            "-serial", "chardev:serial0",
            "-qmp", f"unix:{esc(spec.qmp_socket)},{SOCKET_OPTS}",
            "-daemonize", "-pidfile", str(spec.pidfile)]
    if spec.paused:
        argv.append("-S")
    if spec.incoming:
        argv += ["-incoming", "defer"]
    return argv


def _firmware(spec: VmSpec) -> list[str]:
    fw = spec.uefi
    if fw is None:
        return []
    argv = ["-blockdev", kv("driver=file", {"node-name": "ovmf-code", "filename": fw.code, "read-only": "on"}),
            "-blockdev", kv("driver=file", {"node-name": "ovmf-vars", "filename": spec.nvram_path})]
    if fw.secure_boot:
        # Only SMM code may write the variable store: the guest OS cannot disable secure boot.
        argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    return argv


def _tpm(spec: VmSpec) -> list[str]:
    if not spec.has_tpm:
        return []
    # swtpm (process.start_swtpm) listens on this socket before QEMU starts; CRB is TPM 2.0's
    # interface (Windows 11 accepts it; tpm-tis would also do).
    return ["-chardev", kv("socket", {"id": "chrtpm", "path": spec.swtpm_socket}),
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
            "-device", "tpm-crb,tpmdev=tpm0"]


def _display(spec: VmSpec) -> list[str]:
    argv = ["-display", "none"]
    if spec.vnc and spec.machine_type != "microvm":   # microvm has no display adapter
        argv += ["-device", "VGA,id=video0", "-vnc", f"unix:{esc(spec.vnc_socket)}"]
    return argv


class _Ports:
    """Free IDE/AHCI attachment points: PIIX IDE on pc (2 buses x 2 units), ICH9 AHCI on q35
    (6 ports, one device each); an extra AHCI controller on pc when a disk asks for ahci."""

    def __init__(self, machine: str) -> None:
        self.machine = machine
        self.ide = ([f"bus=ide.{b},unit={u}" for b in (0, 1) for u in (0, 1)] if machine == "pc"
                    else [f"bus=ide.{p}" for p in range(6)])
        self.ahci = [f"bus=ahci0.{p}" for p in range(6)] if machine == "pc" else self.ide
        self.pc_ahci_added = False

    def take(self, kind: str, what: str) -> tuple[str, list[str]]:
        """(bus/unit options, controller argv to add first)."""
        pool = self.ahci if kind == "ahci" else self.ide
        if not pool:
            raise InvalidRequest(f"no free {'AHCI' if kind == 'ahci' else 'IDE'} port for {what} "
                                 f"on machine {self.machine}: use virtio disks or fewer CD-ROMs")
        extra: list[str] = []
        if kind == "ahci" and self.machine == "pc" and not self.pc_ahci_added:
            self.pc_ahci_added = True
            extra = ["-device", "ahci,id=ahci0"]
        return pool.pop(0), extra


def _disk_bus(spec: VmSpec, disk: Disk) -> str:
    # compat: guests without virtio drivers (a Windows installer before virtio-win) see AHCI.
    return "ahci" if spec.compat and disk.bus == "virtio" else disk.bus


def _storage(spec: VmSpec) -> list[str]:
    machine = spec.machine_type
    mmio = machine == "microvm"
    ports = _Ports(machine)
    cdroms = spec.all_cdroms()
    # bootindex matters to the firmware only (a -kernel boot ignores it).
    disk_boot, cd_boot = (2, 1) if spec.boot_cdrom_first and cdroms else (1, 2)
    argv: list[str] = []
    for i, disk in enumerate(spec.disks):
        dev = disk.id or f"disk{i}"
        argv += ["-drive", kv("", {"file": disk.path, "if": "none", "id": f"drive-{dev}",
                                   "format": disk.format, "cache": disk.cache,
                                   "readonly": "on" if disk.readonly else None,
                                   # guest TRIM punches holes: sparse raw / qcow2 shrink again
                                   "discard": None if disk.readonly else "unmap"})]
        boot = {"bootindex": disk_boot} if i == 0 else {}
        bus = _disk_bus(spec, disk)
        if bus == "virtio":
            model = "virtio-blk-device" if mmio else "virtio-blk-pci"
            argv += ["-device", kv(model, {"drive": f"drive-{dev}", "id": dev, **boot})]
        else:
            where, extra = ports.take(bus, f"disk {disk.path}")
            argv += [*extra, "-device",
                     f"ide-hd,{where}," + kv("", {"drive": f"drive-{dev}", "id": dev, **boot})]
    for i, iso in enumerate(cdroms):
        argv += ["-drive", kv("", {"file": iso, "if": "none", "id": f"drive-cd{i}",
                                   "media": None if mmio else "cdrom", "readonly": "on", "format": "raw"})]
        boot = {"bootindex": cd_boot} if i == 0 else {}
        if mmio:   # no IDE on microvm: a read-only virtio disk (cloud-init finds cidata anyway)
            argv += ["-device", kv("virtio-blk-device", {"drive": f"drive-cd{i}", "id": f"cd{i}"})]
        else:
            where, extra = ports.take("ide", f"CD-ROM {iso}")
            argv += [*extra, "-device", f"ide-cd,{where}," + kv("", {"drive": f"drive-cd{i}", "id": f"cd{i}", **boot})]
    if spec.media_slot and not mmio:
        # removable (media.py); empty unless an ISO is in it; bootindex 0 beats the disk's
        argv += ["-drive", kv("", {"file": spec.media, "if": "none", "id": "drive-media0", "media": "cdrom",
                                   "readonly": "on", "format": "raw" if spec.media else None})]
        where, extra = ports.take("ide", "the removable CD-ROM")
        boot = {"bootindex": 0} if spec.boot_media else {}
        argv += [*extra, "-device", f"ide-cd,{where}," + kv("", {"drive": "drive-media0", "id": "media0", **boot})]
    return argv


def _network(spec: VmSpec) -> list[str]:
    mmio = spec.machine_type == "microvm"
    # vhost-net moves the data path into the host kernel; it needs KVM's irqfd/ioeventfd.
    vhost = "on" if spec.accel == "kvm" and Path("/dev/vhost-net").exists() else None
    argv: list[str] = []
    for i, nic in enumerate(spec.nics):
        model: str = "e1000" if spec.compat and nic.model == "virtio-net-pci" else nic.model
        if mmio:
            model = "virtio-net-device"
        argv += ["-netdev", kv("tap", {"id": f"net{i}", "ifname": nic.ifname,
                                       # the tap exists already, on its bridge: no scripts
                                       "script": "no", "downscript": "no", "vhost": vhost}),
                 "-device", kv(model, {"netdev": f"net{i}", "mac": nic.mac, "id": f"nic{i}"})]
    return argv


def _balloon(spec: VmSpec) -> list[str]:
    if not spec.balloon or spec.compat:   # compat guests have no virtio drivers at all
        return []
    # The guest hands pages back when QMP 'balloon' lowers its target; deflating again gives
    # them back, up to the -m size it booted with. Windows needs virtio-win's balloon driver.
    model = "virtio-balloon-device" if spec.machine_type == "microvm" else "virtio-balloon-pci"
    # free page reporting: pages the guest frees go back to the host too (an idle VM's RSS
    # shrinks to what it uses, not what it once touched, e.g. while unpacking its initrd)
    return ["-device", f"{model},id=balloon0,free-page-reporting=on"]


def _agent(spec: VmSpec) -> list[str]:
    # The guest agent's channel (vm/agent.py): a virtio-serial port the guest's qemu-ga (Linux)
    # or virtio-win's agent (Windows) opens by this name; QEMU serves it on a unix socket ctd
    # connects to when it needs it. A guest without an agent just never opens the port; compat
    # guests have no virtio drivers (a Windows installer): no channel, the agent is refused.
    if spec.compat:
        return []
    model = "virtio-serial-device" if spec.machine_type == "microvm" else "virtio-serial-pci"
    return ["-chardev", kv("socket", {"id": "agent0", "path": spec.agent_socket, "server": "on", "wait": "off"}),
            "-device", f"{model},id=vserial0",
            "-device", "virtserialport,bus=vserial0.0,chardev=agent0,name=org.qemu.guest_agent.0"]


def _kernel(spec: VmSpec) -> list[str]:
    if spec.kernel is None:
        return []
    argv = ["-kernel", str(spec.kernel)]
    if spec.initrd is not None:
        argv += ["-initrd", str(spec.initrd)]
    if spec.append is not None:
        argv += ["-append", spec.append]
    return argv
