"""The container init ctd's spawner forks ahead of a start (the standby): what it holds while it
waits, that a start uses it, that its death costs nothing, and that it never outlives ctd."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def spawner_of(daemon_pid: int) -> int:
    for pid in children(daemon_pid):
        if b"ctd.instance.container.spawner" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise AssertionError(f"ctd {daemon_pid} has no spawner")


def standbys(spawner: int) -> list[int]:
    """The spawner's children that wait in a user namespace of their own: inits forked ahead."""
    own_userns = os.readlink("/proc/self/ns/user")
    found = []
    for pid in children(spawner):
        try:
            if (os.readlink(f"/proc/{pid}/ns/user") != own_userns
                    and b"ctd.instance.container.spawner" in Path(f"/proc/{pid}/cmdline").read_bytes()):
                found.append(pid)
        except OSError:
            pass
    return found


def wait_for(predicate, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def status_field(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(key)


def test_a_standby_waits_unmapped_and_holds_nothing_of_ctd(fresh_ctd):
    d = fresh_ctd
    spawner = spawner_of(d.proc.pid)
    (standby,) = wait_for(lambda: standbys(spawner))
    # its user namespace has no ids yet: nothing of the host is mapped into it
    assert Path(f"/proc/{standby}/uid_map").read_text() == ""
    assert Path(f"/proc/{standby}/gid_map").read_text() == ""
    for ns in ("net", "ipc", "uts", "pid_for_children"):
        assert os.readlink(f"/proc/{standby}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    # the default seccomp filter is on before any container code could run
    assert status_field(standby, "Seccomp") == "2"
    # no fd of ctd's: not its database, socket, lock or state files; just stdio and its control socket
    held = {int(fd): os.readlink(f"/proc/{standby}/fd/{fd}") for fd in os.listdir(f"/proc/{standby}/fd")}
    beyond_stdio = {fd: target for fd, target in held.items() if fd > 2}
    assert len(beyond_stdio) == 1 and next(iter(beyond_stdio.values())).startswith("socket:"), held
    assert all(target == "/dev/null" for fd, target in held.items() if fd <= 2), held


def test_a_start_takes_the_standby_and_a_new_one_follows(fresh_ctd):
    d = fresh_ctd
    spawner = spawner_of(d.proc.pid)
    (first,) = wait_for(lambda: standbys(spawner))
    d.ok("create", "sb1", "--template", "busybox")
    d.ok("start", "sb1")
    assert d.instance("sb1")["pid"] == first
    assert Path(f"/proc/{first}/uid_map").read_text().split() == ["0", str(d.instance("sb1")["idmap"]["uid_base"]), "65536"]
    (second,) = wait_for(lambda: [p for p in standbys(spawner) if p != first])
    # the next one rehearsed sb1's start while it waited; it must serve sb1b as sb1b
    d.ok("create", "sb1b", "--template", "busybox", "--hostname", "other-host")
    d.ok("start", "sb1b")
    assert d.instance("sb1b")["pid"] == second
    assert d.sh("sb1b", "hostname").out.strip() == "other-host"
    assert d.sh("sb1", "hostname").out.strip() == "sb1"


def test_a_standby_killed_while_it_waits_is_replaced(fresh_ctd):
    d = fresh_ctd
    spawner = spawner_of(d.proc.pid)
    (standby,) = wait_for(lambda: standbys(spawner))
    os.kill(standby, signal.SIGKILL)
    d.ok("create", "sb2", "--template", "busybox")
    d.ok("start", "sb2")
    assert d.instance("sb2")["pid"] != standby
    assert d.sh("sb2", "echo up").out.strip() == "up"
    # the dead standby was reaped quietly: ctd did not take it for an instance that stopped
    assert d.instance("sb2")["state"] == "running"


def test_privileged_start_gets_an_init_of_its_own(fresh_ctd):
    """Standbys made ahead live in a user namespace of their own: a privileged container may
    not use one; it gets an init made for it, in the host's user namespace."""
    d = fresh_ctd
    spawner = spawner_of(d.proc.pid)
    (standby,) = wait_for(lambda: standbys(spawner))
    d.ok("create", "sbp", "--template", "busybox", "--privileged")
    d.ok("start", "sbp")
    pid = d.instance("sbp")["pid"]
    assert pid != standby and standby in standbys(spawner)  # still waiting for an unprivileged start
    assert os.readlink(f"/proc/{pid}/ns/user") == os.readlink("/proc/self/ns/user")


@pytest.mark.parametrize("how", ["kill9", "stop"])
def test_no_standby_outlives_ctd(fresh_ctd, how):
    d = fresh_ctd
    spawner = spawner_of(d.proc.pid)
    (standby,) = wait_for(lambda: standbys(spawner))
    d.ok("create", "sb3", "--template", "busybox")
    d.ok("start", "sb3")
    running = d.instance("sb3")["pid"]
    (standby,) = wait_for(lambda: standbys(spawner))
    d.kill9() if how == "kill9" else d.stop()
    gone = wait_for(lambda: not Path(f"/proc/{standby}").exists() or status_field(standby, "State").startswith("Z"))
    assert gone, f"standby {standby} outlived ctd ({how})"
    assert Path(f"/proc/{running}").exists(), "the running container died with ctd"


def staged_groups(d, pid: int) -> list[Path]:
    return [base / f"standby-{pid}" for base in d.cgroup_dirs() if (base / f"standby-{pid}").is_dir()]


def staged_standby(d, first: str) -> int:  # type: ignore[no-untyped-def]
    """Start `first` (the standby ready at ctd's start-up came before its recovery, so it was
    not put in cgroups of its own); the pid of the next standby, once it is in standby-PID
    in every hierarchy."""
    spawner = spawner_of(d.proc.pid)
    d.ok("create", first, "--template", "busybox")
    d.ok("start", first)
    (standby,) = wait_for(lambda: standbys(spawner))
    # ctd makes the groups, then moves the standby in: wait for both
    assert wait_for(lambda: len(staged_groups(d, standby)) == len(d.cgroup_dirs())
                    and all(holds(g, standby) for g in staged_groups(d, standby)))
    return standby


def holds(group: Path, pid: int) -> bool:
    try:
        return str(pid) in Path(group, "cgroup.procs").read_text().split()
    except OSError:  # removed meanwhile
        return False


def test_a_standby_waits_in_cgroups_of_its_own_which_its_container_takes_over(fresh_ctd):
    d = fresh_ctd
    standby = staged_standby(d, "sbc0")  # ctd moved it into standby-PID while it waited
    dirs = staged_groups(d, standby)
    assert all(Path(g, "cgroup.procs").read_text().split() == [str(standby)] for g in dirs)
    d.ok("create", "sbc1", "--template", "busybox", "--ram", "64M", "--numproc", "50")
    d.ok("start", "sbc1")
    assert d.instance("sbc1")["pid"] == standby
    cgroups = d.instance("sbc1")["cgroups"]
    for key, path in cgroups.items():  # v1: renamed; cgroup2 cannot rename: the standby's name
        assert Path(path).name == ("standby-%d" % standby if key == "unified" else "ct-sbc1"), (key, path)
        assert str(standby) in Path(path, "cgroup.procs").read_text().split()
    assert Path(cgroups["memory"], "memory.limit_in_bytes").read_text().strip() == str(64 << 20)
    assert Path(cgroups["pids"], "pids.max").read_text().strip() == "50"
    # inside, the container sees itself at the root of every hierarchy
    assert {line.split(":", 2)[2] for line in d.sh("sbc1", "cat /proc/1/cgroup").out.split()} == {"/"}
    d.ok("stop", "sbc1")
    assert not any(Path(p).exists() for p in cgroups.values())


def test_the_group_of_a_standby_that_died_goes_with_it(fresh_ctd):
    d = fresh_ctd
    standby = staged_standby(d, "sbd")
    os.kill(standby, signal.SIGKILL)
    assert wait_for(lambda: not staged_groups(d, standby)), "the dead standby's cgroups stayed"
    d.ok("stop", "sbd")
    d.ok("start", "sbd")
    assert d.sh("sbd", "echo up").out.strip() == "up"


def test_a_restarted_ctd_finds_the_cgroups_of_a_container_started_from_a_standby(fresh_ctd):
    d = fresh_ctd
    standby = staged_standby(d, "sbr0")
    d.ok("create", "sbr", "--template", "busybox")
    d.ok("start", "sbr")
    before = d.instance("sbr")["cgroups"]
    assert Path(before["unified"]).name == f"standby-{standby}"
    d.kill9()
    d.start()
    assert d.instance("sbr")["cgroups"] == before  # the cgroup2 name came back from the state
    # an exec joins the container's cgroups, the renamed ones and the one that kept its name
    lines = d.sh("sbr", "cat /proc/self/cgroup").out.split()
    assert {line.split(":", 2)[2] for line in lines} == {"/"}, lines
    d.ok("stop", "sbr")
    assert not any(Path(p).exists() for p in before.values())


def test_a_ctd_stopped_right_after_its_start_leaves_no_cgroup(tmp_path):
    """Its first standby's group may still be in the making (in a thread) when a ctd stops at
    once: shutdown waits for it, so the base goes too (was, now and then: 'groups remain' and
    the base left behind). The teardown's leak check is the assertion, five times over."""
    import uuid

    from tests.conftest import Daemon, _teardown
    for i in range(5):
        d = Daemon(tmp_path / f"state{i}", tmp_path / f"ctd{i}.sock", f"ctd-test-{uuid.uuid4().hex[:8]}")
        d.start()
        _teardown(d)
