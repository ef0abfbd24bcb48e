"""Terminals: `exec -t` gets a pty of the container's own devpts; `numpty` caps that devpts."""

from __future__ import annotations

import os
import select
import sys
import time

import pytest

from tests.conftest import REPO
from tests.helpers.probe_holder import ProbeHolder


def probe_out(ctd, name: str, *args: str) -> str:  # type: ignore[no-untyped-def]
    r = ctd.ctl("exec", name, "--", "probe", *args)
    assert r.code == 0, (r.code, r.err)
    return r.out.strip()


def ctl_in_pty(ctd, *args: str, timeout: float = 60) -> str:  # type: ignore[no-untyped-def]
    """ctctl ARGS run on a terminal of the test's own (as a person at a shell would); its output."""
    pid, fd = os.forkpty()
    if pid == 0:
        try:
            os.chdir(REPO)
            os.execv(sys.executable, [sys.executable, "-m", "ctctl.main", "--socket", str(ctd.socket), *args])
        finally:
            os._exit(127)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            out += chunk
        else:
            os.kill(pid, 9)
    finally:
        os.close(fd)
        os.waitpid(pid, 0)
    return out.decode(errors="replace").replace("\r\n", "\n")


def test_exec_tty_is_a_terminal_of_the_containers_own(ctd, make_container):
    """`tty` names /dev/pts/N, that node is the very terminal (same device and inode) on the
    container's devpts, owned by root:tty and writable for the group (what `mesg y` needs)."""
    name = make_container()
    script = ('t=$(tty); echo "tty=$t"; '
              'echo "same=$(stat -L -c %d:%i /proc/self/fd/0) $(stat -c %d:%i $t)"; '
              'echo "devpts=$(stat -c %d /dev/pts/ptmx) $(stat -c %d $t)"; '
              'echo "owner=$(stat -c %U:%G $t)"; chmod g+w $t && echo "mode=$(stat -c %A $t)"')
    out = ctl_in_pty(ctd, "exec", "-t", name, "--", "/bin/sh", "-c", script)
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert values.get("tty", "").startswith("/dev/pts/"), out
    first, second = values["same"].split()
    assert first == second, out
    ptmx_dev, tty_dev = values["devpts"].split()
    assert ptmx_dev == tty_dev, out
    assert values["owner"] == "root:tty", out
    assert values["mode"][5] == "w", out


def test_exec_tty_in_a_privileged_container(ctd, make_container):
    name = make_container(privileged=True)
    out = ctl_in_pty(ctd, "exec", "-t", name, "--", "/bin/sh", "-c", "tty; ls /dev/pts")
    lines = out.split()
    assert lines[0].startswith("/dev/pts/") and lines[0].rsplit("/", 1)[1] in lines[1:], out


def test_exec_tty_refuses_a_fake_ptmx(ctd, make_container):
    """The container's /dev/ptmx is the tenant's to replace: a FIFO there neither hangs the exec
    nor gets used; the error says what is wrong."""
    name = make_container()
    ctd.ok("exec", name, "--", "/bin/sh", "-c", "rm /dev/ptmx && mkfifo /dev/ptmx")
    r = ctd.ctl("exec", "-t", name, "--", "/bin/true", timeout=30)
    assert r.code != 0 and "not the pty multiplexer" in r.err, (r.code, r.err)
    ctd.ok("exec", name, "--", "/bin/true")  # the container is fine


def test_numpty_caps_the_container_and_spares_its_neighbour(ctd, make_container):
    """A tenant that opens ptys until it cannot gets exactly its numpty and ENOSPC; meanwhile a
    neighbour and the host open theirs, an `exec -t` into the full container is refused with a
    409 that says why, and beancounters show it. A live `set --numpty` raises the cap."""
    full = make_container(numpty="5")
    neighbour = make_container()
    holder = ProbeHolder(ctd, full, "ptyhold", 50)
    try:
        assert holder.report == "5 ENOSPC", holder.report
        assert probe_out(ctd, neighbour, "ptyhold", "1", "0") == "1 ok"
        master, slave = os.openpty()  # the host's own devpts
        os.close(master), os.close(slave)
        r = ctd.ctl("exec", "-t", full, "--", "/bin/true", timeout=30)
        assert r.code != 0 and "no pty left" in r.err and "numpty" in r.err, r.err
        row = next(r for r in ctd.client.get(f"/1.0/instances/{full}/beancounters")["beancounters"]
                   if r["name"] == "numpty")
        assert (row["held"], row["limit"]) == (5, 5), row
        ctd.ok("set", full, "--numpty", "8")
        assert probe_out(ctd, full, "ptyhold", "10", "0") == "3 ENOSPC"
    finally:
        holder.end()
    ctd.ok("stop", "--kill", full)  # the new value holds at the next start too
    ctd.ok("start", full)
    assert probe_out(ctd, full, "ptyhold", "10", "0") == "8 ENOSPC"


def test_numpty_default(ctd, make_container):
    name = make_container()
    assert probe_out(ctd, name, "ptyhold", "300", "0") == "256 ENOSPC"  # the documented default


def test_numpty_is_validated(ctd):
    for value, words in (("0", "from 1 to"), ("many", "whole number"), ("unlimited", "whole number")):
        r = ctd.ctl("create", ctd.unique(), "--template", "busybox", "--numpty", value)
        assert r.code != 0 and "numpty" in r.err and words in r.err, (value, r.err)


@pytest.mark.xfail(strict=True, reason="root inside owns its devpts: it can remount it with a larger max= "
                                       "(or mount a fresh devpts instance) and draw on the host-wide pool")
def test_numpty_holds_against_root_inside(ctd, make_container):
    name = make_container(numpty="5")
    remount = "0x2a"  # MS_REMOUNT | MS_NOSUID | MS_NOEXEC
    assert probe_out(ctd, name, "mountd", "none", "/dev/pts", "devpts", "ptmxmode=0666,mode=0620,gid=5,max=100",
                     remount) == "ok"
    assert probe_out(ctd, name, "ptyhold", "10", "0") == "5 ENOSPC"
