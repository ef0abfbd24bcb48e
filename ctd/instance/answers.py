"""Whole list answers, kept as bytes: GET /1.0/instances encodes a page once per change of the
kept views (listing.py), not once per request.

- An answer is keyed by everything that chose its rows: the caller's visible projects (Scope, from
  its identity; never anything else the request says), the filter and the page. A tenant's key
  holds its project only, so no key of another's can give it another project's rows.
- An answer is good while the kept views' generation is the one it was built at; any change of
  an entry (a write, a state change, refreshed figures, a destroy) makes every answer old.
- Its gzip form (a client that sends Accept-Encoding: gzip) is made once per answer, in a thread
  (zlib lets go of the GIL while it compresses), and shared by the requests that wait for it.
- The cache is bounded by count and bytes (least recently used out first): a client sending
  ever new filters costs a rebuild per request, never memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import zlib
from collections import OrderedDict
from collections.abc import Hashable
from typing import NamedTuple

GZIP_MIN = 16 * 1024          # smaller answers go as they are: compressing costs more than it saves
GZIP_LEVEL = 1                # 1 MB of JSON: ~4 ms in a thread, ~10x smaller
MAX_ANSWERS = 64
MAX_BYTES = 16 << 20          # answers' and their gzip forms' bytes together


class Reply(NamedTuple):
    body: bytes
    encoding: str | None      # "gzip" or None (identity)


@dataclasses.dataclass
class Answer:
    generation: int
    body: bytes
    gzipped: asyncio.Future[bytes] | None = None
    gz_size: int = 0


def gzip_bytes(body: bytes) -> bytes:
    """The gzip format (RFC 1952) with no time in it: the same body gives the same bytes."""
    return zlib.compress(body, GZIP_LEVEL, wbits=31)


def accepts_gzip(header: str | None) -> bool:
    """Accept-Encoding names gzip (or *) without q=0."""
    for item in (header or "").split(","):
        name, _, params = item.partition(";")
        if name.strip().lower() not in ("gzip", "*"):
            continue
        q = params.strip().lower()
        if not q.startswith("q=") or q[2:].strip() not in ("0", "0.", "0.0", "0.00", "0.000"):
            return True
    return False


class AnswerCache:
    def __init__(self, max_answers: int = MAX_ANSWERS, max_bytes: int = MAX_BYTES) -> None:
        self.max_answers = max_answers
        self.max_bytes = max_bytes
        self._kept: OrderedDict[Hashable, Answer] = OrderedDict()
        self._bytes = 0

    def get(self, key: Hashable, generation: int) -> Answer | None:
        answer = self._kept.get(key)
        if answer is None:
            return None
        if answer.generation != generation:
            self._forget(key)
            return None
        self._kept.move_to_end(key)
        return answer

    def put(self, key: Hashable, answer: Answer) -> None:
        self._forget(key)
        self._kept[key] = answer
        self._bytes += len(answer.body)
        self._trim()

    async def gzipped(self, answer: Answer) -> bytes:
        """The answer's gzip form, made once (the first asker starts it, the others wait for it)."""
        if answer.gzipped is None:
            answer.gzipped = asyncio.ensure_future(asyncio.to_thread(gzip_bytes, answer.body))
            answer.gzipped.add_done_callback(lambda f: self._counted(answer, f))
        return await asyncio.shield(answer.gzipped)

    def _counted(self, answer: Answer, done: asyncio.Future[bytes]) -> None:
        if done.cancelled() or done.exception() is not None:
            answer.gzipped = None   # the next asker tries again
            return
        answer.gz_size = len(done.result())
        if any(a is answer for a in self._kept.values()):
            self._bytes += answer.gz_size
            self._trim()

    def _forget(self, key: Hashable) -> None:
        answer = self._kept.pop(key, None)
        if answer is not None:
            self._bytes -= len(answer.body) + answer.gz_size

    def _trim(self) -> None:
        while self._kept and (len(self._kept) > self.max_answers or self._bytes > self.max_bytes):
            self._forget(next(iter(self._kept)))

    def stats(self) -> dict[str, int]:
        return {"answers": len(self._kept), "bytes": self._bytes}
