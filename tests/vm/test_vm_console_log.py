"""A VM's console log: ctd reads QEMU's serial socket from the start, with nobody attached, into
the same fixed-size ring as a container's; after a ctd kill -9 it connects again to the adopted
QEMU; the log stays after the stop and goes with destroy. TCG is fine: a busybox disk boots in
seconds to a minute."""

from __future__ import annotations

import pytest

from tests.host.test_console_log import log_of, wait_log
from tests.vm.test_vm_config import console_says

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_vm_serial_output_is_logged_across_a_ctd_kill_and_the_stop(fresh_ctd):
    d = fresh_ctd
    name = d.unique("vmlog")
    d.ok("create", name, "--type", "vm", "--template", "busybox", "--disk", "64M", "--ram", "256M", timeout=180)
    log_file = d.state_dir / "consoles" / f"{d.instance(name)['id']}.log"
    try:
        assert log_of(d, name) == b""
        d.ok("start", name)
        argv = open(f"/proc/{d.instance(name)['pid']}/cmdline", "rb").read()
        assert b"logfile=" not in argv            # no QEMU log that a flood would grow
        wait_log(d, name, ": booted by ctd", timeout=240)   # the kernel's and rcS's lines, unattended
        assert b"Linux version" in log_of(d, name)

        d.kill9()                                 # QEMU keeps running; the next ctd adopts it
        d.start()
        assert d.instance(name)["state"] == "running"
        console_says(d, name, "echo AFTER''KILL", "AFTERKILL")   # attached clients share ctd's line
        wait_log(d, name, "AFTERKILL")            # and what it printed after the restart is logged
        d.ok("stop", "--timeout", "20", name)
        data = log_of(d, name)
        assert b": booted by ctd" in data and b"AFTERKILL" in data and len(data) <= 1 << 20
        out = d.ok("console", "--log", name)
        assert "AFTERKILL" in out
    finally:
        d.ctl("destroy", "--force", name)
    assert not log_file.exists()
