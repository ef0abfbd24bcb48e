"""ctd writing into a guest's root from the host (ctctl set: resolv.conf, hostname, keys ...)
as host root: a tenant's symlinks must not send the write out of the root, and a tenant's
FIFO or device must not hang or hijack the daemon."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path



def _plant(ctd, name: str, script: str) -> None:  # type: ignore[no-untyped-def]
    r = ctd.sh(name, script)
    assert r.code == 0, r.err


def test_symlinked_file_is_replaced_not_followed(ctd, make, tmp_path):
    canary = tmp_path / "canary"
    canary.write_text("host-canary\n")
    name = make()
    _plant(ctd, name, f"rm -f /etc/resolv.conf; ln -s {canary} /etc/resolv.conf")
    assert ctd.ctl("set", name, "--nameserver", "192.0.2.53").code == 0
    assert canary.read_text() == "host-canary\n"
    assert ctd.sh(name, "cat /etc/resolv.conf; [ -L /etc/resolv.conf ] && echo link").out.split() == \
        ["nameserver", "192.0.2.53"]


def test_symlinked_directory_stays_inside(ctd, make, tmp_path):
    """/etc -> the host directory holding a canary: resolved inside the root (RESOLVE_IN_ROOT)."""
    (tmp_path / "resolv.conf").write_text("host-canary\n")
    name = make()
    _plant(ctd, name, f"mv /etc /etc.real; mkdir -p {tmp_path}; ln -s {tmp_path} /etc")
    ctd.ctl("set", name, "--nameserver", "192.0.2.53")
    assert (tmp_path / "resolv.conf").read_text() == "host-canary\n"
    assert sorted(os.listdir(tmp_path)) == ["resolv.conf"]


def test_fifo_does_not_hang_the_daemon(ctd, make):
    """A FIFO where ctd writes: open(O_WRONLY) of a FIFO waits for a reader forever -- in a
    thread of ctd's, holding the instance's lock, and keeping ctd from ever exiting cleanly."""
    name = make()
    _plant(ctd, name, "rm -f /etc/resolv.conf; mkfifo /etc/resolv.conf")
    fifo = ctd.rootfs(name) / "etc/resolv.conf"
    try:
        r = ctd.ctl("set", name, "--nameserver", "192.0.2.53", timeout=20)
        hung = False
    except subprocess.TimeoutExpired:
        hung = True
    finally:
        _drain(fifo)
    assert not hung, "ctctl set hung on a FIFO the tenant put at /etc/resolv.conf"
    assert r.code != 0 or ctd.sh(name, "[ -p /etc/resolv.conf ] || echo replaced").out.strip() == "replaced"
    # and the daemon still answers for this instance
    assert ctd.ctl("set", name, "--nameserver", "192.0.2.54", timeout=20).code in (0, 1)


def _drain(fifo: Path) -> None:
    """Release a writer blocked on the FIFO (if any) by opening it for reading, from the host."""
    try:
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return
    threading.Event().wait(0.5)
    try:
        os.read(fd, 65536)
    except OSError:
        pass
    os.close(fd)


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_huge_guest_file_is_not_read_whole(ctd, make):
    """/etc/machine-id (33 bytes when sane) made a sparse 128 MiB file: ctd reads it to check
    it; it must read a bounded amount, not load the tenant's file whole into the daemon (a
    sparse 1 TiB one would take the host's memory)."""
    name = make()
    _plant(ctd, name, "rm -f /etc/machine-id; truncate -s 128M /etc/machine-id")
    before = _peak_rss(ctd.proc.pid)
    ctd.ctl("set", name, "--nameserver", "192.0.2.53", timeout=60)
    grown = _peak_rss(ctd.proc.pid) - before
    assert grown < 32 << 20, f"ctd's peak RSS grew by {grown >> 20} MiB reading the guest's machine-id"
