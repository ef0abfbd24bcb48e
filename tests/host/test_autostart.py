"""Autostart after a host boot, simulated honestly: ctd and every container init are killed
(SIGKILL, by PID), a new kernel boot id is presented through the test-only `boot_id_file`
setting, and ctd starts again. The onboot containers must come up in boot order with their
delays (checked on the kernel's own start times of their inits), the others stay down; a ctd
restart without a new boot id starts nothing; a ctd killed during the sequence resumes it
without starting anything twice; shutdown-all stops in reverse order."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctctl.client import ApiError
from tests.conftest import Daemon, _start_daemon, _teardown

TICK = os.sysconf("SC_CLK_TCK")



@pytest.fixture
def boot_ctd(tmp_path: Path) -> Iterator[tuple[Daemon, Path]]:
    """A daemon of the test's own that reads its boot id from a file the test writes."""
    boot_id = tmp_path / "boot_id"
    boot_id.write_text(f"{uuid.uuid4()}\n")
    d = _start_daemon(tmp_path, "boot", extra=f'boot_id_file = "{boot_id}"\nboot_concurrency = 2\n')
    yield d, boot_id
    try:
        if d.proc and d.proc.poll() is not None:  # the test killed it: bring it back to clean up
            d.start()
    finally:
        _teardown(d)


def create(d: Daemon, name: str, *options: str) -> None:
    """A busybox container whose init first notes when it ran in /boot-times, one line per start:
    the kernel's start time of a process it forks (clock ticks since the host booted; lxcfs
    shows the container's own /proc/uptime, but /proc/PID/stat is the kernel's)."""
    d.ok("create", name, "--template", "busybox", *options)
    init = d.rootfs(name) / "sbin/init"
    init.unlink()
    init.write_text("#!/bin/sh\ncut -d' ' -f22 /proc/self/stat >> /boot-times\nexec /bin/busybox init\n")
    init.chmod(0o755)


def starts(d: Daemon, name: str) -> list[float]:
    """When the guest's init began to run, every time it did (seconds since the host booted)."""
    path = d.rootfs(name) / "boot-times"
    return [int(x) / TICK for x in path.read_text().split()] if path.exists() else []


def wait_starts(d: Daemon, name: str, count: int, timeout: float = 15) -> list[float]:
    """The guest's start times once it noted `count` starts (it notes one just after its start)."""
    deadline = time.monotonic() + timeout
    while len(starts(d, name)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return starts(d, name)


def simulate_reboot(d: Daemon, boot_id: Path) -> None:
    """kill -9 ctd and every container init (by PID), then a new boot id."""
    inits = [i["pid"] for i in d.client.get("/1.0/instances")["instances"] if i["pid"]]
    d.kill9()
    for pid in inits:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    for pid in inits:
        while Path(f"/proc/{pid}").exists() and " Z " not in _stat(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    boot_id.write_text(f"{uuid.uuid4()}\n")


def _stat(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return " Z "


def wait_boot(d: Daemon, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        boot = d.client.get("/1.0")["boot"]
        if boot["state"] == "done":
            return boot
        time.sleep(0.1)
    raise AssertionError(f"the boot sequence did not finish: {d.client.get('/1.0')['boot']}")


def test_a_host_boot_starts_the_onboot_instances_in_order_with_their_delays(boot_ctd):
    d, boot_id = boot_ctd
    u = uuid.uuid4().hex[:4]
    a, b, c, e, f, off = (f"{x}-{u}" for x in ("a", "b", "c", "e", "f", "off"))
    create(d, a, "--onboot", "yes", "--boot-order", "1", "--boot-delay", "3")
    create(d, b, "--onboot", "yes", "--boot-order", "1")
    create(d, c, "--onboot", "yes", "--boot-order", "2")
    create(d, e, "--onboot", "yes", "--boot-order", "5")
    create(d, f, "--onboot", "yes")                      # no order: after every ordered one
    create(d, off, "--boot-order", "1")                  # not onboot
    shown = d.instance(a)
    assert (shown["onboot"], shown["boot_order"], shown["boot_delay"]) == (True, 1, 3)
    assert d.instance(f)["boot_order"] == 10000
    listed = {i["name"]: i for i in json.loads(d.ok("list", "--format", "json"))}
    assert (listed[b]["onboot"], listed[b]["boot_order"], listed[off]["onboot"]) == (True, 1, False)
    assert "yes (order 1, delay 3 s, stop timeout default)" in d.ok("status", a)
    d.ok("set", e, "--boot-order", "3")
    assert d.instance(e)["boot_order"] == 3
    for name in (a, b, c, e, f, off):
        d.ok("start", name)

    simulate_reboot(d, boot_id)
    d.start()
    # The API answers while the sequence runs (a's 3 s delay holds the second group back).
    assert d.client.get("/1.0")["boot"]["state"] in ("pending", "running")
    boot = wait_boot(d)
    assert {s["name"]: s["outcome"] for s in boot["steps"]} == {n: "started" for n in (a, b, c, e, f)}
    assert d.instance(off)["state"] == "stopped"
    assert all(len(wait_starts(d, n, 2)) == 2 for n in (a, b, c, e, f)) and len(starts(d, off)) == 1
    t = {n: starts(d, n)[-1] for n in (a, b, c, e, f)}
    # the next group waited for a's delay, counted from a's own start (b, without a delay, may have
    # come up later under load), and for every start of the group
    assert t[c] >= t[a] + 3 - 0.05 and t[c] >= t[b], t
    assert t[a] < t[c] <= t[e] <= t[f], t
    assert "boot sequence:" in d.ok("info") and "done" in d.ok("info")
    ops = [o for o in d.client.get("/1.0/operations")["operations"] if o["kind"] == "boot"]
    assert len(ops) == 1 and ops[0]["status"] == "success" and ops[0]["result"]["failed"] == [], ops

    # A ctd restart without a reboot starts nothing.
    d.ok("stop", e)
    d.stop()
    d.start()
    time.sleep(1)
    assert d.client.get("/1.0")["boot"]["state"] == "done"
    assert d.instance(e)["state"] == "stopped" and d.instance(off)["state"] == "stopped"
    assert all(len(starts(d, n)) == 2 for n in (a, b, c, e, f))   # nothing started again

    # shutdown-all: the highest order first, the same order together.
    result = d.client.run("POST", "/1.0/shutdown", {"timeout": 10})
    order = [s["name"] for s in result["stopped"]]
    assert order[:2] == [f, c] and set(order[2:]) == {a, b} and not result["failed"], result
    assert all(d.instance(n)["state"] == "stopped" for n in (a, b, c, e, f, off))
    assert d.ok("shutdown-all").strip() == "Nothing was running"


def test_a_ctd_killed_during_the_boot_sequence_resumes_it_without_starting_twice(boot_ctd):
    d, boot_id = boot_ctd
    u = uuid.uuid4().hex[:4]
    first, second = f"g-{u}", f"h-{u}"
    create(d, first, "--onboot", "yes", "--boot-order", "1", "--boot-delay", "4")
    create(d, second, "--onboot", "yes", "--boot-order", "2")
    d.ok("start", first)
    simulate_reboot(d, boot_id)
    d.start()
    deadline = time.monotonic() + 30
    while d.instance(first)["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = d.instance(first)["pid"]
    assert d.instance(second)["state"] == "stopped"   # still in first's boot delay
    d.kill9()                                         # killed during the sequence
    d.start()
    boot = wait_boot(d)
    assert d.instance(first)["pid"] == pid            # adopted, not started a second time
    assert len(wait_starts(d, second, 1)) == 1 and len(wait_starts(d, first, 2)) == 2
    assert d.instance(second)["state"] == "running"
    outcomes = {s["name"]: s["outcome"] for s in boot["steps"]}
    assert outcomes == {first: "started", second: "started"}


def test_shutdown_all_during_the_boot_sequence_ends_it_for_this_boot(boot_ctd):
    d, boot_id = boot_ctd
    u = uuid.uuid4().hex[:4]
    first, second = f"p-{u}", f"q-{u}"
    create(d, first, "--onboot", "yes", "--boot-order", "1", "--boot-delay", "30")
    create(d, second, "--onboot", "yes", "--boot-order", "2")
    simulate_reboot(d, boot_id)
    d.start()
    deadline = time.monotonic() + 30
    while d.instance(first)["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    t0 = time.monotonic()
    result = d.client.run("POST", "/1.0/shutdown", {"timeout": 10})
    assert time.monotonic() - t0 < 20                 # the 30 s boot delay did not hold it up
    assert [s["name"] for s in result["stopped"]] == [first]
    assert d.client.get("/1.0")["boot"]["state"] == "halted"
    d.stop()
    d.start()                                         # same boot: nothing resumes
    time.sleep(1)
    assert d.instance(first)["state"] == "stopped" and d.instance(second)["state"] == "stopped"
    assert not starts(d, second)


def test_a_failing_onboot_instance_is_reported_and_holds_up_nothing(boot_ctd):
    d, boot_id = boot_ctd
    u = uuid.uuid4().hex[:4]
    broken, fine = f"x-{u}", f"y-{u}"
    create(d, broken, "--onboot", "yes", "--boot-order", "1")
    create(d, fine, "--onboot", "yes", "--boot-order", "2")
    simulate_reboot(d, boot_id)
    (d.rootfs(broken) / "sbin/init").unlink()         # its init cannot be run any more
    d.start()
    boot = wait_boot(d)
    steps = {s["name"]: s for s in boot["steps"]}
    assert steps[broken]["outcome"] == "failed" and steps[broken]["detail"], steps
    assert steps[fine]["outcome"] == "started"
    assert d.instance(fine)["state"] == "running"
    assert "FAILED " + broken in d.ok("info")
    assert d.log is not None and f"boot sequence: {broken} did not start" in d.log.read_text()


@pytest.mark.parametrize(("body", "words"), [
    ({"boot_order": 10001}, "from 0 to 10000"),
    ({"boot_order": -1}, "from 0 to 10000"),
    ({"boot_delay": 3601}, "from 0 to 3600"),
    ({"boot_delay": "soon"}, "from 0 to 3600"),
    ({"onboot": "maybe"}, "yes or no"),
])
def test_bad_autostart_settings_are_refused_naming_the_range(ctd, body, words):
    name = ctd.unique("bad")
    with pytest.raises(ApiError) as caught:
        ctd.client.run("POST", "/1.0/instances", {"name": name, "template": "busybox", **body})
    assert caught.value.status == 400 and words in str(caught.value)
    assert name not in [i["name"] for i in ctd.client.get("/1.0/instances")["instances"]]


def test_set_refuses_an_out_of_range_order_and_changes_nothing(ctd, make_container):
    name = make_container(onboot="yes", **{"boot-order": "7"})   # running: set applies all the same
    r = ctd.ctl("set", name, "--boot-order", "20000", "--boot-delay", "5")
    assert r.code != 0 and "from 0 to 10000" in r.err
    shown = ctd.instance(name)
    assert (shown["onboot"], shown["boot_order"], shown["boot_delay"]) == (True, 7, 0)
    assert "onboot no (order 7, delay 5 s, stop timeout default)" in ctd.ok("set", name, "--onboot", "no", "--boot-delay", "5")
    shown = ctd.instance(name)
    assert (shown["onboot"], shown["boot_delay"], shown["state"]) == (False, 5, "running")
    with pytest.raises(ApiError) as caught:
        ctd.client.request("POST", "/1.0/shutdown", {"timeout": -1})
    assert caught.value.status == 400 and "0 to 3600" in str(caught.value)


def test_stop_instances_on_exit_stops_them_when_ctd_stops_and_not_otherwise(boot_ctd):
    d, _ = boot_ctd
    name = f"s-{uuid.uuid4().hex[:4]}"
    create(d, name)
    d.ok("start", name)
    d.stop()                                   # the default: ctd goes, the container stays
    d.start()
    assert d.instance(name)["state"] == "running"
    d.extra_config += "stop_instances_on_exit = true\n"
    d.stop()
    d.start()
    assert d.instance(name)["state"] == "running"   # adopted: the setting acts at ctd's stop
    pid = d.instance(name)["pid"]
    d.stop()
    assert not Path(f"/proc/{pid}").exists() or " Z " in _stat(pid)
    d.start()
    assert d.instance(name)["state"] == "stopped"
    assert "stopping every instance first" in (d.log.read_text() if d.log else "")


def frozen_init(d: Daemon, name: str) -> None:
    """An init that cannot react to its stop signal (SIGSTOPped): only the timeout ends it."""
    os.kill(d.instance(name)["pid"], signal.SIGSTOP)


def test_an_instance_stop_timeout_is_what_stop_and_shutdown_all_wait(boot_ctd):
    """Proxmox's startup down=: each instance its own wait before the kill; stop without
    --timeout and shutdown-all use it, a --timeout given still wins, 'default' goes back."""
    d, _ = boot_ctd
    d.ok("create", "quick", "--template", "busybox", "--stop-timeout", "1")
    d.ok("create", "slow", "--template", "busybox")
    d.ok("set", "slow", "--stop-timeout", "4")
    assert (d.instance("quick")["stop_timeout"], d.instance("slow")["stop_timeout"]) == (1, 4)
    assert "stop timeout 4 s" in d.ok("status", "slow")
    for name in ("quick", "slow"):
        d.ok("start", name)
    frozen_init(d, "quick")
    started = time.monotonic()
    out = d.ok("stop", "quick")
    assert 1 <= time.monotonic() - started < 4, out
    assert out.strip() == "Stopped quick (forced after 1 s: init ignored its stop signal)"
    d.ok("start", "quick")
    for name in ("quick", "slow"):
        frozen_init(d, name)
    started = time.monotonic()
    d.ok("shutdown-all")   # one group (same order): the slow one's 4 s, not the server's 30
    assert 4 <= time.monotonic() - started < 12
    assert {d.instance(n)["state"] for n in ("quick", "slow")} == {"stopped"}
    d.ok("start", "slow")
    frozen_init(d, "slow")
    assert d.ok("stop", "--timeout", "0", "slow").strip() == "Stopped slow (killed: --timeout 0 leaves it no time to shut down)"
    d.ok("set", "slow", "--stop-timeout", "default")
    assert d.instance("slow")["stop_timeout"] is None
    assert "stop timeout default" in d.ok("status", "slow")


@pytest.mark.parametrize("value, words", [("3601", "stop_timeout must be a whole number from 0 to 3600"),
                                          ("soon", "stop_timeout must be a whole number from 0 to 3600"),
                                          ("-1", "stop_timeout must be a whole number")])
def test_a_bad_stop_timeout_is_refused_and_changes_nothing(ctd, make_container, value, words):
    name = make_container(start=False)
    r = ctd.ctl("set", name, "--stop-timeout", value)
    assert r.code != 0 and words in r.err, r.err
    assert ctd.instance(name)["stop_timeout"] is None
