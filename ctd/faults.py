"""Crash points for tests: CTD_FAULT=NAME makes ctd die by SIGKILL when it reaches point NAME.

`CTD_FAULT=NAME#N` dies at the Nth time NAME is reached instead of the first. The variable is
read once, at import; without it `point()` costs one comparison. tests/robustness finds every
`faults.point("...")` in the source and crashes ctd at each of them in turn.
"""

from __future__ import annotations

import logging
import os
import signal

_SPEC = os.environ.get("CTD_FAULT") or None
_NAME, _, _NTH = (_SPEC or "").partition("#")
_WANTED = int(_NTH) if _NTH.isdigit() else 1
_hits = 0


def point(name: str) -> None:
    """Die here (SIGKILL, as `kill -9` would) when CTD_FAULT names this point."""
    global _hits
    if _SPEC is None or name != _NAME:
        return
    _hits += 1
    if _hits < _WANTED:
        return
    logging.getLogger("ctd.faults").critical("CTD_FAULT: dying at %s (hit %d)", name, _hits)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)
