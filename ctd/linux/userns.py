"""A user namespace with given id maps, held by an fd: what an idmapped mount is shown through
(mount_setattr MOUNT_ATTR_IDMAP). Made by a short-lived child that unshares it; the caller
(root in the initial namespace) writes its maps, opens it, and lets the child go.

Contract: with_maps(uid_map, gid_map) -> an O_CLOEXEC fd of the namespace (the caller closes
it); raises OSError. The child is reaped before it returns.
"""

from __future__ import annotations

import os

from ctd.linux import syscalls as sc


def with_maps(uid_map: str, gid_map: str) -> int:
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    done_r, done_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the child: unshare, say so, wait until the parent has what it needs
        try:
            os.close(ready_r)
            os.close(done_w)
            sc.unshare(sc.CLONE_NEWUSER)
            os.write(ready_w, b"1")
            os.read(done_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise OSError(f"the user namespace helper (pid {pid}) ended before it unshared")
        for name, lines in (("uid_map", uid_map), ("gid_map", gid_map)):
            with open(f"/proc/{pid}/{name}", "w") as fh:
                fh.write(lines)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(done_w)   # the child reads EOF and exits
        os.waitpid(pid, 0)
