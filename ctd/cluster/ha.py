"""The cluster's background services beside membership (docs/cluster.md, "Replication"):
storage replication (replicate.Replicator) on every member node, and the replicas kept here
that nothing names any more dropped (replica_store.collect). HA failover comes next."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from ctd.cluster import replica_store
from ctd.cluster.replicate import Replicator
from ctd.errors import CtdError

if TYPE_CHECKING:
    from ctd.api.context import ApiContext

log = logging.getLogger("ctd.cluster.ha")

TICK = 1.0


class ClusterServices:
    def __init__(self, c: ApiContext) -> None:
        assert c.cluster is not None
        self.c, self.cluster = c, c.cluster
        self.replicator = Replicator(c)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.replicator.start()
        self._tasks = [asyncio.get_running_loop().create_task(self._loop())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.replicator.stop()

    async def _loop(self) -> None:
        while True:
            try:
                if self.cluster.member:
                    await replica_store.collect(self.c)
                    self.cluster.hold({str(r["name"]): int(r["id"]) for r in replica_store.local(self.c)})
            except CtdError as exc:
                log.debug("replicas: %s", exc.message)
            except Exception:   # noqa: BLE001 - the next tick tries again
                log.exception("replicas")
            await asyncio.sleep(TICK)
