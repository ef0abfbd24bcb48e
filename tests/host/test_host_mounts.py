"""Host directories bound into containers (ctd/instance/container/hostmounts.py): the default
shifted bind, read-only, idmap (a host user's uid inside, host root's files unmapped), files,
set/unmount at the next start, and the refusals (symlinks, ctd's state dir, the kernel's trees,
a symlink swapped in after create, VMs' and tenants' requests are covered by unit tests)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def hostdir(tmp_path: Path) -> Path:
    """A directory of the test's own, reachable by anyone (the container's root is an
    unprivileged host uid that must walk the path to it)."""
    d = tmp_path / "share"
    d.mkdir()
    for p in (d, *d.parents):
        if p == Path("/"):
            break
        if not p.stat().st_mode & 0o001:
            os.chmod(p, p.stat().st_mode | 0o011)
    return d


def _base(ctd, name: str) -> int:
    return ctd.instance(name)["idmap"]["uid_base"]


def test_a_shifted_bind_is_owned_by_the_containers_root_and_writes_land_as_its_host_uid(ctd, make_container,
                                                                                      hostdir):
    name = make_container(start=False, mount=f"{hostdir}:/srv/data")
    base = _base(ctd, name)
    os.chown(hostdir, base, base)                   # as a Proxmox admin gives a directory to a container
    (hostdir / "from-host").write_text("hello\n")
    os.chown(hostdir / "from-host", base + 1000, base + 1000)
    (hostdir / "roots").write_text("host root's\n")  # owned by host root: nobody inside
    ctd.ok("start", name)
    r = ctd.sh(name, "stat -c '%u %n' /srv/data /srv/data/from-host /srv/data/roots; cat /srv/data/from-host; "
                     "echo made-inside > /srv/data/inside; grep ' /srv/data ' /proc/mounts")
    assert r.code == 0, r.err
    assert "0 /srv/data\n" in r.out and "1000 /srv/data/from-host" in r.out and "65534 /srv/data/roots" in r.out
    assert "hello" in r.out and "nosuid" in r.out and "nodev" in r.out
    assert (hostdir / "inside").read_text() == "made-inside\n"
    assert (hostdir / "inside").stat().st_uid == base    # container root is an unprivileged host uid
    assert "Mounts" not in r.err
    assert "/srv/data" in ctd.ok("status", name)


def test_read_only_and_a_single_file(ctd, make_container, hostdir):
    (hostdir / "motd").write_text("from the host\n")
    name = make_container(mount=f"{hostdir}:/data:ro")
    r = ctd.sh(name, "ls /data; touch /data/x 2>&1; echo rc=$?")
    assert "motd" in r.out and "Read-only file system" in r.out and "rc=1" in r.out
    ctd.ok("stop", name, "--timeout", "5")
    ctd.ok("set", name, "--unmount", "/data", "--mount", f"{hostdir / 'motd'}:/etc/motd.host:ro")
    ctd.ok("start", name)
    assert ctd.sh(name, "cat /etc/motd.host").out == "from the host\n"
    assert ctd.sh(name, "ls /data 2>/dev/null | wc -l").out.strip() == "0"    # no longer bound


def test_idmap_shows_a_host_users_uid_and_never_lets_anything_inside_own_a_file_as_host_root(
        ctd, make_container, hostdir):
    (hostdir / "users").write_text("uid 1000's\n")
    os.chown(hostdir / "users", 1000, 1000)
    os.chown(hostdir, 1000, 1000)                   # the host user's directory, shared with the container
    (hostdir / "roots").write_text("root's\n")
    name = make_container(mount=f"{hostdir}:/home/shared:idmap")
    r = ctd.sh(name, "stat -c '%u %g %n' /home/shared/users /home/shared/roots")
    assert "1000 1000 /home/shared/users" in r.out and "65534 65534 /home/shared/roots" in r.out
    # a user inside writes as that same host uid
    r = ctd.sh(name, "echo 'u1000:x:1000:1000::/:/bin/sh' >> /etc/passwd; "
                     "su -s /bin/sh -c 'echo by-1000 > /home/shared/new' u1000")
    assert r.code == 0, r.err
    assert (hostdir / "new").stat().st_uid == 1000
    # what host root owns shows as nobody and is not written through the mount (the kernel
    # refuses a write to an inode whose owner it cannot show: EACCES)
    r = ctd.sh(name, "su -s /bin/sh -c 'echo x >> /home/shared/roots' u1000 2>&1; echo rc=$?")
    assert "rc=1" in r.out and (hostdir / "roots").read_text() == "root's\n"
    # root inside cannot create a file there: it would be host root's (a setuid-root plant)
    r = ctd.sh(name, "echo x > /home/shared/by-root 2>&1; echo rc=$?")
    assert "rc=1" in r.out and "Value too large" in r.out + r.err
    assert not (hostdir / "by-root").exists()


def test_refusals_change_nothing(ctd, make_container, hostdir, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(hostdir)
    cases = {
        f"{link}:/data": "symbolic link",
        f"{tmp_path}/missing:/data": "does not exist",
        f"{ctd.state_dir}/storage:/data": "state directory",
        f"{ctd.state_dir.parent}:/data": "state directory",
        "/proc/1:/data": "/proc",
        f"{hostdir}:/proc/x": "mount target",
        f"{hostdir}/../share:/data": "canonical",
        f"{hostdir}:/data:rw,exec": "unknown option",
        f"{hostdir}": "SOURCE:TARGET",
    }
    for spec, said in cases.items():
        name = ctd.unique("thm")
        r = ctd.ctl("create", name, "--template", "busybox", "--mount", spec)
        assert r.code != 0 and said in r.err, (spec, r.err)
        assert ctd.ctl("status", name).code != 0
    r = ctd.ctl("create", ctd.unique("thm"), "--template", "busybox", "--privileged", "--mount", f"{hostdir}:/d:idmap")
    assert r.code != 0 and "unprivileged" in r.err
    made = make_container(start=False, mount=f"{hostdir}:/data")
    r = ctd.ctl("set", made, "--mount", f"{hostdir}:/data")
    assert r.code != 0 and "given twice" in r.err
    r = ctd.ctl("set", made, "--unmount", "/nope")
    assert r.code != 0 and "no mount at /nope" in r.err
    assert [m["target"] for m in ctd.instance(made)["mounts"]] == ["/data"]


def test_a_symlink_swapped_in_after_create_stops_the_start(ctd, make_container, hostdir, tmp_path):
    name = make_container(start=False, mount=f"{hostdir}:/data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.rename(hostdir, tmp_path / "moved")
    hostdir.symlink_to(elsewhere)
    r = ctd.ctl("start", name)
    assert r.code != 0 and "symbolic link" in r.err
    assert ctd.instance(name)["state"] == "stopped"


def test_the_host_does_not_see_the_containers_binds(ctd, make_container, hostdir):
    name = make_container(mount=f"{hostdir}:/srv/data")
    assert ctd.sh(name, "grep -c ' /srv/data ' /proc/mounts").out.strip() == "1"
    host = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True).stdout
    assert not any(line.endswith("/srv/data") for line in host.splitlines())
