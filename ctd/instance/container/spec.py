"""What the spawner needs to start a container or run a command in one, and the mount plan.

Everything here is plain data (JSON round-trips through the spawner socket) and pure
functions, so the plan can be unit-tested without root.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum

from ctd.linux import syscalls as sc

TYPE_CHECKING = False   # not typing's: importing typing would grow the spawner (mypy takes it as true)
if TYPE_CHECKING:
    from typing import Any

# An idmap host mount (hostmounts.py) is shown through a namespace mapping host ids 1..65535 to the
# same ids inside the container (whose root is host id `base`); host id 0 is left unmapped.
IDMAP_FIRST, IDMAP_COUNT = 1, 65535


def idmap_lines(base: int) -> str:
    """uid_map/gid_map of that namespace: on-disk id k (1..65535) is the container's id k."""
    return f"{IDMAP_FIRST} {base + IDMAP_FIRST} {IDMAP_COUNT}\n"


DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class StepKind(str, Enum):
    MOUNT = "mount"          # mount(source, target, fstype, flags, data)
    BIND_FILE = "bind-file"  # create an empty file at target, then bind source over it
    MKDIR = "mkdir"
    SYMLINK = "symlink"      # target -> source
    REMOUNT_RO = "remount-ro"  # bind target onto itself, then remount it read-only
    # a host directory or file (hostmounts.py) at target, made if missing (a directory or an
    # empty file, as the source is); flags: MOUNT_ATTR_* of the bind; data "idmap" or None
    BIND_HOST = "bind-host"


@dataclass(frozen=True)
class MountStep:
    kind: StepKind
    target: str  # path inside the container, absolute
    source: str | None = None
    fstype: str | None = None
    flags: int = 0
    data: str | None = None
    optional: bool = False  # skip when the source or target is missing (e.g. /proc/sched_debug)
    in_cgroupns: bool = False  # made after pivot_root, once the cgroup namespace exists


@dataclass(frozen=True)
class IdMap:
    inside: int
    outside: int
    count: int

    def line(self) -> str:
        return f"{self.inside} {self.outside} {self.count}"


@dataclass
class ContainerSpec:
    name: str
    hostname: str
    rootfs: str
    init: list[str]
    uid_map: list[IdMap]  # empty: privileged container, no user namespace
    gid_map: list[IdMap]
    mounts: list[MountStep]  # (ctd puts init in its cgroups: the spec names none)
    env: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    seccomp_deny: list[str] = field(default_factory=list)
    console: bool = True  # an fd for /dev/console comes with the request
    nofile: int | None = None  # RLIMIT_NOFILE for init and everything it starts

    @property
    def privileged(self) -> bool:
        return not self.uid_map


@dataclass
class ExecSpec:
    init_pid: int
    command: list[str]
    env: list[str]
    cwd: str
    privileged: bool
    cgroup_procs: list[str]
    cap_drop: list[str]
    seccomp_deny: list[str]
    tty: bool = False
    nofile: int | None = None


def to_wire(obj: ContainerSpec | ExecSpec) -> dict[str, Any]:
    """JSON-ready; one level of nested dataclasses, as the specs have (asdict's deep copy
    cost 0.35 ms of every start)."""
    wire = dict(vars(obj))
    for key, value in wire.items():
        if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            wire[key] = [dict(vars(item)) for item in value]
    return wire


def container_from_wire(raw: dict[str, Any]) -> ContainerSpec:
    raw = dict(raw)
    raw["uid_map"] = [IdMap(**m) for m in raw["uid_map"]]
    raw["gid_map"] = [IdMap(**m) for m in raw["gid_map"]]
    raw["mounts"] = [MountStep(**{**m, "kind": StepKind(m["kind"])}) for m in raw["mounts"]]
    return ContainerSpec(**raw)


def exec_from_wire(raw: dict[str, Any]) -> ExecSpec:
    return ExecSpec(**raw)


# Files under /proc that leak host information or control the host kernel: hidden behind
# /dev/null (masked) or made read-only, in the spirit of LXC's proc:mixed and Docker's masks.
MASKED_FILES = ("/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/sched_debug", "/proc/kallsyms")
MASKED_DIRS = ("/sys/firmware", "/proc/acpi", "/proc/scsi")  # the first is there on every kernel
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sysrq-trigger")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

_NOSUID_NODEV_NOEXEC = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC


SYSTEMD_TMPFS = (("/run", "mode=755,size=20%"), ("/run/lock", "mode=1777,size=5m"), ("/tmp", "mode=1777,size=50%"))


# ptys per container when no numpty is set: plenty for a VPS's ssh sessions, tmux and sudo, and
# a small share of the host's pool (kernel.pty.max, 4096 by default, 1024 of them kept for the
# host's own devpts). OpenVZ's NUMPTY and LXC's lxc.pty.max are the same knob.
DEFAULT_NUMPTY = 256
MAX_NUMPTY = 1 << 20  # the kernel's NR_UNIX98_PTY_MAX, the most devpts' max= takes


def devpts_options(numpty: int) -> str:
    """The container's devpts: its own instance (ptys numbered from 0, none of the host's),
    at most numpty of them. Given whole on a remount too: devpts resets what is left out."""
    return f"newinstance,ptmxmode=0666,mode=0620,gid=5,max={numpty}"


def mount_plan(*, console: bool, numpty: int = DEFAULT_NUMPTY, extra_tmpfs: tuple[tuple[str, str], ...] = (),
               lxcfs: list[tuple[str, str]] | None = None,
               cgroupfs: list[tuple[str, str, str]] | None = None,
               feature_nodes: tuple[str, ...] = (),
               host_binds: list[tuple[str, str, bool, bool]] | None = None) -> list[MountStep]:
    """feature_nodes: paths below /dev of the devices the container's features add
    (features.py: net/tun, fuse), bound from the host's nodes like the default ones.
    cgroupfs: (path under /sys/fs/cgroup, fstype, options) of each hierarchy to mount inside,
    for guests that manage their own cgroups (systemd); they see their own subtree only, through
    the cgroup namespace."""
    """The container's /proc, /sys and /dev, executed inside its namespaces before pivot_root.

    /proc/sys stays read-only except /proc/sys/net (the container's own network namespace),
    /sys is read-only, and /dev is a private tmpfs holding only harmless devices.
    """
    k = StepKind
    plan = [
        MountStep(k.MOUNT, "/proc", "proc", "proc", _NOSUID_NODEV_NOEXEC),
        # /proc/sys read-only with /proc/sys/net writable: bind net onto itself first, then a
        # recursive bind of sys (which carries the net mount along) is remounted read-only.
        MountStep(k.MOUNT, "/proc/sys/net", "/proc/sys/net", None, sc.MS_BIND, optional=True),
        MountStep(k.REMOUNT_RO, "/proc/sys", flags=_NOSUID_NODEV_NOEXEC),
        MountStep(k.MOUNT, "/sys", "sysfs", "sysfs", sc.MS_RDONLY | _NOSUID_NODEV_NOEXEC),
        # nodev: the nodes in /dev are binds of the host's (mounts of their own) and a devpts;
        # a node made in this tmpfs (mknod by a privileged root) opens nothing.
        MountStep(k.MOUNT, "/dev", "tmpfs", "tmpfs", _NOSUID_NODEV_NOEXEC | sc.MS_STRICTATIME,
                  "mode=755,size=65536k"),
        MountStep(k.MKDIR, "/dev/pts"),
        MountStep(k.MOUNT, "/dev/pts", "devpts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC, devpts_options(numpty)),
        MountStep(k.SYMLINK, "/dev/ptmx", "pts/ptmx"),
        MountStep(k.MKDIR, "/dev/shm"),
        MountStep(k.MOUNT, "/dev/shm", "shm", "tmpfs", _NOSUID_NODEV_NOEXEC, "mode=1777,size=65536k"),
        MountStep(k.MKDIR, "/dev/mqueue"),
        MountStep(k.MOUNT, "/dev/mqueue", "mqueue", "mqueue", _NOSUID_NODEV_NOEXEC, optional=True),
    ]
    plan += [MountStep(k.BIND_FILE, f"/dev/{d}", f"/dev/{d}") for d in DEVICES]
    for node in feature_nodes:
        if "/" in node:
            plan.append(MountStep(k.MKDIR, f"/dev/{node.rsplit('/', 1)[0]}"))
        plan.append(MountStep(k.BIND_FILE, f"/dev/{node}", f"/dev/{node}"))
    if console:
        # source is filled in by the spawner: the host path of the console pty's slave.
        plan.append(MountStep(k.BIND_FILE, "/dev/console", "@console"))
    plan += [
        MountStep(k.SYMLINK, "/dev/fd", "/proc/self/fd"),
        MountStep(k.SYMLINK, "/dev/stdin", "/proc/self/fd/0"),
        MountStep(k.SYMLINK, "/dev/stdout", "/proc/self/fd/1"),
        MountStep(k.SYMLINK, "/dev/stderr", "/proc/self/fd/2"),
    ]
    for target, options in extra_tmpfs:
        plan += [MountStep(k.MKDIR, target),
                 MountStep(k.MOUNT, target, "tmpfs", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, options)]
    if cgroupfs:
        if not any(path == "" for path, _, _ in cgroupfs):  # v1 or hybrid: a tmpfs holds them
            plan.append(MountStep(k.MOUNT, "/sys/fs/cgroup", "tmpfs", "tmpfs", _NOSUID_NODEV_NOEXEC, "mode=755",
                                  in_cgroupns=True))
        for path, fstype, options in cgroupfs:
            target = f"/sys/fs/cgroup/{path}".rstrip("/")
            plan += [MountStep(k.MKDIR, target, in_cgroupns=True),
                     MountStep(k.MOUNT, target, fstype, fstype, _NOSUID_NODEV_NOEXEC, options or None,
                               in_cgroupns=True)]
    # lxcfs' views of meminfo, cpuinfo, uptime … over the kernel's, so free/top/nproc see the limits.
    plan += [MountStep(k.BIND_FILE, target, source, optional=True) for source, target in (lxcfs or [])]
    plan += [MountStep(k.BIND_FILE, p, "/dev/null", optional=True) for p in MASKED_FILES]
    # One empty read-only tmpfs masks every directory (the rest are binds of the first): each
    # superblock costs the host a few kB outside any cgroup, and more in every memory cgroup's
    # shrinker maps as superblocks add up.
    plan.append(MountStep(k.MOUNT, MASKED_DIRS[0], "tmpfs", "tmpfs", sc.MS_RDONLY | _NOSUID_NODEV_NOEXEC,
                          "size=0,mode=555", optional=True))
    plan += [MountStep(k.MOUNT, p, MASKED_DIRS[0], None, sc.MS_BIND, optional=True) for p in MASKED_DIRS[1:]]
    plan += [MountStep(k.REMOUNT_RO, p, flags=_NOSUID_NODEV_NOEXEC, optional=True) for p in READONLY_PATHS]
    for source, target, readonly, idmap in host_binds or []:
        attrs = sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV | (sc.MOUNT_ATTR_RDONLY if readonly else 0)
        parts = target.strip("/").split("/")
        plan += [MountStep(k.MKDIR, "/" + "/".join(parts[:i])) for i in range(1, len(parts))]
        plan.append(MountStep(k.BIND_HOST, target, source, flags=attrs, data="idmap" if idmap else None))
    return plan
