"""Device nodes: whatever node a container finds on its disk or makes, only the devices ctd
puts in its /dev open.

Two layers: the root (and /dev's tmpfs) are nodev, so a node on the disk opens nothing, also
through a bind of / made inside (the attack: `mount --bind / /mnt/r`, then /mnt/r/dev/...);
and the device allow-list of the container's cgroup refuses every other device, wherever its
node lies (a privileged root may mount a tmpfs of its own, without nodev, and mknod there).

Safety: the nodes planted from the host are the test's own files in the container's root;
a node that did open (the old code) is opened with O_NOCTTY | O_NONBLOCK and closed at once:
nothing is read from or written to a host device.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.security.conftest import probe

HOST_CONSOLE = (5, 1)   # /dev/console: the host's console, not the container's (a pty)
LOOP0 = (7, 0)          # the kind of node a restored backup carried: the pool's loop device
NULL = (1, 3)           # a device the container may use: only nodev stands in the way here

PLANTED = {"planted-console": (stat.S_IFCHR, HOST_CONSOLE), "planted-loop0": (stat.S_IFBLK, LOOP0),
           "planted-null": (stat.S_IFCHR, NULL)}

# What ctd's /dev holds (and the open of each must keep working).
OWN_DEVICES = ("null", "zero", "full", "random", "urandom", "ptmx", "console")


def _plant(root: Path) -> list[str]:
    """Nodes made from the host on the container's disk, 0666 as mmdebstrap makes
    dev/console; returns every node name now in the disk's dev/."""
    dev = root / "dev"
    dev.mkdir(exist_ok=True)
    for name, (kind, (major, minor)) in PLANTED.items():
        os.mknod(dev / name, kind | 0o666, os.makedev(major, minor))
        os.chmod(dev / name, 0o666)
    return sorted(e.name for e in os.scandir(dev) if stat.S_ISCHR(e.stat(follow_symlinks=False).st_mode)
                  or stat.S_ISBLK(e.stat(follow_symlinks=False).st_mode))


def test_disk_nodes_open_nothing_through_a_bind_of_root(ctd, make, privileged):
    name = make(privileged)
    nodes = _plant(ctd.rootfs(name))
    assert set(PLANTED) <= set(nodes)
    r = ctd.sh(name, "mkdir -p /mnt/r && mount --bind / /mnt/r && grep ' /mnt/r ' /proc/self/mountinfo")
    assert r.code == 0, r.err
    assert "nodev" in r.out.split(" - ")[0], r.out  # the bind inherits the root's nodev
    for node in nodes:
        # EACCES: nodev (may_open_dev) is checked before the device cgroup
        assert probe(ctd, name, "opendev", f"/mnt/r/dev/{node}") == "EACCES", node
    # what ctd put in /dev (binds of the host's nodes, a devpts) still opens
    for node in OWN_DEVICES:
        assert probe(ctd, name, "opendev", f"/dev/{node}") == "ok", node


def test_lifting_nodev_still_opens_no_disk_node(ctd, make, privileged):
    """nodev is a first layer only: root inside may clear it on the bind it made (and on its
    root: ctd attaches the root after making the mount namespace, so the flag is not locked).
    The device list still refuses the host's console and the loop device; only what the list
    allows (null) then opens."""
    name = make(privileged)
    _plant(ctd.rootfs(name))
    r = ctd.sh(name, "mkdir -p /mnt/r && mount --bind / /mnt/r && mount -o remount,bind,dev /mnt/r "
                     "&& grep ' /mnt/r ' /proc/self/mountinfo")
    assert r.code == 0 and "nodev" not in r.out.split(" - ")[0], (r.out, r.err)
    assert probe(ctd, name, "opendev", "/mnt/r/dev/planted-console") == "EPERM"
    assert probe(ctd, name, "opendev", "/mnt/r/dev/planted-loop0") == "EPERM"
    assert probe(ctd, name, "opendev", "/mnt/r/dev/planted-null") == "ok"


def test_privileged_mknod_then_open_is_refused_by_the_device_list(ctd, make):
    """A privileged root makes nodes where nodev does not reach (a tmpfs of its own): only
    the devices ctd gives it open."""
    name = make(True)
    assert ctd.sh(name, "mkdir -p /mnt/t && mount -t tmpfs -o dev none /mnt/t").code == 0
    for node, kind, (major, minor) in (("console", "c", HOST_CONSOLE), ("loop0", "b", LOOP0),
                                       ("tty0", "c", (4, 0)), ("mem", "c", (1, 1)), ("null", "c", NULL)):
        assert probe(ctd, name, "mknod_dev", f"/mnt/t/{node}", kind, str(major), str(minor)) == "ok", node
    assert probe(ctd, name, "opendev", "/mnt/t/console") == "EPERM"
    assert probe(ctd, name, "opendev", "/mnt/t/loop0") == "EPERM"
    assert probe(ctd, name, "opendev", "/mnt/t/tty0") == "EPERM"
    assert probe(ctd, name, "open", "/mnt/t/mem") == "EPERM"
    assert probe(ctd, name, "opendev", "/mnt/t/null") == "ok"   # allowed, and no nodev here


def test_privileged_root_cannot_widen_its_device_list(ctd, make):
    """Root of a privileged container holds CAP_SYS_ADMIN over the host, so it may write
    devices.allow of the cgroup it sees as its root (cgroup namespace): the list is set one
    level above it, and a v1 cgroup never gets more than its parent."""
    name = make(True)
    r = ctd.sh(name, "mkdir -p /mnt/c && mount -t cgroup -o devices cgroup /mnt/c && cat /mnt/c/devices.list")
    assert r.code == 0, r.err
    assert "a *:* rwm" not in r.out and "c 1:3 rwm" in r.out, r.out
    r = ctd.sh(name, "echo a > /mnt/c/devices.allow")
    assert r.code != 0 and "Operation not permitted" in r.err, (r.out, r.err)
    r = ctd.sh(name, "echo 'b 7:0 rwm' > /mnt/c/devices.allow")
    assert r.code != 0 and "Operation not permitted" in r.err, (r.out, r.err)
    assert ctd.sh(name, "mkdir -p /mnt/t && mount -t tmpfs -o dev none /mnt/t").code == 0
    assert probe(ctd, name, "mknod_dev", "/mnt/t/loop0", "b", *map(str, LOOP0)) == "ok"
    assert probe(ctd, name, "opendev", "/mnt/t/loop0") == "EPERM"


def test_exec_sessions_get_the_same_list(ctd, make, privileged):
    """ctctl exec joins the container's cgroups: its processes are held by the list too."""
    name = make(privileged)
    if privileged:
        assert ctd.sh(name, "mkdir -p /mnt/t && mount -t tmpfs -o dev none /mnt/t").code == 0
        assert probe(ctd, name, "mknod_dev", "/mnt/t/c", "c", *map(str, HOST_CONSOLE)) == "ok"
        assert probe(ctd, name, "opendev", "/mnt/t/c") == "EPERM"
    group = ctd.group(name)
    procs = [Path(f) for f in group.procs_files()]
    devices = [p for p in procs if "/devices/" in str(p)]
    assert devices, procs
    listing = (devices[0].parent / "devices.list").read_text().split("\n")
    assert "a *:* rwm" not in listing and "c 1:3 rwm" in listing and "c 5:1 rwm" not in listing


def _opens_of(path: Path):  # type: ignore[no-untyped-def]
    """An inotify watch for IN_OPEN on path; call the result to learn whether it was opened."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    assert libc.inotify_add_watch(fd, os.fsencode(path), 0x20) >= 0  # IN_OPEN

    def opened() -> bool:
        try:
            return bool(os.read(fd, 4096))
        except BlockingIOError:
            return False
        finally:
            os.close(fd)
    return opened


def test_ctd_never_opens_a_device_node_in_the_guest(tmp_path):
    """ctd reads guest files as host root (machine-id, shadow, os-release): a node the tenant
    put there is looked at (O_PATH), never opened -- opening alone acts on some devices."""
    from ctd import guestfs
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    os.mknod(root / "etc/machine-id", stat.S_IFCHR | 0o644, os.makedev(*NULL))
    opened = _opens_of(root / "etc/machine-id")
    assert guestfs.read_file(root, "/etc/machine-id") is None
    assert not opened()
    (root / "etc/os-release").write_text("ID=debian\n")
    opened = _opens_of(root / "etc/os-release")
    assert guestfs.read_file(root, "/etc/os-release") == "ID=debian\n"
    assert opened()  # the watch does see opens
