"""Crash injection: ctd dies by SIGKILL at every crash point of create, start, stop, destroy,
snapshot, clone, rollback and rename; the next ctd must agree with the host and leave nothing behind.

The points are found in the source (every `faults.point("...")` under ctd/), so a point added
there is covered here without a change. Each is armed with CTD_FAULT (see ctd/faults.py).
"""

from __future__ import annotations

import random
import re
import signal
from collections.abc import Callable

import pytest

from ctctl.client import ApiError
from tests.conftest import REPO, Daemon
from tests.robustness.audit import settled_audit
from tests.robustness.conftest import start_with_fault

pytestmark = pytest.mark.slow

POINT = re.compile(r'faults\.point\("([^"]+)"\)')


def crash_points() -> list[tuple[str, str]]:
    """(point name, file it is in) for every crash point in ctd's source."""
    found = []
    for path in sorted((REPO / "ctd").rglob("*.py")):
        if path.name == "faults.py":
            continue
        for name in POINT.findall(path.read_text()):
            found.append((name, str(path.relative_to(REPO))))
    return found


POINTS = crash_points()
VERBS = {"create", "start", "stop", "destroy", "snapshot", "clone", "rollback", "rename"}
ALIASES = {"network": "start", "delete": "destroy"}


def verb_of(point: str) -> str:
    """'create.after_db' -> create; 'storage.delete.after_roots' -> destroy; 'network.x' -> start."""
    parts = point.split(".")
    head = parts[1] if parts[0] == "storage" else parts[0]
    return ALIASES.get(head, head)


def test_every_crash_point_has_a_scenario() -> None:
    assert len(POINTS) >= 20, POINTS
    assert len({p for p, _ in POINTS}) == len(POINTS), "crash point names must be unique"
    unknown = [p for p, _ in POINTS if verb_of(p) not in VERBS]
    assert not unknown, f"crash points without a scenario here: {unknown}"


def routed_nic() -> dict:
    # 198.18.0.0/15 is the benchmarking range: a host route to it sends nothing anywhere.
    return {"mode": "routed", "addresses": [f"198.18.{random.randint(0, 255)}.{random.randint(1, 254)}"]}


def prepare(d: Daemon, verb: str, name: str) -> Callable[[], object]:
    """Bring instance name to where verb starts from; return the request that does verb."""
    c = d.client
    body = {"name": name, "template": "busybox", "limits": {"diskspace": "1G"}, "nics": [routed_nic()]}
    if verb == "create":
        return lambda: c.run("POST", "/1.0/instances", body)
    c.run("POST", "/1.0/instances", body)
    if verb == "start":
        return lambda: c.run("PUT", f"/1.0/instances/{name}/state", {"action": "start"})
    if verb == "snapshot":
        return lambda: c.run("POST", f"/1.0/instances/{name}/snapshots", {"name": "s1"})
    if verb == "clone":
        return lambda: c.run("POST", f"/1.0/instances/{name}/clone", {"name": f"{name}-copy"})
    c.run("POST", f"/1.0/instances/{name}/snapshots", {"name": "s1"})
    if verb == "rename":   # a stopped instance with a snapshot
        return lambda: c.request("POST", f"/1.0/instances/{name}/rename", {"name": f"{name}-new"})
    if verb == "rollback":
        return lambda: c.run("POST", f"/1.0/instances/{name}/rollback", {"snapshot": "s1"})
    c.run("PUT", f"/1.0/instances/{name}/state", {"action": "start"})
    if verb == "destroy":
        return lambda: c.run("DELETE", f"/1.0/instances/{name}", query={"force": "true"})
    assert verb == "stop", verb
    return lambda: c.run("PUT", f"/1.0/instances/{name}/state", {"action": "stop", "timeout": 10})


def stop_kill(d: Daemon, name: str) -> Callable[[], object]:
    return lambda: d.client.run("PUT", f"/1.0/instances/{name}/state", {"action": "stop", "force": True})


@pytest.mark.parametrize("point,source", POINTS, ids=[p for p, _ in POINTS])
def test_crash_at(module_ctd: Daemon, point: str, source: str) -> None:
    d = module_ctd
    if "storage/btrfs" in source and d.client.get("/1.0")["storage"]["driver"] != "btrfs":
        pytest.skip(f"{point} is in the btrfs driver; this daemon uses {d.client.get('/1.0')['storage']['driver']}")
    verb = verb_of(point)
    name = d.unique("crash")
    offset = start_with_fault(d, point)
    try:
        request = prepare(d, verb, name)
        if point == "stop.after_kill":
            request = stop_kill(d, name)
        assert d.proc is not None and d.proc.poll() is None, f"ctd died while preparing {verb} for {point}"
        with pytest.raises(ApiError):
            request()
        d.proc.wait(30)
        logged = d.log.read_bytes()[offset:].decode(errors="replace")  # type: ignore[union-attr]
        assert d.proc.returncode == -signal.SIGKILL and f"CTD_FAULT: dying at {point}" in logged, \
            f"ctd did not die at {point} (exit {d.proc.returncode}):\n{logged[-3000:]}"
    finally:
        start_with_fault(d, None)  # the next ctd, without the fault, recovers

    try:
        problems = settled_audit(d)
        assert not problems, f"after a crash at {point}:\n" + "\n".join(problems)
        # What survived the crash must work: start it (it must run), then destroy it.
        for inst in d.client.get("/1.0/instances")["instances"]:
            if inst["state"] == "stopped":
                d.client.run("PUT", f"/1.0/instances/{inst['name']}/state", {"action": "start"})
                assert d.instance(inst["name"])["state"] == "running"
            d.client.run("DELETE", f"/1.0/instances/{inst['name']}", query={"force": "true"})
        assert d.client.get("/1.0/instances")["instances"] == []
        problems = settled_audit(d)
        assert not problems, f"after a crash at {point} and destroying everything:\n" + "\n".join(problems)
    finally:
        d.destroy_all()  # whatever happened, the next point starts from nothing
