"""lxcfs: /proc files that show a container its own limits (free, top, uptime, nproc …).

One lxcfs for the host, mounted under ctd's state dir; it outlives ctd restarts because
running containers have its files bound over their /proc. Where lxcfs is not installed,
containers see the host's /proc values and `ctctl check` says so.

What tenants make lxcfs hold is theirs to choose: every open handle on one of its files costs
lxcfs about 2 kB (95,000 handles from one container: 2.5 MB -> 198 MB), and glibc keeps it
after the handles close. lxcfs therefore runs in a cgroup of its own below ctd's
(LXCFS_GROUP) with a memory limit, so the host's cgroup is never charged and the total is
bounded (it also counts in what all containers together may take).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from cgroups import CgroupError, CgroupGroup, Resources
from ctd.linux import syscalls as sc

log = logging.getLogger("ctd.lxcfs")
LXCFS_GROUP = "lxcfs"  # below ctd's base cgroup, beside the containers' ct-NAME
PROC_FILES = ("cpuinfo", "diskstats", "loadavg", "meminfo", "stat", "swaps", "uptime", "slabinfo")
SYS_FILES = ("devices/system/cpu/online",)


def is_lxcfs_mount(path: Path) -> bool:
    target = str(path)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        if fields[4] == target and fields[sep + 1] == "fuse.lxcfs":
            return True
    return False


class Lxcfs:
    def __init__(self, mountpoint: Path, group: CgroupGroup | None = None, memory_max: int | None = None) -> None:
        """group: the CgroupGroup lxcfs runs in (None: wherever ctd runs), memory_max its limit."""
        self.mountpoint = mountpoint
        self.group = group
        self.memory_max = memory_max
        self.pidfile = mountpoint.parent / "lxcfs.pid"
        self.available = False
        self.reason = ""
        self._binds: list[tuple[str, str]] | None = None  # what binds() found, while lxcfs lives

    def ensure(self, timeout: float = 5.0) -> bool:
        """Mount lxcfs unless it already is; False (with reason) where it can't run."""
        self._binds = None
        if is_lxcfs_mount(self.mountpoint):
            try:
                os.stat(self.mountpoint / "proc" / "meminfo")
                self.available = True
                with contextlib.suppress(OSError, ValueError):  # the lxcfs an earlier ctd started
                    self._place(int(self.pidfile.read_text()))
                return True
            except OSError:  # its lxcfs died (ENOTCONN): drop the dead mount, start a new one
                log.warning("lxcfs at %s is dead; mounting it again", self.mountpoint)
                with contextlib.suppress(OSError):
                    sc.umount2(str(self.mountpoint), sc.MNT_DETACH)
        binary = shutil.which("lxcfs")
        if binary is None:
            self.reason = "lxcfs is not installed (apt-get install lxcfs): containers see the host's /proc"
            return False
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        logfile = (self.mountpoint.parent / "lxcfs.log").open("ab")
        proc = subprocess.Popen([binary, "-p", str(self.pidfile), str(self.mountpoint)],
                                stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        logfile.close()
        self._place(proc.pid)  # at once: what it allocates from now on is charged there
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if is_lxcfs_mount(self.mountpoint):
                self.available = True
                log.info("lxcfs mounted at %s (pid %d)", self.mountpoint, proc.pid)
                return True
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        self.reason = f"lxcfs did not mount at {self.mountpoint}; see {self.mountpoint.parent / 'lxcfs.log'}"
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        return False

    def _place(self, pid: int) -> None:
        """Into its own cgroup, with its memory limit (again, if ctd restarted: the limit may
        have changed)."""
        if self.group is None:
            return
        try:
            self.group.create()
            self.group.apply(Resources(memory_max=self.memory_max))
            self.group.attach(pid)
        except (CgroupError, OSError) as exc:
            log.warning("lxcfs (pid %d) stays in ctd's cgroup, unbounded: %s", pid, exc)

    def binds(self) -> list[tuple[str, str]]:
        """(source on the host, target in the container) for every file lxcfs offers here."""
        if not self.available:
            return []
        # Every stat is a round trip to lxcfs (about 1 ms for all of them, on every start):
        # look once, and again only if that lxcfs has gone.
        if self._binds is None or not self._alive():
            pairs = [(self.mountpoint / "proc" / f, f"/proc/{f}") for f in PROC_FILES]
            pairs += [(self.mountpoint / "sys" / f, f"/sys/{f}") for f in SYS_FILES]
            self._binds = [(str(src), dst) for src, dst in pairs if src.exists()]
        return self._binds

    def _alive(self) -> bool:
        try:
            os.kill(int(self.pidfile.read_text()), 0)
            return True
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        """Unmount and end our lxcfs (only when no container uses it any more)."""
        self._binds = None
        if not is_lxcfs_mount(self.mountpoint):
            return
        with contextlib.suppress(OSError):
            sc.umount2(str(self.mountpoint), sc.MNT_DETACH)
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pidfile.read_text())
            if "lxcfs" in Path(f"/proc/{pid}/cmdline").read_text():
                os.kill(pid, signal.SIGTERM)
        self.available = False
        if self.group is not None:  # once lxcfs has left it
            with contextlib.suppress(CgroupError, OSError):
                if self.group.exists():
                    deadline = time.monotonic() + 3
                    while self.group.pids() and time.monotonic() < deadline:
                        time.sleep(0.05)
                    self.group.kill_all()  # what SIGTERM did not end
                    self.group.destroy()
