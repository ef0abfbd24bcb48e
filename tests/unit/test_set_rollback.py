"""The undo log behind `ctctl set`: steps taken back newest first, the error of the same kind
saying 'nothing was changed', or naming exactly what stayed applied."""

from __future__ import annotations

import asyncio

from ctd.errors import Conflict, OperationFailed
from ctd.instance.rollback import Rollback


def test_a_failure_takes_back_every_step_newest_first() -> None:
    undone: list[str] = []

    async def run() -> Exception:
        rb = Rollback("web")
        for what in ("diskspace", "--rate 10000000", "limits"):
            async def undo(what: str = what) -> None:
                undone.append(what)
            rb.done(what, undo)
        return await rb.fail(Conflict("web: the kernel refused the new limits"), "limits")

    error = asyncio.run(run())
    assert undone == ["limits", "--rate 10000000", "diskspace"]
    assert isinstance(error, Conflict)   # a 409 stays a 409
    assert error.message == "web: the kernel refused the new limits; nothing was changed"


def test_what_could_not_be_taken_back_is_named() -> None:
    async def run() -> Exception:
        rb = Rollback("web")

        async def ok() -> None:
            pass

        async def broken() -> None:
            raise OSError(5, "I/O error")

        rb.done("diskspace", ok)
        rb.done("--ipadd 10.0.0.9", broken)
        rb.done("password of root", None)   # cannot be taken back at all
        return await rb.fail(KeyError("x"), "saving the settings")

    error = asyncio.run(run())
    assert isinstance(error, OperationFailed)   # not a bare 'internal error'
    assert error.message.startswith("saving the settings: KeyError")
    assert error.message.endswith("still applied (taking it back failed, see the ctd log): "
                                  "--ipadd 10.0.0.9, password of root")
