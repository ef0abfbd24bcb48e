"""Storage through ctd: the embedded btrfs pool, quotas, snapshots, rollback, clones, templates."""

from __future__ import annotations

import subprocess

import pytest


def storage(ctd) -> dict:
    return ctd.client.get("/1.0/storage")["storage"]


def subvolumes(ctd) -> str:
    return subprocess.run(["btrfs", "subvolume", "list", str(ctd.state_dir / "storage")],
                          capture_output=True, text=True).stdout


def test_the_embedded_default_is_a_loop_backed_btrfs_pool(ctd):
    info = storage(ctd)
    assert info["driver"] == "btrfs", info
    assert info["image"].endswith("pool.img") and info["device"].startswith("/dev/loop")
    assert ctd.ok("storage").splitlines()[0].split() == ["driver:", "btrfs"]


def test_create_is_a_snapshot_not_a_copy(ctd):
    template_size = next(t["size"] for t in ctd.client.get("/1.0/templates")["templates"] if t["name"] == "busybox")
    subprocess.run(["sync"])
    before = storage(ctd)["used"]
    names = [ctd.unique("snap") for _ in range(10)]
    try:
        for name in names:
            ctd.ok("create", name, "--template", "busybox")
        subprocess.run(["sync"])
        grown = storage(ctd)["used"] - before
        # ten copies would be ten template sizes; snapshots cost kilobytes of metadata each
        assert grown < 2 * template_size, f"10 creates grew the pool by {grown} bytes (template {template_size})"
        ctd.ok("start", names[0])
        ctd.ok("start", names[1])
        ctd.sh(names[0], "echo mine > /root/file")
        assert ctd.sh(names[1], "cat /root/file").code != 0  # independent roots
    finally:
        for name in names:
            ctd.ctl("destroy", "--force", name)


def test_diskspace_quota_stops_writes_inside_with_edquot(ctd, make_container):
    name = make_container(diskspace="20M")
    r = ctd.sh(name, "dd if=/dev/urandom of=/root/fill bs=1M count=40 2>&1; sync")
    assert "Disk quota exceeded" in r.out, r.out
    disk = ctd.instance(name)["disk"]
    assert disk["limit"] == 20 * 1024 * 1024 and 15 * 1024 * 1024 <= disk["used"] <= 21 * 1024 * 1024
    assert "/20.0M" in ctd.ok("list")
    # the neighbour and the host can still write
    other = make_container()
    assert ctd.sh(other, "dd if=/dev/zero of=/root/f bs=1M count=30 2>/dev/null && echo ok").out.strip() == "ok"
    # live: raise it, and a limit below the use is refused
    r = ctd.ctl("set", name, "--diskspace", "5M")
    assert r.code == 1 and "at least" in r.err
    ctd.ok("set", name, "--diskspace", "100M")
    assert ctd.sh(name, "dd if=/dev/zero of=/root/more bs=1M count=30 2>/dev/null && echo ok").out.strip() == "ok"


def test_snapshot_change_rollback(ctd, make_container):
    name = make_container()
    ctd.sh(name, "echo before > /root/state")
    ctd.ok("snapshot", name, "s1")
    ctd.sh(name, "echo after > /root/state; touch /root/new")
    assert "s1" in ctd.ok("snapshot-list", name)
    r = ctd.ctl("rollback", name, "s1")
    assert r.code == 1 and "--restart" in r.err
    ctd.ok("rollback", "--restart", name, "s1")
    assert ctd.instance(name)["state"] == "running"
    assert ctd.sh(name, "cat /root/state; ls /root").out.split() == ["before", "state"]
    r = ctd.ctl("snapshot", name, "s1")
    assert r.code == 1 and "already has" in r.err
    r = ctd.ctl("rollback", name, "nosuch")
    assert r.code == 1 and "no snapshot" in r.err
    ctd.ok("snapshot-delete", name, "s1")
    assert "no snapshots" in ctd.ok("snapshot-list", name)


def test_clone_needs_a_stopped_source_or_a_snapshot_and_gets_a_new_identity(ctd, make_container):
    src = make_container()
    ctd.sh(src, "echo data > /root/data")
    new = ctd.unique("clone")
    r = ctd.ctl("clone", src, new)
    assert r.code == 1 and "--snapshot" in r.err
    ctd.ok("snapshot", src, "base")
    ctd.ok("clone", src, new, "--snapshot", "base")
    try:
        a, b = ctd.instance(src), ctd.instance(new)
        assert b["id"] != a["id"] and b["idmap"]["uid_base"] != a["idmap"]["uid_base"]
        assert b["hostname"] == new
        ctd.ok("start", new)
        assert ctd.sh(new, "cat /root/data; hostname").out.split() == ["data", new]
        ctd.sh(new, "echo changed > /root/data")
        assert ctd.sh(src, "cat /root/data").out.strip() == "data"
    finally:
        ctd.ctl("destroy", "--force", new)


def test_template_from_an_instance(ctd, make_container):
    src = make_container()
    ctd.sh(src, "echo baked > /etc/baked")
    tpl = ctd.unique("tpl")
    r = ctd.ctl("template", "create", tpl, "--from", src)
    assert r.code == 1 and "running" in r.err
    ctd.ok("stop", src)
    ctd.ok("template", "create", tpl, "--from", src)
    child = ctd.unique("child")
    try:
        ctd.ok("create", child, "--template", tpl)
        ctd.ok("start", child)
        assert ctd.sh(child, "cat /etc/baked").out.strip() == "baked"
    finally:
        ctd.ctl("destroy", "--force", child)
        ctd.ctl("template", "delete", tpl)


def test_destroy_leaves_no_subvolume(ctd, make_container):
    name = make_container(diskspace="50M")
    ctd.ok("snapshot", name, "one")
    assert name in subvolumes(ctd)
    ctd.ok("destroy", "--force", name)
    assert name not in subvolumes(ctd)


def test_quota_refused_cleanly_on_the_dir_driver(tmp_path):
    from tests.conftest import _start_daemon, _teardown
    d = _start_daemon(tmp_path, "dir", extra='storage_driver = "dir"\n')
    try:
        assert d.client.get("/1.0/storage")["storage"]["driver"] == "dir"
        r = d.ctl("create", "q1", "--template", "busybox", "--diskspace", "10M")
        assert r.code == 1 and "btrfs" in r.err
        assert d.ctl("status", "q1").code == 1  # nothing left behind
        d.ok("create", "q2", "--template", "busybox")
        d.ok("snapshot", "q2", "s")
        d.ok("rollback", "q2", "s")
    finally:
        _teardown(d)
