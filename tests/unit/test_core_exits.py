"""How a container's end is told: from init's wait status and what ctd did."""
from __future__ import annotations

import signal

import pytest

from ctd.instance.exits import ExitKind, describe


def exited(code: int) -> int:
    return code << 8


def killed(sig: int) -> int:
    return int(sig)


@pytest.mark.parametrize("status, requested, by_ctd, oom, kind, text", [
    (exited(3), False, False, 0, ExitKind.EXITED, "init exited with code 3"),
    (exited(0), True, False, 0, ExitKind.STOPPED, "stopped by ctd (init exited with code 0)"),
    (killed(signal.SIGTERM), True, False, 0, ExitKind.STOPPED, "stopped by ctd (init ended by SIGTERM)"),
    (killed(signal.SIGKILL), True, True, 0, ExitKind.KILLED, "killed by ctd (SIGKILL)"),
    (killed(signal.SIGKILL), False, False, 0, ExitKind.SIGNALED, "init killed by SIGKILL"),
    (killed(signal.SIGKILL), False, False, 2, ExitKind.OOM, "init killed by the OOM killer"),
    (killed(signal.SIGSEGV), False, False, 1, ExitKind.SIGNALED, "init killed by SIGSEGV; the OOM killer ended 1"),
    (killed(signal.SIGHUP), False, False, 0, ExitKind.REBOOT, "rebooted from inside"),
    (killed(signal.SIGINT), False, False, 0, ExitKind.POWEROFF, "powered off from inside"),
    (None, False, False, 0, ExitKind.UNKNOWN, "init ended; its exit status did not reach ctd (ctd was restarted"),
    (None, True, False, 0, ExitKind.STOPPED, "stopped by ctd"),
    (None, True, True, 0, ExitKind.KILLED, "killed by ctd (SIGKILL)"),
])
def test_each_end_has_its_words(status, requested, by_ctd, oom, kind, text) -> None:  # type: ignore[no-untyped-def]
    report = describe(status, requested=requested, killed=by_ctd, oom_kills=oom)
    assert report.kind is kind and text in report.text, report
    as_dict = report.as_dict()
    assert as_dict["kind"] == kind.value and as_dict["at"].endswith("+00:00")


def test_a_vm_is_told_by_its_qemu() -> None:
    report = describe(killed(signal.SIGHUP), requested=False, killed=False, what="QEMU")
    assert report.kind is ExitKind.SIGNALED and report.text == "QEMU killed by SIGHUP"
    assert describe(exited(0), requested=False, killed=False, what="QEMU").text == "QEMU exited with code 0"
