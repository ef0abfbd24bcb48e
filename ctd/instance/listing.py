"""GET /1.0/instances at scale: the list is served from views kept current, not recomputed per
request.

- Each instance's view is kept serialized (its JSON bytes) with the database part it was built
  from. A write to an instance's rows (StateDB.touched: its row, NICs, addresses, backup
  schedule) marks it dirty; the next list request rebuilds the dirty ones only, so a state
  change is seen at once.
- The kernel's figures (cgroup usage, NIC counters, disk use; views.live) are read in threads,
  in chunks, never on the event loop. A request serves a running instance's figures up to FRESH
  seconds old as they are, a stopped one's (disk use only, itself cached that long) up to
  views.disk_ttl() (5 s with btrfs qgroups, 60 s where it walks the root); older ones are
  refreshed in the background while the request answers with them, and only those: on a 2-core
  host the refresh competes with the requests. Figures more than STALE seconds past due make the
  request wait for the refresh (the first list after a quiet spell shows figures of now).
- A request's whole answer (its rows filtered, paged, joined) is kept as bytes too, and its gzip
  form for clients that accept it (answers.py): encoded once per change of the kept views, so a
  request that finds its answer current costs the loop the handler chain and the write only.
- Status of one instance (GET /1.0/instances/NAME) is not served from here: its figures are read
  at the time of the request (a user checks a counter right after a ping, a disk use right after
  a write), which costs less on the loop than a hand-off to a thread (views.status).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from ctd.errors import InvalidRequest
from ctd.instance.admin import ListFilter
from ctd.instance.answers import GZIP_MIN, Answer, AnswerCache, Reply
from ctd.instance.views import ALIVE, InstanceViews, Stored
from ctd.state import InstanceRecord, StateDB

log = logging.getLogger("ctd.instances")
FRESH = 2.0     # seconds: a running instance's figures this young are served as they are
STALE = 10.0    # seconds: figures older than this are refreshed before the answer
CHUNK = 64      # instances per thread hand-off: the loop serves other requests between chunks
MAX_LIMIT = 10_000


@dataclasses.dataclass(frozen=True)
class Page:
    """?limit= and ?offset= of a list request (limit None: all)."""

    limit: int | None = None
    offset: int = 0


@dataclasses.dataclass(frozen=True)
class Scope:
    """Whose rows a list may show: projects None = every project (an admin's), else only those
    (a tenant's own, narrowed by ?project=). Part of a kept answer's key: made from the caller's
    identity, so one caller's answer is never another's unless they may see the same rows."""

    projects: frozenset[str] | None = None

    def shows(self, project: str) -> bool:
        return self.projects is None or project in self.projects

    def keeps(self, rec: InstanceRecord) -> bool:
        return self.projects is None or rec.project in self.projects

    def narrowed(self, wanted: str | None) -> Scope:
        """?project=NAME: that project's rows only (none if the caller may not see it)."""
        if wanted is None:
            return self
        return Scope(frozenset({wanted}) if self.projects is None or wanted in self.projects else frozenset())


def check_page(limit: str | None, offset: str | None) -> Page:
    def number(name: str, text: str, low: int, high: int) -> int:
        if not text.isdigit() or not low <= int(text) <= high:
            raise InvalidRequest(f"query parameter {name} must be a whole number from {low} to {high}, "
                                 f"not {text[:20]!r}")
        return int(text)
    return Page(None if limit is None else number("limit", limit, 1, MAX_LIMIT),
                0 if offset is None else number("offset", offset, 0, 2**31))


@dataclasses.dataclass(frozen=True)
class Entry:
    stored: Stored
    body: bytes        # the whole view, serialized
    live_at: float     # time.monotonic() when its figures were read
    version: int       # the instance's write count when its database part was read


class ListCache:
    """The kept views, in id order."""

    def __init__(self, db: StateDB, views: InstanceViews) -> None:
        self.db = db
        self.views = views
        self.entries: dict[int, Entry] = {}
        self.generation = 0                  # counts changes of `entries`: a kept answer of another is old
        self.answers = AnswerCache()
        self._versions: dict[int, int] = {}  # writes per instance id (StateDB.touched)
        self._dirty: set[int] = set()
        self._loaded = False
        self._order: list[int] = []          # entries' ids, sorted (rebuilt when the set changes)
        self._lock = asyncio.Lock()          # one rebuild of the dirty ones at a time
        self._refresh: asyncio.Task[None] | None = None
        self._next_due = 0.0                 # when some entry's figures are due (recount())
        db.changed.append(self._touched)

    def _touched(self, instance_id: int) -> None:
        self._versions[instance_id] = self._versions.get(instance_id, 0) + 1
        self._dirty.add(instance_id)

    # ------------------------------------------------------------- the answers

    async def page(self, only: ListFilter | None, scope: Scope, page: Page, gzip: bool = False) -> Reply:
        """The JSON answer: {"instances": [...], "total": N, "next": OFFSET or null}, with only
        the rows `scope` keeps (the caller's projects: others' are dropped before any is looked
        at); gzip: its gzip form if it is big enough to be worth it."""
        await self._current()
        key = (scope, only, page)
        answer = self.answers.get(key, self.generation)
        if answer is None:
            answer = Answer(self.generation, self._render(only, scope, page))
            self.answers.put(key, answer)
        if gzip and len(answer.body) >= GZIP_MIN:
            return Reply(await self.answers.gzipped(answer), "gzip")
        return Reply(answer.body, None)

    async def bodies(self) -> dict[int, bytes]:
        """The kept views' JSON by instance id, current (the metrics scrape reads them)."""
        await self._current()
        return {i: e.body for i, e in self.entries.items()}

    def _render(self, only: ListFilter | None, scope: Scope, page: Page) -> bytes:
        rows = [e for e in (self.entries[i] for i in self._order)
                if scope.keeps(e.stored.rec) and (only is None or only.matches(e.stored.rec))]
        end = len(rows) if page.limit is None else page.offset + page.limit
        shown = rows[page.offset:end]
        after = end if end < len(rows) else None
        return b'{"instances": [' + b", ".join(e.body for e in shown) + \
            f'], "total": {len(rows)}, "next": {json.dumps(after)}}}'.encode()

    # ------------------------------------------------------------- keeping it current

    async def _current(self) -> None:
        async with self._lock:
            if not self._loaded:
                self._dirty |= self.db.used_ids()
                self._loaded = True
            if self._dirty:
                while self._dirty:
                    ids, self._dirty = sorted(self._dirty), set()
                    await self._rebuild(ids)
                self._recount()
        now = time.monotonic()
        if now < self._next_due:
            return
        if self._refresh is None or self._refresh.done():
            stopped = self.views.disk_ttl()
            due = [i for i in self._order if now - self.entries[i].live_at > self._ttl(self.entries[i], stopped)]
            self._refresh = asyncio.get_running_loop().create_task(self._refresh_figures(due))
        if now - self._next_due > STALE:
            await asyncio.shield(self._refresh)

    @staticmethod
    def _ttl(entry: Entry, stopped: float) -> float:
        """A stopped instance's one figure is its disk use: kept as long as the views keep it."""
        return FRESH if entry.stored.rec.state in ALIVE else stopped

    async def _rebuild(self, ids: list[int]) -> None:
        """The dirty ones: their database part read again (on the loop), their figures in a thread."""
        for start in range(0, len(ids), CHUNK):
            stored = []
            for instance_id in ids[start:start + CHUNK]:
                rec = self.db.get_instance(instance_id)
                if rec is None:
                    self._drop(instance_id)
                else:
                    stored.append((self.views.stored(rec), self._versions.get(instance_id, 0)))
            for entry in await asyncio.to_thread(self._build, stored):
                if entry.version == self._versions.get(entry.stored.rec.id, 0):   # else: built next round
                    self._keep(entry)
            if len(self._order) != len(self.entries):
                self._order = sorted(self.entries)

    async def _refresh_figures(self, ids: list[int]) -> None:
        """These entries' figures read again (the database part is kept: it is current)."""
        for start in range(0, len(ids), CHUNK):
            stored = [(e.stored, e.version) for e in (self.entries.get(i) for i in ids[start:start + CHUNK])
                      if e is not None]
            for entry in await asyncio.to_thread(self._build, stored):
                held = self.entries.get(entry.stored.rec.id)
                if held is not None and held.stored is entry.stored:   # not rebuilt meanwhile
                    self.entries[entry.stored.rec.id] = entry
        # one new generation per pass, not per chunk: figures may be FRESH seconds old anyway,
        # and each generation costs an answer's encoding (and its gzip) again
        self.generation += 1
        self._recount()

    def _keep(self, entry: Entry) -> None:
        self.entries[entry.stored.rec.id] = entry
        self.generation += 1

    def _recount(self) -> None:
        """When the next figures fall due (once per rebuild or refresh: a request only compares
        the time with it)."""
        stopped = self.views.disk_ttl()
        self._next_due = min((e.live_at + self._ttl(e, stopped) for e in self.entries.values()), default=float("inf"))

    def _build(self, stored: Iterable[tuple[Stored, int]]) -> list[Entry]:
        """Runs in a thread: file reads and serialization only."""
        out = []
        for part, version in stored:
            now = time.monotonic()
            try:
                live = self.views.live(part, cached=True)
            except Exception:  # noqa: BLE001 - one instance's odd figures must not take the list down
                log.exception("reading the figures of %s for the list", part.rec.name)
                live = {}   # the stored part's placeholders (no usage, no counters) stand
            out.append(Entry(part, json.dumps(self.views.merge(part, live)).encode(), now, version))
        return out

    def _drop(self, instance_id: int) -> None:
        self._versions.pop(instance_id, None)
        if self.entries.pop(instance_id, None) is not None:
            self._order = [i for i in self._order if i != instance_id]
            self.generation += 1

    def stats(self) -> dict[str, Any]:
        """For the bench and tests: how many are kept, how many wait for a rebuild, the answers."""
        return {"kept": len(self.entries), "dirty": len(self._dirty), **self.answers.stats()}
