"""What the container driver holds of a running container, and what it saw of its end."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from cgroups import CgroupGroup
from ctd.instance.container.console import Console


@dataclass
class RunningContainer:
    name: str
    pid: int
    pidfd: int
    start_time: int
    console: Console | None
    adopted: bool = False
    stopping: bool = False
    killed: bool = False  # ctd sent SIGKILL (a stop that timed out, or --kill)
    forced: bool = False  # init outlived the stop signal's timeout and was killed
    group: CgroupGroup | None = None  # its cgroup handle: made by this start, or verified at adoption
    privileged: bool = False
    numpty: int | None = None  # its devpts' max= (None: not known, after an adoption)
    exited: asyncio.Future[int | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(frozen=True)
class ExitFacts:
    """What the driver saw of a container's end, for the manager's exit report."""
    killed: bool     # ctd sent SIGKILL
    oom_kills: int   # the OOM killer's count in its cgroup
