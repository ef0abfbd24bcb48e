"""The list cache (ctd/instance/listing.py) on a real state database: a write to an instance is
seen by the next list (nothing stale after create, state change, set, rename, destroy), though
a whole answer is kept as bytes between changes; pages; a caller's projects (Scope) choose its
rows and its kept answer; gzip; figures are read off the event loop's thread; bad
?limit=/?offset= are refused by name."""
from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from ctd.errors import InvalidRequest
from ctd.instance.admin import check_filter
from ctd.instance.listing import ListCache, Page, Scope, check_page
from ctd.instance.views import Stored
from ctd.state import InstanceRecord, InstanceType, PowerState, StateDB


def rec(id: int, name: str, state: PowerState = PowerState.STOPPED) -> InstanceRecord:
    return InstanceRecord(id=id, name=name, type=InstanceType.CONTAINER, template="busybox", hostname=name,
                          privileged=False, idmap_base=None, state=state)


class Views:
    """The two parts of a view, as InstanceViews makes them; records which thread read figures."""

    def __init__(self) -> None:
        self.live_threads: set[int] = set()
        self.live_reads = 0

    def stored(self, r: InstanceRecord) -> Stored:
        return Stored(r, {"id": r.id, "name": r.name, "state": r.state.value}, [])

    def live(self, stored: Stored, cached: bool = False) -> dict[str, Any]:
        self.live_threads.add(threading.get_ident())
        self.live_reads += 1
        return {"usage": {"reads": self.live_reads}}

    def disk_ttl(self) -> float:
        return 5.0

    @staticmethod
    def merge(stored: Stored, live: dict[str, Any]) -> dict[str, Any]:
        return {**stored.fields, **live}


def test_the_list_follows_every_write_and_pages(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    views = Views()
    cache = ListCache(db, views)  # type: ignore[arg-type]

    async def listed(only: Any = None, page: Page | None = None) -> dict[str, Any]:
        return dict(json.loads((await cache.page(only, Scope(), page or Page())).body))

    async def main() -> None:
        for i in range(1, 6):
            db.add_instance(rec(i, f"ct{i}"))
        first = await listed()
        assert [i["name"] for i in first["instances"]] == ["ct1", "ct2", "ct3", "ct4", "ct5"]
        assert first["total"] == 5 and first["next"] is None
        assert threading.get_ident() not in views.live_threads   # figures read in threads only

        r = db.get_instance(3)
        assert r is not None
        r.state, r.name = PowerState.RUNNING, "web"
        db.update_instance(r)
        db.delete_instance(5)
        db.add_instance(rec(9, "new"))
        now = await listed()
        assert [(i["name"], i["state"]) for i in now["instances"]] == [
            ("ct1", "stopped"), ("ct2", "stopped"), ("web", "running"), ("ct4", "stopped"), ("new", "stopped")]
        assert (await listed(check_filter(["running"], [])))["instances"][0]["name"] == "web"

        page = await listed(page=Page(limit=2, offset=0))
        assert [i["id"] for i in page["instances"]] == [1, 2] and page["total"] == 5 and page["next"] == 2
        page = await listed(page=Page(limit=2, offset=4))
        assert [i["id"] for i in page["instances"]] == [9] and page["next"] is None
        assert (await listed(page=Page(limit=2, offset=50)))["instances"] == []

    asyncio.run(main())


@pytest.mark.parametrize("limit, offset, words", [("0", None, "limit must be a whole number from 1"),
                                                  ("ten", None, "limit must be"), (None, "-1", "offset must be")])
def test_bad_page_is_refused_by_name(limit: str | None, offset: str | None, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words):
        check_page(limit, offset)
    assert check_page("5", "10") == Page(5, 10) and check_page(None, None) == Page()


def test_an_instance_whose_figures_fail_is_listed_without_them(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")

    class Odd(Views):
        def live(self, stored: Stored, cached: bool = False) -> dict[str, Any]:
            if stored.rec.name == "odd":
                raise RuntimeError("a cgroup file the kernel refuses to read")
            return super().live(stored, cached)

    cache = ListCache(db, Odd())  # type: ignore[arg-type]
    db.add_instance(rec(1, "odd"))
    db.add_instance(rec(2, "fine"))
    shown = json.loads(asyncio.run(cache.page(None, Scope(), Page())).body)["instances"]
    assert [(i["name"], "usage" in i) for i in shown] == [("odd", False), ("fine", True)]


@pytest.mark.parametrize("cheap", [True, False])
def test_status_walks_a_root_for_its_disk_use_off_the_loop_only(tmp_path: Path, cheap: bool) -> None:
    """GET /1.0/instances/NAME reads its figures now; the disk use on the loop where it is a few
    sysfs files; where it walks the root (quota off) or runs btrfs, the kept one (the list's),
    else once in a thread."""
    from types import SimpleNamespace

    from ctd.config import DaemonConfig
    from ctd.instance.views import InstanceViews

    where: list[int] = []

    class Storage:
        def usage_is_cheap(self) -> bool:
            return cheap

        def usage(self, name: str) -> int:
            where.append(threading.get_ident())
            return 4096

        def quota(self, name: str) -> int | None:
            return None

    kind = SimpleNamespace(is_running=lambda r: False, view_fields=lambda r: {"console": False})
    views = InstanceViews(DaemonConfig(state_dir=tmp_path), Storage(),  # type: ignore[arg-type]
                          SimpleNamespace(counter_sources=lambda r: []),  # type: ignore[arg-type]
                          SimpleNamespace(of=lambda r: kind),  # type: ignore[arg-type]
                          SimpleNamespace(view_fields=lambda r: {}))  # type: ignore[arg-type]

    async def main() -> tuple[dict[str, Any], int]:
        first = await views.status(rec(1, "ct1"))
        assert await views.status(rec(1, "ct1")) == first
        return first, threading.get_ident()

    shown, loop_thread = asyncio.run(main())
    assert shown["disk"] == {"used": 4096, "limit": None} and shown["name"] == "ct1"
    assert list(shown)[:2] == ["id", "name"]
    # cheap: read on the loop each time; a walk: once, in a thread, then the kept one (disk_ttl)
    assert where == [loop_thread] * 2 if cheap else (len(where) == 1 and where[0] != loop_thread)
