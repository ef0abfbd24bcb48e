"""Replication and HA failover on real parts: one etcd member on loopback and two ctd daemons
(made as tests/host/test_cluster.py makes them) with a 10 s lease, the production default.

The tests run in file order on one pair: replication rounds (full, then incremental, two kept on
each side), the receiving side refusing what a node may not send, fencing when etcd is out of
reach, and a failover after `kill -9` of the owner's ctd (measured), with an audit that the
instance never ran on both nodes at once.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctctl.client import ApiError
from ctd.cluster.peer import PeerReply, call, client_context
from ctd.storage.backup.format import FORMAT, VERSION
from tests.conftest import Daemon, needs_root
from tests.helpers.etcd import EtcdMember
from tests.host.test_cluster import joined_pair, listed, wait_for

TTL = 10


@dataclass
class Pair:
    etcd: EtcdMember
    a: Daemon
    b: Daemon


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    needs_root()
    with joined_pair(tmp_path_factory.mktemp("replicate"), ttl=TTL) as (etcd, a, b):
        yield Pair(etcd, a, b)


def replicas(d: Daemon, name: str) -> list[str]:
    snaps = d.state_dir / "storage" / ".replicas" / name / "snaps"
    return sorted(p.name for p in snaps.iterdir()) if snaps.is_dir() else []


def sources(d: Daemon, name: str) -> list[str]:
    snaps = d.state_dir / "storage" / ".replicate" / name
    return sorted(p.name for p in snaps.iterdir()) if snaps.is_dir() else []


def as_node(sender: Daemon, receiver: Daemon, method: str, path: str, body: bytes | None = None,
            content_type: str = "application/json") -> PeerReply:
    """A request to receiver made with sender's node certificate (what a node sends)."""
    tls = sender.state_dir / "tls"
    fingerprint = receiver.client.get("/1.0/cluster")["cluster"]["fingerprint"]
    return call(f"https://127.0.0.1:{receiver.port}", fingerprint,  # type: ignore[attr-defined]
                client_context(tls / "server.crt", tls / "server.key"), method, path, body, content_type, 30)


def test_replication_sends_increments_and_keeps_two(pair: Pair) -> None:
    a, b = pair.a, pair.b
    a.ok("create", "rep", "--template", "busybox", "--diskspace", "1G")
    a.ok("start", "rep")
    a.sh("rep", "echo one > /one.txt; dd if=/dev/urandom of=/big bs=1M count=4 2>/dev/null")
    out = b.ok("set", "rep", "--replicate-to", "node-b", "--every", "1h")   # asked of b: made on a, its owner
    assert "rep replicates to node-b every 1h" in out, out
    # the first round may be the replicator's own (due at once); a sync waits for it, then sends one more
    first = a.client.run("POST", "/1.0/instances/rep/replication/sync", {})
    gen = first["generation"]
    a.sh("rep", "echo two > /two.txt")
    second = b.ok("replica", "sync", "rep")   # asked of b: made on a
    assert f"generation {gen + 1}, incremental" in second, second
    a.sh("rep", "echo three > /three.txt")
    third = a.client.run("POST", "/1.0/instances/rep/replication/sync", {})
    assert third["generation"] == gen + 2 and third["incremental"] and third["bytes"] < 1 << 20, third  # 4M: once
    kept = [f"r-{gen + 1}", f"r-{gen + 2}"]
    assert replicas(b, "rep") == kept and sources(a, "rep") == kept
    root = b.state_dir / "storage" / ".replicas" / "rep" / "snaps" / kept[-1]
    assert (root / "three.txt").read_text() == "three\n" and (root / "big").stat().st_size == 4 << 20
    # a replica is no instance of b's: listed as a's, with its last replication and lag
    assert listed(b)["rep"]["node"] == "node-a"
    rows = {r["name"]: r for r in b.client.get("/1.0/cluster/replicas")["replicas"]}
    assert rows["rep"]["target"] == "node-b" and rows["rep"]["generation"] == gen + 2 and rows["rep"]["lag"] < 60
    table = b.ok("replica", "list")
    assert any(line.split()[:5] == ["rep", "node-a", "node-b", "1h", "no"] for line in table.splitlines()), table
    # a bad interval, an unknown node: refused, the setting unchanged
    for args, said in ((["--every", "1s"], "interval from 10s"), (["--replicate-to", "node-x"], "no node")):
        r = a.ctl("set", "rep", *args)
        assert r.code != 0 and said in r.err, r.err
    assert rows["rep"]["every"] == 3600


def test_only_the_owner_may_send_a_replica(pair: Pair) -> None:
    """b's own instance: a may not send replicas of it; root on the socket is no node; a hostile
    stream leaves the generations kept as they were."""
    a, b = pair.a, pair.b
    with pytest.raises(ApiError) as refused:
        b.client.request("POST", "/1.0/cluster/replicas/rep", {"header": {}, "id": 1}, {"gen": "9"})
    assert refused.value.status == 403 and "only another node" in refused.value.message
    made = b.ctl("create", "b-own", "--template", "busybox", "--replicate-to", "node-x")   # the create stands
    assert made.code != 0 and "b-own was created, but its replication was refused: no node 'node-x'" in made.err
    try:
        reply = as_node(a, b, "GET", "/1.0/cluster/replicas/b-own")
        assert reply.status == 403 and b"does not own b-own" in reply.body, reply
    finally:
        b.ok("destroy", "b-own", "--force")
    gen = json.loads(as_node(a, b, "GET", "/1.0/cluster/replicas/rep").body)["generation"]
    before = replicas(b, "rep")
    assert before == [f"r-{gen - 1}", f"r-{gen}"]
    rid = a.instance("rep")["id"]
    bad = as_node(a, b, "POST", f"/1.0/cluster/replicas/rep?gen={gen + 1}&parent={gen}",
                  json.dumps({"header": {"format": "x"}, "id": rid}).encode())
    assert bad.status == 400, bad
    meta = {"format": FORMAT, "version": VERSION, "type": "container", "driver": "btrfs-send",
            "member": "rootfs.btrfs", "name": "rep", "kind": "full", "meta": {"name": "rep"},
            "created": "2026-12-07T00:00:00+00:00"}
    ok = as_node(a, b, "POST", f"/1.0/cluster/replicas/rep?gen={gen + 1}&parent={gen}",
                 json.dumps({"header": meta, "id": rid}).encode())
    assert ok.status == 201, ok
    garbage = as_node(a, b, "PUT", "/1.0/cluster/replicas/rep/stream", b"btrfs-stream\0" + os.urandom(4096),
                      "application/octet-stream")
    assert garbage.status == 400, garbage
    assert replicas(b, "rep") == before


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_fencing_kills_ha_instances_when_the_lease_cannot_be_renewed(pair: Pair) -> None:
    """etcd frozen (SIGSTOP): no node can renew; each kills its HA instances before its lease
    could lapse (and no node can fail them over, etcd being the one to decide)."""
    a = pair.a
    a.ok("set", "rep", "--ha", "yes")
    wait_for("the fence knows rep", lambda: "rep" in json.loads((a.state_dir / "fence.json").read_text())["ha"])
    pid = a.instance("rep")["pid"]
    os.kill(pair.etcd.proc.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        wait_for("rep fenced", lambda: not alive(pid), timeout=TTL + 5)
        took = time.monotonic() - stopped
    finally:
        os.kill(pair.etcd.proc.pid, signal.SIGCONT)
    assert took < TTL, took   # before the lease could lapse
    wait_for("rep stopped", lambda: a.instance("rep")["state"] == "stopped")
    print(f"fenced {took:.1f} s after etcd froze (lease {TTL} s)")
    wait_for("a renews again", lambda: json.loads((a.state_dir / "fence.json").read_text())["deadline"]
             > time.monotonic() + 1)
    # a lease that lapsed meanwhile (etcd counts the frozen time): the node takes a new one
    wait_for("both nodes online", lambda: all(n["state"] == "online" for n in
                                              a.client.get("/1.0/cluster/nodes")["nodes"]), timeout=TTL + 5)
    a.ok("start", "rep")


def test_an_ha_instance_fails_over_when_its_node_dies(pair: Pair) -> None:
    a, b = pair.a, pair.b
    a.ok("set", "rep", "--onboot", "yes")   # a's autostart would start it again, were its copy kept
    a.sh("rep", "echo kept > /kept.txt")
    assert "incremental" in a.ok("replica", "sync", "rep")
    a.sh("rep", "echo lost > /lost.txt")   # after the last replication: lost with the node (the RPO)
    old = a.instance("rep")["pid"]
    a.kill9()
    killed = time.monotonic()
    both = []
    try:
        def running_on_b() -> bool:
            try:
                view = b.client.get("/1.0/instances/rep")["instance"]
            except ApiError:
                return False
            on_b = view.get("node") in (None, "node-b") and view["state"] == "running"
            if on_b and alive(old):
                both.append(time.monotonic() - killed)
            return on_b
        wait_for("rep running on node-b", running_on_b, timeout=TTL + 25)
        took = time.monotonic() - killed
        assert not both, f"rep ran on both nodes at {both}"
        assert not alive(old)
        print(f"failover: rep runs on node-b {took:.1f} s after kill -9 of node-a's ctd (lease {TTL} s)")
        assert took < 30, took
        assert b.sh("rep", "cat /kept.txt").out == "kept\n"
        assert b.sh("rep", "test -e /lost.txt").code != 0
    finally:
        a.start()
    # the old node back: its copy is gone (kept aside read-only), it does not start it again
    wait_for("a's stale copy removed", lambda: "rep" not in {i["name"] for i in a.client.get(
        "/1.0/instances")["instances"] if i.get("node") in (None, "node-a")})
    assert [p.name.startswith("rep-") for p in (a.state_dir / "storage" / ".failed-over").iterdir()] == [True]
    assert listed(a)["rep"]["node"] == "node-b" and b.instance("rep")["state"] == "running"
    rows = {r["name"]: r for r in a.client.get("/1.0/cluster/replicas")["replicas"]}
    assert rows["rep"]["node"] == "node-b" and rows["rep"]["target"] == "node-a"   # reversed


def test_a_frozen_ctd_is_fenced_and_its_instance_fails_back(pair: Pair) -> None:
    """b's ctd frozen (SIGSTOP): its watchdog kills rep before b's lease lapses, rep comes back
    on a from the replica b sent; b, thawed, finds it moved and removes its copy itself."""
    a, b = pair.a, pair.b
    b.sh("rep", "echo back > /back.txt")
    assert "full" in b.ok("replica", "sync", "rep")   # a's first replica of it: in full
    old = b.instance("rep")["pid"]
    os.kill(b.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
    frozen = time.monotonic()
    both = []
    try:
        def running_on_a() -> bool:   # from a's own list: a request about rep would go to frozen b
            view = listed(a).get("rep") or {}
            on_a = view.get("node") == "node-a" and view.get("state") == "running"
            if on_a and alive(old):
                both.append(time.monotonic() - frozen)
            return on_a
        wait_for("rep running on node-a", running_on_a, timeout=TTL + 25)
        took = time.monotonic() - frozen
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
    assert not both and not alive(old), both
    print(f"fail-back: rep runs on node-a {took:.1f} s after node-b's ctd froze (lease {TTL} s)")
    assert a.sh("rep", "cat /back.txt /kept.txt").out == "back\nkept\n"
    wait_for("b's stale copy removed", lambda: "rep" not in {i["name"] for i in b.client.get(
        "/1.0/instances")["instances"] if i.get("node") in (None, "node-b")}, timeout=TTL + 10)
    assert listed(b)["rep"]["node"] == "node-a"
    a.ok("set", "rep", "--replicate-to", "")
    a.ok("destroy", "rep", "--force")
    wait_for("the replicas dropped", lambda: not replicas(b, "rep") and not sources(a, "rep")
             and not replicas(a, "rep") and not sources(b, "rep"))
