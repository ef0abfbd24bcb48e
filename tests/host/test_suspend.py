"""Suspend and resume of containers through the real cgroup freezer (v1 here): the processes stop
(counter and CPU time flat, freezer FROZEN), the state shows and survives a ctd kill -9, stop and
destroy work on a suspended container, exec/console are refused, and root inside cannot thaw."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

COUNTER = "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; usleep 20000; done"


def start_counter(d, name: str) -> None:  # type: ignore[no-untyped-def]
    r = d.sh(name, f"setsid sh -c '{COUNTER}' </dev/null >/dev/null 2>&1 &")
    assert r.code == 0, r.err
    wait_counting(d, name)


def count(d, name: str) -> int:  # type: ignore[no-untyped-def]
    """The counter as the host reads it through init's root (no exec into the container)."""
    pid = d.instance(name)["pid"]
    text = Path(f"/proc/{pid}/root/tmp/count").read_text().strip()
    return int(text) if text else 0


def wait_counting(d, name: str, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    first = None
    while time.monotonic() < deadline:
        try:
            now = count(d, name)
        except (OSError, ValueError):
            now = None
        if first is None:
            first = now
        elif now is not None and now > first + 2:
            return
        time.sleep(0.1)
    raise AssertionError(f"{name} does not count")


def freezer(d, name: str) -> str:  # type: ignore[no-untyped-def]
    dirs = d.instance(name)["cgroups"]
    return Path(dirs["freezer"], "freezer.state").read_text().strip()


def cpu_seconds(d, name: str) -> float:  # type: ignore[no-untyped-def]
    return float(d.instance(name)["usage"]["cpu_seconds"])


def test_a_suspended_container_stops_counting_and_resumes(ctd, make_container):
    name = make_container()
    start_counter(ctd, name)
    assert ctd.ok("suspend", name).strip() == f"Suspended {name}"
    assert freezer(ctd, name) == "FROZEN"
    inst = ctd.instance(name)
    assert inst["state"] == "suspended" and inst["pid"]
    before, cpu = count(ctd, name), cpu_seconds(ctd, name)
    time.sleep(1.5)
    assert count(ctd, name) == before, "it counted while suspended"
    assert cpu_seconds(ctd, name) == cpu, "it used CPU while suspended"
    # the kernel's word on each process: every task of the group is frozen
    assert "suspended" in ctd.ok("list") and "suspended" in ctd.ok("status", name)
    metrics = ctd.ok("metrics")
    assert f'ctd_instance_state{{name="{name}",state="suspended",type="container"}} 1.0' in metrics, metrics[:2000]
    assert f'ctd_instance_suspended{{name="{name}",type="container"}} 1.0' in metrics
    # what makes no sense is refused, clearly, and changes nothing
    for args, words in ((("exec", name, "--", "true"), "suspended: resume it first"),
                        (("console", name), "suspended: resume it first"),
                        (("suspend", name), "already suspended"),
                        (("start", name), "is suspended")):
        r = ctctl_fails(ctd, *args)
        assert words in r, (args, r)
    assert freezer(ctd, name) == "FROZEN" and ctd.instance(name)["state"] == "suspended"
    # limits can be changed while suspended (they go to the cgroup)
    ctd.ok("set", name, "--numproc", "123")
    assert ctd.instance(name)["limits"]["numproc"] == 123
    assert ctd.ok("resume", name).strip() == f"Resumed {name}"
    assert freezer(ctd, name) == "THAWED" and ctd.instance(name)["state"] == "running"
    wait_counting(ctd, name)
    assert count(ctd, name) > before
    assert "not suspended" in ctctl_fails(ctd, "resume", name)


def ctctl_fails(d, *args: str) -> str:  # type: ignore[no-untyped-def]
    r = d.ctl(*args, timeout=20)
    assert r.code != 0, (args, r.out)
    return r.err + r.out


def test_suspend_of_a_stopped_container_is_refused(ctd, make_container):
    name = make_container(start=False)
    assert "only a running instance can be suspended" in ctctl_fails(ctd, "suspend", name)
    assert "not suspended" in ctctl_fails(ctd, "resume", name)
    assert ctd.instance(name)["state"] == "stopped"


def test_stop_and_destroy_of_a_suspended_container(ctd, make_container):
    name = make_container()
    start_counter(ctd, name)
    ctd.ok("suspend", name)
    began = time.monotonic()
    out = ctd.ok("stop", "--timeout", "20", name)
    took = time.monotonic() - began
    assert ctd.instance(name)["state"] == "stopped" and "Stopped" in out
    assert took < 10, f"stop of a suspended container waited {took:.1f} s (timeout spent on a frozen init?)"
    other = make_container()
    ctd.ok("suspend", other)
    group = Path(ctd.instance(other)["cgroups"]["freezer"])
    ctd.ok("destroy", "--force", other)
    assert other not in {i["name"] for i in ctd.client.get("/1.0/instances")["instances"]}
    assert not group.exists(), "the frozen cgroup outlived the container"


def test_suspended_survives_a_ctd_kill9_and_the_freezer_is_believed_over_the_row(fresh_ctd, probe):
    d = fresh_ctd
    d.ok("create", "frost", "--template", "busybox")
    d.ok("start", "frost")
    start_counter(d, "frost")
    d.ok("suspend", "frost")
    pid, state_file = d.instance("frost")["pid"], Path(d.instance("frost")["cgroups"]["freezer"], "freezer.state")
    d.kill9()
    d.start()
    inst = d.instance("frost")
    assert inst["state"] == "suspended" and inst["pid"] == pid and state_file.read_text().strip() == "FROZEN"
    before = count(d, "frost")
    time.sleep(1)
    assert count(d, "frost") == before
    d.ok("resume", "frost")
    wait_counting(d, "frost")
    # the row says running, the kernel says frozen (ctd died between freezing and writing): suspended
    d.kill9()
    state_file.write_text("FROZEN")
    d.start()
    assert d.instance("frost")["state"] == "suspended"
    # the row says suspended, the kernel says thawed: running
    d.kill9()
    state_file.write_text("THAWED")
    d.start()
    assert d.instance("frost")["state"] == "running"
    wait_counting(d, "frost")
    d.ok("suspend", "frost")
    d.ok("destroy", "--force", "frost")


# root inside mounts the freezer hierarchy (its cgroup namespace makes its own cgroup the root
# there) and keeps trying to thaw it, or writes cgroup.freeze of its own cgroup2 root
WATCHDOG = ("mkdir -p /tmp/cg /tmp/cg2; mount -t cgroup -o freezer cgroup /tmp/cg 2>/dev/null; "
            "mount -t cgroup2 none /tmp/cg2 2>/dev/null; "
            "setsid sh -c 'while [ ! -e /tmp/stop ]; do echo THAWED > /tmp/cg/freezer.state; echo 0 > /tmp/cg2/cgroup.freeze; "
            "usleep 10000; done' </dev/null >/dev/null 2>&1 &"
            "for f in /tmp/cg/freezer.state /tmp/cg2/cgroup.freeze; do [ -e $f ] && echo seen $f; "
            "if (echo THAWED > $f || echo 0 > $f) 2>/dev/null; then echo WROTE $f; fi; done; true")


@pytest.mark.parametrize("privileged", [False, True], ids=["unprivileged", "privileged"])
def test_root_inside_cannot_thaw_its_suspended_container(ctd, make_container, privileged):
    """Unprivileged: its own freezer files are not writable from inside. Privileged (root with
    CAP_SYS_ADMIN over the host): it can write them, but a watchdog it left to thaw the
    container is frozen with everything else; and a container that froze itself is still
    stopped and destroyed by ctd."""
    name = make_container(**({"privileged": True} if privileged else {}))
    start_counter(ctd, name)
    r = ctd.sh(name, WATCHDOG, timeout=20)
    assert r.code == 0, r.err
    if not privileged:
        assert "WROTE" not in r.out, r.out
    ctd.ok("suspend", name)
    before = count(ctd, name)
    time.sleep(1.5)
    assert freezer(ctd, name) == "FROZEN" and count(ctd, name) == before, "the tenant thawed itself"
    ctd.ok("resume", name)
    wait_counting(ctd, name)
    if privileged:   # it freezes itself (only its own loss): ctd still stops and destroys it
        assert "WROTE /tmp/cg/freezer.state" in r.out, r.out   # the kernel lets it write there
        assert ctd.sh(name, "touch /tmp/stop; sleep 0.2").code == 0   # the watchdog ends
        _freeze_from_inside(ctd, name)
        assert freezer(ctd, name) in ("FROZEN", "FREEZING")
        group = Path(ctd.instance(name)["cgroups"]["freezer"])
        began = time.monotonic()
        ctd.ok("destroy", "--force", name)
        assert time.monotonic() - began < 15 and not group.exists()


def _freeze_from_inside(d, name: str) -> None:  # type: ignore[no-untyped-def]
    """The exec freezes itself with the rest: it never returns, so ctctl is left to time out."""
    with pytest.raises(subprocess.TimeoutExpired):
        d.ctl("exec", name, "--", "/bin/sh", "-c", "echo FROZEN > /tmp/cg/freezer.state; sleep 60", timeout=5)
