"""Per-user kernel limits are per container: each container's user namespace is owned by a host
uid of its own (from the block below ctd's id ranges), so what the kernel counts per user at
the host level (inotify instances above all: 128 by default) is not shared with host root or
with the neighbours."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from ctd.linux.proc import userns_owner
from tests.helpers.probe_holder import ProbeHolder

_libc = ctypes.CDLL(None, use_errno=True)


def probe_out(ctd, name: str, *args: str) -> str:  # type: ignore[no-untyped-def]
    r = ctd.ctl("exec", name, "--", "probe", *args)
    assert r.code == 0, (r.code, r.err)
    return r.out.strip()


def test_inotify_instances_are_per_container(ctd, make_container):
    """A tenant that takes every inotify instance it can gets the host's per-user limit (128)
    to itself and EMFILE; meanwhile host root and a neighbour still make theirs."""
    limit = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    greedy = make_container()
    neighbour = make_container()
    holder = ProbeHolder(ctd, greedy, "inotifyhold", limit + 50)
    try:
        made, err = holder.report.split()
        assert err == "EMFILE" and limit - 5 <= int(made) <= limit, holder.report
        fd = _libc.inotify_init1(os.O_CLOEXEC)  # host root, in the test's own process
        assert fd >= 0, os.strerror(ctypes.get_errno())
        os.close(fd)
        assert probe_out(ctd, neighbour, "inotifyhold", "1", "0") == "1 ok"
        # What the tenant reads as its limit is the host's per-user one: now truly its own.
        assert ctd.sh(greedy, "cat /proc/sys/fs/inotify/max_user_instances").out.strip() == str(limit)
    finally:
        holder.end()


def test_owners_are_reserved_uids_one_per_container(ctd, make_container):
    """The owner of each container's user namespace is a uid of the block just below ctd's id
    ranges, never root, never a container's own id, and no two live containers share one."""
    names = [make_container() for _ in range(3)]
    owners = [userns_owner(ctd.instance(n)["pid"]) for n in names]
    assert len(set(owners)) == 3, owners
    for owner in owners:
        assert ctd.idmap_area[0] - 65536 <= owner < ctd.idmap_area[0], owners
    # privileged containers have no user namespace of their own: nothing changes for them
    privileged = make_container(privileged=True)
    assert userns_owner(ctd.instance(privileged)["pid"]) == 0


def test_owners_stay_unique_across_a_daemon_restart(fresh_ctd, probe):
    """A ctd killed and restarted adopts its running containers and tells the new spawner their
    owners: a container started then gets another one."""
    d = fresh_ctd
    first = d.unique()
    d.ok("create", first, "--template", "busybox")
    d.ok("start", first)
    owner = userns_owner(d.instance(first)["pid"])
    d.kill9()
    d.start()
    assert d.instance(first)["state"] == "running"
    others = []
    for _ in range(3):
        name = d.unique()
        d.ok("create", name, "--template", "busybox")
        d.ok("start", name)
        others.append(userns_owner(d.instance(name)["pid"]))
    assert owner not in others and len(set(others)) == 3, (owner, others)
