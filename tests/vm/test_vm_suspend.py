"""Suspend and resume of a VM through QMP stop/cont (the cheapest VM: a blank disk, firmware
only). A VM started --paused is shown suspended and resume runs it; the state survives a ctd
kill -9 (QEMU's status is asked again); stop and destroy of a suspended VM work."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.slow


def qmp_status(d, name: str) -> str:  # type: ignore[no-untyped-def]
    return str(d.client.get(f"/1.0/instances/{name}/hardware")["hardware"]["status"])


def test_vm_suspend_resume_paused_start_and_kill9(fresh_ctd):
    d = fresh_ctd
    d.ok("create", "vmz", "--type", "vm", "--disk", "64M", "--ram", "256M")
    try:
        d.ok("start", "vmz")
        assert qmp_status(d, "vmz") == "running"
        assert d.ok("suspend", "vmz").strip() == "Suspended vmz"
        assert d.instance("vmz")["state"] == "suspended" and qmp_status(d, "vmz") == "paused"
        r = d.ctl("console", "vmz", timeout=20)
        assert r.code != 0 and "suspended: resume it first" in r.err, r.err
        r = d.ctl("suspend", "vmz")
        assert r.code != 0 and "already suspended" in r.err
        # QEMU takes a change of a paused VM as of a running one (vCPUs, balloon target); the
        # paused guest gives no RAM back, so set says so and the rest applies at next start
        out = d.ok("set", "vmz", "--ram", "200M")
        assert "Note: ram: the guest has 256 MiB" in out and "next start" in out, out
        assert d.instance("vmz")["limits"]["ram"] == "200M"
        pid = d.instance("vmz")["pid"]
        d.kill9()
        d.start()
        inst = d.instance("vmz")
        assert inst["state"] == "suspended" and inst["pid"] == pid and qmp_status(d, "vmz") == "paused"
        d.ok("resume", "vmz")
        assert d.instance("vmz")["state"] == "running" and qmp_status(d, "vmz") == "running"
        r = d.ctl("resume", "vmz")
        assert r.code != 0 and "not suspended" in r.err
        # stop of a suspended VM: it runs again first (the ACPI button), then the timeout applies
        d.ok("suspend", "vmz")
        began = time.monotonic()
        out = d.ok("stop", "--timeout", "2", "vmz")
        assert d.instance("vmz")["state"] == "stopped" and time.monotonic() - began < 15, out
        # a VM started --paused is suspended; resume runs it (today's 'ctctl start --paused')
        d.ok("start", "--paused", "vmz")
        assert d.instance("vmz")["state"] == "suspended" and qmp_status(d, "vmz") in ("prelaunch", "paused")
        d.ok("resume", "vmz")
        assert d.instance("vmz")["state"] == "running" and qmp_status(d, "vmz") == "running"
        d.ok("suspend", "vmz")
    finally:
        d.ctl("destroy", "--force", "vmz")
    assert "vmz" not in {i["name"] for i in d.client.get("/1.0/instances")["instances"]}
