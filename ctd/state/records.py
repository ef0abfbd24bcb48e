"""Typed rows of the state database."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TypedDict

from ctd.state.options import InstanceOptions


class InstanceType(str, Enum):
    CONTAINER = "container"
    VM = "vm"


class PowerState(str, Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    SUSPENDED = "suspended"   # frozen (container) or vCPUs stopped (VM); its processes/QEMU still exist


class LastExit(TypedDict, total=False):
    """How an instance's last run ended, as stored and shown (ctd.instance.exits.ExitReport);
    empty if it never ran."""

    kind: str               # an ExitKind value: exited, signaled, oom, reboot, poweroff, stopped…
    text: str               # in words a user can act on
    at: str                 # ISO 8601, UTC
    code: int | None        # init's (QEMU's) exit code, when it exited
    signal: str | None      # the signal's name, when one ended it
    oom_kills: int          # the OOM killer's kills in its cgroup during the run


@dataclass
class InstanceRecord:
    id: int
    name: str
    type: InstanceType
    template: str
    hostname: str
    privileged: bool
    idmap_base: int | None
    # Normalised limits: {"ram": bytes, "cpus": n, "numproc": n, ...}; absent = unlimited.
    limits: dict[str, int] = field(default_factory=dict)
    state: PowerState = PowerState.STOPPED
    pid: int | None = None
    pid_start: int | None = None
    created_at: str = ""
    # From the template recipe at create time, so a later recipe change doesn't break it.
    init: list[str] = field(default_factory=lambda: ["/sbin/init"])
    stop_signal: str = "SIGTERM"
    # Guest settings, a container's io_uring, the run's cgroups, a VM's part (ctd/state/options.py)
    options: InstanceOptions = field(default_factory=InstanceOptions)
    # How its last run ended (ctd.instance.exits.ExitReport.as_dict()); {} if it never ran.
    last_exit: LastExit = field(default_factory=lambda: LastExit())
    # Administrative flags (ctd/instance/admin.py): a disabled instance is not started, by
    # anyone (autostart too); a protected one is not destroyed, reinstalled or rolled back.
    disabled: bool = False
    disabled_reason: str = ""
    protected: bool = False
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    # Autostart after a host boot (ctd/instance/autostart.py): lower boot_order first; the next
    # group waits boot_delay seconds after this one started. 10000: after every ordered one.
    onboot: bool = False
    boot_order: int = 10000
    boot_delay: int = 0
    # Seconds a stop waits for the guest before it is killed (Proxmox's startup down=); None: the
    # server's stop_timeout. Used by stop, restart, shutdown-all and every stop ctd makes itself.
    stop_timeout: int | None = None
    # Container features (ctd/instance/container/features.py): devices beyond the default list
    # ("tun", "fuse"), sorted; none unless an admin or operator asked for them.
    features: list[str] = field(default_factory=list)
    # Host directories bound in (ctd/instance/container/hostmounts.py: HostMount.to_stored()).
    mounts: list[dict[str, object]] = field(default_factory=list)
    # The project (tenant) it belongs to (ctd/project/): who may see it, whose limits it counts against.
    project: str = "default"


@dataclass
class TemplateRecord:
    name: str
    recipe: str
    path: str
    size: int
    built_at: str
    distro: str = ""
    release: str = ""
    arch: str = ""


@dataclass
class NetworkRecord:
    name: str
    bridge: str
    subnet4: str | None
    subnet6: str | None
    nat: bool
    created_at: str
    mtu: int = 1500
    project: str = "default"   # networks are the admin's: every one is 'default' for now
    dhcp: bool = False  # ctd runs dnsmasq on the bridge (ctd/network/dhcp.py)


class NicMode(str, Enum):
    BRIDGED = "bridged"
    ROUTED = "routed"


@dataclass
class NicRecord:
    instance_id: int
    idx: int
    network: str | None
    mode: NicMode
    mac: str
    filter: bool = True
    rate: int | None = None  # bits per second, both directions
    mtu: int | None = None   # None: the network's MTU
    vlan: int | None = None  # a bridged NIC's VLAN tag on its host port (untagged inside); None: untagged
    # Traffic of earlier runs (the live veth's counters are added on top).
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
    addresses: list[str] = field(default_factory=list)
