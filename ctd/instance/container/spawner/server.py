"""The spawner's fork server: a single-threaded loop that starts containers and forks helpers.

It is a child subreaper: container inits end up as its children, and it reports their exit
status to ctd. It dies with ctd (PDEATHSIG); the containers do not — a restarted ctd adopts them
by pid and start time.

It keeps the next container's init forked ahead (a *standby*, see `init`): a start then costs
no fork and no namespace creation. The server gives the standby's user namespace the
container's id maps, clones the root filesystem (and the host files bound into it) as detached
mounts, and hands them to the waiting init. The next standby is made a moment later, when the
start is done (ctd's "refill"). Each unprivileged standby's user namespace is owned by a uid of
its own (see `init`'s docstring); the server picks them, never one a live container holds.

Requests about running containers (exec …) go to a helper forked for each (`helpers`).
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import socket
import time
from dataclasses import dataclass

import prctl

from ctd.instance.container.spawner import borrowed, describe, recv, recv_raw, report, send
from ctd.instance.container.spawner.helpers import dispatch
from ctd.instance.container.spawner.init import become_helper, clone_sources, make_init
from ctd.instance.container.spec import ContainerSpec, container_from_wire
from ctd.linux import capabilities, seccomp
from ctd.linux import syscalls as sc

TYPE_CHECKING = False   # not typing's: importing typing would grow the spawner (mypy takes it as true)
if TYPE_CHECKING:
    from ctd.instance.container.spawner import Message

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


def serve(sock: socket.socket, parent_pid: int, owner_base: int = 0) -> None:
    """Run until ctd closes its end of the socket (or dies)."""
    prctl.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent_pid:  # ctd died before PDEATHSIG was armed
        os._exit(0)
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
    server = Server(sock, (wake_r, wake_w), owner_base)
    while True:
        server.step()


class Server:
    """The loop's state: ctd's socket, the standbys, the helpers and the owner uids in use."""

    def __init__(self, sock: socket.socket, own_fds: tuple[int, int], owner_base: int = 0) -> None:
        self.pid = os.getpid()  # a fork of ours dies when its parent is no longer this
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
        """Wait for ctd, a child's end or a standby's report (or until a standby is due), and serve it."""
        wake_r = self.own_fds[0]
        pending = {s.control: s for s in self.standbys if not s.pid}
        idle = self.standbys or not self.owners_known
        timeout = None if idle else max(0.0, self.refill_at - time.monotonic())
        readable: list[int | socket.socket] = [self.sock, wake_r, *pending]
        ready, _, _ = select.select(readable, [], [], timeout)
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
            message: Message = json.loads(data)
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
                    pid = dispatch(self.sock, message, fds, self.inherited_fds(), self.pid)
                    if pid:
                        self.helpers[pid] = message["id"]
            finally:
                for fd in fds:
                    os.close(fd)

    def reap(self) -> None:
        """Every child that has ended, reported to ctd by what it was."""
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
        """Fork its maker; init's pid arrives later on the standby's control socket (ahead: it
        rehearses the last start's request while it waits)."""
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
                become_helper(self.pid)
                make_init(theirs, self.pid, privileged, deny, owner, self.last_wrapped if ahead else b"")
                code = 0
            except BaseException as exc:  # noqa: BLE001 — the spawner hears of it as EOF or text
                try:
                    send(theirs, {"error": describe(exc)})
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
            with borrowed(standby.control) as control:
                report, fds = recv(control)
        except OSError as exc:
            report, fds = {"error": describe(exc)}, []
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

    def spawn(self, message: Message, data: bytes, fds: list[int]) -> bool:
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
            sources = clone_sources(spec.mounts, console_fd, spec.uid_map[0].outside if spec.uid_map else None)
            handed += sources.values()
            root_dir = os.open(spec.rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            handed.append(root_dir)
            go_r, go_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            handed += (go_r, go_w, err_r, err_w)
            order = sorted(sources)
            wrapped = b'{"sources": %s, "request": %s}' % (json.dumps(order).encode(), data)
            self.last_wrapped = wrapped
            with borrowed(standby.control) as control:
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
            report(self.sock, req_id, exc)
        finally:
            for fd in handed:
                os.close(fd)
            if standby is not None:
                standby.close()
        return unprivileged


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
