"""A container's init, from its making to the guest's init, and what every fork of the spawner
does first.

A container's init is forked ahead of its start (a *standby*): a short-lived maker process
makes fresh user, network, IPC, UTS and pid namespaces, installs the default seccomp filter and
forks the pid namespace's first process, which waits on a socket. A start then costs no fork and
no namespace creation: the spawner gives the user namespace the container's id maps, clones the
root filesystem (and the host files bound into it) as detached mounts, and hands them to the
waiting init, which builds its mounts (the mount plan of `spec.py`, every path resolved inside
the root), pivots, waits for ctd's "go", makes its cgroup namespace and execs.

User-namespace owners. The kernel charges what a container's processes take of the per-user
limits (inotify instances and watches, user namespaces, RLIMIT_NPROC/MEMLOCK/MSGQUEUE/
SIGPENDING counts) at the host level to the uid that created its user namespace. A maker of
an unprivileged standby therefore becomes a uid of its own (picked by the server) before it
unshares: one of the 65536 ids just below ctd's first container range (`server.OWNER_IDS` of
them), reserved for this, never the uid of a host process (such a process would hold every
capability in the container's user namespace), and never that of two live containers at once.
So each container has the host's per-user limits (fs.inotify.max_user_instances …) to itself,
and host root keeps its own.

The mount-plan steps, the close of inherited fds and the signal defaults here serve the
helpers too (an exec, lxcfs' files bound again).
"""

from __future__ import annotations

import fcntl
import json
import os
import resource
import signal
import socket
import termios

import prctl

from ctd.instance.container.spawner import describe, recv_raw, send
from ctd.instance.container.spec import ContainerSpec, MountStep, StepKind, container_from_wire, idmap_lines
from ctd.linux import capabilities, seccomp, userns
from ctd.linux import syscalls as sc
from ctd.linux.openat2 import open_in_root

TYPE_CHECKING = False  # typing is not imported at run time: the spawner stays lean
if TYPE_CHECKING:
    from typing import NoReturn

# What a standby's maker unshares; the mount namespace is made by init when its start comes
# (a copy of the host's mounts as they are then), the cgroup namespace once ctd has moved it.
STANDBY_NAMESPACES = sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET | sc.CLONE_NEWPID
# RLIMIT_NOFILE as the spawner had it, when a maker raised its hard limit for its init to set
# the container's numfile from (init may only lower it: it is no host root).
_nofile_default: tuple[int, int] | None = None


def become_helper(spawner_pid: int) -> None:
    """A forked helper undoes what only the server loop wants, and dies with the spawner:
    after a crash of ctd, no helper may go on to fork an init nobody will ever release."""
    die_with_parent(spawner_pid)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    prctl.set_child_subreaper(False)


def die_with_parent(spawner_pid: int) -> None:
    """For forks of the spawner (spawner_pid: its pid, as the fork's parent had it)."""
    prctl.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != spawner_pid:  # it died before that took hold
        os._exit(1)


def make_init(control: socket.socket, spawner_pid: int, privileged: bool, deny: tuple[str, ...], owner: int = 0,
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
        _unshare_as(owner, spawner_pid)
    else:  # With CLONE_NEWUSER the user namespace is made first and owns the others.
        sc.unshare(STANDBY_NAMESPACES | (0 if privileged else sc.CLONE_NEWUSER))
    netns_socket = route_socket()
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


def _unshare_as(owner: int, spawner_pid: int) -> None:
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
    die_with_parent(spawner_pid)  # a change of uid clears the parent-death signal


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
        sources = dict(zip(wrapped["sources"], rest, strict=False))
        _container_init(spec, installed, root_dir, tree, console_fd, sources, go_r, err_w)
    except BaseException as exc:  # noqa: BLE001
        if err_w >= 0:
            try:
                os.write(err_w, describe(exc).encode()[:4000])
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
    close_fds_except({go_r, err_w, tree} | set(sources.values()) |
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
    close_fds_except({err_w})
    _confine_further(spec, installed)
    default_signals()
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


def clone_sources(steps: list[MountStep], console_fd: int | None, idmap_base: int | None = None) -> dict[int, int]:
    """step index -> a detached mount of that step's host source file, cloned by host root
    (the container's root user may not be able to walk the host paths to them); init attaches
    each in its own mount namespace. A host mount (BIND_HOST) is cloned without following a
    symlink, with its attributes, and an idmap one through a namespace mapping host ids
    1..65535 to the same ids inside (hostmounts.py; idmap_base: the container's first host id)."""
    sources: dict[int, int] = {}
    idmap_fd: int | None = None
    try:
        for index, step in enumerate(steps):
            if step.kind is StepKind.BIND_HOST and step.source:
                ns_fd = 0
                if step.data == "idmap":
                    if idmap_base is None:
                        raise OSError("an idmap mount needs an unprivileged container")
                    if idmap_fd is None:
                        lines = idmap_lines(idmap_base)
                        idmap_fd = userns.with_maps(lines, lines)
                    ns_fd = idmap_fd
                sources[index] = sc.private_clone(step.source, recursive=False, userns_fd=ns_fd,
                                                  attr_set=step.flags, nofollow=True)
                continue
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
    finally:
        if idmap_fd is not None:
            os.close(idmap_fd)
    return sources


def default_signals() -> None:
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
            mount_step(root_fd, step, sources.get(index))
        except FileNotFoundError:
            if not step.optional:
                raise


def mount_step(root_fd: int, step: MountStep, source_tree: int | None) -> None:
    """One step; every container path is resolved inside the root, never through a symlink out."""
    k = StepKind
    if step.kind in (k.BIND_HOST, k.BIND_FILE):
        _bind_onto(root_fd, step, source_tree)
        return
    if step.kind in (k.MKDIR, k.SYMLINK):
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
                    os.symlink(step.source or "", leaf, dir_fd=pfd)   # spec.py: a symlink has a source
                except FileExistsError:
                    pass
                return
        finally:
            os.close(pfd)
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


def _bind_onto(root_fd: int, step: MountStep, source_tree: int | None) -> None:
    """A detached mount (a host node, file or directory) at step.target: the target is made (a
    directory, or an empty file, like the source) inside the root, never through a symlink out."""
    if source_tree is None:
        raise FileNotFoundError(step.source)
    try:
        is_dir = (os.fstat(source_tree).st_mode & 0o170000) == 0o040000
        parent, leaf = os.path.split(step.target)
        pfd = open_in_root(root_fd, parent, os.O_PATH | os.O_DIRECTORY)
        try:
            try:
                if is_dir:
                    os.mkdir(leaf, 0o755, dir_fd=pfd)
                else:
                    os.close(os.open(leaf, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644, dir_fd=pfd))
            except FileExistsError:
                pass
            target_fd = os.open(leaf, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_DIRECTORY if is_dir else 0),
                                dir_fd=pfd)
        finally:
            os.close(pfd)
        try:
            sc.move_mount(source_tree, to_fd=target_fd)
        finally:
            os.close(target_fd)
    finally:
        os.close(source_tree)


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


def close_fds_except(keep: set[int]) -> None:
    """close_range() over the gaps: no /proc listing (inside a container that would fill its
    /proc with inodes for our fds)."""
    low = 3
    for fd in sorted(f for f in keep if f >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 30)


def route_socket() -> socket.socket:
    """A NETLINK_ROUTE socket (the SOCK_DGRAM kind pyroute2 takes) in our network namespace."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
