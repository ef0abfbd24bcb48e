"""Typed rows of the state database."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class InstanceType(str, Enum):
    CONTAINER = "container"
    VM = "vm"


class PowerState(str, Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    SUSPENDED = "suspended"   # frozen (container) or vCPUs stopped (VM); its processes/QEMU still exist


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
    # {"systemd": bool, "network_style": str, "ssh_keys": [...], "timezone": str}
    options: dict = field(default_factory=dict)
    # How its last run ended (ctd.instance.exits.ExitReport.as_dict()); {} if it never ran.
    last_exit: dict = field(default_factory=dict)
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


# Option keys that describe one run of an instance, not the instance: cleared when it stops,
# never copied into a clone or a backup (the copy would point at the original's cgroups).
RUNTIME_OPTIONS = frozenset({"cgroup_fixed"})


def copyable_options(options: dict) -> dict:
    """An instance's options without what belongs to its current run."""
    return {k: v for k, v in options.items() if k not in RUNTIME_OPTIONS}


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
    # Traffic of earlier runs (the live veth's counters are added on top).
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
    addresses: list[str] = field(default_factory=list)
