"""Runs crun for the benchmark inside a private mount namespace.

crun 1.8 refuses this host's hybrid cgroup layout (cgroup2 at /sys/fs/cgroup/unified with
hugetlb), so run.py starts this agent as
    unshare -m --propagation private PYTHON crun_agent.py --bind MOUNTPOINT=DIR ...
It unmounts /sys/fs/cgroup/unified and bind-mounts, over every v1 hierarchy's mount point, the
directory run.py created for crun below the benchmark's own cgroup. crun then sees that
directory as the hierarchy root, so cgroupsPath "/NAME" lands below our own cgroup (crun
applies one path to every hierarchy, and our memory cgroup is not "/"). None of this is in
the timed runs.

It is also the console-socket receiver (crun run -d with terminal: true hands the pty master
to it, like conmon would) and a child subreaper (crun's container inits end up as its
children; it reaps them, as the ctd spawner and LXC's monitor do for theirs).

Protocol: one JSON object per line on stdin, one JSON reply per line on stdout; every reply
carries the request's "id" (a client interrupted by Ctrl-C skips the replies it missed).
  {"op": "run", "argv": [...], "cwd": DIR}   -> {"rc", "ms", "out", "err"}  (timed here)
  {"op": "kill_wait", "root": R, "name": N, "pid": P} -> {"rc", "ms", "err"}
        crun kill N KILL, then wait until init P is gone (the "stop" of the cycle)
  {"op": "close_consoles"} -> {"closed": n}
  {"op": "quit"}
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

PR_SET_CHILD_SUBREAPER = 36


class ConsoleReceiver:
    """Accepts crun's --console-socket connections and keeps the pty masters open."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fds: list[int] = []
        self.lock = threading.Lock()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(128)
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    _msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 4)
                except OSError:
                    continue
            with self.lock:
                self.fds.extend(fds)

    def close_all(self) -> int:
        with self.lock:
            fds, self.fds = self.fds, []
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        return len(fds)


def reap_orphans() -> None:
    """Zombies handed to us (container inits); only call when no subprocess is running."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def setup(binds: list[str]) -> None:
    if os.path.ismount("/sys/fs/cgroup/unified"):
        subprocess.run(["umount", "/sys/fs/cgroup/unified"], check=True)
    for item in binds:
        mountpoint, _, source = item.partition("=")
        subprocess.run(["mount", "--bind", source, mountpoint], check=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--bind", action="append", default=[], help="MOUNTPOINT=DIR")
    p.add_argument("--console-socket", required=True)
    args = p.parse_args()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # run.py decides when we stop
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    out = sys.stdout
    try:
        setup(args.bind)
        consoles = ConsoleReceiver(args.console_socket)
    except Exception as exc:  # noqa: BLE001
        out.write(json.dumps({"ready": False, "error": str(exc)}) + "\n")
        out.flush()
        return 1
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        if op == "run":
            t0 = time.perf_counter()
            r = subprocess.run(req["argv"], cwd=req.get("cwd"), stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=req.get("timeout", 60))
            ms = (time.perf_counter() - t0) * 1000
            reply = {"rc": r.returncode, "ms": ms, "out": r.stdout.decode(errors="replace"),
                     "err": r.stderr.decode(errors="replace")}
        elif op == "kill_wait":
            pid = req["pid"]
            t0 = time.perf_counter()
            r = subprocess.run(["crun", "--root", req["root"], "kill", req["name"], "KILL"],
                               stdin=subprocess.DEVNULL, capture_output=True)
            err = r.stderr.decode(errors="replace")
            try:
                os.waitpid(pid, 0)  # our child: we are the subreaper crun's init was left to
            except ChildProcessError:
                # not ours after all: wait for it to disappear
                while os.path.exists(f"/proc/{pid}"):
                    time.sleep(0.0005)
            ms = (time.perf_counter() - t0) * 1000
            reply = {"rc": r.returncode, "ms": ms, "err": err}
        elif op == "close_consoles":
            reply = {"closed": consoles.close_all()}
        elif op == "quit":
            consoles.close_all()
            out.write(json.dumps({"bye": True, "id": req.get("id")}) + "\n")
            out.flush()
            return 0
        else:
            reply = {"error": f"unknown op {op!r}"}
        reap_orphans()
        reply["id"] = req.get("id")
        out.write(json.dumps(reply) + "\n")
        out.flush()
    consoles.close_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
