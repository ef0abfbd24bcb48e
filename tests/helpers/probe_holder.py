"""A probe that takes kernel objects in a container and holds them until ended."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class ProbeHolder:
    """`probe KIND N SECONDS` (ptyhold, inotifyhold …) running in a container through ctctl exec:
    its first line says how many it got; it holds them until end() or SECONDS."""

    def __init__(self, ctd, name: str, kind: str, count: int, seconds: int = 60) -> None:  # type: ignore[no-untyped-def]
        self.proc = subprocess.Popen([sys.executable, "-m", "ctctl.main", "--socket", str(ctd.socket), "exec", name,
                                      "--", "probe", kind, str(count), str(seconds)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     text=True, cwd=REPO)
        assert self.proc.stdout is not None
        self.report = self.proc.stdout.readline().strip()

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # by PID: the ctctl this test started (ctd ends the command inside)
        self.proc.wait(10)
