"""Checked requests: what check_create, check_clone and check_set hand to the work that
follows, as frozen dataclasses (the work reads fields, never keys of a loose dict).

Each is made only by its check (every field validated); the kind-specific part of a create
(`vm`: a VM's disk, ISO, profile …) is made by its check_body (a VmRequest: ctd/state/options.py's
VmOptions, the type the instance's options keep it in, and what a create carries beside them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ctd.instance.admin import AdminChange
from ctd.instance.backups import BackupSettings
from ctd.instance.bootorder import BootSettings
from ctd.instance.restore_plan import RestorePlan
from ctd.network.manager import NicRequest
from ctd.state import InstanceRecord, InstanceType
from ctd.state.options import VmOptions

KEEP_RATE = "keep"   # SetRequest.rate when --rate was not given (None: unlimited)


@dataclass(frozen=True)
class VmRequest:
    """A VM create's own part, checked (VmKind.check_body): the options its record keeps, the
    admin's cloud-init files (kept beside the disk, vm/userdata.py, never in the options) and the
    profile's limits where the create gives none (the windows profile's vCPUs and RAM)."""

    options: VmOptions
    user_data: str | None = None
    vendor_data: str | None = None
    default_limits: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class CreateRequest:
    """A new instance, checked; its name and id are reserved until the work ends."""

    name: str
    id: int
    type: InstanceType
    template: str                       # "" for a VM made blank (installer ISO)
    hostname: str
    privileged: bool
    limits: dict[str, int]
    nics: list[NicRequest]
    nameservers: list[str]
    userpasswd: tuple[str, str] | None  # (user, clear text): hashed on the way in, never stored
    ssh_keys: list[str]
    timezone: str | None
    io_uring: bool
    vm: VmRequest | None = None         # a VM's part, checked (None for a container)
    features: tuple[str, ...] = ()      # container features (ctd/instance/container/features.py)
    mounts: tuple[dict[str, object], ...] = ()  # host mounts, checked (hostmounts.HostMount.to_stored())
    admin: AdminChange = AdminChange()  # disabled, protected, description, tags (admin.py)
    boot: BootSettings = BootSettings()  # autostart: onboot, boot order, boot delay
    backup: BackupSettings = BackupSettings()  # backup schedule and keep (backups.py)
    project: str = "default"            # the project it lands in (ctd/project/)


@dataclass(frozen=True)
class CloneRequest:
    """A copy of an instance (or of one of its snapshots), checked as a create of its kind."""

    new: CreateRequest
    source: InstanceRecord
    snapshot: str | None

    @property
    def name(self) -> str:
        return self.new.name


@dataclass(frozen=True)
class SetRequest:
    """ctctl set, checked on its own (what needs the instance is checked when it is applied)."""

    limits: dict[str, int]
    ipadd: list[str]
    ipdel: list[str]
    rate: int | None | str              # KEEP_RATE, None (unlimited) or bits per second
    nameservers: list[str]
    userpasswd: tuple[str, str] | None
    ssh_keys: list[str]
    timezone: str | None
    hostname: str | None
    boot: BootSettings = BootSettings()  # autostart (stored by Settings.apply)
    admin: AdminChange = AdminChange()  # disabled, protected, description, tags (admin.py)
    backup: BackupSettings = BackupSettings()  # backup schedule and keep (backups.py)
    features: tuple[str, ...] | None = None  # the whole new set; None: unchanged
    mounts: list[object] | None = None       # host mounts to add (checked against the instance in apply)
    unmount: list[str] | None = None         # targets of host mounts to remove
    disk: int | None = None                  # a VM's root disk grown to this many bytes (vm/disks.py)

    @property
    def changes_settings(self) -> bool:
        """Anything besides the admin flags (those need no Settings.apply)."""
        return bool(self.limits or self.changes_network or self.nameservers or self.userpasswd
                    or self.ssh_keys or self.timezone or self.hostname or self.boot.given
                    or self.features is not None or bool(self.mounts) or bool(self.unmount)
                    or self.disk is not None)

    @property
    def changes_network(self) -> bool:
        return bool(self.ipadd or self.ipdel or self.rate != KEEP_RATE)


@dataclass(frozen=True)
class BackupRequest:
    """ctctl backup, checked: where the file goes, which snapshot (None: the live root), and
    the driver (None: btrfs send where possible, else tar). chain: no file was named: the
    next backup of the instance's chain into the node's backup_dir (backups.py); scheduled:
    the scheduler started it."""

    out: Path
    snapshot: str | None
    driver: str | None
    chain: bool = False
    scheduled: bool = False


@dataclass(frozen=True)
class TemplateImport:
    """ctctl template import, checked: the tarball, and the template's free name."""

    file: Path
    name: str


@dataclass(frozen=True)
class TemplateExport:
    """ctctl template export, checked: an existing template, and where its tarball goes."""

    name: str
    out: Path


@dataclass(frozen=True)
class RestoreRequest:
    """ctctl restore, checked with the backup's header; name and id reserved until it ends."""

    file: Path
    name: str
    id: int
    plan: RestorePlan
    vm: object | None = None   # a VM's backup: its checked plan (ctd/instance/vm/backup.py)
    project: str = "default"
