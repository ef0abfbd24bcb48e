"""An instance's options, typed: what the instances.options column holds (JSON), read once
into frozen dataclasses by `InstanceOptions.from_stored` and written back by `to_stored`.
Nothing else in ctd reads or writes the stored form.

The stored form is the one ctd has always written (no migration): the guest settings
(systemd, network_style, ssh_keys, timezone, nameservers) always; passwd, io_uring,
cgroup_fixed, renaming and vm only when set. The vm part: profile, compat, disk_size always;
iso, drivers_iso, passwd, kernel, initrd, append, media when set; firmware only when "uefi";
secure_boot, tpm, boot_media and pristine only when true; guest_udev only when known;
data_disks only when there are some. (Every
key after disk_size is optional with the default an older record means: no migration.)

Reading validates every known key's type and raises ValueError naming the key: the column is
ctd's own (root-only database), so a wrong type means a damaged or hand-edited database, and
guessing (say, "yes" as true) would run an instance on settings nobody chose.

Unknown keys (top level and in vm) are kept, not refused: they are carried in `extra`, written back unchanged and
never read, so a record written by a newer ctd survives a downgrade and the next save, and a
ctd does not refuse to start over a record it can otherwise run. They are not copied into a
clone or a backup (copyable(), guest()): what ctd does not know, it cannot tell apart from the
source's runtime state. The one legacy key, vm.guest_pending (records before the pristine
flag), is dropped on reading: it meant nothing but "not started yet", which pristine says.

Options are changed by making a new value (dataclasses.replace), never in place: a copy of a
record taken before a change (settings' undo) keeps the options it had.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

LEGACY_VM_KEYS = frozenset({"guest_pending"})


def _bool(raw: Mapping[str, object], key: str, default: bool = False) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, not {value!r:.40}")
    return value


def _str(raw: Mapping[str, object], key: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key} must be a string, not {value!r:.40}")
    return value


def _strings(raw: Mapping[str, object], key: str) -> tuple[str, ...]:
    value = raw.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key} must be a list of strings")
    return tuple(value)


def _optional_bool(raw: Mapping[str, object], key: str) -> bool | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, not {value!r:.40}")
    return value


def _object(raw: object, key: str) -> Mapping[str, object]:
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise ValueError(f"{key} must be an object")
    return raw


@dataclass(frozen=True)
class Passwd:
    """A password set through ctd, kept as its crypt(3) hash only (reinstall and a VM's seed
    put it back); never the clear text."""

    user: str
    hash: str

    @classmethod
    def from_stored(cls, raw: object) -> Passwd:
        fields = _object(raw, "passwd")
        user, hashed = fields.get("user"), fields.get("hash")
        if not isinstance(user, str) or not isinstance(hashed, str):
            raise ValueError("passwd must have a user and a hash (strings)")
        return cls(user, hashed)

    def to_stored(self) -> dict[str, str]:
        return {"user": self.user, "hash": self.hash}


@dataclass(frozen=True)
class DataDisk:
    """A VM's extra disk (vm/datadisks.py): data-NAME.raw beside its root disk."""

    name: str
    size: int   # bytes

    @classmethod
    def from_stored(cls, raw: object) -> DataDisk:
        fields = _object(raw, "data_disks[]")
        name, size = fields.get("name"), fields.get("size")
        if not isinstance(name, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("data_disks must be a list of {name: string, size: bytes}")
        return cls(name, size)

    def to_stored(self) -> dict[str, object]:
        return {"name": self.name, "size": self.size}


class FirmwareType(str, enum.Enum):
    """A VM's firmware: SeaBIOS, or OVMF (UEFI) on q35 (ctd/instance/vm/firmware.py)."""

    BIOS = "bios"
    UEFI = "uefi"


@dataclass(frozen=True)
class VmOptions:
    """A VM's part: what `create --type vm` chose (profile, compat, disk_size, iso,
    drivers_iso, firmware, secure_boot, tpm: also the checked request's type), what later
    requests changed (disk_size grown by `set --disk`; media and boot_media by `media
    insert/eject`) and what ctd added (the boot kernel of a template VM, whether its guest runs
    udev, the password hash for its seed, pristine while no guest has run on the disk and ctd
    may still write into it). The windows profile is UEFI with secure boot and a TPM whatever
    firmware, secure_boot and tpm say (vm/firmware.py's settings())."""

    profile: str = "linux"     # linux or windows
    compat: bool = False       # emulated devices a guest without virtio drivers knows
    disk_size: int = 64 << 20  # bytes (the smallest disk create accepts)
    iso: str | None = None
    drivers_iso: str | None = None
    passwd: Passwd | None = None
    kernel: str | None = None  # direct kernel boot: the host's kernel, initrd, command line
    initrd: str | None = None
    append: str | None = None
    pristine: bool = False
    firmware: FirmwareType = FirmwareType.BIOS
    secure_boot: bool = False  # UEFI secure boot (Microsoft's keys enrolled)
    tpm: bool = False          # a TPM 2.0 (swtpm)
    media: str | None = None   # the ISO in the removable CD-ROM (vm/media.py); None: empty
    boot_media: bool = False   # boot that ISO first (a rescue), until it is ejected
    guest_udev: bool | None = None  # a template disk's guest runs udev (it onlines hot-added vCPUs); None: unknown
    data_disks: tuple[DataDisk, ...] = ()  # extra disks, in the order they were added
    extra: Mapping[str, object] = field(default_factory=dict, hash=False)  # unknown keys, kept

    @property
    def windows(self) -> bool:
        return self.profile == "windows"

    @property
    def all_disks_size(self) -> int:
        """The root disk and the data disks: what the VM may take of the pool."""
        return self.disk_size + sum(d.size for d in self.data_disks)

    @classmethod
    def from_stored(cls, raw: object) -> VmOptions:
        fields = _object(raw, "vm")
        try:
            return cls._from_stored(fields)
        except ValueError as exc:
            raise ValueError(f"vm.{exc}") from None

    @classmethod
    def _from_stored(cls, fields: Mapping[str, object]) -> VmOptions:
        disk_size = fields.get("disk_size", cls.disk_size)
        if not isinstance(disk_size, int) or isinstance(disk_size, bool) or disk_size < 0:
            raise ValueError(f"disk_size must be a number of bytes, not {disk_size!r:.40}")
        known = ({f.name for f in dataclasses.fields(cls)} - {"extra"}) | LEGACY_VM_KEYS
        passwd = fields.get("passwd")
        data = fields.get("data_disks") or []
        if not isinstance(data, list):
            raise ValueError("data_disks must be a list of {name: string, size: bytes}")
        firmware = _str(fields, "firmware") or FirmwareType.BIOS.value
        if firmware not in {f.value for f in FirmwareType}:
            raise ValueError(f"firmware must be bios or uefi, not {firmware!r:.40}")
        return cls(profile=_str(fields, "profile") or "linux", compat=_bool(fields, "compat"), disk_size=disk_size,
                   iso=_str(fields, "iso"), drivers_iso=_str(fields, "drivers_iso"),
                   passwd=None if passwd is None else Passwd.from_stored(passwd),
                   kernel=_str(fields, "kernel"), initrd=_str(fields, "initrd"), append=_str(fields, "append"),
                   pristine=_bool(fields, "pristine"), firmware=FirmwareType(firmware),
                   secure_boot=_bool(fields, "secure_boot"), tpm=_bool(fields, "tpm"), media=_str(fields, "media"),
                   boot_media=_bool(fields, "boot_media"), guest_udev=_optional_bool(fields, "guest_udev"),
                   data_disks=tuple(DataDisk.from_stored(d) for d in data),
                   extra={k: v for k, v in fields.items() if k not in known})

    def to_stored(self) -> dict[str, object]:
        out: dict[str, object] = {**self.extra, "profile": self.profile, "compat": self.compat,
                                  "disk_size": self.disk_size}
        for key in ("iso", "drivers_iso", "kernel", "initrd", "append", "media", "guest_udev"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.passwd is not None:
            out["passwd"] = self.passwd.to_stored()
        if self.firmware is not FirmwareType.BIOS:
            out["firmware"] = self.firmware.value
        for key in ("secure_boot", "tpm", "boot_media", "pristine"):
            if getattr(self, key):
                out[key] = True
        if self.data_disks:
            out["data_disks"] = [d.to_stored() for d in self.data_disks]
        return out


@dataclass(frozen=True)
class InstanceOptions:
    """An instance's options: the guest settings (from the template's recipe and create/set),
    a container's io_uring and password hash, the run's cgroup names, a rename in progress,
    and a VM's part. Frozen: change one with dataclasses.replace."""

    systemd: bool = False            # a systemd guest: it gets a delegated cgroup subtree
    network_style: str = "none"      # how the guest configures its NICs: none, ip, networkd
    ssh_keys: tuple[str, ...] = ()
    timezone: str | None = None
    nameservers: tuple[str, ...] = ()
    passwd: Passwd | None = None     # a container's (a VM keeps it in vm.passwd)
    io_uring: bool = False           # the container may use io_uring
    # runtime: hierarchy -> the running container's group name where the group cannot be renamed;
    # cleared at stop, never copied into a clone or a backup (it would aim at the source's groups)
    cgroup_fixed: Mapping[str, str] = field(default_factory=dict, hash=False)
    renaming: str | None = None      # the old name while a rename is half done (admin.py)
    vm: VmOptions | None = None
    extra: Mapping[str, object] = field(default_factory=dict, hash=False)  # unknown keys, kept

    @classmethod
    def from_stored(cls, raw: object) -> InstanceOptions:
        """The column's JSON value, checked; ValueError names the key that is wrong."""
        fields = _object(raw, "options")
        fixed = _object(fields.get("cgroup_fixed") or {}, "cgroup_fixed")
        if not all(isinstance(v, str) for v in fixed.values()):
            raise ValueError("cgroup_fixed must map hierarchies to group names")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        vm, passwd = fields.get("vm"), fields.get("passwd")
        return cls(systemd=_bool(fields, "systemd"), network_style=_str(fields, "network_style") or "none",
                   ssh_keys=_strings(fields, "ssh_keys"), timezone=_str(fields, "timezone"),
                   nameservers=_strings(fields, "nameservers"),
                   passwd=None if passwd is None else Passwd.from_stored(passwd),
                   io_uring=_bool(fields, "io_uring"), cgroup_fixed={k: str(v) for k, v in fixed.items()},
                   renaming=_str(fields, "renaming"), vm=None if vm is None else VmOptions.from_stored(vm),
                   extra={k: v for k, v in fields.items() if k not in known})

    def to_stored(self) -> dict[str, object]:
        """The JSON value for the column (the form from_stored reads)."""
        out: dict[str, object] = {**self.extra, **self.guest_stored()}
        if self.io_uring:
            out["io_uring"] = True
        if self.cgroup_fixed:
            out["cgroup_fixed"] = dict(self.cgroup_fixed)
        if self.renaming is not None:
            out["renaming"] = self.renaming
        if self.vm is not None:
            out["vm"] = self.vm.to_stored()
        return out

    def guest_stored(self) -> dict[str, object]:
        """The guest settings alone, stored form: what a backup carries (restore_plan checks it)."""
        out: dict[str, object] = {"systemd": self.systemd, "network_style": self.network_style,
                                  "ssh_keys": list(self.ssh_keys), "timezone": self.timezone,
                                  "nameservers": list(self.nameservers)}
        if self.passwd is not None:
            out["passwd"] = self.passwd.to_stored()
        return out

    def guest(self) -> InstanceOptions:
        """The guest settings alone (a backup's, a restored instance's start)."""
        return InstanceOptions(systemd=self.systemd, network_style=self.network_style, ssh_keys=self.ssh_keys,
                               timezone=self.timezone, nameservers=self.nameservers, passwd=self.passwd)

    def copyable(self) -> InstanceOptions:
        """For a clone: without what belongs to the current run, or a rename, or ctd does not know."""
        vm = None if self.vm is None else dataclasses.replace(self.vm, extra={})
        return dataclasses.replace(self, cgroup_fixed={}, renaming=None, extra={}, vm=vm)

    def ended_run(self) -> InstanceOptions:
        """After the instance stopped: what its run recorded goes with it."""
        return dataclasses.replace(self, cgroup_fixed={})
