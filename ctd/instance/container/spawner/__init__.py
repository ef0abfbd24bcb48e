"""The spawner: ctd's single-threaded fork server, and the protocol ctd speaks with it.

ctd execs it at start-up (`python -P -m ctd.instance.container.spawner`, a lean interpreter:
every fork from it is cheap). The package holds three programs, each in a module of its own:

- `server`: the fork server's loop. A child subreaper: container inits end up as its children,
  and it reports their exit status to ctd. It dies with ctd (PDEATHSIG); the containers do
  not (a restarted ctd adopts them by pid and start time). It keeps the next container's init
  forked ahead (a *standby*) and hands a start's root to it.
- `init`: what runs in a container's namespaces until the guest's init: the standby's maker,
  the waiting init, its mount plan.
- `helpers`: a process forked per request about a running container (exec, a netlink socket
  in its network namespace, devpts' max=, lxcfs' files bound again).

This module is their common vocabulary, and all of the spawner ctd imports: one JSON message
per SOCK_SEQPACKET packet, fds by SCM_RIGHTS. The spawner's modules import nothing they do not
use (not even `typing`): whatever it imports is resident in it, and the forks it makes for every
start copy the pages they touch.

Protocol (SOCK_SEQPACKET, one JSON message per packet, fds by SCM_RIGHTS):
  -> {"id", "op": "spawn", "spec"}  fds: [console pty slave]
  <- {"id", "pid"}                  fds: [go pipe write end, exec-error pipe read end,
                                          a NETLINK_ROUTE socket in its network namespace]
     init waits for "1" on the go pipe; meanwhile ctd moves it into the container's cgroups
     and plugs its NICs. Then init makes its cgroup namespace and execs.
  -> {"id", "op": "exec", "spec"}   fds: [stdin, stdout, stderr], or none with spec.tty
  <- {"id", "pid"} then {"id", "exit": code}
                                    fds with the pid: [the pty master] with spec.tty (a pty of
                                    the container's own devpts)
  -> {"id", "op": "netns_socket", "spec": {"init_pid"}}  <- {"id", "ok": true}  fds: [netlink socket]
  -> {"id", "op": "devpts_max", "spec": {"init_pid", "privileged", "numpty"}}  <- {"id", "ok": true}
                                    a running container's /dev/pts remounted with a new max=
  -> {"id", "op": "lxcfs_rebind", "spec": {"init_pid", "privileged", "binds"}}  <- {"id", "ok": true}
                                    a new lxcfs' files bound over a running container's dead ones
  <- {"id", "error": text}          the request failed; nothing was left running
  <- {"id", "helper_exit": status}  the helper process that served id is gone
  <- {"event": "exit", "pid", "status"}  a container init (or other orphan) was reaped
  <- {"event": "standby", "pid"}    an init made ahead waits; a spawn request may name it
                                    ("standby": pid) once ctd has put it in cgroups ahead
  <- {"event": "standby_gone", "pid"}  it died before a start took it
  -> {"op": "refill"}               a start is done: make the next standby now (no reply)
  -> {"id", "op": "owners", "spec": {"uids"}}  <- {"id", "ok": true}
                                    the user-namespace owners of running containers this spawner
                                    did not start (adopted by ctd); standbys wait for this word
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
import traceback
from collections.abc import Iterator

TYPE_CHECKING = False   # not typing's: importing typing would grow the spawner (mypy takes it as true)
if TYPE_CHECKING:
    from typing import Any, TypedDict

    Wire = dict[str, Any]   # a request's arguments as JSON (spec.py's to_wire, or a few by hand)

    class Message(TypedDict, total=False):
        """A message between ctd and the spawner (JSON, one a packet). What it holds depends on
        what it is: a request (id, op, spec, standby), a reply to one (id with ok, error, pong,
        pid and owner, exit or helper_exit) or an event of the spawner's (event, pid, status)."""

        id: int            # a request's number; its replies carry it
        op: str            # spawn, exec, ping, owners, refill, netns_socket, devpts_max, lxcfs_rebind
        spec: Wire
        standby: int       # spawn: the pid of the init made ahead that ctd staged for it
        ok: bool
        error: str         # the request failed: what to tell the user
        pong: int
        pid: int           # spawn's init, exec's process; an event's process
        owner: int         # spawn: the host uid owning the init's user namespace (0: privileged)
        exit: int          # exec: the process' exit code
        helper_exit: int   # the helper serving the request ended (its wait status): no more replies
        event: str         # exit, standby, standby_gone
        status: int        # exit: the wait status

MAX_MESSAGE = 1 << 16
_FD_SIZE = array.array("i").itemsize
MAX_FDS = 32  # a start hands its init the root, pipes, console and every bound host file
NO_PTY = "no pty left in the container"  # an exec's error text, which ctd turns into a Conflict


def send(sock: socket.socket, message: Message, fds: list[int] | tuple[int, ...] = ()) -> None:
    """One message, its fds (ours still: the caller closes them) by SCM_RIGHTS."""
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def recv(sock: socket.socket) -> tuple[Message | None, list[int]]:
    """One message and its fds; (None, []) when the peer has closed its end."""
    data, fds = recv_raw(sock)
    return (json.loads(data) if data else None), fds


def recv_raw(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One packet undecoded, its fds close-on-exec; (b"", []) when the peer has closed its end."""
    # close-on-exec: a container's init must not carry the error pipe (its EOF tells ctd that
    # init exec'd) or any other fd it was handed into the guest's program. (socket.recv_fds
    # ignores its flags argument.)
    data, ancillary, _flags, _addr = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * _FD_SIZE),
                                                  socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", payload[:len(payload) - len(payload) % _FD_SIZE]))
    if not data:
        for fd in fds:
            os.close(fd)
        return b"", []
    return data, fds


@contextlib.contextmanager
def borrowed(fd: int) -> Iterator[socket.socket]:
    """A socket object for an fd that stays ours to close."""
    sock = socket.socket(fileno=fd)
    try:
        yield sock
    finally:
        sock.detach()


def report(sock: socket.socket, req_id: int, exc: BaseException) -> None:
    """A request's failure, back to ctd as text (nothing if ctd is gone)."""
    try:
        send(sock, {"id": req_id, "error": describe(exc)})
    except OSError:
        pass


def describe(exc: BaseException) -> str:
    """An exception as the text ctd shows: an OSError's own words, else its type and message."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror if not exc.filename else f"{exc.strerror}: {exc.filename}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else "".join(traceback.format_exception(exc))[-500:]


