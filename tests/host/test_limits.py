"""Every VPS limit, at create and live with `ctctl set`, on the real kernel (cgroup v1 here)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ctctl.client import ApiError


def group(ctd, name):
    return ctd.group(name)


def beancounter(ctd, name, resource):
    rows = ctd.client.get(f"/1.0/instances/{name}/beancounters")["beancounters"]
    return next(r for r in rows if r["name"] == resource)


def meminfo_total_kb(ctd, name) -> int:
    line = ctd.sh(name, "grep MemTotal /proc/meminfo").out
    return int(line.split()[1])


def test_ram_live_and_in_proc_meminfo(ctd, make_container):
    name = make_container(ram="128M")
    assert meminfo_total_kb(ctd, name) == 128 * 1024  # lxcfs shows the container's limit
    ctd.ok("set", name, "--ram", "96M")
    assert meminfo_total_kb(ctd, name) == 96 * 1024
    assert beancounter(ctd, name, "physpages")["limit"] == 96 * 1024 * 1024
    assert ctd.instance(name)["limits"]["ram"] == "96M"
    ctd.ok("set", name, "--ram", "unlimited")
    assert "ram" not in ctd.instance(name)["limits"]


def test_oom_counters_in_beancounters(ctd, make_container):
    name = make_container(ram="64M")
    assert ctd.sh(name, "probe alloc 200").code == 137
    row = beancounter(ctd, name, "physpages")
    assert row["failcnt"] >= 1 and row["maxheld"] >= 60 * 1024 * 1024 and row["limit"] == 64 * 1024 * 1024
    assert group(ctd, name).usage().oom_kills >= 1
    failing = ctd.client.get("/1.0/beancounters", failing="true")["instances"]
    assert any(i["name"] == name for i in failing)
    out = ctd.ok("beancounters", "--failing")
    assert "physpages" in out
    assert ctd.instance(name)["state"] == "running"


def test_numproc_caps_a_fork_loop_and_counts_failures(ctd, make_container):
    name = make_container(numproc="30")
    made, err = ctd.sh(name, "probe forkloop 200").out.split()
    assert err == "EAGAIN" and int(made) < 30
    row = beancounter(ctd, name, "numproc")
    assert row["failcnt"] >= 1 and row["limit"] == 30 and row["maxheld"] >= 25
    ctd.ok("set", name, "--numproc", "60")
    made, err = ctd.sh(name, "probe forkloop 200").out.split()
    assert err == "EAGAIN" and 30 <= int(made) < 60


def test_cpulimit_holds_a_busy_loop(ctd, make_container):
    name = make_container(cpulimit="50")
    g = group(ctd, name)
    ctd.sh(name, "(while :; do :; done) >/dev/null 2>&1 & echo $! > /tmp/busy")
    try:
        time.sleep(0.5)
        before, t0 = g.usage().cpu_seconds, time.monotonic()
        time.sleep(3)
        used = (g.usage().cpu_seconds - before) / (time.monotonic() - t0)
        assert used <= 0.55, f"{used:.0%} of a CPU"
        assert used >= 0.1, f"the loop hardly ran ({used:.0%})"
        # throttled periods: a period counts once the loop ran its 50 ms in it, which on a busy
        # host (other tests on both CPUs) can take a while
        deadline = time.monotonic() + 15
        while beancounter(ctd, name, "cpu")["failcnt"] == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert beancounter(ctd, name, "cpu")["failcnt"] > 0
        ctd.ok("set", name, "--cpulimit", "20")
        time.sleep(0.3)
        before, t0 = g.usage().cpu_seconds, time.monotonic()
        time.sleep(2)
        assert (g.usage().cpu_seconds - before) / (time.monotonic() - t0) <= 0.25
    finally:
        ctd.sh(name, "kill $(cat /tmp/busy)")


def test_cpus_pins_and_nproc_sees_it(ctd, make_container):
    name = make_container(cpus="1")
    assert ctd.sh(name, "nproc").out.strip() == "1"
    assert ctd.sh(name, "grep -c ^processor /proc/cpuinfo").out.strip() == "1"
    allowed = ctd.sh(name, "grep Cpus_allowed_list /proc/self/status").out.split()[-1]
    assert allowed.isdigit()


def test_cpuunits_are_written(ctd, make_container):
    name = make_container(cpuunits="2000")
    grp = group(ctd, name)
    cpu = grp.dirs()[grp.manager.hierarchy("cpu").key]   # "cpu" or "cpu,cpuacct", as mounted
    assert Path(cpu, "cpu.shares").read_text().strip() == str(200 * 1024 // 100)
    ctd.ok("set", name, "--cpuunits", "500")
    assert Path(cpu, "cpu.shares").read_text().strip() == str(50 * 1024 // 100)


WEIGHT_FILES = ("blkio.bfq.weight", "blkio.weight", "io.weight", "io.bfq.weight")


def io_weight_file(dirs) -> Path | None:
    """The weight file the kernel gives these cgroups (bfq loaded, v2 iocost), found by
    looking, not by asking ctd: the test holds on hosts with and without bfq."""
    return next((Path(d, n) for d in dirs for n in WEIGHT_FILES if Path(d, n).exists()), None)


def test_ioprio_is_written_or_refused_with_the_fix(ctd, make_container):
    ctd.client.get("/1.0/instances")   # the daemon's base cgroups exist from its start
    if io_weight_file(ctd.cgroup_dirs()) is not None:
        name = make_container(ioprio="7")
        weight = io_weight_file(group(ctd, name).dirs().values())
        assert weight is not None and weight.read_text().split()[-1] == "1000"
        ctd.ok("set", name, "--ioprio", "0")
        assert weight.read_text().split()[-1] == "100"
        return
    # no bfq here: create and set answer 400 with the way out, and nothing is made
    name = ctd.unique("io")
    r = ctd.ctl("create", name, "--template", "busybox", "--ioprio", "7")
    assert r.code == 1 and "ioprio needs the bfq I/O scheduler" in r.err and "modprobe bfq" in r.err, r.err
    assert "or drop --ioprio" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert name not in [i["name"] for i in ctd.client.get("/1.0/instances")["instances"]]
    assert not ctd.rootfs(name).exists()
    with pytest.raises(ApiError) as e:
        ctd.client.request("POST", "/1.0/instances", {"name": name, "template": "busybox", "limits": {"ioprio": 7}})
    assert e.value.status == 400
    running = make_container()
    r = ctd.ctl("set", running, "--ioprio", "3")
    assert r.code == 1 and "ioprio needs the bfq I/O scheduler" in r.err, r.err
    assert "ioprio" not in ctd.instance(running)["limits"]


def test_numfile_is_the_open_files_limit(ctd, make_container):
    name = make_container(numfile="200")
    assert ctd.sh(name, "ulimit -n").out.strip() == "200"
    ctd.ok("set", name, "--numfile", "300")
    assert ctd.sh(name, "ulimit -n").out.strip() == "300"
    row = beancounter(ctd, name, "numfile")
    assert row["limit"] == 300 and row["held"] > 0


def test_iolimit_throttles_direct_writes(ctd, make_container):
    name = make_container(iolimit="4M")
    start = time.monotonic()
    r = ctd.sh(name, "dd if=/dev/zero of=/root/io bs=1M count=8 oflag=direct 2>&1; rm -f /root/io")
    elapsed = time.monotonic() - start
    assert "8+0 records out" in r.out
    assert elapsed >= 1.5, f"8 MB at 4 MB/s took only {elapsed:.2f} s"


def test_limits_persist_across_a_daemon_restart(fresh_ctd):
    d = fresh_ctd
    d.ok("create", "keep", "--template", "busybox", "--ram", "100M", "--numproc", "50")
    d.ok("set", "keep", "--cpulimit", "150")
    d.stop()
    d.start()
    limits = d.instance("keep")["limits"]
    assert limits == {"ram": "100M", "numproc": 50, "cpulimit": 150}


@pytest.mark.parametrize("args,expect", [
    (["--ram", "1Q"], "invalid ram"), (["--ram", "-1M"], "invalid ram"), (["--cpus", "64"], "only"),
    (["--cpus", "0"], "at least 1"), (["--cpulimit", "0"], "cpulimit"), (["--numproc", "x"], "numproc"),
    (["--cpuunits", "unlimited"], "cpuunits"), (["--ioprio", "9"], "ioprio"), (["--swap", "1G"], "ram"),
])
def test_bad_limits_are_refused_with_the_reason(ctd, make_container, args, expect):
    name = make_container(start=False)
    before = ctd.instance(name)["limits"]
    r = ctd.ctl("set", name, *args)
    assert r.code == 1 and expect in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert ctd.instance(name)["limits"] == before


def test_ram_below_current_use_is_refused_and_nothing_changes(ctd, make_container):
    """cgroup v1 cannot shrink below usage without swap: the old limit stays, the reason is shown."""
    name = make_container(ram="256M")
    ctd.sh(name, "probe alloc 0; mkdir -p /dev/shm/x; dd if=/dev/zero of=/dev/shm/x/f bs=1M count=40 2>/dev/null")
    r = ctd.ctl("set", name, "--ram", "8M")
    assert r.code == 1 and "refused" in r.err, r.err
    assert ctd.instance(name)["limits"]["ram"] == "256M"
    assert beancounter(ctd, name, "physpages")["limit"] == 256 * 1024 * 1024


def test_a_stored_ioprio_on_a_host_without_weights_refuses_start_with_the_fix(fresh_ctd):
    """A container made where bfq was loaded, started after a reboot without it: a 409 naming the
    fix, not a 500 half-way through the start (and nothing of a start is left behind)."""
    import json
    import sqlite3
    d = fresh_ctd
    d.ok("create", "prio", "--template", "busybox")
    d.stop()
    with sqlite3.connect(d.state_dir / "ctd.db") as db:   # as written on a host with bfq
        db.execute("UPDATE instances SET limits = ? WHERE name = 'prio'", (json.dumps({"ioprio": 6}),))
    d.start()
    r = d.ctl("start", "prio")
    if io_weight_file(d.cgroup_dirs()) is not None:
        assert r.code == 0, r.err
        weight = io_weight_file(group(d, "prio").dirs().values())
        assert weight is not None and weight.read_text().split()[-1] == "871"
        return
    assert r.code == 1 and "prio has an ioprio: ioprio needs the bfq I/O scheduler" in r.err, r.err
    assert "modprobe bfq" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert d.instance("prio")["state"] == "stopped"
    assert not [p for p in d.cgroup_dirs() if (p / "ct-prio").exists()]
