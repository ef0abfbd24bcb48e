"""Kept list answers (ctd/instance/answers.py, listing.py): GET /1.0/instances is encoded once
per change, yet every change is in the next list (create, state change, set, rename, destroy,
refreshed figures); a tenant's answer holds its project's rows only, whatever was asked or kept
before; the gzip form decodes to the same rows; the kept answers are bounded."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import zlib
from pathlib import Path
from typing import Any

import pytest

from ctd.instance import listing
from ctd.instance.admin import check_filter
from ctd.instance.answers import MAX_ANSWERS, Answer, AnswerCache, accepts_gzip
from ctd.instance.listing import ListCache, Page, Scope
from ctd.instance.views import Stored
from ctd.remote.identity import Identity, IdentityKind, Role
from ctd.remote.scope import visible, visible_projects
from ctd.state import InstanceRecord, InstanceType, PowerState, StateDB


def rec(id: int, name: str, project: str = "default", state: PowerState = PowerState.STOPPED) -> InstanceRecord:
    return InstanceRecord(id=id, name=name, type=InstanceType.CONTAINER, template="busybox", hostname=name,
                          privileged=False, idmap_base=None, state=state, project=project)


class Views:
    """InstanceViews' three calls the cache makes; figures count their reads."""

    def __init__(self, pad: int = 0) -> None:
        self.reads = 0
        self.pad = pad

    def stored(self, r: InstanceRecord) -> Stored:
        return Stored(r, {"id": r.id, "name": r.name, "project": r.project, "state": r.state.value,
                          "limits": dict(r.limits), "description": "x" * self.pad}, [])

    def live(self, stored: Stored, cached: bool = False) -> dict[str, Any]:
        self.reads += 1
        return {"usage": {"reads": self.reads}}

    def disk_ttl(self) -> float:
        return 5.0

    @staticmethod
    def merge(stored: Stored, live: dict[str, Any]) -> dict[str, Any]:
        return {**stored.fields, **live}


def tenant(project: str, role: Role = Role.TENANT) -> Scope:
    return Scope(visible_projects(Identity("t-" + project, IdentityKind.TOKEN, role, project)))


def rows(body: bytes) -> list[tuple[str, str]]:
    return [(i["project"], i["name"]) for i in json.loads(body)["instances"]]


def test_an_answer_is_kept_between_changes_and_every_change_is_in_the_next_list(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = StateDB(tmp_path / "state.db")
    cache = ListCache(db, Views())  # type: ignore[arg-type]
    running = check_filter(["running"], [])

    async def main() -> None:
        for i in range(1, 4):
            db.add_instance(rec(i, f"ct{i}"))

        async def both() -> tuple[dict[str, Any], dict[str, Any]]:
            """The whole list and a filtered page: two kept answers, both must follow a change."""
            whole = json.loads((await cache.page(None, Scope(), Page())).body)
            page = json.loads((await cache.page(running, Scope(), Page(limit=2))).body)
            return whole, page

        first = await cache.page(None, Scope(), Page())
        assert (await cache.page(None, Scope(), Page())).body is first.body   # kept, not encoded again
        await both()

        db.add_instance(rec(4, "made"))                                        # create
        whole, _ = await both()
        assert [i["name"] for i in whole["instances"]] == ["ct1", "ct2", "ct3", "made"]

        r = db.get_instance(2)
        assert r is not None
        db.update_instance(dataclasses.replace(r, state=PowerState.RUNNING, pid=42))   # state change
        whole, page = await both()
        assert [i["name"] for i in page["instances"]] == ["ct2"] and page["total"] == 1
        assert whole["instances"][1]["state"] == "running"

        db.update_instance(dataclasses.replace(r, state=PowerState.RUNNING, limits={"ram": 64 << 20}))   # set
        whole, page = await both()
        assert whole["instances"][1]["limits"] == page["instances"][0]["limits"] == {"ram": 64 << 20}

        r3 = db.get_instance(3)
        assert r3 is not None
        db.update_instance(dataclasses.replace(r3, name="renamed"))          # rename
        whole, _ = await both()
        assert [i["name"] for i in whole["instances"]] == ["ct1", "ct2", "renamed", "made"]

        db.delete_instance(2)                                                  # destroy
        whole, page = await both()
        assert [i["name"] for i in whole["instances"]] == ["ct1", "renamed", "made"]
        assert page == {"instances": [], "total": 0, "next": None}

        # figures read again (the refresh after FRESH seconds) make a new answer too
        monkeypatch.setattr(listing, "FRESH", 0.0)
        monkeypatch.setattr(listing, "STALE", 0.0)
        monkeypatch.setattr(Views, "disk_ttl", lambda self: 0.0)
        cache._recount()   # the next figures are due now
        before = json.loads((await cache.page(None, Scope(), Page())).body)["instances"][0]["usage"]
        after = json.loads((await cache.page(None, Scope(), Page())).body)["instances"][0]["usage"]
        assert after["reads"] > before["reads"]

    asyncio.run(main())
    db.close()


def test_a_tenant_gets_its_projects_rows_only_whatever_was_kept_before(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    cache = ListCache(db, Views())  # type: ignore[arg-type]

    async def main() -> None:
        db.add_instance(rec(1, "a1", "alpha"))
        db.add_instance(rec(2, "b1", "beta"))
        db.add_instance(rec(3, "d1"))
        db.add_instance(rec(4, "a2", "alpha"))
        admin = Scope(visible_projects(Identity("root", IdentityKind.LOCAL, Role.ADMIN)))
        everything = [("alpha", "a1"), ("beta", "b1"), ("default", "d1"), ("alpha", "a2")]
        assert rows((await cache.page(None, admin, Page())).body) == everything    # the admin's answer is kept
        for _ in range(2):   # asked again: from the kept answers, and still each its own
            assert rows((await cache.page(None, tenant("alpha"), Page())).body) == [("alpha", "a1"), ("alpha", "a2")]
            assert rows((await cache.page(None, tenant("beta", Role.OPERATOR), Page())).body) == [("beta", "b1")]
            assert rows((await cache.page(None, tenant("gamma"), Page())).body) == []
            assert rows((await cache.page(None, Scope(None), Page())).body) == everything
        # ?project=: another's project gives nothing; an admin's narrows to it
        assert rows((await cache.page(None, tenant("alpha").narrowed("beta"), Page())).body) == []
        assert rows((await cache.page(None, tenant("alpha").narrowed("alpha"), Page(limit=1))).body) == [
            ("alpha", "a1")]
        assert rows((await cache.page(None, admin.narrowed("beta"), Page())).body) == [("beta", "b1")]
        assert json.loads((await cache.page(None, tenant("alpha"), Page(limit=1))).body)["total"] == 2
        # a new instance of beta's is beta's only
        db.add_instance(rec(5, "b2", "beta"))
        assert rows((await cache.page(None, tenant("alpha"), Page())).body) == [("alpha", "a1"), ("alpha", "a2")]
        assert rows((await cache.page(None, tenant("beta"), Page())).body) == [("beta", "b1"), ("beta", "b2")]

    asyncio.run(main())
    db.close()


@pytest.mark.parametrize("role", list(Role))
def test_a_scope_shows_what_visible_lets_the_identity_see(role: Role) -> None:
    who = Identity("x", IdentityKind.TOKEN, role, "alpha")
    for project in ("alpha", "beta", "default"):
        assert Scope(visible_projects(who)).shows(project) == visible(who, project)
    assert Scope(visible_projects(None)).shows("beta") and visible(None, "beta")


def test_gzip_form_is_the_same_rows_made_once_and_small_answers_go_plain(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    cache = ListCache(db, Views(pad=400))  # type: ignore[arg-type]

    async def main() -> None:
        for i in range(1, 81):
            db.add_instance(rec(i, f"ct{i}"))
        plain = await cache.page(None, Scope(), Page())
        packed = await cache.page(None, Scope(), Page(), gzip=True)
        assert plain.encoding is None and packed.encoding == "gzip" and len(plain.body) > 32 * 1024
        assert zlib.decompress(packed.body, wbits=31) == plain.body and len(packed.body) < len(plain.body) / 5
        assert (await cache.page(None, Scope(), Page(), gzip=True)).body is packed.body   # compressed once
        small = await cache.page(None, Scope(), Page(limit=2), gzip=True)
        assert small.encoding is None and len(json.loads(small.body)["instances"]) == 2

    asyncio.run(main())
    db.close()


@pytest.mark.parametrize("header, wanted", [
    ("gzip", True), ("gzip, deflate, br", True), ("deflate, GZIP;q=0.5", True), ("*", True),
    (None, False), ("", False), ("br", False), ("identity", False), ("gzip;q=0", False), ("gzip; q=0.0", False),
    ("x-gzip", False)])
def test_accept_encoding(header: str | None, wanted: bool) -> None:
    assert accepts_gzip(header) is wanted


def test_kept_answers_are_bounded_by_count_and_bytes(tmp_path: Path) -> None:
    kept = AnswerCache(max_answers=4, max_bytes=1000)
    for i in range(10):
        kept.put(i, Answer(1, b"x" * 300))
    assert kept.stats() == {"answers": 3, "bytes": 900}
    assert kept.get(9, 1) is not None and kept.get(0, 1) is None   # the least recently used went
    assert kept.get(9, 2) is None and kept.stats()["answers"] == 2  # of another generation: dropped

    db = StateDB(tmp_path / "state.db")
    cache = ListCache(db, Views())  # type: ignore[arg-type]

    async def main() -> None:
        db.add_instance(rec(1, "ct1"))
        for i in range(MAX_ANSWERS * 3):   # a client sending ever new filters
            await cache.page(check_filter([], [f"k{i}"]), Scope(), Page())
        assert cache.stats()["answers"] == MAX_ANSWERS

    asyncio.run(main())
    db.close()
