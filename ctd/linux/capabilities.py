"""Capability bounding set for system containers.

Default drop list, following LXC's ``common.conf`` (``mac_admin mac_override sys_time
sys_module sys_rawio``) plus the two audit capabilities Docker also withholds:

=============  ===============================================================
capability     why it is dropped
=============  ===============================================================
sys_module     load/unload host kernel modules
sys_rawio      raw I/O: iopl/ioperm, /dev/mem, SG_IO passthrough, FIBMAP
sys_time       set the host clock (never namespaced)
mac_admin      reconfigure the host's LSM (AppArmor/SELinux/Smack) policy
mac_override   bypass the host's LSM policy
audit_control  change host audit rules, enable/disable auditing
audit_read     read the host-wide audit multicast log (every tenant's logins)
=============  ===============================================================

Kept on purpose: sys_admin (mount, unshare, nested containers), sys_nice, sys_ptrace,
sys_boot (reboot only ends the container's pid namespace), sys_resource, net_admin,
audit_write (login/sudo write audit records; the kernel refuses them politely outside
the initial user namespace). In an unprivileged container most of the dropped ones are
already useless (the kernel checks them against the initial user namespace); dropping
them matters for privileged containers and as defence in depth.

Names are lower-case without the ``CAP_`` prefix.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Iterable

import prctl  # PyPI python-prctl

DEFAULT_DROP: tuple[str, ...] = (
    "sys_module", "sys_rawio", "sys_time", "mac_admin", "mac_override",
    "audit_control", "audit_read",
)

# Index = capability number (linux/capability.h). Our own table because python-prctl
# predates checkpoint_restore (40).
CAP_NAMES: tuple[str, ...] = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid",
    "setuid", "setpcap", "linux_immutable", "net_bind_service", "net_broadcast",
    "net_admin", "net_raw", "ipc_lock", "ipc_owner", "sys_module", "sys_rawio",
    "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
    "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write",
    "audit_control", "setfcap", "mac_override", "mac_admin", "syslog", "wake_alarm",
    "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
)
_NUMBERS = {name: i for i, name in enumerate(CAP_NAMES)}

PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4


def cap_number(name: str) -> int:
    """Number of capability ``name``; ValueError naming it if unknown."""
    try:
        return _NUMBERS[name]
    except KeyError:
        raise ValueError(f"unknown capability: {name!r}") from None


@functools.cache  # reading the sysctl costs 0.3 ms, on every container start
def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return len(CAP_NAMES) - 1


def warm() -> None:
    """Read once, in a process that forks containers, what drop_bounding() needs in each child."""
    _last_cap()


def drop_bounding(drop: Iterable[str] = DEFAULT_DROP) -> None:
    """Drop ``drop`` from the bounding set and clear the ambient set; OSError on failure.

    Needs CAP_SETPCAP in the caller's user namespace. Every name is validated before
    anything is dropped, so a typo changes nothing.
    """
    names = list(drop)
    numbers = [cap_number(name) for name in names]
    last = _last_cap()
    for name, nr in zip(names, numbers, strict=True):
        if nr > last:
            continue  # the running kernel predates it: never in any bounding set
        try:
            prctl.capbset_drop(nr)
        except OSError as e:
            raise OSError(e.errno, f"PR_CAPBSET_DROP {name}: {os.strerror(e.errno or 0)}") from e
    # Ambient caps survive execve of unprivileged binaries; a container starts with none.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"PR_CAP_AMBIENT_CLEAR_ALL: {os.strerror(err)}")


def bounding_set() -> set[str]:
    """Current bounding set from /proc/self/status ``CapBnd``; unnamed bits as ``cap_<n>``."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapBnd:"):
                mask = int(line.split()[1], 16)
                break
        else:
            raise OSError("no CapBnd in /proc/self/status")
    return {CAP_NAMES[i] if i < len(CAP_NAMES) else f"cap_{i}"
            for i in range(mask.bit_length()) if mask >> i & 1}
