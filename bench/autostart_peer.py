"""lxc-autostart, the peer of ctd's boot sequence, on ctd's own container roots.

One LXC container per ctd container, privileged (LXC's default as root), its config pointing at
STATE/storage/instances/NAME/rootfs: ctd keeps files' ids on disk (an idmapped mount shows them
to the unprivileged container), so LXC boots the very tree ctd's container booted. Every one has
`lxc.start.auto = 1` and no group; `lxc-autostart -P DIR` starts them one after another (it has
no parallelism; lxc.start.delay is 0) and returns once each has been started. Run it only while
ctd's containers are down (ctd and their inits killed, as after a host crash).

Kept below our own cgroup (lxc.cgroup.relative), LXC 5.0 moves lxc-autostart itself into each
container's monitor cgroup, and the next container's cgroups are made relative to that: each one
nests below the one before (seen here with Debian's lxc 5.0.2). The names are kept short (one
monitor directory name for all) so that 220 levels stay within PATH_MAX; the depth is LXC's.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from common import BenchError, Hierarchy
from peers import Lxc, lxc_config


class LxcAutostart(Lxc):
    """running(), attach() and cleanup() (containers killed, our cgroups and configs removed;
    the roots are ctd's and stay) are Lxc's."""

    def __init__(self, workdir: Path, tag: str, hier: list[Hierarchy]) -> None:
        super().__init__(workdir, tag, Path("/nonexistent"), hier)
        self.path = workdir / "lxc-autostart"   # lxc -P
        self.cgroup_dir = f"la{tag[-4:]}"        # short: it repeats at every nesting level

    def add(self, name: str, rootfs: Path, system: bool) -> None:
        """A container on rootfs, started by lxc-autostart (system: a systemd guest)."""
        d = self.path / name
        d.mkdir(parents=True, exist_ok=True)
        config = lxc_config(name, f"dir:{rootfs}", self.cgroup_dir, d / "lxc.log", system=system,
                            monitor_dir=f"{self.cgroup_dir}/m")
        (d / "config").write_text(config + "lxc.start.auto = 1\n")
        self.created.add(name)

    def storm(self, timeout: float = 1200) -> float:
        """Seconds lxc-autostart took to start every container."""
        t0 = time.monotonic()
        r = subprocess.run(["lxc-autostart", "-P", str(self.path)], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout)
        took = time.monotonic() - t0
        if r.returncode != 0:
            raise BenchError(f"lxc-autostart failed ({r.returncode}): {r.stderr.strip()[-1500:]}")
        return took
