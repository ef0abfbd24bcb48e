"""The fencing watchdog: a small process beside ctd that kills this node's running HA instances
when ctd has not renewed its cluster lease in time, also when ctd itself cannot (killed with
SIGKILL, stopped with SIGSTOP, hung). docs/cluster.md, "Fencing".

ctd (ha.py) writes FILE (JSON, replaced atomically) every half second:

    {"ctd": PID of ctd, "deadline": CLOCK_MONOTONIC seconds, "instances": [{"name", "pid", "start"}]}

`deadline` is the last lease renewal etcd granted plus the TTL minus a margin: the instant after
which the lease may have lapsed and another node may start the instances. CLOCK_MONOTONIC is one
clock for every process of the host. Past the deadline the watchdog SIGKILLs each listed
instance's init (its pid, checked against its start time so that a recycled pid is never hit):
a container's init killed takes its whole pid namespace with it.

It ends when FILE is gone (ctd stopped cleanly) or names another ctd (a new one started its own
watchdog), or when its ctd is gone and nothing is left to kill. Standard library only: it must
not depend on ctd's state, and it runs in its own session so that signals to ctd's do not reach it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

TICK = 0.2


def start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    return int(raw[raw.rindex(b")") + 2:].split()[19])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read(path: str) -> dict[str, object] | None:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}   # half-written cannot be (it is replaced atomically); unreadable: keep the last
    return data if isinstance(data, dict) else {}


def kill_due(data: dict[str, object], now: float, done: set[tuple[int, int]] | None = None) -> list[str]:
    """The instances killed (their inits SIGKILLed) because the deadline passed; `done` holds
    the (pid, start) already killed (a killed init stays a zombie until ctd reaps it)."""
    deadline = data.get("deadline")
    if not isinstance(deadline, (int, float)) or now <= deadline:
        return []
    killed = []
    for entry in data.get("instances") or []:   # type: ignore[attr-defined]
        if not isinstance(entry, dict):
            continue
        pid, start = entry.get("pid"), entry.get("start")
        if isinstance(pid, int) and pid > 1 and isinstance(start, int) and start_time(pid) == start \
                and (pid, start) not in (done or set()):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(str(entry.get("name")))
            except ProcessLookupError:
                pass
            if done is not None:
                done.add((pid, start))
    return killed


def main(path: str, ctd: int) -> int:
    last: dict[str, object] = {}
    done: set[tuple[int, int]] = set()
    while True:
        data = read(path)
        if data is None:
            return 0
        if data:
            if data.get("ctd") != ctd:
                return 0   # a new ctd writes it now, with its own watchdog
            last = data
        for name in kill_due(last, time.monotonic(), done):
            print(f"ctd fence: lease not renewed by the deadline; killed HA instance {name}", file=sys.stderr,
                  flush=True)
        if not alive(ctd) and isinstance(last.get("deadline"), (int, float)) \
                and time.monotonic() > float(last["deadline"]) + 1:   # type: ignore[arg-type]
            return 0   # ctd is gone and its instances were killed: a new ctd starts a new watchdog
        time.sleep(TICK)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
