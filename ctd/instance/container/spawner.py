"""The spawner: a single-threaded fork server that starts containers and exec sessions.

ctd forks it at start-up, before the event loop and its threads exist, so every later fork
happens from a process with one thread. It is a child subreaper: container inits end up as
its children, and it reports their exit status to ctd. It dies with ctd (PDEATHSIG); the
containers do not — a restarted ctd adopts them by pid and start time.

Protocol (SOCK_SEQPACKET, one JSON message per packet, fds by SCM_RIGHTS):
  -> {"id", "op": "spawn", "spec"}  fds: [console pty slave]
  <- {"id", "pid"}                  fds: [go pipe write end, exec-error pipe read end,
                                          a NETLINK_ROUTE socket in its network namespace]
     init waits for "1" on the go pipe; meanwhile ctd moves it into the container's cgroups
     and plugs its NICs. Then init makes its cgroup namespace and execs.
  -> {"id", "op": "exec", "spec"}   fds: [stdin, stdout, stderr]
  <- {"id", "pid"} then {"id", "exit": code}
  -> {"id", "op": "netns_socket", "spec": {"init_pid"}}  <- {"id", "ok": true}  fds: [netlink socket]
  <- {"id", "error": text}          the request failed; nothing was left running
  <- {"id", "helper_exit": status}  the helper process that served id is gone
  <- {"event": "exit", "pid", "status"}  a container init (or other orphan) was reaped
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import resource
import select
import signal
import socket
import termios
import time
import traceback
from dataclasses import dataclass

import prctl

from ctd.instance.container.spec import (
    ContainerSpec, ExecSpec, MountStep, StepKind, container_from_wire, exec_from_wire,
)
from ctd.linux import capabilities, seccomp
from ctd.linux import syscalls as sc
from ctd.linux.openat2 import open_in_root

MAX_MESSAGE = 1 << 16
_spawner_pid = 0  # set in serve(); its forks die with it
MAX_FDS = 8
CONTAINER_NAMESPACES = (sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET
                        | sc.CLONE_NEWPID | sc.CLONE_NEWCGROUP)


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
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
    if not data:
        for fd in fds:
            os.close(fd)
        return b"", []
    return data, fds


# ---------------------------------------------------------------- the server loop

def serve(sock: socket.socket, parent_pid: int) -> None:
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
    helpers: dict[int, int] = {}    # helper pid -> request id
    standbys: list[Standby] = []    # container helpers forked ahead of need (off the start path)
    quiet: set[int] = set()         # holder pids: reaped without a word to ctd
    own = (wake_r, wake_w)
    refill_at = 0.0  # a standby is forked only a moment after the last start: earlier, it
    #                  would take a CPU from that start
    while True:
        timeout = None if standbys else max(0.0, refill_at - time.monotonic())
        ready, _, _ = select.select([sock, wake_r], [], [], timeout)
        if not ready:  # due, and nobody waits for us
            standbys.append(_fork_standby(sock, own, standbys, quiet))
            continue
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            _reap(sock, helpers, quiet, standbys)
        if sock in ready:
            data, fds = recv_raw(sock)
            if not data:
                os._exit(0)
            message = json.loads(data)
            try:
                if message.get("op") == "spawn":
                    standby = standbys.pop() if standbys else _fork_standby(sock, own, standbys, quiet)
                    _hand_over(sock, standby, message, data, fds, helpers)
                    refill_at = time.monotonic() + REFILL_DELAY
                else:
                    pid = _dispatch(sock, message, fds, own, standbys)
                    if pid:
                        helpers[pid] = message["id"]
            finally:
                for fd in fds:
                    os.close(fd)


def _reap(sock: socket.socket, helpers: dict[int, int], quiet: set[int], standbys: list[Standby]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in quiet:
            quiet.discard(pid)
        elif pid in helpers:
            send(sock, {"id": helpers.pop(pid), "helper_exit": status})
        elif any(s.pid == pid for s in standbys):  # died while it waited: make another later
            dead = next(s for s in standbys if s.pid == pid)
            standbys.remove(dead)
            os.close(dead.control)
        else:
            send(sock, {"event": "exit", "pid": pid, "status": status})


REFILL_DELAY = 0.03  # s


@dataclass
class UsernsHolder:
    """A process that made a fresh user namespace and waits; ctd writes its id maps later."""

    pid: int
    ready_r: int   # one byte arrives once the namespace exists
    done_w: int    # closing every copy lets the holder exit


@dataclass
class Standby:
    """A container helper forked ahead, with its user namespace holder, waiting for a spawn
    request on its control socket, the only fd of it the spawner keeps."""

    pid: int
    control: int   # the spawn message and its fds go down here


def _standby_fds(standbys: list[Standby]) -> list[int]:
    return [s.control for s in standbys]


def _fork_holder(close: list[int]) -> UsernsHolder:
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    done_r, done_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            for fd in (*close, ready_r, done_w):
                os.close(fd)
            signal.set_wakeup_fd(-1)
            _die_with_parent()
            sc.unshare(sc.CLONE_NEWUSER)
            os.write(ready_w, b"1")
            os.read(done_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    return UsernsHolder(pid, ready_r, done_w)


def _fork_standby(sock: socket.socket, own_fds: tuple[int, int], standbys: list[Standby],
                  quiet: set[int]) -> Standby:
    others = [*own_fds, *_standby_fds(standbys)]
    holder = _fork_holder([sock.fileno(), *others])
    quiet.add(holder.pid)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ours.close()
            for fd in others:
                os.close(fd)
            _become_helper()
            # Every container's filter, installed while we wait: init inherits it. (Not the
            # bounding set: joining the container's user namespace resets that to full.)
            seccomp.install(seccomp.DEFAULT_DENY)
            message, fds = recv(theirs)
            theirs.close()
            if message is not None:
                code = _serve_spawn(sock, message, fds, holder)
        finally:
            os._exit(code)
    theirs.close()
    for fd in (holder.ready_r, holder.done_w):
        os.close(fd)  # the standby's business now
    return Standby(pid, ours.detach())


def _hand_over(sock: socket.socket, standby: Standby, message: dict, data: bytes, fds: list[int],
               helpers: dict[int, int]) -> None:
    """Give a spawn request to a standby helper."""
    try:
        control = socket.socket(fileno=standby.control)
        try:
            socket.send_fds(control, [data], fds)  # as ctd sent it: no second encoding
        finally:
            control.close()
    except OSError as exc:  # the standby died under us: ctd hears of it as this request's error
        send(sock, {"id": message["id"], "error": f"handing the start to a helper: {_describe(exc)}"})
        return
    helpers[standby.pid] = message["id"]


def _dispatch(sock: socket.socket, message: dict, fds: list[int], own_fds: tuple[int, int],
              standbys: list[Standby]) -> int:
    """exec and netns_socket requests: each in a helper forked for it."""
    op = message.get("op")
    if op == "ping":
        send(sock, {"id": message["id"], "pong": os.getpid()})
        return 0
    if op not in ("exec", "netns_socket"):
        send(sock, {"id": message["id"], "error": f"unknown spawner op {op!r}"})
        return 0
    pid = os.fork()
    if pid:
        return pid
    # The helper: never returns into the server loop.
    code = 1
    try:
        for fd in (*own_fds, *_standby_fds(standbys)):
            os.close(fd)
        _become_helper()
        if op == "netns_socket":
            _netns_socket(sock, message["id"], message["spec"]["init_pid"])
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


def _serve_spawn(sock: socket.socket, message: dict, fds: list[int], holder: UsernsHolder) -> int:
    try:
        spec = container_from_wire(message["spec"])
        if not spec.uid_map:  # privileged: no user namespace to claim, let the holder go
            for fd in (holder.ready_r, holder.done_w):
                os.close(fd)
        _spawn_container(sock, message["id"], spec, fds, holder if spec.uid_map else None)
        return 0
    except BaseException as exc:  # noqa: BLE001
        _report(sock, message["id"], exc)
        return 1


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

def _claim_userns(spec: ContainerSpec, holder: UsernsHolder) -> int:
    """Give a pool holder's user namespace the container's id maps; an fd keeps it alive."""
    if os.read(holder.ready_r, 1) != b"1":
        raise OSError("could not create the container's user namespace")
    with open(f"/proc/{holder.pid}/uid_map", "w") as fh:
        fh.write("\n".join(m.line() for m in spec.uid_map))
    with open(f"/proc/{holder.pid}/gid_map", "w") as fh:
        fh.write("\n".join(m.line() for m in spec.gid_map))
    fd = os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    os.close(holder.done_w)  # the holder exits; the spawner reaps it
    os.close(holder.ready_r)
    return fd


def _spawn_container(sock: socket.socket, req_id: int, spec: ContainerSpec, fds: list[int],
                     holder: UsernsHolder | None) -> None:
    console_fd = fds[0] if spec.console else None
    # Host files bound into the container (devices, lxcfs, the console) are cloned now as
    # detached mounts, by host root: the container's root user may not be able to walk the
    # host paths to them. init attaches each in its own mount namespace.
    sources = _clone_sources(spec.mounts, console_fd)
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    if spec.nofile:  # as host root: container root may lower it later, never raise it
        resource.setrlimit(resource.RLIMIT_NOFILE, (spec.nofile, spec.nofile))
    # As host root: a detached copy of the root filesystem, shown through the container's id
    # mapping. init attaches it inside its own mount namespace, so it is not a locked mount
    # there and pivot_root accepts it.
    userns_fd = -1
    if spec.privileged:
        tree = sc.open_tree(spec.rootfs, sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | sc.AT_RECURSIVE)
    else:
        assert holder is not None
        userns_fd = _claim_userns(spec, holder)
        tree = sc.idmapped_clone(spec.rootfs, userns_fd)
    # Stand in the root's directory as host root: the container's root user could not walk
    # the host path (the storage directories are 0700). unshare(CLONE_NEWNS) below carries the
    # working directory over into the container's mount namespace.
    os.chdir(spec.rootfs)
    if not spec.privileged:
        # Become the container's root: every namespace made from here on belongs to the
        # container's user namespace, and the host's mounts are locked in place.
        sc.setns(userns_fd, sc.CLONE_NEWUSER)
        os.close(userns_fd)
        os.setgroups([])
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    # All but the cgroup namespace: init makes that once ctd has moved it into the container's
    # cgroups (it is rooted where init stands then). The move waits for an RCU grace period;
    # init builds its /proc, /sys and /dev meanwhile.
    sc.unshare(CONTAINER_NAMESPACES & ~sc.CLONE_NEWCGROUP)
    sc.sethostname(spec.hostname)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        _container_init(sock, spec, tree, console_fd, sources, go_r, err_w)
    # ctd addresses the NICs through this socket while init waits for "go": a netlink
    # socket stays in the namespace it was made in, so no process has to join it later.
    netns_socket = _netlink_socket()
    send(sock, {"id": req_id, "pid": pid}, [go_w, err_r, netns_socket.fileno()])


def _container_init(sock: socket.socket, spec: ContainerSpec, tree: int, console_fd: int | None,
                    sources: dict[str, int], go_r: int, err_w: int) -> None:
    """pid 1 of the new pid namespace, until it execs the container's init."""
    try:
        sock.close()
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
        if _read_all(go_r) != b"1":  # ctd gave up on this start
            os._exit(0)
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
        _confine_further(spec)
        _default_signals()
        os.execve(spec.init[0], spec.init, dict(e.split("=", 1) for e in spec.env))
    except BaseException as exc:  # noqa: BLE001
        try:
            os.write(err_w, _describe(exc).encode()[:4000])
        finally:
            os._exit(127)


def _confine_further(spec: ContainerSpec) -> None:
    """init inherits the standby's default seccomp filter; a spec may only add to it (a filter
    cannot be undone). The bounding set is dropped here, in the container's user namespace."""
    missing = set(seccomp.DEFAULT_DENY) - set(spec.seccomp_deny)
    if missing:
        raise OSError(f"containers are always denied {', '.join(sorted(missing))}")
    capabilities.drop_bounding(spec.cap_drop)
    extra = [n for n in spec.seccomp_deny if n not in seccomp.DEFAULT_DENY]
    if extra:
        seccomp.install(extra)


def _clone_sources(steps: list[MountStep], console_fd: int | None) -> dict[int, int]:
    """step index -> a detached mount of that step's host source file."""
    sources: dict[int, int] = {}
    for index, step in enumerate(steps):
        if step.kind is not StepKind.BIND_FILE or not step.source:
            continue
        path = f"/proc/self/fd/{console_fd}" if step.source == "@console" else step.source
        if step.source == "@console" and console_fd is None:
            continue
        try:
            sources[index] = sc.open_tree(path, sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC)
        except FileNotFoundError:
            if not step.optional:
                raise
    return sources


def _default_signals() -> None:
    """Python ignores SIGPIPE and SIGXFSZ; the guest's programs must not inherit that
    (`yes | head -1` would complain of a broken pipe)."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


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
    pid = os.fork()
    if pid == 0:
        _exec_child(spec, fds)
    for fd in fds:
        os.close(fd)
    send(sock, {"id": req_id, "pid": pid})
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    send(sock, {"id": req_id, "exit": code if code >= 0 else 128 - code})


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
        if spec.seccomp_deny:
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
    """`python -m ctd.instance.container.spawner SOCKET_FD PARENT_PID [LABEL]`, exec'd by ctd: a fresh
    interpreter with only this module's imports forks far faster than a copy of ctd (26 MB
    resident with aiohttp and pyroute2), and every start forks twice."""
    sock = socket.socket(fileno=int(argv[0]))
    sock.setblocking(True)
    serve(sock, int(argv[1]))


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
