"""lxcfs, watched: when the kernel kills it (it runs under a memory limit that tenants can
drive it to, with open handles), start it again and bind its files into every running
container again, so the neighbours' /proc/meminfo is back in a moment instead of ENOTCONN for
good. The watch is a pidfd of lxcfs in the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Collection

from ctd.errors import OperationFailed
from ctd.instance.container.running import RunningContainer
from ctd.instance.container.spawner_client import SpawnerClient, first_reply
from ctd.lxcfs import Lxcfs

log = logging.getLogger(__name__)


class LxcfsWatch:
    """running: the containers running now, asked at each restart of lxcfs."""

    def __init__(self, lxcfs: Lxcfs | None, spawner: SpawnerClient,
                 running: Callable[[], Collection[RunningContainer]]) -> None:
        self.lxcfs = lxcfs
        self.spawner = spawner
        self.running = running
        self._pidfd = -1  # a pidfd of lxcfs, in the event loop
        self._task: asyncio.Task[None] | None = None  # its restart (held: the loop keeps weak refs)

    def watch(self) -> None:
        lxcfs = self.lxcfs
        if lxcfs is None or not lxcfs.available:
            return
        try:
            pidfd = os.pidfd_open(int(lxcfs.pidfile.read_text()))
        except (OSError, ValueError) as exc:
            log.warning("cannot watch lxcfs: %s", exc)
            return
        loop = asyncio.get_running_loop()

        def died() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            self._task = loop.create_task(self._died())

        loop.add_reader(pidfd, died)
        self._pidfd = pidfd

    def unwatch(self) -> None:
        pidfd = self._pidfd
        if pidfd >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(pidfd)
                os.close(pidfd)
            self._pidfd = -1

    async def _died(self) -> None:
        assert self.lxcfs is not None
        self._pidfd = -1
        log.warning("lxcfs died (at its memory limit?); starting it again and rebinding its files")
        if not await asyncio.to_thread(self.lxcfs.ensure):
            log.error("lxcfs could not be started again: %s", self.lxcfs.reason)
            return
        self.watch()
        binds = await asyncio.to_thread(self.lxcfs.binds)
        began = time.monotonic()
        running = list(self.running())
        for rc in running:
            queue = self.spawner.request("lxcfs_rebind", {"init_pid": rc.pid, "privileged": rc.privileged,
                                                          "binds": binds}, [])
            try:
                await first_reply(queue, f"{rc.name}: binding lxcfs' files again")
            except OperationFailed as exc:
                log.warning("%s", exc.message)
            finally:
                self.spawner.forget(queue)
        log.info("lxcfs' files bound again in %d running container(s) in %.2f s", len(running),
                 time.monotonic() - began)
