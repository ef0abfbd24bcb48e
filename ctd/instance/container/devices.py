"""The devices a container may open: exactly those ctd puts in its /dev (LXC's default list,
less fuse and tun). Everything else is refused by the devices cgroup (v1) or a BPF device
program (v2), whatever node the container finds or makes: a template's dev/console (the host's
console), a restored backup's dev/loop0 (the pool's disk), a node a privileged root mknods.
"""
from __future__ import annotations

from cgroups import DeviceRule, DeviceType

C, B = DeviceType.CHAR, DeviceType.BLOCK

# devpts slaves have majors 136..143 (UNIX98_PTY_MAJOR_COUNT): the container's own /dev/pts
# and its console (a slave of the host's devpts, bound onto /dev/console). A slave node
# outside a devpts opens nothing, so allowing the majors reaches no host pty.
PTS_MAJORS = range(136, 144)

ALLOWED: tuple[DeviceRule, ...] = (
    # mknod of any node is allowed (package scripts, systemd make some); opening it is not.
    DeviceRule(C, None, None, "m"),
    DeviceRule(B, None, None, "m"),
    DeviceRule(C, 1, 3, "rwm"),   # null
    DeviceRule(C, 1, 5, "rwm"),   # zero
    DeviceRule(C, 1, 7, "rwm"),   # full
    DeviceRule(C, 1, 8, "rwm"),   # random
    DeviceRule(C, 1, 9, "rwm"),   # urandom
    DeviceRule(C, 5, 0, "rwm"),   # tty: the caller's controlling terminal
    DeviceRule(C, 5, 2, "rwm"),   # ptmx (/dev/ptmx -> pts/ptmx)
    *(DeviceRule(C, major, None, "rwm") for major in PTS_MAJORS),
    # Not c 5:1: ctd's /dev/console is a pty slave; a 5:1 node is the host's console.
)
