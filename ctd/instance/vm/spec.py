"""What a QEMU virtual machine is made of: plain typed data, checked by validate().

Profiles fill in defaults (the Windows profile: q35, OVMF with secure boot, a TPM); every
path the machine needs at run time lives in run_dir unless the caller puts the persistent
ones (UEFI variables, TPM state) elsewhere.
"""

from __future__ import annotations

import re
import shutil
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ctd.errors import InvalidRequest, NotFound

Profile = Literal["linux", "windows"]
Accel = Literal["kvm", "tcg"]
Machine = Literal["pc", "q35", "microvm"]
DiskFormat = Literal["raw", "qcow2"]
DiskBus = Literal["virtio", "ahci", "ide"]
Cache = Literal["none", "writeback", "writethrough", "directsync", "unsafe"]
NicModel = Literal["virtio-net-pci", "e1000", "e1000e"]

PROFILES = ("linux", "windows")
ACCELS = ("kvm", "tcg")
MACHINES = ("pc", "q35", "microvm")
DISK_FORMATS = ("raw", "qcow2")
DISK_BUSES = ("virtio", "ahci", "ide")
CACHES = ("none", "writeback", "writethrough", "directsync", "unsafe")
NIC_MODELS = ("virtio-net-pci", "e1000", "e1000e")

MiB = 1024 * 1024
MIN_RAM = 16 * MiB
MAX_CPUS = 255            # beyond that x86 needs x2APIC + an IOMMU; not worth supporting
UNIX_PATH_MAX = 107       # sun_path is 108 bytes with its NUL
QEMU = "qemu-system-x86_64"
OVMF_DIR = Path("/usr/share/OVMF")

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


@dataclass(frozen=True)
class Disk:
    path: Path
    format: DiskFormat = "raw"
    bus: DiskBus = "virtio"
    # cache=none (O_DIRECT) is the safe, fast choice on real storage; tmpfs refuses O_DIRECT.
    cache: Cache = "none"
    readonly: bool = False
    id: str | None = None     # QEMU's device id (drive: "drive-" + id); None: disk<N>


@dataclass(frozen=True)
class Nic:
    ifname: str               # an existing tap device (the manager creates it on the bridge)
    mac: str                  # lowercase aa:bb:cc:dd:ee:ff
    model: NicModel = "virtio-net-pci"


@dataclass(frozen=True)
class Firmware:
    """UEFI firmware: CODE is shared and read-only, VARS is a template copied per VM."""

    code: Path
    vars_template: Path
    secure_boot: bool = False   # an SMM build: needs q35 with smm=on and a secure pflash

    @classmethod
    def ovmf(cls, secure_boot: bool = True, directory: Path = OVMF_DIR) -> Firmware:
        """Debian's ovmf package: the .ms pair has secure boot on and Microsoft's keys enrolled."""
        if secure_boot:
            return cls(directory / "OVMF_CODE_4M.ms.fd", directory / "OVMF_VARS_4M.ms.fd", True)
        return cls(directory / "OVMF_CODE_4M.fd", directory / "OVMF_VARS_4M.fd", False)


@dataclass
class VmSpec:
    name: str
    uuid: str
    ram: int                  # bytes, a whole number of MiB
    cpus: int
    run_dir: Path             # sockets, pidfiles, logs; by default the NVRAM and TPM state too
    profile: Profile = "linux"
    accel: Accel = "tcg"      # pick_accel() says which one this host can do
    machine: Machine | None = None          # None: q35
    disks: list[Disk] = field(default_factory=list)
    cdroms: list[Path] = field(default_factory=list)
    kernel: Path | None = None              # direct kernel boot (bzImage, or vmlinux for PVH)
    initrd: Path | None = None
    append: str | None = None
    nics: list[Nic] = field(default_factory=list)
    firmware: Firmware | None = None        # None: SeaBIOS (linux), OVMF secure boot (windows)
    nvram: Path | None = None               # per-VM copy of the VARS; None: run_dir/OVMF_VARS.fd
    tpm: bool | None = None                 # None: on for windows
    tpm_state_dir: Path | None = None       # None: run_dir/tpm
    compat: bool = False      # e1000 NICs and AHCI disks: guests without virtio drivers
    drivers_iso: Path | None = None         # virtio-win.iso, a second CD-ROM
    seed_iso: Path | None = None            # cloud-init NoCloud seed (label cidata)
    vnc: bool = True
    paused: bool = False      # -S: the CPUs wait for QMP 'cont'
    incoming: bool = False    # -incoming defer: a live migration's target (QMP migrate-incoming)
    max_cpus: int | None = None             # vCPUs that can be hot-added later; None: cpus
    balloon: bool = True      # virtio-balloon: RAM can be lowered (and raised back) while running
    tcg_cache_mib: int = 128  # TCG's translation cache (QEMU's default, 1 GiB, dwarfs small guests)
    boot_cdrom_first: bool = False          # installing: boot the first CD-ROM before the disk
    serial_logfile: bool = True             # QEMU's own serial.log (grows); ctd keeps its ring instead
    media_slot: bool = False  # a removable CD-ROM (media.py), after the others: the seed stays sr0
    media: Path | None = None               # the ISO in it; None: empty
    boot_media: bool = False  # boot that ISO first (a rescue)
    qemu: str = QEMU

    # --- resolved defaults -------------------------------------------------------------

    @property
    def machine_type(self) -> Machine:
        return self.machine or "q35"

    @property
    def uefi(self) -> Firmware | None:
        if self.firmware is None and self.profile == "windows":
            return Firmware.ovmf(secure_boot=True)
        return self.firmware

    @property
    def cpu_slots(self) -> int:
        """Cores in the topology: the boot vCPUs plus room to hot-add (microvm cannot hotplug)."""
        if self.machine_type == "microvm" or self.max_cpus is None:
            return self.cpus
        return max(self.cpus, self.max_cpus)

    @property
    def has_tpm(self) -> bool:
        return self.profile == "windows" if self.tpm is None else self.tpm

    # --- where things live ---------------------------------------------------------------

    @property
    def qmp_socket(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def serial_socket(self) -> Path:
        return self.run_dir / "serial.sock"

    @property
    def agent_socket(self) -> Path:
        """The guest agent's virtio-serial port (org.qemu.guest_agent.0), as QEMU serves it."""
        return self.run_dir / "agent.sock"

    @property
    def serial_log(self) -> Path:
        return self.run_dir / "serial.log"

    @property
    def vnc_socket(self) -> Path:
        return self.run_dir / "vnc.sock"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "qemu.pid"

    @property
    def nvram_path(self) -> Path:
        return self.nvram or self.run_dir / "OVMF_VARS.fd"

    @property
    def tpm_dir(self) -> Path:
        return self.tpm_state_dir or self.run_dir / "tpm"

    @property
    def swtpm_socket(self) -> Path:
        return self.run_dir / "swtpm.sock"

    @property
    def swtpm_pidfile(self) -> Path:
        return self.run_dir / "swtpm.pid"

    @property
    def swtpm_log(self) -> Path:
        return self.run_dir / "swtpm.log"

    def all_cdroms(self) -> list[Path]:
        """The CD-ROMs in drive order: install media first, then drivers, then the seed."""
        extra = [p for p in (self.drivers_iso, self.seed_iso) if p is not None]
        return [*self.cdroms, *extra]

    def runtime_files(self) -> list[Path]:
        """What a stopped VM leaves in run_dir that the next start must not trip over."""
        return [self.qmp_socket, self.serial_socket, self.vnc_socket, self.pidfile,
                self.swtpm_socket, self.swtpm_pidfile]

    # --- checks ------------------------------------------------------------------------

    def validate(self, check_files: bool = True) -> None:
        """InvalidRequest for values that can never work, NotFound for missing files."""
        _check_values(self)
        if check_files:
            _check_files(self)


def pick_accel() -> tuple[Accel, str]:
    """('kvm' | 'tcg', why): TCG wherever KVM cannot run a stock guest (e.g. kvm_pvm)."""
    from hostcheck.kvm import kvm_usable  # the one place that knows how to tell

    usable, reason = kvm_usable()
    return ("kvm" if usable else "tcg"), reason


def _bad(msg: str) -> InvalidRequest:
    return InvalidRequest(msg)


def _check_path_text(what: str, path: Path) -> None:
    # QEMU's option syntax survives commas (doubled) but nothing can carry a NUL or newline.
    text = str(path)
    if "\0" in text or "\n" in text:
        raise _bad(f"{what} path {text!r} contains a NUL or newline")
    if not path.is_absolute():
        raise _bad(f"{what} path {text!r} must be absolute (QEMU changes directory to / when it daemonizes)")


def _check_values(s: VmSpec) -> None:
    if not isinstance(s.name, str) or not _NAME.fullmatch(s.name):
        raise _bad(f"invalid VM name {s.name!r}: use 1-63 lowercase letters, digits and '-'")
    try:
        uuidlib.UUID(s.uuid)
    except (ValueError, TypeError, AttributeError):
        raise _bad(f"invalid VM uuid {s.uuid!r}") from None
    if s.profile not in PROFILES:
        raise _bad(f"unknown VM profile {s.profile!r}: use one of {', '.join(PROFILES)}")
    if s.accel not in ACCELS:
        raise _bad(f"unknown accelerator {s.accel!r}: use kvm or tcg")
    if s.machine is not None and s.machine not in MACHINES:
        raise _bad(f"unknown machine type {s.machine!r}: use one of {', '.join(MACHINES)}")
    if isinstance(s.ram, bool) or not isinstance(s.ram, int) or s.ram < MIN_RAM or s.ram % MiB:
        raise _bad(f"invalid VM memory {s.ram!r}: use a whole number of MiB, at least 16 MiB")
    if isinstance(s.cpus, bool) or not isinstance(s.cpus, int) or not 1 <= s.cpus <= MAX_CPUS:
        raise _bad(f"invalid VM cpu count {s.cpus!r}: use 1 to {MAX_CPUS}")
    if s.max_cpus is not None and (isinstance(s.max_cpus, bool) or not isinstance(s.max_cpus, int)
                                   or not 1 <= s.max_cpus <= MAX_CPUS):
        raise _bad(f"invalid VM max cpu count {s.max_cpus!r}: use 1 to {MAX_CPUS}")
    machine = s.machine_type
    if s.profile == "windows" and machine != "q35":
        raise _bad(f"the windows profile needs machine q35 (UEFI, TPM CRB, AHCI), not {machine}")
    fw = s.uefi
    if fw is not None and machine == "microvm":
        raise _bad("microvm boots a kernel directly: it takes no UEFI firmware")
    if fw is not None and fw.secure_boot and machine != "q35":
        raise _bad("secure boot firmware needs SMM, which ctd enables on q35 only")
    if machine == "microvm" and s.kernel is None:
        raise _bad("microvm has no firmware that boots from disk: give a kernel (direct kernel boot)")
    if (s.initrd is not None or s.append is not None) and s.kernel is None:
        raise _bad("initrd and append need a kernel (direct kernel boot)")
    if s.append is not None and ("\0" in s.append or "\n" in s.append):
        raise _bad("the kernel command line may not contain a NUL or newline")
    if s.has_tpm and machine == "microvm":
        raise _bad("a TPM needs machine pc or q35")
    _check_path_text("run_dir", s.run_dir)
    longest = max([s.qmp_socket, s.serial_socket, s.vnc_socket, s.swtpm_socket], key=lambda p: len(str(p)))
    if len(str(longest).encode()) > UNIX_PATH_MAX:
        raise _bad(f"run_dir {s.run_dir} is too long: socket path {longest} exceeds {UNIX_PATH_MAX} bytes")
    for i, d in enumerate(s.disks):
        _check_path_text(f"disk {i}", d.path)
        if d.format not in DISK_FORMATS:
            raise _bad(f"disk {d.path}: unknown format {d.format!r}: use raw or qcow2")
        if d.bus not in DISK_BUSES:
            raise _bad(f"disk {d.path}: unknown bus {d.bus!r}: use virtio, ahci or ide")
        if d.cache not in CACHES:
            raise _bad(f"disk {d.path}: unknown cache mode {d.cache!r}: use one of {', '.join(CACHES)}")
        if machine == "microvm" and d.bus != "virtio":
            raise _bad(f"disk {d.path}: microvm has only virtio (mmio) disks")
    for p in s.all_cdroms():
        _check_path_text("CD-ROM", p)
    if s.media is not None:
        _check_path_text("media ISO", s.media)
    if (s.media is not None or s.boot_media) and (not s.media_slot or machine == "microvm"):
        raise _bad("removable media need a media slot on machine pc or q35")
    if s.boot_media and s.media is None:
        raise _bad("boot from media needs an inserted ISO")
    for path, what in ((s.kernel, "kernel"), (s.initrd, "initrd"), (s.nvram, "nvram"),
                       (s.tpm_state_dir, "TPM state")):
        if path is not None:
            _check_path_text(what, path)
    macs: set[str] = set()
    ifnames: set[str] = set()
    for n in s.nics:
        if not isinstance(n.ifname, str) or not _IFNAME.fullmatch(n.ifname):
            raise _bad(f"invalid tap name {n.ifname!r}: 1-15 letters, digits, '_', '.', '-'")
        if not isinstance(n.mac, str) or not _MAC.fullmatch(n.mac):
            raise _bad(f"invalid MAC {n.mac!r} for {n.ifname}: use lowercase aa:bb:cc:dd:ee:ff")
        if int(n.mac[:2], 16) & 1:
            raise _bad(f"MAC {n.mac} for {n.ifname} is a multicast address")
        if n.model not in NIC_MODELS:
            raise _bad(f"unknown NIC model {n.model!r}: use one of {', '.join(NIC_MODELS)}")
        if machine == "microvm" and n.model != "virtio-net-pci":
            raise _bad(f"NIC {n.ifname}: microvm has only virtio (mmio) NICs")
        if n.mac in macs or n.ifname in ifnames:
            raise _bad(f"NIC {n.ifname} ({n.mac}): tap names and MACs must be unique")
        macs.add(n.mac)
        ifnames.add(n.ifname)


def _check_files(s: VmSpec) -> None:
    if shutil.which(s.qemu) is None:
        raise NotFound(f"{s.qemu} is not installed (Debian: apt-get install qemu-system-x86)")
    need: list[tuple[str, Path | None]] = [("kernel", s.kernel), ("initrd", s.initrd)]
    need += [(f"disk image ({d.format})", d.path) for d in s.disks]
    need += [("CD-ROM image", p) for p in [*s.cdroms, *([s.media] if s.media else [])]]
    need += [("driver ISO", s.drivers_iso), ("cloud-init seed ISO", s.seed_iso)]
    fw = s.uefi
    if fw is not None:
        need += [("UEFI firmware code", fw.code)]
        if not s.nvram_path.exists():  # the template only matters until the copy is made
            need += [("UEFI variables template", fw.vars_template)]
    for what, path in need:
        if path is not None and not (path.is_file() or (what.startswith("disk") and path.is_block_device())):
            hint = " (Debian: apt-get install ovmf)" if "UEFI" in what else ""
            raise NotFound(f"{what} {path} does not exist or is not a regular file{hint}")
