"""Processes of the host and of a neighbour: not visible, so not signalled, traced or entered,
and their files not readable through /proc/PID/root."""

from __future__ import annotations

from pathlib import Path

from tests.security.conftest import alive, container_pids, probe


def inside_pids(ctd, name: str) -> set[int]:  # type: ignore[no-untyped-def]
    return {int(p) for p in ctd.sh(name, "ls /proc").out.split() if p.isdigit()}


def assert_unreachable(ctd, name: str, pid: int, lethal: bool = True) -> None:  # type: ignore[no-untyped-def]
    """Every way at a host pid from inside `name` answers "no such process"."""
    assert pid not in inside_pids(ctd, name), f"pid {pid} is also a pid inside; pick another"
    if lethal:
        assert probe(ctd, name, "kill", str(pid), "9") == "ESRCH"
    assert probe(ctd, name, "kill", str(pid), "0") == "ESRCH"
    assert probe(ctd, name, "ptrace", str(pid)) == "ESRCH"
    assert probe(ctd, name, "pidfd_setns", str(pid)) == "ESRCH"
    assert probe(ctd, name, "pidfd_getfd", str(pid), "0") == "ESRCH"
    assert probe(ctd, name, "open", f"/proc/{pid}/root") == "ENOENT"
    assert probe(ctd, name, "open", f"/proc/{pid}/exe") == "ENOENT"


def test_host_process_is_out_of_reach(ctd, make, privileged, host_sleeper):
    """A host process owned by the very uid root inside maps to (so that only the pid
    namespace stands between them), or by host root for a privileged container."""
    name = make(privileged)
    uid = 0 if privileged else ctd.instance(name)["idmap"]["uid_base"]
    sleeper = host_sleeper(uid)
    assert_unreachable(ctd, name, sleeper.pid)
    assert_unreachable(ctd, name, ctd.proc.pid, lethal=False)  # ctd itself: signal 0 only
    # kill(-1): every process the caller may signal -- in its own pid namespace only
    assert probe(ctd, name, "kill", "-1", "9") == "ok"
    assert alive(sleeper.pid) and ctd.proc.poll() is None
    assert ctd.instance(name)["state"] == "running"


def test_host_init_is_not_pid_1_inside(ctd, make, privileged):
    name = make(privileged)
    init = ctd.instance(name)["pid"]
    assert probe(ctd, name, "cat", "/proc/1/comm") == "init"
    inside = int(probe(ctd, name, "nsino", "/proc/1/ns/pid"))
    assert inside == Path(f"/proc/{init}/ns/pid").stat().st_ino != Path("/proc/self/ns/pid").stat().st_ino


def test_neighbour_is_out_of_reach(ctd, make, privileged):
    """From A (unprivileged or privileged), B's processes are invisible and its files closed."""
    b = make()
    ctd.sh(b, "echo neighbour-secret-4242 > /root/secret; sleep 300 </dev/null >/dev/null 2>&1 &")
    b_init = ctd.instance(b)["pid"]
    b_sleep = [p for p in container_pids(b_init) if Path(f"/proc/{p}/comm").read_text().strip() == "sleep"]
    assert len(b_sleep) == 1
    a = make(privileged)
    for pid in (b_init, b_sleep[0]):
        assert_unreachable(ctd, a, pid)
        assert probe(ctd, a, "open", f"/proc/{pid}/root/root/secret") == "ENOENT"
    # nothing of B under any /proc/*/root A can see, nor at B's root's host path
    assert ctd.sh(a, "cat /proc/[0-9]*/root/root/secret 2>/dev/null").out == ""
    assert probe(ctd, a, "open", str(ctd.rootfs(b) / "root/secret")) == "ENOENT"
    assert probe(ctd, a, "open", str(ctd.state_dir)) == "ENOENT"
    # A's kill(-1) stays in A
    assert probe(ctd, a, "kill", "-1", "9") == "ok"
    # B, from the host side: unharmed
    inst = ctd.instance(b)
    assert inst["state"] == "running" and inst["pid"] == b_init
    assert alive(b_sleep[0])
    assert ctd.sh(b, "cat /root/secret").out.strip() == "neighbour-secret-4242"
