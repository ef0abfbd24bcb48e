"""The runtime itself as the way out: ctd's exec helper is host code (the host's Python) that
enters the container, so it must neither leave a way to its binary (CVE-2019-5736 class) nor
carry a host fd or working directory inside (CVE-2024-21626 class)."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.security.conftest import children, container_pids, fd_targets, probe

ERRNO = {"-13": "EACCES", "-26": "ETXTBSY", "-1": "EPERM", "-2": "ENOENT"}


def runtime_binary(ctd) -> Path:  # type: ignore[no-untyped-def]
    """The binary ctd's spawner -- and so every exec helper -- runs: the host's Python."""
    return Path(os.readlink(f"/proc/{ctd.proc.pid}/exe"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- CVE-2019-5736 class

@pytest.mark.skipif(platform.machine() != "x86_64", reason="fake_ldso.c is x86_64 code")
def test_runtime_binary_through_proc_self_exe(ctd, make, privileged, fake_ldso):
    """The attack itself: the container plants `#!/proc/self/exe` and its own dynamic loader.
    When the exec helper execve()s the script, the kernel resolves /proc/self/exe to the
    helper's binary -- the host's Python -- and runs it inside with the container's loader,
    which then holds the host's runtime binary as /proc/self/exe."""
    binary = runtime_binary(ctd)
    before = sha256(binary)
    name = make(privileged)
    root = ctd.rootfs(name)
    (root / "lib64").mkdir(exist_ok=True)
    shutil.copy(fake_ldso, root / "lib64/ld-linux-x86-64.so.2")
    (root / "bin/hijack").write_text("#!/proc/self/exe\n")
    (root / "bin/hijack").chmod(0o755)
    r = ctd.ctl("exec", name, "--", "/bin/hijack")
    report = dict(line.split(" ", 1) for line in r.out.splitlines())
    # It worked as far as the kernel goes: the host's Python runs in the container, as root there.
    assert report.get("uid") == "0" and report.get("exe_ino") == str(binary.stat().st_ino), (r.out, r.err)
    if not privileged:
        # ... but root inside is an unmapped nobody to the binary's owner: no write, not even
        # once no process runs it (EACCES comes before ETXTBSY).
        assert ERRNO.get(report["exe_w"]) == "EACCES"
        assert ERRNO.get(report["reopen_w"]) == "EACCES"
    else:
        # Documented: privileged root is host root; only "text file busy" stops the write while
        # some process runs that Python (ctd does, all the time it is up). Never written.
        assert ERRNO.get(report["exe_w"]) == "ETXTBSY"
        assert ERRNO.get(report["reopen_w"]) == "ETXTBSY"
    assert sha256(binary) == before


def _race(ctd, name: str, execs: int, ino: int) -> dict[str, int]:  # type: ignore[no-untyped-def]
    result: dict[str, str] = {}

    def racer() -> None:
        result["out"] = probe(ctd, name, "exe_race", "6", str(ino), timeout=60)

    thread = threading.Thread(target=racer)
    thread.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda _: ctd.ctl("exec", name, "--", "true").code, range(execs)))
    finally:
        thread.join(70)
    assert codes == [0] * execs
    counts: dict[str, int] = {}
    for line in result["out"].splitlines():
        words = line.split()
        counts[" ".join(words[:-1])] = int(words[-1])
    return counts


def test_runtime_binary_race_against_exec(ctd, make, privileged):
    """The race of the hint: while the host runs many `ctctl exec`, a loop inside tries every
    process it sees running host code (the helper's child between fork and execve) through
    /proc/PID/exe -- O_PATH, O_WRONLY, and an O_PATH re-opened for writing -- and pidfd_getfd."""
    binary = runtime_binary(ctd)
    before = sha256(binary)
    name = make(privileged)
    counts: dict[str, int] = {}
    for _ in range(3):  # the window is a few ms per exec; make sure it was caught
        counts = _race(ctd, name, 24, binary.stat().st_ino)
        if counts["seen"]:
            break
    assert counts["seen"] > 0, f"the race never caught the exec helper: {counts}"
    print(f"race ({'privileged' if privileged else 'unprivileged'}): {counts}")  # for docs/security.md (-s)
    # Never, in either kind: the host's runtime binary opened for writing.
    assert counts["exe_w"] == 0 and counts["reopen_w"] == 0, counts
    if not privileged:
        # The helper is non-dumpable while it runs host code: /proc/PID/exe and its fds are
        # ptrace-guarded, and root inside has no CAP_SYS_PTRACE over the host's user namespace.
        assert counts["exe_host"] == 0 and counts["getfd"] == 0, counts
        assert counts.get("errno EACCES", 0) > 0 and counts.get("errno EPERM", 0) > 0, counts
    else:
        # Documented: privileged root holds CAP_SYS_PTRACE in the initial user namespace, which
        # non-dumpable does not stop: it reaches the host's Python (ETXTBSY keeps it from
        # writing while ctd runs) and copies the helper's fds -- ctd's spawner socket among them.
        assert counts["exe_host"] > 0 and counts.get("errno ETXTBSY", 0) > 0, counts
        assert counts["getfd_sock"] > 0, counts
    assert sha256(binary) == before
    assert ctd.ctl("exec", name, "--", "true").code == 0


# ---------------------------------------------------------------- CVE-2024-21626 class

def test_no_host_fd_in_exec(ctd, make, privileged):
    name = make(privileged)
    assert probe(ctd, name, "fds") == "end"  # nothing above stdin, stdout, stderr
    # stdio are ctd's pipes, and nothing else is ctd's
    links = ctd.sh(name, "for f in /proc/self/fd/*; do echo \"${f##*/} $(readlink $f)\"; done").out.split("\n")
    fds = dict(line.split(" ", 1) for line in links if line)
    assert {k for k, v in fds.items() if v.startswith("pipe:")} <= {"0", "1", "2"}, fds


def test_no_host_fd_in_init(ctd, make, privileged):
    name = make(privileged)
    listing = ctd.sh(name, "for f in /proc/1/fd/*; do echo \"${f##*/} $(readlink $f)\"; done").out.split("\n")
    assert dict(line.split(" ", 1) for line in listing if line) == {
        "0": "/dev/console", "1": "/dev/console", "2": "/dev/console"}


def test_no_process_inside_holds_a_host_fd(ctd, make, privileged):
    """Seen from the host: no fd above 2 of any process in the container is one of ctd's
    (daemon or spawner), its state directory or its socket."""
    name = make(privileged)
    ctd.sh(name, "sleep 60 </dev/null >/dev/null 2>&1 &")
    init = ctd.instance(name)["pid"]
    ours = {}
    for pid in [ctd.proc.pid, *children(ctd.proc.pid)]:
        ours.update({t: pid for t in fd_targets(pid).values() if t.startswith(("socket:", "pipe:", "/"))})
    ours = {t: p for t, p in ours.items() if t not in ("/dev/null",) and not t.startswith("/dev/pts/")}
    pids = container_pids(init)
    assert init in pids and len(pids) >= 3
    for pid in pids:
        for fd, target in fd_targets(pid).items():
            if fd <= 2:
                continue
            assert target not in ours, f"pid {pid} fd {fd} -> {target} is ctd's (pid {ours[target]})"
            assert str(ctd.state_dir) not in target and str(ctd.socket) not in target, (pid, fd, target)


@pytest.mark.parametrize("cwd", [f"/proc/self/fd/{n}" for n in range(3, 12)] + ["/proc/1/cwd", "/../../.."])
def test_exec_cwd_cannot_point_outside(ctd, make, privileged, cwd):
    """WORKDIR /proc/self/fd/N of runc: the helper chdir()s only after every host fd is closed
    (so the path is gone and it falls back to /), and the container's / is its root."""
    name = make(privileged)
    r = ctd.ctl("exec", "--cwd", cwd, name, "--", "/bin/sh", "-c", "probe cwd; stat -c %d:%i . /")
    assert r.code == 0, r.err
    where, here, root = r.out.split()
    assert where == "/" and here == root


def test_exec_cwd_fd_leak_from_the_host_side(ctd, make, privileged):
    """The same, seen from the host: the cwd of a process exec'd with --cwd /proc/self/fd/N
    is the container's root directory, not a host directory."""
    name = make(privileged)
    init = ctd.instance(name)["pid"]
    assert ctd.ctl("exec", "--cwd", "/proc/self/fd/5", name, "--", "/bin/sh", "-c",
                   "sleep 30 </dev/null >/dev/null 2>&1 &").code == 0
    sleepers = [p for p in container_pids(init) if Path(f"/proc/{p}/comm").read_text().strip() == "sleep"]
    assert sleepers
    for pid in sleepers:
        cwd, root = os.stat(f"/proc/{pid}/cwd"), os.stat(f"/proc/{init}/root")
        assert (cwd.st_dev, cwd.st_ino) == (root.st_dev, root.st_ino)


def test_exec_tty_is_no_way_into_the_hosts_devpts(ctd, make, privileged):
    """`exec -t` hands the command a pty slave of the container's own devpts (opened inside by
    the exec helper): a file, not a directory to walk from, and that devpts shows no terminal
    but this one (none of the host's)."""
    name = make(privileged)
    r = ctd.ctl("exec", "-t", name, "--", "/bin/sh", "-c",
                "probe open /proc/self/fd/0/..; probe open /proc/self/fd/0/../ptmx; probe fds; ls /dev/pts; tty")
    words = r.out.split()
    assert words[:3] == ["ENOTDIR", "ENOTDIR", "end"], (r.out, r.err)
    assert words[-1].startswith("/dev/pts/") and sorted(words[3:-1]) == sorted([words[-1][9:], "ptmx"]), r.out
