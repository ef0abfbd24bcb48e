"""Why an instance stopped, in words a user can act on: exit code, signal, OOM kill, reboot or
poweroff from inside, a stop or kill by ctd. Logged and kept as the instance's last exit."""

from __future__ import annotations

import datetime as dt
import os
import signal
from dataclasses import dataclass
from enum import Enum

from ctd.state.records import LastExit


class ExitKind(str, Enum):
    EXITED = "exited"        # init returned; code
    SIGNALED = "signaled"    # init died of a signal nobody in ctd sent
    OOM = "oom"              # the kernel's OOM killer ended init
    REBOOT = "reboot"        # reboot(2) inside: the pid namespace's init gets SIGHUP
    POWEROFF = "poweroff"    # poweroff/halt inside: SIGINT
    STOPPED = "stopped"      # ctd's stop (its stop signal) ended it
    KILLED = "killed"        # ctd's SIGKILL (stop timed out, --kill, destroy --force)
    UNKNOWN = "unknown"      # not ctd's child any more (ctd restarted), or it died while ctd was away


@dataclass(frozen=True)
class ExitReport:
    kind: ExitKind
    text: str
    at: str
    code: int | None = None
    signal: str | None = None
    oom_kills: int = 0

    def as_dict(self) -> LastExit:
        return {"kind": self.kind.value, "text": self.text, "at": self.at, "code": self.code,
                "signal": self.signal, "oom_kills": self.oom_kills}


def _signame(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def describe(status: int | None, *, requested: bool, killed: bool, oom_kills: int = 0,
             lost: bool = False, what: str = "init") -> ExitReport:
    """status: the wait status of init (None if unknown). requested: a stop by ctd was under way;
    killed: ctd sent SIGKILL; oom_kills: the OOM killer's count in its cgroup during this run;
    lost: it ended while ctd was not running; what: the process whose end it is (init, QEMU)."""
    oom_note = f"; the OOM killer ended {oom_kills} process(es) in it" if oom_kills else ""
    if status is None:  # not ctd's child (adopted after a restart; QEMU daemonises): no wait status
        if lost:
            return ExitReport(ExitKind.UNKNOWN, f"stopped; it ended while ctd was not running{oom_note}", now(),
                              oom_kills=oom_kills)
        if killed:
            return ExitReport(ExitKind.KILLED, f"killed by ctd (SIGKILL){oom_note}", now(), oom_kills=oom_kills)
        if requested:
            return ExitReport(ExitKind.STOPPED, f"stopped by ctd{oom_note}", now(), oom_kills=oom_kills)
        why = " (ctd was restarted since it started)" if what == "init" else ""
        return ExitReport(ExitKind.UNKNOWN, f"{what} ended; its exit status did not reach ctd{why}{oom_note}", now(),
                          oom_kills=oom_kills)
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        if requested:
            return ExitReport(ExitKind.STOPPED, f"stopped by ctd ({what} exited with code {code}){oom_note}", now(),
                              code=code, oom_kills=oom_kills)
        return ExitReport(ExitKind.EXITED, f"{what} exited with code {code}{oom_note}", now(), code=code,
                          oom_kills=oom_kills)
    number = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
    name = _signame(number)
    if killed and number == signal.SIGKILL:
        kind, text = ExitKind.KILLED, "killed by ctd (SIGKILL)"
    elif requested:
        kind, text = ExitKind.STOPPED, f"stopped by ctd ({what} ended by {name})"
    elif number == signal.SIGHUP and what == "init":  # a pid namespace's reboot(2)
        kind, text = ExitKind.REBOOT, "rebooted from inside (reboot)"
    elif number == signal.SIGINT and what == "init":
        kind, text = ExitKind.POWEROFF, "powered off from inside (poweroff or halt)"
    elif number == signal.SIGKILL and oom_kills:
        return ExitReport(ExitKind.OOM, f"{what} killed by the OOM killer (out of memory in its limit; "
                                        f"{oom_kills} OOM kill(s) in its cgroup)", now(), signal=name,
                          oom_kills=oom_kills)
    else:
        kind, text = ExitKind.SIGNALED, f"{what} killed by {name}"
    return ExitReport(kind, text + oom_note, now(), signal=name, oom_kills=oom_kills)
