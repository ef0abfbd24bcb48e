"""Fixtures for the robustness tests: daemons that can be started with a crash point armed.

Each daemon here gets a large id area of its own (above tests.conftest's test slots), so that
the leak audit can tell its containers' processes from those of daemons that other test runs
have going at the same time.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import Daemon, _teardown, needs_root

IDMAP_AREA = 1_000_000_000  # 50 slots of 50M ids each above it, below 2**32
IDMAP_SLOT = 50_000_000


_RANDOM = random.SystemRandom()  # not the global one: hypothesis seeds that, runs would collide


@dataclass
class RobustDaemon(Daemon):
    def area_choices(self) -> Iterator[tuple[int, int]]:
        if self.idmap_area is not None:
            yield self.idmap_area
            return
        for _ in range(150):
            base = IDMAP_AREA + _RANDOM.randrange(50) * IDMAP_SLOT
            yield base + 65536, base + IDMAP_SLOT  # ctd claims the owner ids below its base too

    @property
    def idmap_base(self) -> int:
        assert self.idmap_area is not None, "started"
        return self.idmap_area[0]


def start_with_fault(d: Daemon, fault: str | None) -> int:
    """(Re)start d, with CTD_FAULT=fault in its environment when fault is given. Returns the
    size of its log before the start, so that a test can read what this run logged."""
    if d.proc and d.proc.poll() is None:
        d.stop()
    offset = d.log.stat().st_size if d.log and d.log.exists() else 0
    if fault:
        os.environ["CTD_FAULT"] = fault  # Popen copies the environment: only ctd sees it
    try:
        d.start()
    finally:
        os.environ.pop("CTD_FAULT", None)
    return offset


@pytest.fixture(scope="module")
def module_ctd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RobustDaemon]:
    """A daemon of the module's own (busybox built) that its tests may kill and restart."""
    needs_root()
    tmp = tmp_path_factory.mktemp("robust")
    d = RobustDaemon(tmp / "state", tmp / "ctd.sock", f"ctd-test-{uuid.uuid4().hex[:8]}")
    d.start()
    try:
        d.client.run("POST", "/1.0/templates", {"name": "busybox"})
        yield d
    finally:
        if d.proc is None or d.proc.poll() is not None:
            d.start()
        _teardown(d)
