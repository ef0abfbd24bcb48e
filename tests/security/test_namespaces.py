"""setns/unshare "back to the host": every namespace file root inside can reach is the
container's own, and the namespace ioctls refuse to hand out the host's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.security.conftest import container_pids, probe

OWN = ["mnt", "pid", "net", "uts", "ipc", "cgroup"]


@pytest.mark.parametrize("ns", OWN)
def test_setns_reaches_only_the_containers_own(ctd, make, privileged, ns):
    name = make(privileged)
    init = ctd.instance(name)["pid"]
    inside = int(probe(ctd, name, "nsino", f"/proc/1/ns/{ns}"))
    assert inside == os.stat(f"/proc/{init}/ns/{ns}").st_ino != os.stat(f"/proc/self/ns/{ns}").st_ino
    # joining it works -- it is where the caller already is -- and leads nowhere else
    assert probe(ctd, name, "setns", f"/proc/1/ns/{ns}") == "ok"
    # and no process inside is in any other one (the host's /proc is not there to name it)
    seen = ctd.sh(name, f"for p in /proc/[0-9]*; do probe nsino $p/ns/{ns}; done").out.split()
    assert seen and set(seen) <= {str(inside), "ENOENT"}, seen


def test_user_namespace(ctd, make, privileged):
    name = make(privileged)
    inside = int(probe(ctd, name, "nsino", "/proc/1/ns/user"))
    host = os.stat("/proc/self/ns/user").st_ino
    if privileged:
        assert inside == host  # documented: a privileged container shares the host's user namespace
    else:
        assert inside != host
    assert probe(ctd, name, "setns", "/proc/1/ns/user") == "EINVAL"  # already in it


@pytest.mark.parametrize("ns", ["pid", "user"])
def test_no_way_up_to_the_parent_namespace(ctd, make, privileged, ns):
    """NS_GET_PARENT answers EPERM when the parent lies outside the caller's namespace (or,
    for the host's user namespace of a privileged container, does not exist)."""
    name = make(privileged)
    assert probe(ctd, name, "ns_parent", f"/proc/self/ns/{ns}") == "EPERM"


def test_owner_of_the_user_namespace_is_out_of_reach(ctd, make, privileged):
    name = make(privileged)
    # the owner of the container's user namespace is the host's: refused
    assert probe(ctd, name, "ns_owner", "/proc/self/ns/user") == "EPERM"
    # the owner of its other namespaces is its own user namespace
    got = probe(ctd, name, "ns_owner", "/proc/self/ns/net").split()
    assert got == ["ok", probe(ctd, name, "nsino", "/proc/self/ns/user")]


def test_unshare_only_nests(ctd, make, privileged):
    """unshare() makes children of the container's namespaces: root of a nested user namespace
    is, on the host, the container's root -- never more."""
    name = make(privileged)
    assert ctd.sh(name, "unshare -r cat /proc/self/uid_map").out.split() == ["0", "0", "1"]
    assert ctd.sh(name, "unshare -r sleep 30 </dev/null >/dev/null 2>&1 &").code == 0
    init = ctd.instance(name)["pid"]
    sleepers = [p for p in container_pids(init) if Path(f"/proc/{p}/comm").read_text().strip() == "sleep"]
    assert len(sleepers) == 1
    owner = 0 if privileged else ctd.instance(name)["idmap"]["uid_base"]
    assert Path(f"/proc/{sleepers[0]}").stat().st_uid == owner
    assert os.stat(f"/proc/{sleepers[0]}/ns/user").st_ino != os.stat(f"/proc/{init}/ns/user").st_ino
