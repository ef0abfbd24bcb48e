"""The spawner: a single-threaded fork server that starts containers and exec sessions.

ctd execs it at start-up (a lean interpreter: every fork from it is cheap). It is a child
subreaper: container inits end up as its children, and it reports their exit status to ctd. It
dies with ctd (PDEATHSIG); the containers do not — a restarted ctd adopts them by pid and start
time.

A container's init is forked ahead of its start (a *standby*): a short-lived maker process
makes fresh user, network, IPC, UTS and pid namespaces, installs the default seccomp filter and
forks the pid namespace's first process, which waits on a socket. A start then costs no fork and
no namespace creation: the spawner gives the user namespace the container's id maps, clones the
root filesystem (and the host files bound into it) as detached mounts, and hands them to the
waiting init, which builds its mounts and execs. The next standby is made a moment later.

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

User-namespace owners. The kernel charges what a container's processes take of the per-user
limits (inotify instances and watches, user namespaces, RLIMIT_NPROC/MEMLOCK/MSGQUEUE/
SIGPENDING counts) at the host level to the uid that created its user namespace. A maker of
an unprivileged standby therefore becomes a uid of its own before it unshares: one of the 65536
ids just below ctd's first container range (OWNER_IDS of them), reserved for this, never the uid of
a host process (such a process would hold every capability in the container's user
namespace), and never that of two live containers at once. So each container has the host's
per-user limits (fs.inotify.max_user_instances …) to itself, and host root keeps its own.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import gc
import json
import os
import resource
import select
import signal
import socket
import stat
import termios
import time
import traceback
from dataclasses import dataclass
from collections.abc import Iterator
from typing import NoReturn

import prctl

from ctd.instance.container.spec import (
    ContainerSpec, ExecSpec, MountStep, StepKind, container_from_wire, devpts_options, exec_from_wire,
)
from ctd.linux import capabilities, seccomp
from ctd.linux import syscalls as sc
from ctd.linux.openat2 import open_in_root

MAX_MESSAGE = 1 << 16
_spawner_pid = 0  # set in serve(); its forks die with it
_FD_SIZE = array.array("i").itemsize
MAX_FDS = 32  # a start hands its init the root, pipes, console and every bound host file
CONTAINER_NAMESPACES = (sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET
                        | sc.CLONE_NEWPID | sc.CLONE_NEWCGROUP)
# What a standby's maker unshares; the mount namespace is made by init when its start comes
# (a copy of the host's mounts as they are then), the cgroup namespace once ctd has moved it.
STANDBY_NAMESPACES = sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET | sc.CLONE_NEWPID


def send(sock: socket.socket, message: dict, fds: list[int] | tuple[int, ...] = ()) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def recv(sock: socket.socket) -> tuple[dict | None, list[int]]:
    data, fds = recv_raw(sock)
    return (json.loads(data) if data else None), fds


def recv_raw(sock: socket.socket) -> tuple[bytes, list[int]]:
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


# ---------------------------------------------------------------- the server loop

RETRY_DELAY = 1.0  # s, after a standby could not be made
REFILL_DELAY = 0.03  # s: a standby is made only a moment after the last start: earlier, it
#                           would take a CPU from that start


@dataclass
class Standby:
    """A container init forked ahead, waiting for its start on its control socket."""

    maker: int             # the process that made its namespaces (reaped without a word)
    control: int           # the spawner's end of init's control socket
    privileged: bool       # no user namespace of its own
    deny: tuple[str, ...] = seccomp.DEFAULT_DENY  # the seccomp filter its maker installed
    owner: int = 0         # the host uid that owns its user namespace (0: privileged)
    pid: int = 0           # init's pid, once the maker has reported it
    netns_socket: int = -1  # a NETLINK_ROUTE socket in its network namespace, from the maker
    error: str = ""        # why the maker failed (pid is -1 then)

    def fds(self) -> list[int]:
        return [fd for fd in (self.control, self.netns_socket) if fd >= 0]

    def close(self) -> None:
        for fd in self.fds():
            os.close(fd)
        self.control = self.netns_socket = -1


OWNER_IDS = 65536  # the block of owner uids, just below ctd's first container id range
# RLIMIT_NOFILE as the spawner had it, when a maker raised its hard limit for its init to set
# the container's numfile from (init may only lower it: it is no host root).
_nofile_default: tuple[int, int] | None = None


def serve(sock: socket.socket, parent_pid: int, owner_base: int = 0) -> None:
    """Run until ctd closes its end of the socket (or dies)."""
    prctl.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent_pid:  # ctd died before PDEATHSIG was armed
        os._exit(0)
    global _spawner_pid
    _spawner_pid = os.getpid()
    prctl.set_child_subreaper(True)
    prctl.set_name("ctd-spawner")
    capabilities.warm()
    seccomp.warm()
    # Helpers and inits are short-lived forks: a collection there would touch (and copy) every
    # page of ours. Nothing here builds reference cycles worth collecting.
    gc.disable()
    gc.freeze()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # ctd decides when we go, by closing the socket
    server = _Server(sock, (wake_r, wake_w), owner_base)
    while True:
        server.step()


class _Server:
    def __init__(self, sock: socket.socket, own_fds: tuple[int, int], owner_base: int = 0) -> None:
        self.sock = sock
        self.own_fds = own_fds
        self.owner_base = owner_base  # 0: user namespaces owned by root, as before
        self.owners_known = not owner_base  # standbys wait until ctd names its adopted owners
        self.adopted_owners: set[int] = set()
        self.init_owners: dict[int, int] = {}  # init pid -> owner uid, for inits we started
        # Where the search for a free owner starts: another ctd on this host (tests run several)
        # most likely starts elsewhere, so their containers rarely share an owner.
        self.next_owner = int.from_bytes(os.urandom(2), "little")
        self.helpers: dict[int, int] = {}    # helper pid -> request id
        self.standbys: list[Standby] = []    # unprivileged inits forked ahead (off the start path)
        self.quiet: set[int] = set()         # pids reaped without a word to ctd
        self.refill_at = 0.0
        self.last_wrapped = b""  # the last start's message to its init: standbys rehearse it

    def inherited_fds(self) -> list[int]:
        """What every fork of ours must close at once."""
        return [self.sock.fileno(), *self.own_fds, *(fd for s in self.standbys for fd in s.fds())]

    def step(self) -> None:
        wake_r = self.own_fds[0]
        pending = {s.control: s for s in self.standbys if not s.pid}
        idle = self.standbys or not self.owners_known
        timeout = None if idle else max(0.0, self.refill_at - time.monotonic())
        ready, _, _ = select.select([self.sock, wake_r, *pending], [], [], timeout)
        if not ready:  # due, and nobody waits for us
            self.standbys.append(self.make_standby(privileged=False))
            return
        for fd in ready:
            if fd in pending:
                self.take_report(pending[fd])
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            self.reap()
        if self.sock in ready:
            data, fds = recv_raw(self.sock)
            if not data:
                os._exit(0)
            message = json.loads(data)
            try:
                if message.get("op") == "spawn":
                    if self.spawn(message, data, fds):  # the next standby after this start
                        self.refill_at = time.monotonic() + REFILL_DELAY
                elif message.get("op") == "refill":  # ctd's start is done: the CPU is free again
                    self.refill_at = time.monotonic()
                elif message.get("op") == "owners":
                    self.adopted_owners = {int(u) for u in message["spec"]["uids"]}
                    self.owners_known = True
                    send(self.sock, {"id": message["id"], "ok": True})
                else:
                    pid = _dispatch(self.sock, message, fds, self.inherited_fds())
                    if pid:
                        self.helpers[pid] = message["id"]
            finally:
                for fd in fds:
                    os.close(fd)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.init_owners.pop(pid, None)  # its owner uid is free again
            if pid in self.quiet:
                self.quiet.discard(pid)
            elif pid in self.helpers:
                send(self.sock, {"id": self.helpers.pop(pid), "helper_exit": status})
            elif (dead := next((s for s in self.standbys if s.pid == pid), None)) is not None:
                self.standbys.remove(dead)  # died while it waited: another is made later
                dead.close()
                send(self.sock, {"event": "standby_gone", "pid": pid})
                self.refill_at = time.monotonic() + REFILL_DELAY
            else:
                send(self.sock, {"event": "exit", "pid": pid, "status": status})

    # ------------------------------------------------------------ standbys

    def free_owner(self) -> int:
        """A uid of the owner block that owns no live standby's or container's user namespace."""
        taken = {s.owner for s in self.standbys} | set(self.init_owners.values()) | self.adopted_owners
        for _ in range(OWNER_IDS):
            self.next_owner = (self.next_owner + 1) % OWNER_IDS
            if self.owner_base + self.next_owner not in taken:
                return self.owner_base + self.next_owner
        raise OSError(f"all {OWNER_IDS} user-namespace owner ids are taken")

    def make_standby(self, privileged: bool, ahead: bool = True,
                     deny: tuple[str, ...] = seccomp.DEFAULT_DENY) -> Standby:
        owner = self.free_owner() if self.owner_base and not privileged else 0
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        close_in_child = self.inherited_fds()
        maker = os.fork()
        if maker == 0:
            code = 1
            try:
                ours.close()
                for fd in close_in_child:
                    os.close(fd)
                _become_helper()
                _make_init(theirs, privileged, deny, owner, self.last_wrapped if ahead else b"")
                code = 0
            except BaseException as exc:  # noqa: BLE001 — the spawner hears of it as EOF or text
                try:
                    send(theirs, {"error": _describe(exc)})
                except OSError:
                    pass
            finally:
                os._exit(code)
        theirs.close()
        self.quiet.add(maker)
        return Standby(maker, ours.detach(), privileged, deny, owner)

    def take_report(self, standby: Standby) -> None:
        """The maker's word: init's pid and a netlink socket, or why there is none."""
        try:
            with _borrowed(standby.control) as control:
                report, fds = recv(control)
        except OSError as exc:
            report, fds = {"error": _describe(exc)}, []
        if report is None or "pid" not in report or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            if standby in self.standbys:
                self.standbys.remove(standby)
            standby.close()
            standby.pid = -1
            standby.error = (report or {}).get("error") or "its maker died"
            # Not at once again: what failed (no user namespaces left?) fails the next time too.
            self.refill_at = time.monotonic() + RETRY_DELAY
            return
        standby.pid = report["pid"]
        standby.netns_socket = fds[0]
        if standby in self.standbys:  # made ahead: ctd may put it in cgroups of its own meanwhile
            send(self.sock, {"event": "standby", "pid": standby.pid})

    def ready_standby(self, spec: ContainerSpec, wanted: int = 0) -> Standby:
        """The one ctd asked for if it is still there, else the oldest; made now if none was
        made ahead (privileged ones never are, nor ones whose seccomp filter lifts a default
        denial, such as io_uring: a filter cannot be undone)."""
        pooled = not spec.privileged and set(seccomp.DEFAULT_DENY) <= set(spec.seccomp_deny)
        chosen = next((s for s in self.standbys if wanted and s.pid == wanted), None)
        if pooled and chosen is not None:
            self.standbys.remove(chosen)
            standby = chosen
        elif pooled and self.standbys:
            standby = self.standbys.pop(0)
        else:  # wanted now: no rehearsal
            deny = tuple(n for n in spec.seccomp_deny if n in seccomp.DEFAULT_DENY)
            standby = self.make_standby(spec.privileged, ahead=False, deny=deny)
        if not standby.pid:
            select.select([standby.control], [], [])
            self.take_report(standby)
        if standby.pid < 0:
            raise OSError(f"making the container's init: {standby.error}")
        return standby

    # ------------------------------------------------------------ a start

    def spawn(self, message: dict, data: bytes, fds: list[int]) -> bool:
        """Whether it was an unprivileged start (one that standbys made ahead serve)."""
        req_id = message["id"]
        unprivileged = False
        standby: Standby | None = None
        handed: list[int] = []   # our copies of what init and ctd get
        try:
            spec = container_from_wire(message["spec"])
            unprivileged = not spec.privileged
            standby = self.ready_standby(spec, message.get("standby") or 0)
            console_fd = fds[0] if spec.console else None
            tree = _root_tree(spec, standby.pid)
            handed.append(tree)
            sources = _clone_sources(spec.mounts, console_fd)
            handed += sources.values()
            root_dir = os.open(spec.rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            handed.append(root_dir)
            go_r, go_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            handed += (go_r, go_w, err_r, err_w)
            order = sorted(sources)
            wrapped = b'{"sources": %s, "request": %s}' % (json.dumps(order).encode(), data)
            self.last_wrapped = wrapped
            with _borrowed(standby.control) as control:
                socket.send_fds(control, [wrapped],
                                [root_dir, tree, go_r, err_w, *([console_fd] if console_fd is not None else []),
                                 *(sources[i] for i in order)])
            send(self.sock, {"id": req_id, "pid": standby.pid, "owner": standby.owner},
                 [go_w, err_r, standby.netns_socket])
            if standby.owner:
                self.init_owners[standby.pid] = standby.owner
        except BaseException as exc:  # noqa: BLE001 — back to ctd as text
            if standby is not None and standby.pid > 0:
                self.quiet.add(standby.pid)   # it ends when it sees our ends closed
            _report(self.sock, req_id, exc)
        finally:
            for fd in handed:
                os.close(fd)
            if standby is not None:
                standby.close()
        return unprivileged


@contextlib.contextmanager
def _borrowed(fd: int) -> Iterator[socket.socket]:
    """A socket object for an fd that stays ours to close."""
    sock = socket.socket(fileno=fd)
    try:
        yield sock
    finally:
        sock.detach()


# Device nodes on the container's disk (a template's dev/console, a restored backup's
# dev/loop0) must open nothing, also through a bind of / made inside: nodev on the root; the
# /dev ctd builds is a tmpfs of bind-mounted host nodes and a devpts, unaffected.
ROOT_ATTRS = sc.MOUNT_ATTR_NODEV


def _root_tree(spec: ContainerSpec, init_pid: int) -> int:
    """The root filesystem as a detached mount (nodev); for an unprivileged container, after
    its user namespace got the container's id maps, shown through them."""
    if spec.privileged:
        return sc.private_clone(spec.rootfs, attr_set=ROOT_ATTRS)
    with open(f"/proc/{init_pid}/uid_map", "w") as fh:
        fh.write("\n".join(m.line() for m in spec.uid_map))
    with open(f"/proc/{init_pid}/gid_map", "w") as fh:
        fh.write("\n".join(m.line() for m in spec.gid_map))
    userns_fd = os.open(f"/proc/{init_pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return sc.private_clone(spec.rootfs, userns_fd=userns_fd, attr_set=ROOT_ATTRS)
    finally:
        os.close(userns_fd)


def _dispatch(sock: socket.socket, message: dict, fds: list[int], inherited: list[int]) -> int:
    """exec and netns_socket requests: each in a helper forked for it."""
    op = message.get("op")
    if op == "ping":
        send(sock, {"id": message["id"], "pong": os.getpid()})
        return 0
    if op not in ("exec", "netns_socket", "devpts_max", "lxcfs_rebind"):
        send(sock, {"id": message["id"], "error": f"unknown spawner op {op!r}"})
        return 0
    pid = os.fork()
    if pid:
        return pid
    # The helper: never returns into the server loop.
    code = 1
    try:
        for fd in inherited:
            if fd != sock.fileno():
                os.close(fd)
        _become_helper()
        if op == "netns_socket":
            _netns_socket(sock, message["id"], message["spec"]["init_pid"])
        elif op == "devpts_max":
            _devpts_max(sock, message["id"], message["spec"])
        elif op == "lxcfs_rebind":
            _lxcfs_rebind(sock, message["id"], message["spec"])
        else:
            _run_exec(sock, message["id"], exec_from_wire(message["spec"]), fds)
        code = 0
    except BaseException as exc:  # noqa: BLE001 — everything goes back to ctd as text
        _report(sock, message["id"], exc)
    finally:
        os._exit(code)


def _become_helper() -> None:
    """A forked helper undoes what only the server loop wants, and dies with the spawner:
    after a crash of ctd, no helper may go on to fork an init nobody will ever release."""
    _die_with_parent()
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    prctl.set_child_subreaper(False)


def _die_with_parent() -> None:
    """For forks of the spawner."""
    prctl.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != _spawner_pid:  # it died before that took hold
        os._exit(1)


def _report(sock: socket.socket, req_id: int, exc: BaseException) -> None:
    try:
        send(sock, {"id": req_id, "error": _describe(exc)})
    except OSError:
        pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror if not exc.filename else f"{exc.strerror}: {exc.filename}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else "".join(traceback.format_exception(exc))[-500:]


# ---------------------------------------------------------------- starting a container

def _make_init(control: socket.socket, privileged: bool, deny: tuple[str, ...], owner: int = 0,
               rehearsal: bytes = b"") -> None:
    """The maker: new namespaces, then their init, which waits for its start. The maker reports
    init's pid and exits; init, its parent gone, becomes the spawner's child (subreaper)."""
    # Every container's filter, installed as host root: init inherits it (a spec may only add).
    # Not the bounding set: setresuid in the container's user namespace keeps it, but it is
    # dropped by init where the spec says.
    if set(seccomp.ALWAYS_DENY) - set(deny):
        raise OSError("a container's seccomp filter must deny " + ", ".join(seccomp.ALWAYS_DENY))
    seccomp.install(deny)
    if owner:
        _unshare_as(owner)
    else:  # With CLONE_NEWUSER the user namespace is made first and owns the others.
        sc.unshare(STANDBY_NAMESPACES | (0 if privileged else sc.CLONE_NEWUSER))
    netns_socket = _netlink_socket()
    pid = os.fork()
    if pid == 0:
        netns_socket.close()
        # Nothing of ctd's while we wait, not even its log: stdio on /dev/null.
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        _standing_init(control, deny, rehearsal)
    send(control, {"pid": pid}, [netns_socket.fileno()])


def _unshare_as(owner: int) -> None:
    """The standby's namespaces, its user namespace owned by host uid owner (see the module's
    doc). Capabilities are kept across the uid change (no setuid fixup), so making the user
    namespace needs nothing a host policy may deny to unprivileged users."""
    global _nofile_default
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open") as fh:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile[0], int(fh.read())))
        _nofile_default = nofile  # init sets the container's numfile, or this again
    except (OSError, ValueError):  # a host root without CAP_SYS_RESOURCE: numfile up to this hard limit
        pass
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)
    # The container's processes count against the owner's RLIMIT_NPROC at the host level, with
    # the limit its creator has now (a non-root creator's is enforced): none where we may (pids.max
    # is the cap), else the hard one (a host root without CAP_SYS_RESOURCE).
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except ValueError:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc[1], nproc[1]))
    prctl.securebits.no_setuid_fixup = True
    os.setgroups([])
    os.setresgid(owner, owner, owner)
    os.setresuid(owner, owner, owner)
    sc.unshare(STANDBY_NAMESPACES | sc.CLONE_NEWUSER)
    # Nothing of that may reach the container: its programs must lose capabilities on setuid as
    # usual, and get the RLIMIT_NPROC they always had.
    prctl.securebits.no_setuid_fixup = False
    resource.setrlimit(resource.RLIMIT_NPROC, nproc)
    _die_with_parent()  # a change of uid clears the parent-death signal


def _standing_init(control: socket.socket, installed: tuple[str, ...], rehearsal: bytes) -> NoReturn:
    """pid 1 of the new pid namespace: waits for its start, builds the container, execs."""
    err_w = -1
    try:
        if rehearsal:
            # Parse the last start's request once while we wait: the pages Python writes doing
            # it (reference counts, caches) are copied from the spawner's now, not during our
            # start (a cold parse took ~0.36 ms, a warm one 0.09).
            try:
                container_from_wire(json.loads(rehearsal)["request"]["spec"])
            except Exception:  # noqa: BLE001 — only a rehearsal: the real start reports its own errors
                pass
        data, fds = recv_raw(control)
        if not data:  # the spawner is gone, or gave up on us
            os._exit(0)
        control.close()
        wrapped = json.loads(data)
        spec = container_from_wire(wrapped["request"]["spec"])
        root_dir, tree, go_r, err_w, *rest = fds
        console_fd = rest.pop(0) if spec.console else None
        sources = dict(zip(wrapped["sources"], rest))
        _container_init(spec, installed, root_dir, tree, console_fd, sources, go_r, err_w)
    except BaseException as exc:  # noqa: BLE001
        if err_w >= 0:
            try:
                os.write(err_w, _describe(exc).encode()[:4000])
            except OSError:
                pass
    os._exit(127)


def _container_init(spec: ContainerSpec, installed: tuple[str, ...], root_dir: int, tree: int,
                    console_fd: int | None,
                    sources: dict[int, int], go_r: int, err_w: int) -> None:
    """Until it execs the container's init."""
    # Stand in the root's directory: its host path may not be walkable by container root (the
    # storage directories are 0700). The new mount namespace keeps the working directory.
    os.fchdir(root_dir)
    os.close(root_dir)
    # A copy of the host's mounts as they are now, owned by the container's user namespace
    # (so they are locked in place); nothing made here may propagate back.
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    if spec.uid_map:  # become the container's root (the maps are written by now)
        os.setgroups([])
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    sc.sethostname(spec.hostname)
    _set_nofile(spec.nofile)
    # Keep only what init needs: the pipes to ctd, the root and the console; nothing else.
    _close_fds_except({go_r, err_w, tree} | set(sources.values()) |
                      ({console_fd} if console_fd is not None else set()))
    os.setsid()
    sc.move_mount(tree, ".")
    _run_mount_plan(tree, spec.mounts, sources, late=False)
    os.fchdir(tree)
    os.close(tree)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")
    if console_fd is not None:
        os.close(console_fd)
    if os.read(go_r, 1) != b"1":  # ctd gave up on this start
        os._exit(0)
    os.close(go_r)
    sc.unshare(sc.CLONE_NEWCGROUP)  # ctd has put us in the container's cgroups
    if any(m.in_cgroupns for m in spec.mounts):  # a systemd guest's cgroupfs: its subtree
        root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _run_mount_plan(root, spec.mounts, {}, late=True)
        finally:
            os.close(root)
    if spec.console:
        tty = os.open("/dev/console", os.O_RDWR | os.O_NOCTTY)
        fcntl.ioctl(tty, termios.TIOCSCTTY, 0)
    else:
        tty = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(tty, fd)
    if tty > 2:
        os.close(tty)
    _close_fds_except({err_w})
    _confine_further(spec, installed)
    _default_signals()
    os.execve(spec.init[0], spec.init, dict(e.split("=", 1) for e in spec.env))


def _set_nofile(nofile: int | None) -> None:
    """RLIMIT_NOFILE of init and all it starts: the container's numfile (container root may lower
    it later, never raise it), or what the spawner has."""
    wanted = (nofile, nofile) if nofile else _nofile_default
    if wanted is None:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, wanted)
    except ValueError:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        raise OSError(f"numfile {nofile} is above what this host lets ctd give (at most {hard}: "
                      "ctd lacks CAP_SYS_RESOURCE)") from None


def _confine_further(spec: ContainerSpec, installed: tuple[str, ...]) -> None:
    """init inherits the seccomp filter its standby's maker installed; a spec may only add to it
    (a filter cannot be undone). The bounding set is dropped here, in the container's user
    namespace."""
    missing = (set(seccomp.ALWAYS_DENY) | set(installed)) - set(spec.seccomp_deny)
    if missing:
        raise OSError(f"containers are always denied {', '.join(sorted(missing))}")
    capabilities.drop_bounding(spec.cap_drop)
    extra = [n for n in spec.seccomp_deny if n not in installed]
    if extra:
        seccomp.install(extra)


def _clone_sources(steps: list[MountStep], console_fd: int | None) -> dict[int, int]:
    """step index -> a detached mount of that step's host source file, cloned by host root
    (the container's root user may not be able to walk the host paths to them); init attaches
    each in its own mount namespace."""
    sources: dict[int, int] = {}
    try:
        for index, step in enumerate(steps):
            if step.kind is not StepKind.BIND_FILE or not step.source:
                continue
            path = f"/proc/self/fd/{console_fd}" if step.source == "@console" else step.source
            if step.source == "@console" and console_fd is None:
                continue
            try:
                sources[index] = sc.private_clone(path, recursive=False)
            except FileNotFoundError:
                if not step.optional:
                    raise
    except BaseException:
        for fd in sources.values():
            os.close(fd)
        raise
    return sources


def _default_signals() -> None:
    """Python ignores SIGPIPE and SIGXFSZ; the guest's programs must not inherit that
    (`yes | head -1` would complain of a broken pipe)."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)


def _run_mount_plan(root_fd: int, steps: list[MountStep], sources: dict[int, int], late: bool) -> None:
    """The steps made before pivot_root (late=False) or after the cgroup namespace (late=True);
    sources are indexed by position in the whole plan."""
    for index, step in enumerate(steps):
        if step.in_cgroupns != late:
            continue
        try:
            _mount_step(root_fd, step, sources.get(index))
        except FileNotFoundError:
            if not step.optional:
                raise


def _mount_step(root_fd: int, step: MountStep, source_tree: int | None) -> None:
    """One step; every container path is resolved inside the root, never through a symlink out."""
    k = StepKind
    if step.kind in (k.MKDIR, k.SYMLINK, k.BIND_FILE):
        parent, leaf = os.path.split(step.target)
        pfd = open_in_root(root_fd, parent, os.O_PATH | os.O_DIRECTORY)
        try:
            if step.kind is k.MKDIR:
                try:
                    os.mkdir(leaf, 0o755, dir_fd=pfd)
                except FileExistsError:
                    pass
                return
            if step.kind is k.SYMLINK:
                try:
                    os.symlink(step.source, leaf, dir_fd=pfd)
                except FileExistsError:
                    pass
                return
            if source_tree is None:
                raise FileNotFoundError(step.source)
            try:
                os.close(os.open(leaf, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644, dir_fd=pfd))
            except FileExistsError:
                pass
            target_fd = os.open(leaf, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        finally:
            os.close(pfd)
        try:
            sc.move_mount(source_tree, to_fd=target_fd)
        finally:
            os.close(target_fd)
            os.close(source_tree)
        return
    if step.kind is k.MOUNT:
        _mount_on(root_fd, step.target, step.source, step.fstype, step.flags, step.data,
                  source_in_root=bool(step.flags & sc.MS_BIND))
        return
    if step.kind is k.REMOUNT_RO:
        target_fd = open_in_root(root_fd, step.target, os.O_PATH)
        try:
            where = f"/proc/self/fd/{target_fd}"
            sc.mount(where, where, None, sc.MS_BIND | sc.MS_REC)
        finally:
            os.close(target_fd)
        target_fd = open_in_root(root_fd, step.target, os.O_PATH)
        try:
            where = f"/proc/self/fd/{target_fd}"
            sc.mount(None, where, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | step.flags)
        finally:
            os.close(target_fd)
        return
    raise ValueError(f"unknown mount step {step.kind}")


def _mount_on(root_fd: int, target: str, source: str | None, fstype: str | None, flags: int,
              data: str | None = None, source_in_root: bool = False) -> None:
    target_fd = open_in_root(root_fd, target, os.O_PATH)
    source_fd = None
    try:
        if source_in_root and source is not None:
            source_fd = open_in_root(root_fd, source, os.O_PATH)
            source = f"/proc/self/fd/{source_fd}"
        sc.mount(source, f"/proc/self/fd/{target_fd}", fstype, flags, data)
    finally:
        os.close(target_fd)
        if source_fd is not None:
            os.close(source_fd)


def _close_fds_except(keep: set[int]) -> None:
    """close_range() over the gaps: no /proc listing (inside a container that would fill its
    /proc with inodes for our fds)."""
    low = 3
    for fd in sorted(f for f in keep if f >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 30)


# ---------------------------------------------------------------- network inside a container

def _netlink_socket() -> socket.socket:
    """A NETLINK_ROUTE socket (the SOCK_DGRAM kind pyroute2 takes) in our network namespace."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)


def _netns_socket(sock: socket.socket, req_id: int, init_pid: int) -> None:
    """A netlink socket inside a running container's network namespace, for ctd to use."""
    pidfd = os.pidfd_open(init_pid)
    sc.setns(pidfd, sc.CLONE_NEWNET)
    os.close(pidfd)
    netlink_socket = _netlink_socket()
    send(sock, {"id": req_id, "ok": True}, [netlink_socket.fileno()])


def _devpts_max(sock: socket.socket, req_id: int, spec: dict) -> None:
    """A new numpty for a running container: its /dev/pts remounted, as root of its user
    namespace (where the mount's gid=5 means its tty group), with every option again."""
    prctl.set_dumpable(False)
    numpty = int(spec["numpty"])
    pidfd = os.pidfd_open(int(spec["init_pid"]))
    sc.setns(pidfd, sc.CLONE_NEWNS | (0 if spec["privileged"] else sc.CLONE_NEWUSER))
    os.close(pidfd)
    try:
        sc.mount(None, "/dev/pts", None, sc.MS_REMOUNT | sc.MS_NOSUID | sc.MS_NOEXEC, devpts_options(numpty))
    except OSError as exc:
        raise OSError(exc.errno, f"remounting the container's /dev/pts with max={numpty}: {exc.strerror} "
                      "(is /dev/pts still its devpts?); the new numpty applies at its next start") from None
    send(sock, {"id": req_id, "ok": True})


def _lxcfs_rebind(sock: socket.socket, req_id: int, spec: dict) -> None:
    """lxcfs died (its memory limit) and a new one runs: in a running container, each file of
    the dead one (ENOTCONN) is unmounted and the new one's bound in its place."""
    prctl.set_dumpable(False)
    steps = [MountStep(StepKind.BIND_FILE, target, source) for source, target in spec["binds"]]
    clones = _clone_sources(steps, None)  # by host root, in the host's mount namespace
    pidfd = os.pidfd_open(int(spec["init_pid"]))
    sc.setns(pidfd, sc.CLONE_NEWNS | (0 if spec["privileged"] else sc.CLONE_NEWUSER))
    os.close(pidfd)
    root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)  # the container's
    try:
        for index, step in enumerate(steps):
            with contextlib.suppress(OSError):  # not mounted any more: the tenant's choice
                sc.umount2(step.target, sc.MNT_DETACH)
            if index in clones:
                _mount_step(root, step, clones.pop(index))
    finally:
        os.close(root)
        for fd in clones.values():
            os.close(fd)
    send(sock, {"id": req_id, "ok": True})


# ---------------------------------------------------------------- exec in a running container

def _run_exec(sock: socket.socket, req_id: int, spec: ExecSpec, fds: list[int]) -> None:
    # Nothing in the container may ptrace us or open our /proc/PID/exe (the host's Python)
    # while we still run host code inside its namespaces.
    prctl.set_dumpable(False)
    for path in spec.cgroup_procs:
        with open(path, "w") as fh:
            fh.write(str(os.getpid()))
    if spec.nofile:
        resource.setrlimit(resource.RLIMIT_NOFILE, (spec.nofile, spec.nofile))
    pidfd = os.pidfd_open(spec.init_pid)
    flags = CONTAINER_NAMESPACES | (0 if spec.privileged else sc.CLONE_NEWUSER)
    sc.setns(pidfd, flags)  # also sets our root and cwd to the container's
    os.close(pidfd)
    if not spec.privileged:
        os.setgroups([])
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    master = -1
    if spec.tty:  # as container root: the slave is its, on its devpts, counted in its numpty
        for fd in fds:
            os.close(fd)
        master, slave = _container_pty()
        fds = [slave]
    pid = os.fork()
    if pid == 0:
        _exec_child(spec, fds)
    for fd in fds:
        os.close(fd)
    send(sock, {"id": req_id, "pid": pid}, [master] if master >= 0 else [])
    if master >= 0:
        os.close(master)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    send(sock, {"id": req_id, "exit": code if code >= 0 else 128 - code})


PTMX_RDEV = os.makedev(5, 2)  # /dev/ptmx and every devpts' ptmx node
TIOCGPTPEER = 0x5441  # _IO('T', 0x41): open the slave of a master without a path lookup
TIOCSPTLCK = 0x40045431  # _IOW('T', 0x31, int): unlockpt()
NO_PTY = "no pty left in the container"


def _container_pty() -> tuple[int, int]:
    """A pty from the devpts mounted in the container (we stand in its mount namespace and
    root), so `tty` inside names /dev/pts/N and `mesg` works. Its /dev/ptmx is the tenant's:
    non-blocking (a FIFO put there must not hang us) and checked to be a pty multiplexer."""
    try:
        master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OSError(exc.errno, f"{NO_PTY} (its numpty limit is reached)") from None
        raise OSError(exc.errno, f"opening the container's /dev/ptmx for a terminal: {exc.strerror}") from None
    try:
        st = os.fstat(master)
        if not stat.S_ISCHR(st.st_mode) or st.st_rdev != PTMX_RDEV:
            raise OSError(errno.ENOTTY, "the container's /dev/ptmx is not the pty multiplexer")
        fcntl.ioctl(master, TIOCSPTLCK, b"\0\0\0\0")
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        os.set_blocking(master, True)
        return master, slave
    except BaseException:
        os.close(master)
        raise


def _exec_child(spec: ExecSpec, fds: list[int]) -> None:
    try:
        os.setsid()
        stdio = fds if len(fds) == 3 else [fds[0]] * 3
        for target, fd in zip((0, 1, 2), stdio):
            os.dup2(fd, target)
        if spec.tty:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        _close_fds_except(set())
        try:
            os.chdir(spec.cwd)
        except OSError:
            os.chdir("/")
        capabilities.drop_bounding(spec.cap_drop)
        if set(seccomp.ALWAYS_DENY) - set(spec.seccomp_deny):
            raise OSError("a container's seccomp filter must deny " + ", ".join(seccomp.ALWAYS_DENY))
        seccomp.install(spec.seccomp_deny)
        env = dict(e.split("=", 1) for e in spec.env)
        _default_signals()
        try:
            os.execvpe(spec.command[0], spec.command, env)
        except FileNotFoundError:
            os.write(2, f"ctd: {spec.command[0]}: command not found in the container\n".encode())
            os._exit(127)
        except PermissionError:
            os.write(2, f"ctd: {spec.command[0]}: permission denied\n".encode())
            os._exit(126)
    except BaseException as exc:  # noqa: BLE001
        try:
            os.write(2, f"ctd: exec failed: {_describe(exc)}\n".encode())
        finally:
            os._exit(126)



# ---------------------------------------------------------------- entry point

def main(argv: list[str]) -> None:
    """`python -m ctd.instance.container.spawner SOCKET_FD PARENT_PID LABEL [OWNER_BASE]`, exec'd by ctd: a fresh
    interpreter with only this module's imports forks far faster than a copy of ctd (26 MB
    resident with aiohttp and pyroute2), and every start forks twice."""
    sock = socket.socket(fileno=int(argv[0]))
    sock.setblocking(True)
    serve(sock, int(argv[1]), int(argv[3]) if len(argv) > 3 else 0)


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
