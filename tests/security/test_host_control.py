"""Host control files, kernel modules, the host's disk and its /proc: every door root inside tries.

Safety: the only value ever written to a host control file is the value it already holds, so
even a write that got through would change nothing; privileged containers never write at all
(root there is host root): they only open for writing, which does nothing by itself.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.security.conftest import host_value, probe


# ---------------------------------------------------------------- /proc/sys, sysrq, uevent_helper

def test_core_pattern_write_is_refused(ctd, make, privileged):
    """/proc/sys/kernel/core_pattern: a pipe there runs any program as host root on a crash."""
    before = host_value("/proc/sys/kernel/core_pattern")
    name = make(privileged)
    if not privileged:
        # The sysctl belongs to the initial user namespace: root inside is "other" there.
        assert probe(ctd, name, "write", "/proc/sys/kernel/core_pattern", before) == "EACCES"
        # The read-only mount of /proc/sys is only a first layer: root inside made it, and can
        # lift it (it is not locked) -- the permission check still refuses.
        assert ctd.sh(name, "mount -o remount,bind,rw /proc/sys").code == 0
        assert probe(ctd, name, "openw", "/proc/sys/kernel/core_pattern") == "EACCES"
        assert probe(ctd, name, "write", "/proc/sys/kernel/core_pattern", before) == "EACCES"
        if Path("/proc/sys/kernel/modprobe").exists():  # CONFIG_MODULES=y
            assert probe(ctd, name, "write", "/proc/sys/kernel/modprobe",
                         host_value("/proc/sys/kernel/modprobe")) == "EACCES"
    else:
        # Host root: only the read-only mount stands in the way ...
        assert probe(ctd, name, "openw", "/proc/sys/kernel/core_pattern") == "EROFS"
        # ... and root there may remount it: documented, privileged = host root. Opened, never written.
        assert ctd.sh(name, "mount -o remount,bind,rw /proc/sys").code == 0
        assert probe(ctd, name, "openw", "/proc/sys/kernel/core_pattern") == "ok"
    assert host_value("/proc/sys/kernel/core_pattern") == before


def test_sysrq_trigger_write_is_refused(ctd, make, privileged):
    name = make(privileged)
    if not Path("/proc/sysrq-trigger").exists():
        # CONFIG_MAGIC_SYSRQ=n on this kernel: nothing to reach, inside either.
        assert probe(ctd, name, "openw", "/proc/sysrq-trigger") == "ENOENT"
        return
    if privileged:
        assert probe(ctd, name, "openw", "/proc/sysrq-trigger") == "EROFS"
        return
    # "h" only prints the help to the kernel log, were it ever accepted.
    assert probe(ctd, name, "write", "/proc/sysrq-trigger", "h") == "EACCES"
    assert ctd.sh(name, "mount -o remount,bind,rw /proc/sysrq-trigger").code == 0
    assert probe(ctd, name, "write", "/proc/sysrq-trigger", "h") == "EACCES"


def test_uevent_helper_write_is_refused(ctd, make, privileged):
    """/sys/kernel/uevent_helper runs a program as host root on every uevent."""
    name = make(privileged)
    if not Path("/sys/kernel/uevent_helper").exists():
        # CONFIG_UEVENT_HELPER=n on this kernel.
        assert probe(ctd, name, "openw", "/sys/kernel/uevent_helper") == "ENOENT"
    elif privileged:
        assert probe(ctd, name, "openw", "/sys/kernel/uevent_helper") == "EROFS"
    else:
        before = host_value("/sys/kernel/uevent_helper")
        assert probe(ctd, name, "write", "/sys/kernel/uevent_helper", before or "\n") == "EROFS"
        assert host_value("/sys/kernel/uevent_helper") == before


def test_sysfs_stays_read_only(ctd, make, privileged):
    """The same door as uevent_helper, with a root-only sysfs file every kernel has."""
    name = make(privileged)
    target = "/sys/kernel/mm/ksm/run" if Path("/sys/kernel/mm/ksm/run").exists() else "/sys/kernel/profiling"
    if not Path(target).exists():
        pytest.skip("no root-writable sysfs file to try on this kernel")
    assert probe(ctd, name, "openw", target) == "EROFS"
    # root inside can lift the read-only bind (it made it), but the container's sysfs
    # superblock is read-only itself ...
    assert ctd.sh(name, "mount -o remount,bind,rw /sys").code == 0
    assert probe(ctd, name, "openw", target) == "EROFS"
    if privileged:
        # ... which host root may remount read-write: documented, opened and never written.
        assert ctd.sh(name, "mount -o remount,rw /sys").code == 0
        assert probe(ctd, name, "openw", target) == "ok"
        return
    # ... and remounting a sysfs superblock takes CAP_SYS_ADMIN in the initial user namespace.
    assert ctd.sh(name, "mount -o remount,rw /sys").code != 0
    assert probe(ctd, name, "write", target, host_value(target)) == "EROFS"


# ---------------------------------------------------------------- kernel modules

@pytest.mark.parametrize("call", ["init_module", "finit_module", "delete_module"])
def test_kernel_modules_cannot_be_loaded_or_removed(ctd, make, privileged, call):
    name = make(privileged)
    assert probe(ctd, name, call) == "EPERM"  # seccomp, before CAP_SYS_MODULE (dropped) is looked at


def test_insmod_fails(ctd, make, privileged):
    name = make(privileged)
    r = ctd.sh(name, "echo junk > /tmp/x.ko; insmod /tmp/x.ko 2>&1")
    assert r.out.strip().endswith("Operation not permitted"), r.out


# ---------------------------------------------------------------- the host's disk

def _host_disk() -> tuple[int, int]:
    st = os.stat("/")
    return os.major(st.st_dev), os.minor(st.st_dev)


def _host_can_open(major: int, minor: int) -> str:
    """What host root itself gets opening that disk read-only: "ok" or the errno name (some
    sandboxes refuse even host root; a privileged container can do no more than that)."""
    devname = dict(line.split("=", 1) for line in
                   Path(f"/sys/dev/block/{major}:{minor}/uevent").read_text().splitlines())["DEVNAME"]
    try:
        os.close(os.open(f"/dev/{devname}", os.O_RDONLY))
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return "ok"


def _backing(path: Path) -> tuple[str, int, int, str, str]:
    """(device path, major, minor, fstype, path inside that filesystem) of what holds path."""
    best = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, rest = line.split(" - ", 1)
        root, point = fields.split()[3:5]
        fstype, source = rest.split()[:2]
        if (str(path) + "/").startswith(point.rstrip("/") + "/") and (best is None or len(point) >= len(best[1])):
            best = (root, point, fstype, source)
    assert best is not None
    root, point, fstype, source = best
    if not source.startswith("/dev/") or not os.path.exists(source):
        pytest.skip(f"{path} is not on a block device ({fstype} {source})")
    rdev = os.stat(source).st_rdev
    inside = root.rstrip("/") + "/" + str(path)[len(point.rstrip("/")):].lstrip("/")
    return source, os.major(rdev), os.minor(rdev), fstype, inside


def test_host_disk_is_not_in_dev(ctd, make, privileged, features):
    name = make(privileged)
    listing = set(ctd.sh(name, "ls /dev").out.split())
    # with the features on: their own nodes and nothing else (net holds only tun)
    added = {"net", "fuse"} if features else set()
    assert listing <= {"null", "zero", "full", "random", "urandom", "tty", "console", "pts", "ptmx", "shm",
                       "mqueue", "fd", "stdin", "stdout", "stderr", "log"} | added, listing
    if features:
        assert ctd.sh(name, "ls /dev/net").out.split() == ["tun"]


def test_mknod_host_disk(ctd, make, privileged):
    major, minor = _host_disk()
    if major == 0:
        pytest.skip("/ is not on a block device here")
    name = make(privileged)
    result = probe(ctd, name, "mknod_dev", "/root/disk", "b", str(major), str(minor))
    if not privileged:
        assert result == "EPERM"  # CAP_MKNOD is only held in the container's user namespace
        assert probe(ctd, name, "open", "/root/disk") == "ENOENT"
        return
    # Privileged root is host root -- CAP_MKNOD in the initial user namespace -- so the node is
    # made; the root is nodev, and the device allow-list refuses the disk where nodev does not
    # reach (a tmpfs of its own). Read-only, one block, were it ever opened.
    assert result == "ok"
    assert probe(ctd, name, "read", "/root/disk", "512") == "EACCES"
    assert ctd.sh(name, "mkdir -p /mnt/t && mount -t tmpfs -o dev none /mnt/t").code == 0
    assert probe(ctd, name, "mknod_dev", "/mnt/t/disk", "b", str(major), str(minor)) == "ok"
    assert probe(ctd, name, "read", "/mnt/t/disk", "512") == "EPERM"


def test_mount_host_disk_unprivileged(ctd, make):
    name = make()
    # ext4 and friends are not mountable in a user namespace (no FS_USERNS_MOUNT): refused
    # before the device is even looked up, whichever device it is.
    assert probe(ctd, name, "mount", "/dev/vda", "/mnt", "ext4") == "EPERM"
    assert probe(ctd, name, "mountd", "/dev/null", "/mnt", "ext4", "", "1") == "EPERM"
    assert probe(ctd, name, "mount", "/dev/vda", "/mnt", "xfs") == "EPERM"
    assert probe(ctd, name, "mount", "/dev/vda", "/mnt", "btrfs") in ("EPERM", "ENODEV")


def test_mount_host_disk_privileged(ctd, make, tmp_path):
    """A privileged root makes a node of the disk holding a host file (and of the one holding
    a neighbour's root) and mounts it. In /dev: refused by nodev. In a /dev of its own making
    (a tmpfs without nodev) the device allow-list refuses what opens the device (btrfs scans
    it: EPERM), but a filesystem the host has mounted already (ext4 here) mounts again: the
    kernel (6.18) reuses the superblock without opening the device, so the device cgroup is
    never asked. Documented: privileged root is host root. Read-only use of canaries this test
    wrote; the second mount dies with the container's mount namespace."""
    canary = tmp_path / "canary"
    canary.write_text("host-canary-7731\n")
    neighbour = make()
    ctd.sh(neighbour, "echo neighbour-secret-4242 > /root/secret")
    name = make(True)
    targets = (("host", canary, "host-canary-7731"),
               ("neighbour", ctd.rootfs(neighbour) / "root/secret", "neighbour-secret-4242"))
    for where, path, _text in targets:
        device, major, minor, fstype, _inside = _backing(path)
        # The node gets the host's very name for the device: btrfs remembers the path it last
        # saw a device under, for everyone -- another name would show up in the host's
        # mountinfo (and has confused ctd's own pool clean-up).
        assert probe(ctd, name, "mknod_dev", device, "b", str(major), str(minor)) == "ok"
        ctd.sh(name, f"mkdir -p /mnt/{where}")
        assert probe(ctd, name, "mount", device, f"/mnt/{where}", fstype) == "EACCES", where
    assert ctd.sh(name, "mount -t tmpfs -o dev,mode=755 none /dev").code == 0
    for where, path, text in targets:
        device, major, minor, fstype, inside = _backing(path)
        assert probe(ctd, name, "mknod_dev", device, "b", str(major), str(minor)) == "ok"
        result = probe(ctd, name, "mount", device, f"/mnt/{where}", fstype)
        if fstype == "btrfs":
            assert result == "EPERM", where
            continue
        assert result == "ok", where
        try:
            assert probe(ctd, name, "cat", f"/mnt/{where}{inside}") == text
        finally:
            ctd.sh(name, f"umount /mnt/{where}")


# ---------------------------------------------------------------- /proc, /sys and cgroupfs of the host

def test_fresh_proc_shows_only_the_container(ctd, make, privileged, host_sleeper):
    """Mounting "the host's /proc" gives the container's own pid namespace, never the host's."""
    sleeper = host_sleeper()
    name = make(privileged)
    assert probe(ctd, name, "mount", "proc", "/mnt", "proc") == "ok"
    pids = [p for p in ctd.sh(name, "ls /mnt").out.split() if p.isdigit()]
    comms = ctd.sh(name, "cat /mnt/[0-9]*/comm").out.split()
    assert len(pids) == len(comms) < 12 and ctd.sh(name, "cat /mnt/1/comm").out.strip() == "init"
    # neither the host's sleeper nor ctd (python, its spawner) nor the host's init is in there
    assert not {"sleep", "python3", "python3.11", "ctd-spawner", "systemd"} & set(comms), comms
    assert str(sleeper.pid) not in pids or probe(ctd, name, "cat", f"/mnt/{sleeper.pid}/comm") != "sleep"
    if not privileged:
        # sysctls of that fresh proc are the same files: still the host's, still refused
        assert probe(ctd, name, "openw", "/mnt/sys/kernel/core_pattern") == "EACCES"


def test_fresh_sysfs(ctd, make):
    name = make()
    # mount_too_revealing: /sys is read-only here, so a fresh sysfs must be read-only too ...
    assert probe(ctd, name, "mount", "sysfs", "/mnt", "sysfs") == "EPERM"
    # ... and read-only it is the container's own network namespace's view, read-only.
    assert probe(ctd, name, "mountd", "sysfs", "/mnt", "sysfs", "", "1") == "ok"
    assert probe(ctd, name, "openw", "/mnt/kernel/profiling") in ("EROFS", "ENOENT")


def test_cgroup_release_agent_unprivileged(ctd, make):
    """CVE-2022-0492: a release_agent runs as host root when a cgroup empties."""
    name = make()
    ctd.sh(name, "mkdir -p /tmp/cg")
    # setting one takes CAP_SYS_ADMIN in the initial user namespace: EINVAL from the parser
    assert probe(ctd, name, "mountd", "cgroup", "/tmp/cg", "cgroup", "memory,release_agent=/tmp/x") == "EINVAL"
    assert probe(ctd, name, "mountd", "cgroup", "/tmp/cg", "cgroup",
                 "none,name=ctdsec,release_agent=/tmp/x") == "EINVAL"
    # a new hierarchy (where one could be set) cannot be made from a cgroup namespace
    assert probe(ctd, name, "mountd", "cgroup", "/tmp/cg", "cgroup", "none,name=ctdsec") == "EPERM"
    # an existing hierarchy mounts, at the container's own cgroup: no release_agent file there
    if probe(ctd, name, "mountd", "cgroup", "/tmp/cg", "cgroup", "memory") == "ok":
        assert probe(ctd, name, "openw", "/tmp/cg/release_agent") == "ENOENT"
        assert probe(ctd, name, "write", "/tmp/cg/notify_on_release", "1") in ("EACCES", "EPERM")


def test_cgroup_new_hierarchy_privileged(ctd, make):
    """Privileged: no new hierarchy (with a release_agent of its choosing) from its cgroup
    namespace. Documented as not exercised further: the release_agent of existing hierarchies."""
    name = make(True)
    ctd.sh(name, "mkdir -p /tmp/cg")
    assert probe(ctd, name, "mountd", "cgroup", "/tmp/cg", "cgroup", "none,name=ctdsec") == "EPERM"


# ---------------------------------------------------------------- masked /proc files

MASKS = {  # masked path -> what root inside gets once it lifts the mask (it can: it made it)
    "/proc/timer_list": ("cat", "EACCES"),               # host timers, pids and comms
    "/sys/firmware/acpi/tables/DSDT": ("read", "EACCES"),  # firmware tables
}


def test_masks_are_defence_in_depth_only(ctd, make):
    """The masks over /proc and /sys are mounts root inside made and may undo; behind them the
    kernel's own checks refuse (initial-namespace capabilities, unmapped owners)."""
    name = make()
    for path, (how, expected) in MASKS.items():
        if not Path(path).exists():
            continue
        assert probe(ctd, name, how, path) in ("", "ok", "ENOENT"), path  # /dev/null or empty tmpfs
        mask = "/sys/firmware" if path.startswith("/sys/firmware") else path
        assert ctd.sh(name, f"umount {mask}").code == 0, mask
        assert probe(ctd, name, how, path) == expected, path
    if Path("/proc/kallsyms").exists():
        assert ctd.sh(name, "umount /proc/kallsyms").code == 0
        addresses = {line.split()[0] for line in ctd.sh(name, "head -50 /proc/kallsyms").out.splitlines()}
        assert addresses == {"0000000000000000"}  # no CAP_SYSLOG in the initial namespace: no KASLR leak
    if Path("/proc/keys").exists():
        assert ctd.sh(name, "umount /proc/keys").code == 0
        assert ctd.sh(name, "cat /proc/keys").out == ""  # no host keyring is visible
    for path in ("/proc/kcore", "/proc/sched_debug", "/proc/latency_stats"):
        if Path(path).exists():
            ctd.sh(name, f"umount {path}")
            assert probe(ctd, name, "read", path) in ("EACCES", "EPERM"), path



def test_masked_directories_are_one_empty_read_only_tmpfs(ctd, make, privileged):
    name = make(privileged=privileged)
    masked = [p for p in ("/sys/firmware", "/proc/acpi", "/proc/scsi") if Path(p).exists()]
    assert "/sys/firmware" in masked
    r = ctd.sh(name, "for d in " + " ".join(masked) + "; do stat -f -c '%T' $d; stat -c '%d %h' $d; "
               "ls -A $d | wc -l; touch $d/x 2>/dev/null && echo WROTE; done")
    lines = r.out.split()
    # per directory: filesystem type, device, link count, entries
    for i, path in enumerate(masked):
        fstype, dev, _links, entries = lines[4 * i:4 * i + 4]
        assert fstype == "tmpfs" and entries == "0", (path, r.out)
        assert dev == lines[1], f"{path} is not the same tmpfs as /sys/firmware: {r.out}"
    assert "WROTE" not in r.out
