"""Container features (Proxmox's `features:`, OpenVZ's `--devnodes`, Incus's `security.*`): what a
container may use beyond the default device list. Each is off unless asked for.

- tun:  /dev/net/tun (c 10:200) in its /dev and open to it: OpenVPN, WireGuard-go, tailscale.
        A tun interface is made in the container's own network namespace (its root has
        CAP_NET_ADMIN there, not on the host), so it reaches the host only through its NICs,
        behind the same anti-spoofing filters as eth0's traffic.
- fuse: /dev/fuse (c 10:229) in its /dev and open to it: sshfs, rclone. The kernel lets a
        user namespace's root mount FUSE only in its own mount namespace, and marks those
        mounts nosuid/nodev; the daemon serving one runs in the container's cgroup.

Abuse considered: a feature adds exactly one device node and one device-cgroup rule; no other
device opens (tests/host/test_features.py checks a neighbouring minor stays refused), no
capability or syscall is added. Features come from an admin or operator (a tenant may not set
them: ctd/remote/policy.py) and never from a backup: restore starts with none, as a backup's
header is not trusted to grant devices. A feature the host kernel lacks is refused at create/set
with the kernel option that provides it.

Contract: check(value) -> tuple of feature names (sorted, unique; 400 for anything else);
host_lacks(names) raises InvalidRequest naming CONFIG_* when the host has no such device;
device_rules(names) and device_binds(names) are what a start adds to the cgroup and /dev.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cgroups import DeviceRule, DeviceType
from ctd.errors import InvalidRequest


@dataclass(frozen=True)
class Feature:
    name: str
    node: str            # path below /dev
    major: int
    minor: int
    kernel_option: str   # what the host kernel needs for the node to exist


FEATURES: dict[str, Feature] = {
    "tun": Feature("tun", "net/tun", 10, 200, "CONFIG_TUN"),
    "fuse": Feature("fuse", "fuse", 10, 229, "CONFIG_FUSE_FS"),
}


def check(value: object) -> tuple[str, ...]:
    """A features field: a list of names, or a comma-separated string; [] or "" for none."""
    if isinstance(value, str):
        names = [n.strip() for n in value.split(",") if n.strip()]
    elif isinstance(value, list) and all(isinstance(n, str) for n in value):
        names = [n.strip() for n in value]
    else:
        raise InvalidRequest("features must be a list of feature names, e.g. [\"tun\", \"fuse\"]")
    unknown = sorted({n for n in names if n not in FEATURES})
    if unknown:
        raise InvalidRequest(f"unknown feature(s) {', '.join(map(repr, unknown))}: "
                             f"known features are {', '.join(sorted(FEATURES))}")
    return tuple(sorted(set(names)))


def host_lacks(names: tuple[str, ...], dev: Path = Path("/dev")) -> None:
    """Refuse a feature whose device the host does not have (a kernel built without it)."""
    for name in names:
        f = FEATURES[name]
        try:
            st = os.stat(dev / f.node)
            ok = stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (f.major, f.minor)
        except OSError:
            ok = False
        if not ok:
            raise InvalidRequest(f"feature {name!r}: this host has no /dev/{f.node} (c {f.major}:{f.minor}); "
                                 f"its kernel needs {f.kernel_option} (built in or its module loaded)")


def device_rules(names: tuple[str, ...] | list[str]) -> tuple[DeviceRule, ...]:
    return tuple(DeviceRule(DeviceType.CHAR, FEATURES[n].major, FEATURES[n].minor, "rwm") for n in names)


def device_binds(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Paths below /dev bound from the host's node into the container's /dev."""
    return tuple(FEATURES[n].node for n in names)
