"""GET /1.0/events and `ctctl monitor` against a real daemon and real containers: lifecycle,
operation, limit (an OOM kill), exit events arrive complete and in order; a client that does
not read is cut off with a reason; over HTTPS a tenant sees its project's events only."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import REPO, Daemon, _start_daemon, _teardown
from tests.helpers.events import EventStream, StalledClient, actions


def stream(d: Daemon, **query: str) -> EventStream:
    return EventStream(socket=str(d.socket), query=query)


def in_order(events: list[dict]) -> None:
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs


def test_start_stop_destroy_arrive_in_order_with_their_operations_and_exit(ctd, make_container):
    name = make_container(start=False)
    with stream(ctd, instance=name) as events:
        ctd.ok("start", name)
        ctd.ok("stop", name)
        ctd.ok("destroy", name)
        got = events.wait(lambda ev: "destroyed" in actions(ev, name))
    in_order(got)
    assert actions(got, name) == ["started", "stopped", "destroyed"]
    assert all(e["project"] == "default" for e in got)
    # each operation: created, then success, with the same id
    ops = [(e["metadata"]["kind"], e["metadata"]["action"], e["metadata"]["id"]) for e in got
           if e["type"] == "operation"]
    assert [(k, a) for k, a, _ in ops] == [("start", "created"), ("start", "success"), ("stop", "created"),
                                           ("stop", "success"), ("destroy", "created"), ("destroy", "success")]
    assert ops[0][2] == ops[1][2] and ops[2][2] == ops[3][2]
    # the exit comes before the state change it causes, and says how the run ended
    kinds = [(e["type"], e["metadata"].get("action") or e["metadata"].get("kind")) for e in got]
    assert kinds.index(("exit", "stopped")) < kinds.index(("lifecycle", "stopped"))
    started = next(e for e in got if e["type"] == "lifecycle" and e["metadata"]["action"] == "started")
    assert started["metadata"]["state"] == "running" and started["metadata"]["pid"] > 0


def test_a_burst_of_changes_arrives_complete_and_in_order(ctd, make_container):
    name = make_container(start=False)
    snaps = [f"s{i:02d}" for i in range(25)]
    with stream(ctd, instance=name, type="lifecycle") as events:
        for snap in snaps:
            ctd.client.run("POST", f"/1.0/instances/{name}/snapshots", {"name": snap})
        for i in range(25):
            ctd.client.request("PATCH", f"/1.0/instances/{name}", {"description": f"d{i}"})
        got = events.wait(lambda ev: actions(ev, name).count("set") == 25)
    in_order(got)
    assert [e["metadata"]["snapshot"] for e in got if e["metadata"]["action"] == "snapshot-created"] == snaps
    assert actions(got, name) == ["snapshot-created"] * 25 + ["set"] * 25


def test_an_oom_kill_gives_a_limit_event_then_the_exit(ctd, make_container):
    name = make_container(start=False, ram="32M")
    init = ctd.rootfs(name) / "sbin/init"
    init.unlink()
    init.write_text("#!/bin/sh\nsleep 2\nexec /usr/local/bin/probe alloc 200\n")
    init.chmod(0o755)
    with stream(ctd, instance=name, type="limit,exit,lifecycle") as events:
        ctd.ok("start", name)
        got = events.wait(lambda ev: "stopped" in actions(ev, name), timeout=60)
    in_order(got)
    limits = [e for e in got if e["type"] == "limit" and e["metadata"]["resource"] == "oom_kill"]
    assert limits and limits[0]["metadata"]["failcnt"] >= 1 and limits[0]["metadata"]["delta"] >= 1, got
    exit_event = next(e for e in got if e["type"] == "exit")
    assert exit_event["metadata"]["kind"] == "oom" and "OOM killer" in exit_event["metadata"]["text"]
    assert got.index(limits[0]) < got.index(exit_event)
    assert ctd.ok("status", name).count("OOM killer") == 1


def test_a_client_that_does_not_read_is_cut_off_with_a_reason(tmp_path):
    d = _start_daemon(tmp_path, "slow", "events_queue = 32\n")
    try:
        d.ok("create", "slow1", "--template", "busybox")
        slow = StalledClient(str(d.socket), "instance=slow1&type=lifecycle")
        with stream(d, instance="slow1", type="lifecycle") as fast:
            for i in range(300):
                d.client.request("PATCH", "/1.0/instances/slow1", {"description": f"d{i}"})
            everything = fast.wait(lambda ev: len(ev) == 300)   # a client that reads gets every one
        got, code, reason = slow.read_all()
        assert code == 1008 and "too slow: 32 events waited unread" in reason, (code, reason)
        # what it got before the cut is the start of the sequence, without a gap
        assert 0 < len(got) < 300
        assert [e["seq"] for e in got] == [e["seq"] for e in everything[:len(got)]]
        assert "events: cut off a client (local" in (d.log.read_text() if d.log else "")
        assert d.client.get("/1.0")["version"]   # the daemon serves on
        # ctd stopping ends every stream at once, a stalled one too, and says why
        stalled = StalledClient(str(d.socket), "type=log")
        monitor = subprocess.Popen([sys.executable, "-m", "ctctl.main", "--socket", str(d.socket), "monitor"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        time.sleep(2)
        began = time.monotonic()
        d.stop()
        assert time.monotonic() - began < 8
        _, err = monitor.communicate(timeout=20)
        assert monitor.returncode == 1 and "ctd closed the event stream (ctd is stopping" in err, err
        assert stalled.read_all()[1:] == (1001, "ctd is stopping; reconnect when it is back")
        d.start()
    finally:
        _teardown(d)


class Lines:
    """A process' stdout lines, read by a thread: get() waits with a timeout (never hangs)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.queue.put(line) for line in proc.stdout], daemon=True).start()

    def get(self, timeout: float = 30) -> str:
        return self.queue.get(timeout=timeout)


def test_ctctl_monitor_prints_a_line_per_event(ctd, make_container):
    name = make_container(start=False)
    ctl = [sys.executable, "-m", "ctctl.main", "--socket", str(ctd.socket), "monitor"]
    proc = subprocess.Popen([*ctl, name, "--type", "lifecycle"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    jproc = subprocess.Popen([*ctl, "--format", "json", "--type", "exit,lifecycle"], stdout=subprocess.PIPE,
                             text=True, cwd=REPO)
    lines, jlines = Lines(proc), Lines(jproc)
    try:
        waiting = [lines, jlines]
        for attempt in range(60):   # until both are connected: each prints a `set`
            ctd.ok("set", name, "--description", f"try{attempt}")
            for reader in list(waiting):
                with contextlib.suppress(queue.Empty):
                    assert "set" in reader.get(timeout=1)
                    waiting.remove(reader)
            if not waiting:
                break
        ctd.ok("start", name)
        ctd.ok("stop", name)
        got = []
        while not got or "stopped" not in got[-1]:
            got.append(lines.get())
        assert [line.split()[1:4] for line in got if "set" not in line] == [
            ["lifecycle", name, "started"], ["lifecycle", name, "stopped"]], got
        exit_event = json.loads(jlines.get())
        while exit_event["type"] != "exit":
            exit_event = json.loads(jlines.get())
        assert exit_event["instance"] == name and exit_event["metadata"]["kind"] == "stopped"
    finally:
        for p in (proc, jproc):
            p.send_signal(signal.SIGTERM)
            p.wait(10)
    bad = ctd.ctl("monitor", "--type", "lifecycle,nope")
    assert bad.code != 0 and "unknown type(s) nope" in bad.err


def test_over_https_a_tenant_sees_its_own_project_only(tmp_path):
    import sqlite3

    from ctctl.client import pinning_context
    from tests.host.test_roles import free_port
    port = free_port()
    d = _start_daemon(tmp_path, "evtls", f'https_address = "127.0.0.1:{port}"\n')
    try:
        secrets = {n: d.ok("token", "create", n, "--role", "tenant").strip() for n in ("home", "acme")}
        secrets["boss"] = d.ok("token", "create", "boss", "--role", "admin").strip()
        d.stop()   # tokens have no project setting yet (the projects slice adds it): set it in the state
        with sqlite3.connect(d.state_dir / "ctd.db") as db:
            db.execute("UPDATE api_tokens SET project = 'acme' WHERE name = 'acme'")
        db.close()
        d.start()
        d.ok("create", "web1", "--template", "busybox")

        def tls(name: str) -> EventStream:
            return EventStream(https=(port, secrets[name], pinning_context()))
        with tls("home") as home, tls("acme") as acme, tls("boss") as boss:
            d.ok("start", "web1")
            d.ok("stop", "web1")
            d.ok("shutdown-all")   # a host-wide operation: admins only
            seen = boss.wait(lambda ev: any(e["metadata"].get("kind") == "shutdown-all" for e in ev))
            got = home.wait(lambda ev: "stopped" in actions(ev, "web1"))
            time.sleep(1.5)   # anything for acme (or more for home) would have come with boss's
            assert acme.snapshot() == [] and acme.error is None
            got = home.snapshot()
        host_wide = [e for e in seen if e["project"] is None]
        assert host_wide and all(e["instance"] is None for e in host_wide)
        assert actions(got, "web1") == ["started", "stopped"]
        assert {e["type"] for e in got} == {"lifecycle", "operation", "exit"}
        assert all(e["project"] == "default" for e in got)
        with pytest.raises(AssertionError, match="401"):   # and no token, no events
            with EventStream(https=(port, "ctd_wrong", pinning_context())):
                pass
    finally:
        _teardown(d)


def test_suspend_resume_rename_and_set_are_lifecycle_events(ctd, make_container):
    name = make_container()
    new = ctd.unique("renamed")
    with stream(ctd, instance=name, type="lifecycle") as events:
        ctd.ok("suspend", name)
        ctd.ok("resume", name)
        ctd.ok("stop", name)
        ctd.ok("rename", name, new)
        ctd.ok("set", new, "--description", "after")   # the new name is not the watched one
        ctd.ok("rename", new, name)                      # back: its event names the old name
        got = events.wait(lambda ev: len(ev) == 5)
    in_order(got)
    assert [(e["instance"], e["metadata"]["action"], e["metadata"]["state"]) for e in got] == [
        (name, "suspended", "suspended"), (name, "resumed", "running"), (name, "stopped", "stopped"),
        (new, "renamed", "stopped"), (name, "renamed", "stopped")]
    assert got[3]["metadata"]["old_name"] == name and got[4]["metadata"]["old_name"] == new
