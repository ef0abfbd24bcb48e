"""ctd touches only what is its own: a copy's destroy never reaches the original's cgroups, a
record cannot aim destroy at another container, a second ctd on the same cgroup base, nft
table, NIC prefix, id area or state dir is refused before it does anything, and recovery
leaves cgroups it does not know."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctd.storage.pool import release_pool
from tests.conftest import REPO, Daemon
from tests.host.test_standby import staged_standby


def alive(pid: int) -> bool:
    try:
        return not Path(f"/proc/{pid}/status").read_text().split("State:")[1].strip().startswith("Z")
    except (OSError, IndexError):
        return False


def assert_untouched(d: Daemon, name: str, pid: int, cgroups: dict[str, str]) -> None:
    """The container still runs as it did: same init, in the same cgroups, answering."""
    assert alive(pid), f"{name}'s init {pid} was killed"
    inst = d.instance(name)
    assert inst["state"] == "running" and inst["pid"] == pid
    for key, path in cgroups.items():
        assert str(pid) in Path(path, "cgroup.procs").read_text().split(), f"{name} lost its {key} cgroup {path}"
    assert d.sh(name, "echo up").out.strip() == "up"


def running_in_a_standby_group(d: Daemon, name: str) -> tuple[int, dict[str, str]]:
    """Start `name` from a standby that waited in cgroups of its own: its cgroup2 group keeps the
    standby's name (recorded in its state) — what a copy of its record used to carry along."""
    staged_standby(d, f"{name}-first")
    d.ok("create", name, "--template", "busybox")
    d.ok("start", name)
    inst = d.instance(name)
    assert any(Path(p).name.startswith("standby-") for p in inst["cgroups"].values()), inst["cgroups"]
    return inst["pid"], inst["cgroups"]


def test_destroying_a_clone_of_a_running_container_leaves_the_original(fresh_ctd):
    d = fresh_ctd
    pid, cgroups = running_in_a_standby_group(d, "orig")
    d.ok("snapshot", "orig", "s1")
    d.ok("clone", "orig", "copy", "--snapshot", "s1")
    d.ok("destroy", "copy")  # never started
    assert_untouched(d, "orig", pid, cgroups)
    # the copy, started and destroyed running, ends only itself too
    d.ok("clone", "orig", "copy2", "--snapshot", "s1")
    d.ok("start", "copy2")
    d.ok("destroy", "--force", "copy2")
    assert_untouched(d, "orig", pid, cgroups)


def tamper_options(d: Daemon, name: str, change) -> None:  # type: ignore[no-untyped-def]
    """Edit an instance's options in ctd's state behind its back (ctd is stopped)."""
    db = sqlite3.connect(d.state_dir / "ctd.db")
    try:
        (options,) = db.execute("SELECT options FROM instances WHERE name = ?", (name,)).fetchone()
        options = json.loads(options)
        change(options)
        db.execute("UPDATE instances SET options = ? WHERE name = ?", (json.dumps(options), name))
        db.commit()
    finally:
        db.close()


@pytest.mark.parametrize("aim", ["standby", "named"])
def test_a_tampered_record_cannot_aim_destroy_or_stop_at_another_container(fresh_ctd, aim):
    d = fresh_ctd
    pid, cgroups = running_in_a_standby_group(d, "victim")
    d.ok("create", "bait", "--template", "busybox")
    d.ok("create", "runner", "--template", "busybox")
    d.ok("start", "runner")
    if aim == "standby":  # the victim's own cgroup2 group, as a copied record carried it
        fixed = {k: Path(p).name for k, p in cgroups.items() if Path(p).name.startswith("standby-")}
    else:  # every hierarchy aimed at the victim's ct- group, and one at the base's parent
        fixed = {k: "ct-victim" for k in cgroups} | {"memory": ".."}
    d.stop()  # containers stay up
    for name in ("bait", "runner"):
        tamper_options(d, name, lambda o: o.update(cgroup_fixed=fixed))
    d.start()
    assert_untouched(d, "victim", pid, cgroups)
    d.ok("destroy", "bait")
    assert_untouched(d, "victim", pid, cgroups)
    d.ok("stop", "runner")  # adopted with a record that lies: its own groups only
    d.ok("destroy", "runner")
    assert_untouched(d, "victim", pid, cgroups)


# ------------------------------------------------------------- a second ctd


def second_ctd(d: Daemon, tmp: Path, **settings: object) -> subprocess.CompletedProcess:
    """Run another ctd (its own state dir and socket unless given) with d's settings changed
    as given; it must refuse at once. Killed, and the test failed, if it starts serving."""
    values: dict[str, object] = {"cgroup_name": f"{d.cgroup_name}-2", "nft_table": f"{d.cgroup_name.replace('-', '_')}_2",
                                 "nic_prefix": "zz" if d.nic_prefix != "zz" else "zy",
                                 "idmap_base": 590_000_000, "idmap_end": 600_000_000}
    state = Path(str(settings.pop("state_dir", tmp / "state-2")))
    values.update(settings)
    config = tmp / "second.toml"
    config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    proc = subprocess.Popen([sys.executable, "-m", "ctd.daemon", "--config", str(config), "--state-dir", str(state),
                             "--socket", str(tmp / "second.sock")], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        if state != d.state_dir:
            release_pool(state)
        pytest.fail(f"the second ctd ran ({settings}):\n{err[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("clash, expected", [
    ("cgroup_name", "owns cgroup_name '{cgroup_name}'; set cgroup_name in ctd.toml"),
    ("nft_table", "owns nft_table '{nft_table}'; set nft_table in ctd.toml"),
    ("nic_prefix", "owns nic_prefix '{nic_prefix}'; set nic_prefix in ctd.toml"),
    ("ids", "owns host ids {base}-{end}, which overlap"),
    ("state_dir", "runs on state dir {state_dir}"),
])
def test_a_second_ctd_on_what_the_first_owns_is_refused_and_touches_nothing(fresh_ctd, tmp_path, clash, expected):
    d = fresh_ctd
    d.ok("create", "keep", "--template", "busybox")
    d.ok("start", "keep")
    keep = d.instance("keep")
    base, end = d.idmap_area
    mine = {"cgroup_name": d.cgroup_name, "nft_table": d.cgroup_name.replace("-", "_"), "nic_prefix": d.nic_prefix,
            "state_dir": d.state_dir}
    change: dict[str, object] = {"idmap_base": base + 65536 * 3, "idmap_end": end + 65536 * 8} if clash == "ids" \
        else {clash: mine[clash]}
    nft_before = subprocess.run(["nft", "list", "table", "bridge", mine["nft_table"]], capture_output=True,
                                text=True).stdout
    r = second_ctd(d, tmp_path, **change)
    assert r.returncode == 1
    # the area ctd claims starts at its user-namespace owner block, 65536 ids below idmap_base
    message = expected.format(base=base - 65536, end=end, **mine)
    assert message in r.stderr and f"pid {d.proc.pid}" in r.stderr, r.stderr
    assert_untouched(d, "keep", keep["pid"], keep["cgroups"])
    assert subprocess.run(["nft", "list", "table", "bridge", mine["nft_table"]], capture_output=True,
                          text=True).stdout == nft_before
    assert "recovery" not in r.stderr


def test_a_second_ctd_on_areas_of_its_own_runs_beside_the_first(fresh_ctd, tmp_path):
    """The lock refuses only what clashes: different settings everywhere run side by side."""
    d = fresh_ctd
    d.ok("create", "keep", "--template", "busybox")
    d.ok("start", "keep")
    other = Daemon(tmp_path / "state-2", tmp_path / "ctd-2.sock", f"{d.cgroup_name}-b")
    other.start()
    try:
        assert other.client.get("/1.0")["pid"] != d.proc.pid
        assert d.instance("keep")["state"] == "running"
    finally:
        other.stop()
        release_pool(other.state_dir)


# ------------------------------------------------------------- recovery


def test_recovery_leaves_cgroups_its_state_does_not_record(fresh_ctd):
    d = fresh_ctd
    d.ok("create", "mine", "--template", "busybox")
    d.ok("start", "mine")
    memory_base = next(b for b in d.cgroup_dirs() if "/memory/" in str(b))
    stranger = memory_base / "not-ctds"
    stranger.mkdir()
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        (stranger / "cgroup.procs").write_text(str(sleeper.pid))
        d.kill9()
        d.start()  # recovery
        assert sleeper.poll() is None, "recovery killed a process of a cgroup it does not know"
        assert stranger.is_dir()
        assert "not-ctds" in d.client.get("/1.0")["recovered"]["left_cgroups"]
        assert d.instance("mine")["state"] == "running"
    finally:
        sleeper.kill()
        sleeper.wait()
        for _ in range(100):
            try:
                stranger.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)


def test_a_stopped_containers_old_cgroup_name_cannot_end_the_next_owner_of_its_pid(fresh_ctd):
    """Why a container once stopped 0.2 s after 'Started' with no trace: a stopped record kept
    the cgroup2 group name of its last run (standby-PID); pids wrap (pid_max 32768 here), a new
    standby got the same pid, a new container ran in standby-PID, and the destroy of the old,
    stopped one killed everything in it. Now a run's cgroup names end with the run."""
    d = fresh_ctd
    _, cgroups = running_in_a_standby_group(d, "old")
    stale = Path(next(p for p in cgroups.values() if Path(p).name.startswith("standby-")))
    d.ok("stop", "old")
    assert not stale.exists()
    db = sqlite3.connect(d.state_dir / "ctd.db")
    try:
        (options,) = db.execute("SELECT options FROM instances WHERE name = 'old'").fetchone()
    finally:
        db.close()
    assert "cgroup_fixed" not in json.loads(options), "the stopped record still names its last run's cgroup"
    # the pid comes round again: a process in a group of that name, as the next container's init
    stale.mkdir()
    newcomer = subprocess.Popen(["sleep", "600"])
    try:
        (stale / "cgroup.procs").write_text(str(newcomer.pid))
        d.ok("destroy", "old")
        assert newcomer.poll() is None, "destroying a stopped container killed the next owner of its cgroup name"
    finally:
        newcomer.kill()
        newcomer.wait()
        for _ in range(100):
            try:
                stale.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)
