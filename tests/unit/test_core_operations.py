"""Operations: long work that clients poll or wait on; failures are reported, never fatal."""
from __future__ import annotations

import asyncio
import json
import logging

import pytest

from ctd import operations as ops_mod
from ctd.errors import Conflict, NotFound
from ctd.operations import Operations, OpStatus


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_success() -> None:
    async def main() -> None:
        ops = Operations()

        async def work() -> dict:
            await asyncio.sleep(0)
            return {"name": "web", "id": 100}

        op = ops.start("create", "web", work())
        assert op.status is OpStatus.RUNNING and ops.get(op.id) is op
        done = await ops.wait(op.id, 5)
        assert done is op and op.status is OpStatus.SUCCESS
        assert op.result == {"name": "web", "id": 100}
        assert op.error is None and op.error_code is None
        body = json.loads(json.dumps(op.to_json()))
        assert body["status"] == "success" and body["kind"] == "create" and body["target"] == "web"
        assert body["result"] == {"name": "web", "id": 100} and body["code"] is None
    run(main())


def test_ctd_error_is_a_failure_that_keeps_its_code() -> None:
    async def main() -> None:
        ops = Operations()

        async def work() -> None:
            raise Conflict("web is running; stop it first")

        op = ops.start("destroy", "web", work())
        await ops.wait(op.id, 5)
        assert op.status is OpStatus.FAILURE
        assert op.error == "web is running; stop it first" and op.error_code == "conflict"
        assert op.to_json()["code"] == "conflict" and op.to_json()["error"] == op.error
    run(main())


def test_unexpected_exception_is_internal_and_the_loop_survives(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        ops = Operations()

        async def boom() -> None:
            raise ZeroDivisionError("division by zero")

        async def fine() -> str:
            return "ok"

        with caplog.at_level(logging.ERROR, logger="ctd.operations"):
            bad = ops.start("start", "web", boom())
            await ops.wait(bad.id, 5)
        assert bad.status is OpStatus.FAILURE and bad.error_code == "internal"
        assert "division by zero" in (bad.error or "")
        assert any("start web" in r.getMessage() for r in caplog.records), "the traceback is logged"
        good = ops.start("start", "other", fine())
        await ops.wait(good.id, 5)
        assert good.status is OpStatus.SUCCESS and good.result == "ok"
        await ops.drain()
    run(main())


def test_wait_with_timeout_returns_while_still_running() -> None:
    async def main() -> None:
        ops = Operations()
        release = asyncio.Event()

        async def slow() -> str:
            await release.wait()
            return "finished"

        op = ops.start("stop", "web", slow())
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        same = await ops.wait(op.id, 0.05)
        assert loop.time() - t0 < 2
        assert same is op and op.status is OpStatus.RUNNING and op.result is None
        assert (await ops.wait(op.id, 0)).status is OpStatus.RUNNING
        release.set()
        await ops.wait(op.id, 5)
        assert op.status is OpStatus.SUCCESS and op.result == "finished"
        # waiting on a finished operation returns at once, whatever the timeout
        assert (await asyncio.wait_for(ops.wait(op.id, 3600), 1)).status is OpStatus.SUCCESS
    run(main())


def test_unknown_operation_is_not_found() -> None:
    async def main() -> None:
        ops = Operations()
        with pytest.raises(NotFound, match="no operation 'nope'"):
            ops.get("nope")
        with pytest.raises(NotFound):
            await ops.wait("nope", 1)
    run(main())


def test_finished_operations_are_trimmed_running_ones_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops_mod, "KEEP", 3)

    async def main() -> None:
        ops = Operations()
        hold = asyncio.Event()

        async def quick(i: int) -> int:
            return i

        async def held() -> None:
            await hold.wait()

        running = ops.start("stop", "held", held())
        ids = []
        for i in range(6):
            op = ops.start("x", str(i), quick(i))
            await ops.wait(op.id, 5)
            ids.append(op.id)
        ops.start("x", "last", quick(99))  # trimming happens when an operation starts
        kept = {o.id for o in ops.list()}
        assert running.id in kept, "a running operation is never forgotten"
        assert len(kept) <= 4 and ids[-1] in kept and ids[0] not in kept
        hold.set()
        await ops.drain()
    run(main())


def test_drain_waits_for_all_work() -> None:
    async def main() -> None:
        ops = Operations()
        started = [ops.start("x", str(i), asyncio.sleep(0.01, result=i)) for i in range(5)]
        await ops.drain()
        assert [o.status for o in started] == [OpStatus.SUCCESS] * 5
        assert [o.result for o in started] == list(range(5))
    run(main())
