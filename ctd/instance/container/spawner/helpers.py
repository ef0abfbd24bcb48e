"""Helpers: a process the spawner forks for each request about a running container.

exec (a command in the container: the helper joins its cgroups and namespaces, forks the
command and reports its exit code), netns_socket (a NETLINK_ROUTE socket made in its network
namespace, for ctd to plug and address NICs), devpts_max (its /dev/pts remounted with a new
max=), lxcfs_rebind (a new lxcfs' files bound over the dead one's). A helper is host root
inside a tenant's namespaces: it is not dumpable, and it dies with the spawner.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import socket
import stat
import termios

import prctl

from ctd.instance.container.spawner import NO_PTY, describe, report, send
from ctd.instance.container.spawner.init import (
    become_helper,
    clone_sources,
    close_fds_except,
    default_signals,
    mount_step,
    route_socket,
)
from ctd.instance.container.spec import ExecSpec, MountStep, StepKind, devpts_options, exec_from_wire
from ctd.linux import capabilities, seccomp
from ctd.linux import syscalls as sc

TYPE_CHECKING = False  # typing is not imported at run time: the spawner stays lean
if TYPE_CHECKING:
    from typing import NoReturn

    from ctd.instance.container.spawner import Message, Wire

CONTAINER_NAMESPACES = (sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET
                        | sc.CLONE_NEWPID | sc.CLONE_NEWCGROUP)


def dispatch(sock: socket.socket, message: Message, fds: list[int], inherited: list[int],
             spawner_pid: int) -> int:
    """A request about a running container, served by a helper forked for it: its pid (the
    server reports its exit), or 0 if the request was answered at once (ping, unknown op).
    inherited: the server's fds, closed in the helper at once (but the socket to ctd)."""
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
        become_helper(spawner_pid)
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
        report(sock, message["id"], exc)
    finally:
        os._exit(code)


def _netns_socket(sock: socket.socket, req_id: int, init_pid: int) -> None:
    """A netlink socket inside a running container's network namespace, for ctd to use."""
    pidfd = os.pidfd_open(init_pid)
    sc.setns(pidfd, sc.CLONE_NEWNET)
    os.close(pidfd)
    netlink_socket = route_socket()
    send(sock, {"id": req_id, "ok": True}, [netlink_socket.fileno()])


def _devpts_max(sock: socket.socket, req_id: int, spec: Wire) -> None:
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


def _lxcfs_rebind(sock: socket.socket, req_id: int, spec: Wire) -> None:
    """lxcfs died (its memory limit) and a new one runs: in a running container, each file of
    the dead one (ENOTCONN) is unmounted and the new one's bound in its place."""
    prctl.set_dumpable(False)
    steps = [MountStep(StepKind.BIND_FILE, target, source) for source, target in spec["binds"]]
    clones = clone_sources(steps, None)  # by host root, in the host's mount namespace
    pidfd = os.pidfd_open(int(spec["init_pid"]))
    sc.setns(pidfd, sc.CLONE_NEWNS | (0 if spec["privileged"] else sc.CLONE_NEWUSER))
    os.close(pidfd)
    root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)  # the container's
    try:
        for index, step in enumerate(steps):
            with contextlib.suppress(OSError):  # not mounted any more: the tenant's choice
                sc.umount2(step.target, sc.MNT_DETACH)
            if index in clones:
                mount_step(root, step, clones.pop(index))
    finally:
        os.close(root)
        for fd in clones.values():
            os.close(fd)
    send(sock, {"id": req_id, "ok": True})


def _run_exec(sock: socket.socket, req_id: int, spec: ExecSpec, fds: list[int]) -> None:
    """The helper of an exec: joins the container (cgroups, namespaces, root, its root user),
    forks the command and reports its pid, then its exit code."""
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


def _exec_child(spec: ExecSpec, fds: list[int]) -> NoReturn:
    """The command's process: its stdio, session and tty, confined as the container's init is, exec'd."""
    try:
        os.setsid()
        stdio = fds if len(fds) == 3 else [fds[0]] * 3
        for target, fd in zip((0, 1, 2), stdio, strict=False):
            os.dup2(fd, target)
        if spec.tty:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        close_fds_except(set())
        try:
            os.chdir(spec.cwd)
        except OSError:
            os.chdir("/")
        capabilities.drop_bounding(spec.cap_drop)
        if set(seccomp.ALWAYS_DENY) - set(spec.seccomp_deny):
            raise OSError("a container's seccomp filter must deny " + ", ".join(seccomp.ALWAYS_DENY))
        seccomp.install(spec.seccomp_deny)
        env = dict(e.split("=", 1) for e in spec.env)
        default_signals()
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
            os.write(2, f"ctd: exec failed: {describe(exc)}\n".encode())
        finally:
            os._exit(126)
