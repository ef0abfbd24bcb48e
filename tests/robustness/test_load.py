"""Load: 100 concurrent API clients doing list/status for 30 s while 50 containers are created,
started, stopped and destroyed in parallel; then 200 containers started at once.

Checks: no error, nothing leaked (audit), ctd's RSS and open files back near where they
started. The figures (p99 latency of list, cycles done, time for 200 to run) are printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ctctl.client import ApiError
from tests.conftest import REPO, Daemon
from tests.robustness.audit import settled_audit

pytestmark = pytest.mark.slow

CLIENTS = int(os.environ.get("CTD_LOAD_CLIENTS", "100"))
SECONDS = float(os.environ.get("CTD_LOAD_SECONDS", "30"))
CHURN = int(os.environ.get("CTD_LOAD_CONTAINERS", "50"))
AT_ONCE = int(os.environ.get("CTD_LOAD_AT_ONCE", "200"))
RSS_SLACK = 1.25  # after / before, once the load is over
RSS_SLACK_MB = 20


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


STOP_TIMEOUT = 10
STOPS: list[float] = []  # how long each stop operation took, seen by the client


def cycle(d: Daemon, name: str) -> None:
    c = d.client
    c.run("POST", "/1.0/instances", {"name": name, "template": "busybox"})
    c.run("PUT", f"/1.0/instances/{name}/state", {"action": "start"})
    t0 = time.monotonic()
    c.run("PUT", f"/1.0/instances/{name}/state", {"action": "stop", "timeout": STOP_TIMEOUT})
    STOPS.append(time.monotonic() - t0)
    c.run("DELETE", f"/1.0/instances/{name}")


def churn(d: Daemon, workers: int, until: float) -> tuple[int, list[str]]:
    """workers threads, each creating/starting/stopping/destroying its container until `until`."""
    done = 0
    errors: list[str] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        nonlocal done
        k = 0
        while time.monotonic() < until:
            name = f"ld{n}-{k}"
            try:
                cycle(d, name)
            except ApiError as exc:
                with lock:
                    errors.append(f"{name}: {exc.message}")
                try:
                    d.client.run("DELETE", f"/1.0/instances/{name}", query={"force": "true"})
                except ApiError:
                    pass
                return
            k += 1
            with lock:
                done += 1

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, range(workers)))
    return done, errors


def test_100_clients_list_while_50_containers_churn(module_ctd: Daemon) -> None:
    d = module_ctd
    assert d.proc is not None
    pid = d.proc.pid
    # Warm up (first use of every code path, thread pools, caches), then take the baseline: the
    # list's figures are read in ctd's worker threads, whose malloc arenas are made on first use, so
    # the clients list concurrently in the warm-up too.
    warm = subprocess.Popen([sys.executable, "-m", "tests.robustness.load_clients", str(d.socket),
                             str(CLIENTS), "3"], cwd=REPO, stdout=subprocess.DEVNULL)
    done, errors = churn(d, 4, time.monotonic() + 3)
    assert warm.wait(timeout=120) == 0
    assert not errors, errors
    time.sleep(1)
    rss_before, fds_before = rss_kb(pid), open_fds(pid)

    loader = subprocess.Popen([sys.executable, "-m", "tests.robustness.load_clients", str(d.socket),
                               str(CLIENTS), str(SECONDS)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    started = time.monotonic()
    cycles, errors = churn(d, CHURN, started + SECONDS)
    out, _ = loader.communicate(timeout=SECONDS + 120)
    elapsed = time.monotonic() - started
    report = json.loads(out)
    rss_peak = rss_kb(pid)
    print(f"\nload: {CLIENTS} clients for {report['seconds']} s: list {report['list']}, status {report['status']}, "
          f"{report['requests_per_second']} req/s, {report['status_of_destroyed']} status calls on just-destroyed "
          f"instances; {CHURN} containers: {cycles} create/start/stop/destroy cycles in {elapsed:.0f} s "
          f"(stop: median {sorted(STOPS)[len(STOPS) // 2]:.1f} s, max {max(STOPS):.1f} s; busybox's poweroff alone "
          "takes 2 s)")
    assert loader.returncode == 0
    assert not errors, f"{len(errors)} churn errors: {errors[:10]}"
    assert report["error_count"] == 0, report["errors"]
    assert cycles >= CHURN, f"only {cycles} cycles done by {CHURN} workers"

    assert d.client.get("/1.0/instances")["instances"] == []
    problems = settled_audit(d)
    assert not problems, "after the load:\n" + "\n".join(problems)
    time.sleep(2)
    rss_after, fds_after = rss_kb(pid), open_fds(pid)
    print(f"ctd RSS: {rss_before // 1024} MB before, {rss_peak // 1024} MB at the end of the load, "
          f"{rss_after // 1024} MB after; open fds {fds_before} -> {fds_after}")
    assert rss_after <= max(rss_before * RSS_SLACK, rss_before + RSS_SLACK_MB * 1024), \
        f"ctd RSS grew from {rss_before} kB to {rss_after} kB"
    assert fds_after <= fds_before + 2, f"ctd holds {fds_after} fds, {fds_before} before the load"


def test_200_containers_started_at_once_all_run(module_ctd: Daemon) -> None:
    d = module_ctd
    names = [f"many{n}" for n in range(AT_ONCE)]
    t0 = time.monotonic()
    try:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda n: d.client.run("POST", "/1.0/instances", {"name": n, "template": "busybox"}), names))
        created = time.monotonic() - t0
        failures: list[str] = []

        def start(name: str) -> None:
            try:
                d.client.run("PUT", f"/1.0/instances/{name}/state", {"action": "start"})
            except ApiError as exc:
                failures.append(f"{name}: {exc.message}")

        t1 = time.monotonic()
        threads = [threading.Thread(target=start, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        started = time.monotonic() - t1
        insts = {i["name"]: i for i in d.client.get("/1.0/instances")["instances"]}
        not_running = [n for n in names if insts.get(n, {}).get("state") != "running"]
        print(f"\n{AT_ONCE} containers: created in {created:.0f} s, all started at once in {started:.0f} s; "
              f"{AT_ONCE - len(not_running)} running")
        assert not failures, f"{len(failures)} starts failed: {failures[:5]}"
        assert not not_running, f"not running: {not_running[:10]}"
        problems = settled_audit(d)
        assert not problems, "with 200 running:\n" + "\n".join(problems[:20])
    finally:
        t2 = time.monotonic()
        existing = {i["name"] for i in d.client.get("/1.0/instances")["instances"]}
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda n: d.client.run("DELETE", f"/1.0/instances/{n}", query={"force": "true"}),
                          [n for n in names if n in existing]))
        print(f"destroyed in {time.monotonic() - t2:.0f} s")
    problems = settled_audit(d)
    assert not problems, "after destroying them:\n" + "\n".join(problems)
