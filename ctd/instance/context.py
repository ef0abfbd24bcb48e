"""What every instance kind and every room of the manager shares: the daemon's parts (state,
storage, templates, network, cgroups, reservations) and two helpers all of them use.

Built once by the InstanceManager; kinds (ctd/instance/kind.py) and the provisioning,
settings and recovery modules get it instead of the manager, so none of them imports it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from cgroups import CgroupManager, Resources
from ctd import guest
from ctd import limits as limits_mod
from ctd.config import DaemonConfig
from ctd.errors import InvalidRequest
from ctd.instance.reserve import Reservations
from ctd.network.manager import NetworkManager
from ctd.state import InstanceRecord, InstanceType, StateDB
from ctd.state.options import Passwd
from ctd.storage.base import StorageDriver
from ctd.template.manager import TemplateManager


@dataclass
class InstanceContext:
    """The daemon's parts an instance's life touches."""

    config: DaemonConfig
    db: StateDB
    storage: StorageDriver
    templates: TemplateManager
    network: NetworkManager
    cgroups: CgroupManager
    reservations: Reservations
    host_cpus: list[int] = field(default_factory=list)
    io_device: str | None = None

    def resources(self, rec: InstanceRecord, removed: frozenset[str] = frozenset()) -> Resources:
        """The instance's limits as cgroup resources (removed: limits a set lifts)."""
        return limits_mod.to_resources(rec.limits, self.host_cpus, rec.id, self.io_device, removed)

    def check_io_device(self, limits: dict[str, int]) -> None:
        """io limits need a block device under the pool; io weights need bfq (or v2's iocost)."""
        if ({"iolimit", "iopslimit"} & set(limits)) and self.io_device is None:
            raise InvalidRequest("iolimit/iopslimit need the storage pool on a block device; "
                                 f"{self.storage.root} is not")
        # io weights exist only with bfq (or v2's iocost), asked now: a host may lack or gain them
        limits_mod.check_io_weight(limits, self.cgroups, self.io_device)

    def setup_guest(self, rec: InstanceRecord, rootfs: Path, userpasswd: tuple[str, str] | None = None) -> None:
        """Write the instance's settings into its root (runs in a thread). A container's new
        password is kept as its hash in rec.options.passwd (reinstall puts it back; the
        caller saves rec)."""
        options = rec.options
        guest.apply(rootfs, guest.GuestSettings(
            hostname=rec.hostname, nics=self.network.inside_config(rec),
            nameservers=list(options.nameservers), network_style=options.network_style,
            ssh_keys=list(options.ssh_keys), timezone=options.timezone))
        if userpasswd is not None:
            set_password(rec, rootfs, userpasswd)


def set_password(rec: InstanceRecord, rootfs: Path, userpasswd: tuple[str, str]) -> None:
    """The hash into the guest's shadow, and into rec.options.passwd of a container
    (reinstall puts it back; the caller saves rec). Runs in a thread."""
    hashed = guest.hash_password(userpasswd[1])
    guest.set_password_hash(rootfs, userpasswd[0], hashed)
    if rec.type is InstanceType.CONTAINER:
        rec.options = dataclasses.replace(rec.options, passwd=Passwd(userpasswd[0], hashed))


def removed_limits(changes: dict[str, int]) -> frozenset[str]:
    """The limits a set lifts ('unlimited'); no ram limit lifts its barrier and swap too."""
    removed = frozenset(k for k, v in changes.items() if v == limits_mod.UNLIMITED)
    return removed | {"ram_high", "swap"} if "ram" in removed else removed
