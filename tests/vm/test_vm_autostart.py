"""Autostart of a VM after a simulated host boot (QEMU and ctd SIGKILLed, a new boot id), in
boot order with a container, and shutdown-all pressing its ACPI button (a blank disk has no OS
to answer it: QEMU is ended after the timeout, and the stop says it was forced)."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.host.test_autostart import boot_ctd, create, simulate_reboot, wait_boot, wait_starts  # noqa: F401

pytestmark = pytest.mark.slow


def test_an_onboot_vm_starts_after_a_host_boot_in_order_and_shutdown_all_presses_acpi(boot_ctd):  # noqa: F811
    d, boot_id = boot_ctd
    u = uuid.uuid4().hex[:4]
    vm, ct = f"vm-{u}", f"ct-{u}"
    d.ok("create", vm, "--type", "vm", "--disk", "64M", "--ram", "256M", "--onboot", "yes", "--boot-order", "1",
         "--boot-delay", "2")
    create(d, ct, "--onboot", "yes", "--boot-order", "2")
    assert d.instance(vm)["onboot"] is True
    d.ok("start", vm)
    old = d.instance(vm)["pid"]
    simulate_reboot(d, boot_id)   # QEMU is the VM's recorded pid: killed like a container's init
    d.start()
    boot = wait_boot(d)
    steps = {s["name"]: s for s in boot["steps"]}
    assert steps[vm]["outcome"] == "started" and steps[ct]["outcome"] == "started", steps
    assert steps[ct]["at"] >= steps[vm]["at"] + 2 - 0.05   # the VM's boot delay held the container back
    inst = d.instance(vm)
    assert inst["state"] == "running" and inst["pid"] != old
    assert len(wait_starts(d, ct, 1)) == 1
    t0 = time.monotonic()
    result = d.client.run("POST", "/1.0/shutdown", {"timeout": 6})
    hows = {s["name"]: s["how"] for s in result["stopped"]}
    assert [s["name"] for s in result["stopped"]] == [ct, vm]   # reverse order: the container first
    assert hows == {ct: "clean", vm: "forced"} and time.monotonic() - t0 < 30, result
    assert d.instance(vm)["state"] == "stopped" and d.instance(ct)["state"] == "stopped"
