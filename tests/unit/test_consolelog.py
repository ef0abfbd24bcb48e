"""The console log's ring file, the read budget, a real pty drained into the ring, and what
ctctl shows of a guest's bytes on a terminal (no root needed)."""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from ctctl.termsafe import show
from ctd.instance import consolelog
from ctd.instance.consolehub import Budget
from ctd.instance.consolelog import CAPACITY, HEADER, RingLog
from ctd.instance.container.console import Console


def test_ring_keeps_what_fits_in_order(tmp_path: Path) -> None:
    path = consolelog.log_path(tmp_path, 7)
    assert consolelog.read(path) == b""          # never started
    ring = RingLog(path)
    ring.append(b"hello ")
    ring.append(b"world\n")
    assert consolelog.read(path) == b"hello world\n"
    assert oct(path.stat().st_mode & 0o777) == "0o600" and oct(path.parent.stat().st_mode & 0o777) == "0o700"
    ring.close()
    again = RingLog(path)                          # the next run goes on after the last
    again.append(b"second run\n")
    again.close()
    assert consolelog.read(path) == b"hello world\nsecond run\n"


def test_ring_never_grows_and_keeps_the_last_mebibyte(tmp_path: Path) -> None:
    path = consolelog.log_path(tmp_path, 1)
    ring = RingLog(path)
    written = bytearray()
    n = 0
    while len(written) < 5 * CAPACITY + 12345:     # odd chunk sizes: writes straddle the wrap
        chunk = (f"line {n:07d} " + "x" * (n % 97) + "\n").encode()
        ring.append(chunk)
        written += chunk
        n += 1
        if n % 500 == 0:
            assert path.stat().st_size <= HEADER + CAPACITY
    ring.append(b"Y" * (CAPACITY + 5000) + b"END\n")   # one write larger than the ring
    written += b"Y" * (CAPACITY + 5000) + b"END\n"
    ring.close()
    assert path.stat().st_size == HEADER + CAPACITY
    assert consolelog.read(path) == bytes(written[-CAPACITY:])


def test_wrap_lands_on_the_boundary(tmp_path: Path) -> None:
    path = consolelog.log_path(tmp_path, 2)
    ring = RingLog(path)
    ring.append(b"a" * (CAPACITY - 3))
    ring.append(b"bcdefg")                         # 3 before the end, 3 at the start
    ring.close()
    assert consolelog.read(path) == b"a" * (CAPACITY - 6) + b"bcdefg"


def test_a_file_not_of_the_layout_starts_afresh(tmp_path: Path) -> None:
    path = consolelog.log_path(tmp_path, 3)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a ring at all" * 10)
    assert consolelog.read(path) == b""
    ring = RingLog(path)
    ring.append(b"fresh\n")
    ring.close()
    assert consolelog.read(path) == b"fresh\n"
    # a header claiming more than the file holds (truncated by hand) is not trusted either
    with path.open("r+b") as fh:
        fh.truncate(HEADER + 2)
    assert consolelog.read(path) == b""


def test_a_symlink_in_place_of_the_log_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    path = consolelog.log_path(tmp_path, 4)
    path.parent.mkdir(parents=True)
    path.symlink_to(target)
    with pytest.raises(OSError):
        RingLog(path)
    assert consolelog.open_ring(path) is None       # the console works unlogged
    assert target.read_bytes() == b"precious"


def test_remove_and_sweep(tmp_path: Path) -> None:
    for i in (1, 2, 3):
        RingLog(consolelog.log_path(tmp_path, i)).close()
    (consolelog.log_dir(tmp_path) / "notes.txt").write_text("left alone")
    consolelog.remove(tmp_path, 1)
    consolelog.remove(tmp_path, 1)                  # twice: no error
    assert consolelog.sweep(tmp_path, {3}) == ["2.log"]
    assert sorted(p.name for p in consolelog.log_dir(tmp_path).iterdir()) == ["3.log", "notes.txt"]
    assert consolelog.sweep(tmp_path / "nowhere", set()) == []


def test_budget_lets_a_burst_through_then_spaces_reads() -> None:
    budget = Budget(rate=1000, burst=500)
    assert budget.take(400) == 0
    wait = budget.take(400)                         # 300 over: 0.3 s at 1000/s
    assert 0.25 < wait <= 0.3
    time.sleep(0.31)
    assert budget.take(1) == 0


def test_pty_drained_into_the_ring_and_throttled(tmp_path: Path) -> None:
    """A real pty: what the guest side writes reaches the ring with nobody attached; a flood
    beyond the budget makes ctd stop reading (the writer blocks) instead of spinning."""
    path = consolelog.log_path(tmp_path, 9)

    async def scenario() -> None:
        master, slave = os.openpty()
        console = Console(master, RingLog(path))
        console._budget = Budget(rate=64 * 1024, burst=16 * 1024)   # small, so the test is short
        console.attach_loop(asyncio.get_running_loop())
        seen: list[bytes] = []
        console.subscribe(seen.append)
        os.set_blocking(slave, False)
        written = 0
        t0 = time.monotonic()
        blocked = False
        while time.monotonic() - t0 < 1.5:         # the guest writes as fast as it can
            try:
                written += os.write(slave, b"z" * 4096)
            except BlockingIOError:
                blocked = True
            await asyncio.sleep(0)
        await asyncio.sleep(0.3)
        got = sum(len(s) for s in seen)
        # read no faster than the budget (burst + rate x time, with slack), and the writer felt it
        assert got <= 16 * 1024 + 64 * 1024 * 1.9, got
        assert blocked and written < 1 << 20
        assert consolelog.read(path) == b"".join(seen)
        os.close(slave)
        console.close()
        assert seen[-1] == b""                        # attached clients are told it is gone

    asyncio.run(scenario())


def test_termsafe_neutralises_escape_sequences() -> None:
    raw = (b"\x1b[0;32m  OK  \x1b[0m Started foo.\r\n"        # colour: dropped
           b"\x1b]0;pwned\x07title\n"                          # OSC (window title): shown
           b"\x1b]52;c;ZXZpbA==\x07clipboard\n"                # OSC 52 (clipboard): shown
           b"hidden\rvisible\ttab\n"                            # a lone CR: shown
           b"\xe2\x80\xaeevil\n"                                # bidi override U+202E: shown
           b"\xff\xfe bad utf-8\n")
    text = show(raw)
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text and "\u202e" not in text
    assert text.splitlines() == [
        "  OK   Started foo.",
        "\\x1b]0;pwned\\x07title",
        "\\x1b]52;c;ZXZpbA==\\x07clipboard",
        "hidden\\x0dvisible\ttab",
        "\\u202eevil",
        "\ufffd\ufffd bad utf-8",
    ]


def test_serial_console_reads_unattended_shares_the_line_and_ends_with_qemu(tmp_path: Path) -> None:
    """A unix socket server stands in for QEMU's serial chardev: ctd's one connection logs what
    it sends with nobody attached, carries a client's keystrokes, and tells clients at its end."""
    from ctd.instance.vm.serial import SerialConsole

    path = consolelog.log_path(tmp_path, 5)
    sock = tmp_path / "serial.sock"

    async def scenario() -> None:
        got: list[bytes] = []
        connected = asyncio.Event()
        writers: list[asyncio.StreamWriter] = []

        async def qemu(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            connected.set()
            writer.write(b"Linux version 6.1\r\nbooted\r\n")
            await writer.drain()
            got.append(await reader.readexactly(5))

        server = await asyncio.start_unix_server(qemu, path=str(sock))
        console = SerialConsole(sock, RingLog(path))
        await console.connect()
        await asyncio.wait_for(connected.wait(), 5)
        seen: list[bytes] = []
        for _ in range(100):
            if b"booted" in console.backlog():
                break
            await asyncio.sleep(0.01)
        console.subscribe(seen.append)
        console.write(b"ls -l")
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.01)
        assert got == [b"ls -l"]
        writers[0].write(b"total 0\r\n")
        await writers[0].drain()
        writers[0].close()                       # QEMU exits
        server.close()
        for _ in range(100):
            if seen and seen[-1] == b"":
                break
            await asyncio.sleep(0.01)
        assert seen[-1] == b"" and b"total 0" in b"".join(seen)
        assert consolelog.read(path) == b"Linux version 6.1\r\nbooted\r\ntotal 0\r\n"

    asyncio.run(scenario())
