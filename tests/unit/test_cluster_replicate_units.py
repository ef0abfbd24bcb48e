"""Replication settings and the fencing watchdog (ctd/cluster/replicate.py, fence.py) without a cluster."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctd.cluster import fence
from ctd.cluster.replicate import Replication, duration_text, parse_every
from ctd.errors import InvalidRequest


def test_intervals_parse_and_print() -> None:
    assert parse_every("5m") == 300 and parse_every("30s") == 30 and parse_every(" 2H ") == 7200
    assert parse_every("90") == 90 and parse_every(600) == 600 and parse_every("7d") == 7 * 86400
    assert duration_text(300) == "5m" and duration_text(90) == "90s" and duration_text(86400) == "1d"


@pytest.mark.parametrize("bad", ["", "5", "9s", "8d", "5 m", "-5m", "1e3", "5w", True, None, 3.5, "x" * 1000, [5]])
def test_hostile_intervals_are_refused(bad: object) -> None:
    with pytest.raises(InvalidRequest, match="every must be an interval from 10s to 7d"):
        parse_every(bad)


def test_a_hand_written_setting_is_ignored_not_trusted() -> None:
    assert Replication.from_json({"target": "n2", "every": 60, "ha": True}) == Replication("n2", 60, True)
    for raw in ({"target": 5, "every": 60}, {"target": "n2", "every": True}, {"target": "n2", "every": 1},
                {"target": "n2", "every": 60, "ha": "yes"}, [], "n2", None):
        assert Replication.from_json(raw) is None


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_the_watchdog_kills_past_the_deadline_and_never_a_recycled_pid() -> None:
    proc = _sleeper()
    try:
        start = fence.start_time(proc.pid)
        entry = {"name": "web", "pid": proc.pid, "start": start}
        now = time.monotonic()
        assert fence.kill_due({"deadline": now + 5, "instances": [entry]}, now) == []
        assert fence.kill_due({"deadline": now - 1, "instances": [{**entry, "start": (start or 0) + 1}]}, now) == []
        assert proc.poll() is None
        done: set[tuple[int, int]] = set()
        due = {"deadline": now - 1, "instances": [entry, {"pid": 1, "start": 0}, "x"]}
        assert fence.kill_due(due, now, done) == ["web"]
        time.sleep(0.2)
        assert fence.kill_due(due, now, done) == []   # a zombie until reaped: killed once, said once
        assert proc.wait(5) == -9
    finally:
        proc.kill()
        proc.wait()


def test_the_watchdog_ends_with_its_file_or_a_new_ctd(tmp_path: Path) -> None:
    path = tmp_path / "fence.json"
    path.write_text(json.dumps({"ctd": 4242, "deadline": time.monotonic() + 60, "instances": []}))
    watchdog = subprocess.Popen([sys.executable, "-m", "ctd.cluster.fence", str(path), "4242"])
    try:
        time.sleep(0.5)
        assert watchdog.poll() is None
        path.unlink()
        assert watchdog.wait(5) == 0
        path.write_text(json.dumps({"ctd": 1, "deadline": 0, "instances": []}))
        assert subprocess.run([sys.executable, "-m", "ctd.cluster.fence", str(path), "4242"], timeout=5).returncode == 0
    finally:
        watchdog.kill()
        watchdog.wait()
