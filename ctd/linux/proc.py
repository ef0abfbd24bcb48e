"""Reading /proc: process identity that survives pid reuse."""

from __future__ import annotations

import array
import fcntl
import os

NS_GET_OWNER_UID = 0xB704  # _IO(0xb7, 0x4), linux/nsfs.h


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks after boot); None when the process is gone.

    A pid plus its start time names one process for good: a recycled pid starts later.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and ')' — split after its last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[19])


def is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return True
    return raw[raw.rindex(b")") + 2 :].split()[0] in (b"Z", b"X")


def userns_owner(pid: int) -> int | None:
    """The host uid that created the user namespace of process pid; None when it is gone."""
    try:
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:
        uid = array.array("I", [0])
        fcntl.ioctl(fd, NS_GET_OWNER_UID, uid, True)
        return uid[0]
    finally:
        os.close(fd)
