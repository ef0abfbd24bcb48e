"""`ctctl migrate NAME --to NODE` for containers on real parts: one etcd member on loopback and
two ctd daemons (made as tests/host/test_cluster.py makes its three), each with its own pool.

The containers have routed NICs (OpenVZ venet): the address is a host route to the container's
veth in this host's namespace, made by the node where the container runs; both daemons share the
host's address space, so an address that moves is one route that goes from node a with the stop
and comes back on node b with the start. No traffic leaves loopback and the test veths.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ctctl.client import ApiError
from tests.conftest import Daemon, needs_root
from tests.helpers.etcd import EtcdMember
from tests.host.test_cluster import joined_pair, listed, wait_for


@dataclass
class Pair:
    etcd: EtcdMember
    a: Daemon
    b: Daemon


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    needs_root()
    with joined_pair(tmp_path_factory.mktemp("migrate")) as (etcd, a, b):
        yield Pair(etcd, a, b)


def address() -> str:
    return f"198.51.100.{random.randint(2, 250)}"


def nothing_left_on(d: Daemon, node: str, name: str) -> None:
    """No row, no root, no staging directory of a migration on d (node `node`)."""
    assert name not in {i["name"] for i in d.client.get("/1.0/instances")["instances"]
                        if i.get("node") in (node, None)}
    storage = d.state_dir / "storage"
    assert not (storage / "instances" / name).exists()
    assert not staged(d)


def staged(d: Daemon) -> list[str]:
    return [p.name for p in (d.state_dir / "storage").iterdir() if p.name.startswith((".restore-", ".backup-"))]


def moved(a: Daemon, b: Daemon, name: str, ip: str, before: dict[str, Any]) -> dict[str, Any]:
    """Checks that name now lives on b with its settings, and nothing of it is left on a."""
    view = b.instance(name)
    assert view["limits"] == before["limits"] and view["limits"], (view["limits"], before["limits"])
    assert [n["mac"] for n in view["nics"]] == [n["mac"] for n in before["nics"]]
    assert [n["addresses"] for n in view["nics"]] == [[ip]] and view["tags"] == {"role": "moved"}
    for d in (a, b):
        rows = wait_for("the list shows the new node", lambda d=d: listed(d).get(name, {}).get("node") == "node-b"
                        and listed(d))
        assert rows[name]["node"] == "node-b"
    assert "node-b" in a.ok("list")
    nothing_left_on(a, "node-a", name)
    return view


def test_only_a_node_may_send_a_migration(pair: Pair) -> None:
    """Even the host's root (an admin on the socket) cannot push a stream into b as a migration:
    the receiving routes take a member node's certificate only, and b holds nothing after."""
    with pytest.raises(ApiError) as refused:
        pair.b.client.request("POST", "/1.0/cluster/migrations", {"header": {}, "id": 4242})
    assert refused.value.status == 403 and "only another node" in refused.value.message
    assert not staged(pair.b)


def test_a_stopped_container_migrates(pair: Pair) -> None:
    a, b = pair.a, pair.b
    ip = address()
    a.ok("create", "mig-stopped", "--template", "busybox", "--ipadd", ip, "--ram", "128M", "--tag", "role=moved")
    (a.rootfs("mig-stopped") / "data.txt").write_text("written before\n")
    before = a.instance("mig-stopped")
    out = b.ok("migrate", "mig-stopped", "--to", "node-b")   # asked of b: forwarded to a, its owner
    assert "Migrated mig-stopped to node-b (1 round(s)" in out and "downtime" not in out, out
    view = moved(a, b, "mig-stopped", ip, before)
    assert view["state"] == "stopped" and view["id"] == before["id"]
    assert (b.rootfs("mig-stopped") / "data.txt").read_text() == "written before\n"
    b.ok("start", "mig-stopped")
    assert b.sh("mig-stopped", "cat /data.txt").out == "written before\n"
    b.ok("destroy", "mig-stopped", "--force")


def test_a_running_container_migrates_with_a_short_downtime(pair: Pair) -> None:
    a, b = pair.a, pair.b
    ip = address()
    a.ok("create", "mig-run", "--template", "busybox", "--ipadd", ip, "--ram", "128M", "--tag", "role=moved")
    a.ok("start", "mig-run")
    # 8 MB before: the first round is big enough for an incremental one while it runs
    a.sh("mig-run", "echo before > /before.txt; dd if=/dev/urandom of=/big bs=1M count=8 2>/dev/null")
    r = a.sh("mig-run", "(while :; do date +%s >> /during.txt; sleep 0.1; done) </dev/null >/dev/null 2>&1 &")
    assert r.code == 0, r.err
    began = int(time.time())
    before = a.instance("mig-run")
    out = a.ok("migrate", "mig-run", "--to", "node-b")
    assert "Migrated mig-run to node-b" in out and "downtime" in out, out
    downtime = float(out.rsplit("downtime", 1)[1].split()[0])
    assert 0 < downtime < 60, out
    view = moved(a, b, "mig-run", ip, before)
    assert view["state"] == "running"
    # the address is routed to the container's veth on node b now (b's NIC prefix), once
    routes = subprocess.run(["ip", "-o", "route", "show", ip], capture_output=True, text=True).stdout.splitlines()
    assert len(routes) == 1 and f"dev {b.nic_prefix}" in routes[0], routes
    assert b.sh("mig-run", "cat /before.txt").out == "before\n"
    assert b.sh("mig-run", "wc -c < /big").out.strip() == str(8 << 20)
    # the writer ran during the copy: its last line (written just before the stop) is there
    assert int(b.sh("mig-run", "tail -n 1 /during.txt").out) >= began
    print(f"running busybox migration: {out.strip()}")
    b.ok("destroy", "mig-run", "--force")


def test_a_failed_migration_leaves_it_running_where_it_was(pair: Pair) -> None:
    """The target's pool is full: it refuses the stream half-way; the container runs on a as
    before, and node b has nothing of it."""
    a, b = pair.a, pair.b
    a.ok("create", "mig-fail", "--template", "busybox")
    a.ok("start", "mig-fail")
    a.sh("mig-fail", "dd if=/dev/urandom of=/big bs=1M count=40 2>/dev/null")
    storage = b.state_dir / "storage"
    filler = storage / "filler"
    st = os.statvfs(storage)
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.posix_fallocate(fd, 0, max(1, st.f_bavail * st.f_frsize - (16 << 20)))
        os.close(fd)
        with pytest.raises(ApiError) as failed:
            a.client.run("POST", "/1.0/instances/mig-fail/migrate", {"to": "node-b"})
        assert "node node-b refused the migration" in failed.value.message
        said = failed.value.message
        assert "free space" in said or "No space left" in said, said
    finally:
        filler.unlink()
        subprocess.run(["btrfs", "filesystem", "sync", str(storage)], capture_output=True)
        free = st.f_bavail * st.f_frsize
        wait_for("the pool's space back", lambda: os.statvfs(storage).f_bavail * st.f_frsize > free - (64 << 20))
    assert a.instance("mig-fail")["state"] == "running"
    assert a.sh("mig-fail", "wc -c < /big").out.strip() == str(40 << 20)
    assert listed(b)["mig-fail"]["node"] == "node-a"
    wait_for("the target's cleanup", lambda: not staged(b))   # retried once the pool has room again
    nothing_left_on(b, "node-b", "mig-fail")
    assert not staged(a)
    a.ok("destroy", "mig-fail", "--force")



def test_a_target_killed_after_the_stop_leaves_it_running_on_the_source(pair: Pair) -> None:
    """The target's ctd dies (kill -9) while the source stops the container for the last round:
    the source starts it again; the target, back, has nothing of it (its staging goes at start)."""
    a, b = pair.a, pair.b
    a.ok("create", "mig-kill", "--template", "busybox")
    a.ok("start", "mig-kill")
    reply = a.client.request("POST", "/1.0/instances/mig-kill/migrate", {"to": "node-b"})
    op_id = reply["operation"]["id"]

    def progress() -> str:
        op = a.client.get(f"/1.0/operations/{op_id}")["operation"]
        assert op["status"] == "running", op   # it must not end before the stop
        return str(op.get("progress") or "")

    wait_for("the stop for the last round", lambda: "stopping" in progress(), timeout=60)
    b.kill9()
    try:
        op = a.client.get(f"/1.0/operations/{op_id}/wait", timeout=120)["operation"]
        assert op["status"] == "failure" and "node-b" in op["error"], op
        assert a.instance("mig-kill")["state"] == "running"
        assert listed(a)["mig-kill"]["node"] == "node-a"
    finally:
        b.start()
    nothing_left_on(b, "node-b", "mig-kill")
    assert not staged(a)
    a.ok("destroy", "mig-kill", "--force")


def test_snapshots_migrate_oldest_first_and_roll_back_on_the_target(pair: Pair) -> None:
    """Two snapshots go first (full, then an increment of it), the root as an increment of the
    newest; on b they are listed and a rollback to the oldest gives its data back."""
    a, b = pair.a, pair.b
    name = "mig-snaps"
    a.ok("create", name, "--template", "busybox", "--node", "node-a")
    data = a.rootfs(name) / "data.txt"
    try:
        for step, snap in enumerate(("zz-old", "aa-new")):   # names sorted the other way round from their age
            data.write_text(f"v{step}\n")
            (a.rootfs(name) / f"blob{step}").write_bytes(os.urandom(2 << 20))
            a.ok("snapshot", name, snap)
            time.sleep(0.05)
        data.write_text("now\n")
        result = a.client.run("POST", f"/1.0/instances/{name}/migrate", {"to": "node-b"})
        rounds = result["rounds"]
        assert len(rounds) == 3, result   # zz-old full, aa-new -p zz-old, the root -p aa-new
        assert rounds[1] < rounds[0] and rounds[2] < (1 << 20), rounds   # increments, not copies
        assert sorted(b.ok("snapshot-list", name).split()) == ["aa-new", "zz-old"]
        snaps = b.state_dir / "storage" / "instances" / name / "snapshots"
        assert (snaps / "zz-old" / "data.txt").read_text() == "v0\n"
        assert (snaps / "aa-new" / "data.txt").read_text() == "v1\n"
        assert subprocess.run(["btrfs", "property", "get", str(snaps / "aa-new"), "ro"], capture_output=True,
                              text=True).stdout.strip() == "ro=true"
        assert (b.rootfs(name) / "data.txt").read_text() == "now\n"
        nothing_left_on(a, "node-a", name)
        b.ok("rollback", name, "zz-old")
        assert (b.rootfs(name) / "data.txt").read_text() == "v0\n" and not (b.rootfs(name) / "blob1").exists()
        b.ok("start", name)
        assert b.sh(name, "cat /data.txt").out == "v0\n"
        assert not staged(b) and not staged(a)
    finally:
        for d in (a, b):
            d.ctl("destroy", name, "--force")


def test_the_target_refuses_before_copying_what_breaks_its_limits(pair: Pair) -> None:
    """b refuses with 409 before a byte is sent when the container's project is full there, or
    b lacks the RAM or disk room placement would count; a keeps it running, b stages nothing."""
    a, b = pair.a, pair.b
    name = "mq-web"
    a.client.request("POST", "/1.0/projects", {"name": "mq"})
    b.client.request("POST", "/1.0/projects", {"name": "mq", "limits": {"instances": 0}})
    try:
        a.client.run("POST", "/1.0/instances", {"name": name, "template": "busybox", "node": "node-a",
                                                 "project": "mq"})
        a.ok("start", name)

        def refused() -> str:
            with pytest.raises(ApiError) as no:
                a.client.run("POST", f"/1.0/instances/{name}/migrate", {"to": "node-b"})
            assert no.value.status == 409, no.value
            assert a.instance(name)["state"] == "running" and not staged(b)
            assert name not in {i["name"] for i in b.client.get("/1.0/instances")["instances"]
                                if i.get("node") in ("node-b", None)}
            return no.value.message

        said = refused()
        assert "node node-b refused the migration: project mq: 0 instances of 0" in said, said
        b.client.request("PATCH", "/1.0/projects/mq", {"limits": {"instances": None}})
        a.ok("set", name, "--ram", "64T")
        said = refused()
        assert "node node-b has no room for mq-web (ram 64T" in said and "RAM free" in said, said
        a.ok("set", name, "--ram", "128M", "--diskspace", "64T")
        said = refused()
        assert "has no room for mq-web" in said and "disk free" in said, said
        assert listed(b)[name]["node"] == "node-a"
    finally:
        a.ctl("destroy", name, "--force")
        for d in (a, b):
            d.ctl("project", "delete", "mq")


def test_evacuate_moves_what_it_can_and_restore_ends_it(pair: Pair) -> None:
    """cluster evacuate node-a: the running container arrives running, the stopped one stopped;
    one no node has room for stays running on a, named in the non-zero exit; placement skips
    node-a until cluster restore. Tenants get 403."""
    from tests.host.test_cluster import https
    a, b = pair.a, pair.b
    names = ("ev-run", "ev-stop", "ev-big")
    for n in names:
        a.ok("create", n, "--template", "busybox", "--node", "node-a")
    a.ok("set", "ev-big", "--ram", "64T")
    for n in ("ev-run", "ev-big"):
        a.ok("start", n)
    (a.rootfs("ev-stop") / "kept.txt").write_text("kept\n")
    secret = a.ok("token", "create", "ev-tenant", "--role", "tenant").strip()
    try:
        for path in ("/1.0/cluster/nodes/node-a/evacuate", "/1.0/cluster/nodes/node-a/restore"):
            status, answer = https(a, secret, "POST", path, {})
            assert status == 403 and "needs the admin role" in answer["error"], answer
        began = time.monotonic()
        r = b.ctl("cluster", "evacuate", "node-a", timeout=300)   # asked of b: made on node-a
        took = time.monotonic() - began
        assert r.code != 0 and "ev-big" in r.err and "1 instance(s) stay on node-a" in r.err, (r.out, r.err)
        assert "ev-run: moved to node-b (running" in r.out and "ev-stop: moved to node-b (stopped" in r.out, r.out
        assert "ev-big: stays on node-a: no node of the cluster has room" in r.out, r.out
        print(f"evacuate of 3 instances (2 moved): {took:.2f} s")
        assert b.instance("ev-run")["state"] == "running" and b.instance("ev-stop")["state"] == "stopped"
        assert (b.rootfs("ev-stop") / "kept.txt").read_text() == "kept\n"
        assert a.instance("ev-big")["state"] == "running"
        assert "online, evacuating" in a.ok("cluster", "list")
        with pytest.raises(ApiError) as skipped:
            a.client.run("POST", "/1.0/instances", {"name": "ev-new", "template": "busybox", "node": "node-a"})
        assert skipped.value.status == 409 and "evacuating" in skipped.value.message
        out = a.ok("cluster", "restore", "node-a")
        assert "those evacuated stay where they went" in out, out
        assert "evacuating" not in a.ok("cluster", "list")
        assert listed(a)["ev-run"]["node"] == "node-b"
        assert not staged(a) and not staged(b)
    finally:
        a.ctl("cluster", "restore", "node-a")
        a.ctl("token", "revoke", "ev-tenant")
        for n in names:
            for d in (a, b):
                d.ctl("destroy", n, "--force")
