"""Checked requests: what check_create, check_clone and check_set hand to the work that
follows, as frozen dataclasses (the work reads fields, never keys of a loose dict).

Each is made only by its check (every field validated); the kind-specific part of a create
(`options`: a VM's disk, ISO, profile …) is the kind's own type, made by its check_body.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ctd.instance.admin import AdminChange
from ctd.instance.bootorder import BootSettings
from ctd.instance.restore_plan import RestorePlan
from ctd.network.manager import NicRequest
from ctd.state import InstanceRecord, InstanceType

KEEP_RATE = "keep"   # SetRequest.rate when --rate was not given (None: unlimited)


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
    options: object | None = None       # the kind's own options (VmOptions for a VM)
    admin: AdminChange = AdminChange()  # disabled, protected, description, tags (admin.py)
    boot: BootSettings = BootSettings()  # autostart: onboot, boot order, boot delay


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

    @property
    def changes_settings(self) -> bool:
        """Anything besides the admin flags (those need no Settings.apply)."""
        return bool(self.limits or self.changes_network or self.nameservers or self.userpasswd
                    or self.ssh_keys or self.timezone or self.hostname or self.boot.given)

    @property
    def changes_network(self) -> bool:
        return bool(self.ipadd or self.ipdel or self.rate != KEEP_RATE)


@dataclass(frozen=True)
class BackupRequest:
    """ctctl backup, checked: where the file goes, which snapshot (None: the live root), and
    the driver (None: btrfs send where possible, else tar)."""

    out: Path
    snapshot: str | None
    driver: str | None


@dataclass(frozen=True)
class RestoreRequest:
    """ctctl restore, checked with the backup's header; name and id reserved until it ends."""

    file: Path
    name: str
    id: int
    plan: RestorePlan
