"""Every container exit is logged by ctd and shown by `ctctl status`: exit code, signal, OOM
kill, reboot or poweroff from inside, a stop or kill by ctd, an end while ctd was away."""

from __future__ import annotations

import os
import signal
import time

from tests.conftest import Daemon


def wait_stopped(d: Daemon, name: str, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        inst = d.instance(name)
        if inst["state"] == "stopped" and inst["last_exit"]:
            return inst
        time.sleep(0.1)
    raise AssertionError(f"{name} did not stop: {d.instance(name)}")


def assert_reported(d: Daemon, name: str, kind: str, text: str) -> dict:
    """In the API, in `ctctl status` and in ctd's log, with the instance's name."""
    last = d.instance(name)["last_exit"]
    assert last and last["kind"] == kind and text in last["text"], last
    assert f"last exit:   {last['at']}: {last['text']}" in d.ok("status", name)
    assert d.log is not None
    deadline = time.monotonic() + 5
    while f"{name}: {last['text']}" not in d.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"INFO ctd.instances: {name}: {last['text']}" in d.log.read_text()
    return last


def replace_init(d: Daemon, name: str, script: str) -> None:
    init = d.rootfs(name) / "sbin/init"
    init.unlink()
    init.write_text("#!/bin/sh\n" + script + "\n")
    init.chmod(0o755)


def test_an_init_that_exits_at_once_is_reported_with_its_code(ctd, make_container):
    name = make_container(start=False)
    replace_init(ctd, name, "exit 3")
    ctd.ok("start", name)  # started: init ran, then returned
    wait_stopped(ctd, name)
    last = assert_reported(ctd, name, "exited", "init exited with code 3")
    assert last["code"] == 3 and last["signal"] is None


def test_an_init_killed_by_a_signal_is_reported_with_it(ctd, make_container):
    name = make_container()
    os.kill(ctd.instance(name)["pid"], signal.SIGKILL)  # from the host: nobody in ctd sent it
    wait_stopped(ctd, name)
    last = assert_reported(ctd, name, "signaled", "init killed by SIGKILL")
    assert last["signal"] == "SIGKILL" and last["oom_kills"] == 0


def test_an_init_the_oom_killer_ends_is_reported_as_out_of_memory(ctd, make_container):
    name = make_container(start=False, ram="32M")
    replace_init(ctd, name, "exec /usr/local/bin/probe alloc 200")
    ctd.ok("start", name)
    wait_stopped(ctd, name)
    last = assert_reported(ctd, name, "oom", "init killed by the OOM killer")
    assert last["oom_kills"] >= 1 and last["signal"] == "SIGKILL"


def test_poweroff_reboot_stop_and_kill_are_told_apart(ctd, make_container):
    name = make_container()
    ctd.sh(name, "poweroff -f")
    wait_stopped(ctd, name)
    assert_reported(ctd, name, "poweroff", "powered off from inside")

    ctd.ok("start", name)
    first = ctd.instance(name)["pid"]
    ctd.sh(name, "reboot -f")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and ctd.instance(name)["pid"] in (None, first):
        time.sleep(0.1)
    assert ctd.instance(name)["state"] == "running"  # started again, and says why it went down
    assert_reported(ctd, name, "reboot", "rebooted from inside")

    ctd.ok("stop", name)
    assert_reported(ctd, name, "stopped", "stopped by ctd")
    ctd.ok("start", name)
    ctd.ok("stop", "--kill", name)
    assert_reported(ctd, name, "killed", "killed by ctd (SIGKILL)")


def test_a_container_that_ended_while_ctd_was_away_says_so(fresh_ctd):
    d = fresh_ctd
    d.ok("create", "away", "--template", "busybox")
    d.ok("start", "away")
    pid = d.instance("away")["pid"]
    d.kill9()
    os.kill(pid, signal.SIGKILL)
    d.start()
    assert d.instance("away")["state"] == "stopped"
    assert_reported(d, "away", "unknown", "it ended while ctd was not running")
