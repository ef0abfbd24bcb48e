"""The console log of containers: what init printed on /dev/console with nobody attached, kept
on disk across stops, restarts of the container and of ctd, a rename; gone with destroy; shown
safely on a terminal; and a guest flooding its console keeps a 1 MiB file while ctd answers."""

from __future__ import annotations

import os
import threading
import time

from ctd.instance.consolelog import CAPACITY, HEADER
from tests.host.test_pty import ctl_in_pty

MARK = "CTD-CONSOLE-MARK"


def log_of(ctd, name: str) -> bytes:  # type: ignore[no-untyped-def]
    """`ctctl console --log NAME` as a script gets it (stdout not a terminal: the raw bytes)."""
    return ctd.client.data(f"/1.0/instances/{name}/console/log")


def wait_log(ctd, name: str, text: str, count: int = 1, timeout: float = 30) -> bytes:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        data = log_of(ctd, name)
        if data.count(text.encode()) >= count:
            return data
        time.sleep(0.2)
    raise AssertionError(f"{text!r} x{count} never in {name}'s console log; it holds:\n{data[-800:]!r}")


def print_at_boot(ctd, name: str, line: str) -> None:  # type: ignore[no-untyped-def]
    """A line init's boot script prints on /dev/console (busybox rcS) before the shell starts."""
    rcs = ctd.rootfs(name) / "etc/init.d/rcS"
    rcs.write_text(rcs.read_text() + f"echo '{line}'\n")


def test_console_log_across_stop_restart_rename_and_destroy(fresh_ctd, probe):
    ctd = fresh_ctd
    name, renamed = ctd.unique("cl"), ctd.unique("cl")
    ctd.ok("create", name, "--template", "busybox")
    # what a guest may print: colours, a window-title sequence, a carriage return that hides text
    print_at_boot(ctd, name, f"{MARK} boot")
    rcs = ctd.rootfs(name) / "etc/init.d/rcS"
    rcs.write_text(rcs.read_text() + "printf '\\033]0;PWNED\\007 \\033[31mred\\033[0m hidden\\rshown\\n'\n")
    log_file = ctd.state_dir / "consoles" / f"{ctd.instance(name)['id']}.log"
    assert log_of(ctd, name) == b""                     # never started: empty, not an error
    ctd.ok("start", name)
    wait_log(ctd, name, f"{MARK} boot")                 # nobody attached: ctd read it anyway
    ctd.ok("stop", name)
    r = ctd.ctl("console", "--log", name)               # stopped: still there
    assert r.code == 0 and f"{MARK} boot" in r.out and ": booted by ctd" in r.out, r
    assert "\x1b]0;PWNED\x07" in r.out                  # to a pipe: the bytes as they came

    on_tty = ctl_in_pty(ctd, "console", "--log", name)  # on a terminal: shown, never acted on
    assert f"{MARK} boot" in on_tty and "\x1b]" not in on_tty and "\x07" not in on_tty, repr(on_tty)
    assert "\\x1b]0;PWNED\\x07 red hidden\\x0dshown" in on_tty, repr(on_tty)
    assert "\x1b]0;PWNED" in ctl_in_pty(ctd, "console", "--log", "--raw", name)

    ctd.ok("start", name)                               # the next run goes on after the last
    wait_log(ctd, name, f"{MARK} boot", count=2)
    ctd.stop()                                          # ctd restarts; the container stays up
    ctd.start()
    assert log_of(ctd, name).count(f"{MARK} boot".encode()) == 2
    ctd.ok("stop", name)
    ctd.ok("rename", name, renamed)                     # the log follows the instance
    assert log_of(ctd, renamed).count(f"{MARK} boot".encode()) == 2
    assert log_file.exists()
    r = ctd.ctl("console", "--log", name)
    assert r.code != 0 and "no instance named" in r.err, r

    ctd.ok("destroy", renamed)
    assert not log_file.exists()
    r = ctd.ctl("console", "--log", renamed)
    assert r.code != 0 and "no instance named" in r.err, r


def test_a_log_left_by_a_crash_is_swept_at_the_next_start(fresh_ctd):
    ctd = fresh_ctd
    stray = ctd.state_dir / "consoles" / "9999.log"
    stray.parent.mkdir(mode=0o700, exist_ok=True)
    stray.write_bytes(b"CTDLOG1\n" + bytes(8))
    ctd.stop()
    ctd.start()
    assert not stray.exists()


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_guest_flooding_its_console_keeps_a_1mib_file_and_ctd_answers(ctd, make_container):
    """Abuse: 50 MB printed to /dev/console as fast as the guest can. The file stays at 1 MiB
    (plus its header) holding the last of it; ctd reads at its budget (the guest's writes wait),
    stays responsive, and spends a bounded share of a CPU on it."""
    name = make_container()
    log_file = ctd.state_dir / "consoles" / f"{ctd.instance(name)['id']}.log"
    before = cpu_seconds(ctd.proc.pid)
    t0 = time.monotonic()
    flood = threading.Thread(target=ctd.sh, args=(name, "head -c 50000000 /dev/zero | tr '\\0' x > /dev/console; "
                                                  "echo FLOOD-END > /dev/console"), kwargs={"timeout": 300})
    flood.start()
    slowest = 0.0
    sizes = set()
    while flood.is_alive():
        t = time.monotonic()
        ctd.client.get("/1.0")
        ctd.client.get(f"/1.0/instances/{name}")
        slowest = max(slowest, time.monotonic() - t)
        sizes.add(log_file.stat().st_size)
        time.sleep(0.2)
    flood.join()
    took = time.monotonic() - t0
    cpu = cpu_seconds(ctd.proc.pid) - before
    data = wait_log(ctd, name, "FLOOD-END")
    print(f"\nflood of 50 MB: {took:.1f} s, ctd CPU {cpu:.2f} s ({cpu / took:.0%}), slowest API answer "
          f"{slowest * 1000:.0f} ms, log file sizes seen {sorted(sizes)[-3:]}")
    assert max(sizes) <= HEADER + CAPACITY and log_file.stat().st_size == HEADER + CAPACITY
    assert len(data) == CAPACITY and data.endswith(b"FLOOD-END\r\n")   # the pty's CRLF
    assert data[:-len(b"FLOOD-END\r\n")] == b"x" * (CAPACITY - len(b"FLOOD-END\r\n"))
    assert slowest < 1.0, f"ctd took {slowest:.2f} s to answer during the flood"
    # the read budget (4 MiB/s a console): 50 MB takes at least ~11 s, ctd is no busy loop
    assert took > 10, f"50 MB in {took:.1f} s: the read budget did not hold"
    assert cpu < 0.5 * took, f"ctd spent {cpu:.1f} s of CPU in {took:.1f} s"
    assert "state:       running" in ctd.ok("status", name)
