"""The cluster's first slice on real parts: one etcd member on loopback and three ctd daemons,
each with its own state dir, pool, cgroup name, nft table, NIC prefix and id range.

The tests run in file order on one cluster (making it is the expensive part): membership
(init, add, join, list, remove; a token works once and not after its expiry), names unique
across nodes under concurrent creates, every node's instances in every node's list, and a node
whose ctd is SIGKILLed going offline when its lease lapses.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ctctl.client import ApiError, pinning_context
from ctd.cluster.etcd import Delete, Etcd
from ctd.cluster.nicclaims import NicClaims
from ctd.network.nics import NicRequest
from ctd.state import NetworkRecord, NicMode
from tests.conftest import Daemon, _start_daemon, _teardown, needs_root
from tests.helpers.etcd import EtcdMember, free_port, start_etcd

LEASE_TTL = 3   # seconds: short, so that the offline test waits little (production default: 10)


@dataclass
class Cluster:
    etcd: EtcdMember
    a: Daemon
    b: Daemon
    c: Daemon


def start_nodes(tmp: Path, etcd: EtcdMember, names: str, daemons: list[Daemon], ttl: int = LEASE_TTL) -> None:
    """A ctd per name (node-NAME, HTTPS on a free port: node-to-node requests use it, mutual TLS),
    started at once, each added to daemons as it comes up (the caller tears them all down, also
    when one failed to start: then the first error is raised here)."""
    def start(name: str) -> Daemon:
        port = free_port()
        d = _start_daemon(tmp, name, extra=f'etcd_endpoints = ["{etcd.client_url}"]\n'
                                           f'node_name = "node-{name}"\ncluster_lease_ttl = {ttl}\n'
                                           f'https_address = "127.0.0.1:{port}"\n')
        d.port = port  # type: ignore[attr-defined]
        d.node = f"node-{name}"  # type: ignore[attr-defined]
        return d
    with ThreadPoolExecutor(len(names)) as pool:
        futures = [pool.submit(start, n) for n in names]
        errors = []
        for f in futures:
            try:
                daemons.append(f.result())
            except Exception as exc:   # noqa: BLE001 - the others are torn down by the caller
                errors.append(exc)
        if errors:
            raise errors[0]


@contextlib.contextmanager
def joined_pair(tmp: Path, ttl: int = LEASE_TTL) -> Iterator[tuple[EtcdMember, Daemon, Daemon]]:
    """A real etcd member and two nodes (node-a, node-b) joined and online. Torn down however a
    test left them: a stopped etcd is continued, a killed ctd started again so that its teardown
    removes what it made."""
    etcd = start_etcd(tmp / "etcd")
    daemons: list[Daemon] = []
    try:
        start_nodes(tmp, etcd, "ab", daemons, ttl=ttl)
        a, b = daemons
        a.ok("cluster", "init")
        b.ok("cluster", "join", a.ok("cluster", "add", "node-b").strip())
        wait_for("both nodes online", lambda: all(n["state"] == "online" for n in
                                                  a.client.get("/1.0/cluster/nodes")["nodes"]))
        yield etcd, a, b
    finally:
        if etcd.proc.poll() is None:
            os.kill(etcd.proc.pid, signal.SIGCONT)
        for d in daemons:
            if d.proc is not None and d.proc.poll() is not None:
                d.start()
            _teardown(d)
        etcd.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    needs_root()
    tmp = tmp_path_factory.mktemp("cluster")
    etcd = start_etcd(tmp / "etcd")
    daemons: list[Daemon] = []
    try:
        start_nodes(tmp, etcd, "abc", daemons)   # three daemons and their busybox templates at once
        yield Cluster(etcd, *daemons)
    finally:
        for d in daemons:
            if d.proc is not None and d.proc.poll() is not None:   # a killed node: back, to clean up
                d.start()
            _teardown(d)
        etcd.stop()


def fails(d: Daemon, *args: str) -> str:
    r = d.ctl(*args)
    assert r.code != 0, f"ctctl {' '.join(args)} should have failed: {r.out}"
    return r.err


def nodes(d: Daemon) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in d.client.get("/1.0/cluster/nodes")["nodes"]}


def wait_for(what: str, probe: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)


def listed(d: Daemon) -> dict[str, dict[str, Any]]:
    return {i["name"]: i for i in d.client.get("/1.0/instances")["instances"]}


def test_membership_init_add_join_list_remove(cluster: Cluster) -> None:
    a, b, c = cluster.a, cluster.b, cluster.c
    assert "no member of a cluster" in fails(a, "cluster", "list")
    a.ok("cluster", "init")
    assert "exists already" in fails(b, "cluster", "init")
    token_b = a.ok("cluster", "add", "node-b").strip()
    assert "this join token is for node 'node-b', but this node is 'node-c'" in fails(c, "cluster", "join", token_b)
    assert "not a cluster join token" in fails(b, "cluster", "join", token_b[:-4])
    b.ok("cluster", "join", token_b)
    assert "member of the cluster already" in fails(b, "cluster", "join", token_b)

    # a token works once: node-c joins, is removed, and its old token is refused
    token_c = a.ok("cluster", "add", "node-c").strip()
    c.ok("cluster", "join", token_c)
    assert "node 'node-c' is online" in fails(a, "cluster", "remove", "node-c")
    a.ok("cluster", "remove", "node-c", "--force")
    assert "not valid (used already" in fails(c, "cluster", "join", token_c)
    # and not after its expiry
    short = a.ok("cluster", "add", "node-c", "--expires", "1s").strip()
    time.sleep(1.2)
    assert "expired" in fails(c, "cluster", "join", short)
    c.ok("cluster", "join", b.ok("cluster", "add", "node-c").strip())   # any member makes tokens

    def all_online() -> dict[str, dict[str, Any]] | None:
        n = nodes(b)
        return n if len(n) == 3 and all(x["state"] == "online" for x in n.values()) else None

    seen = wait_for("three nodes online", all_online)
    assert sorted(seen) == ["node-a", "node-b", "node-c"]
    for node in seen.values():
        assert node["ram_free"] > 0 and node["cpus"] >= 1 and node["disk_free"] > 0 and node["version"]
    assert seen["node-a"]["address"] == f"https://127.0.0.1:{a.port}" and len(seen["node-a"]["fingerprint"]) == 64
    table = c.ok("cluster", "list")
    assert "node-c *" in table and table.count("online") == 3, table
    assert "no node 'node-x'" in fails(a, "cluster", "remove", "node-x")


def test_tenants_and_operators_get_403(cluster: Cluster) -> None:
    a = cluster.a
    for role in ("tenant", "operator"):
        secret = a.ok("token", "create", f"cl-{role}", "--role", role).strip()
        for method, path, body in (("GET", "/1.0/cluster/nodes", None), ("POST", "/1.0/cluster/nodes",
                                                                          {"name": "evil"}),
                                   ("DELETE", "/1.0/cluster/nodes/node-b", None)):
            conn = http.client.HTTPSConnection("127.0.0.1", a.port, timeout=60,  # type: ignore[attr-defined]
                                               context=pinning_context())
            try:
                conn.request(method, path, None if body is None else json.dumps(body),
                             {"Authorization": f"Bearer {secret}"})
                resp = conn.getresponse()
                answer = json.loads(resp.read())
            finally:
                conn.close()
            assert resp.status == 403 and "needs the admin role" in answer["error"], (role, path, answer)
    assert "node-b" in nodes(a)


def https(d: Daemon, secret: str, method: str, path: str, body: object = None) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPSConnection("127.0.0.1", d.port, timeout=60,  # type: ignore[attr-defined]
                                       context=pinning_context())
    try:
        conn.request(method, path, None if body is None else json.dumps(body), {"Authorization": f"Bearer {secret}"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def create(d: Daemon, name: str, **body: Any) -> None:
    """Made on d's node (pinned: in a cluster a create is placed by default)."""
    d.client.run("POST", "/1.0/instances", {"name": name, "template": "busybox", "node": d.node,  # type: ignore[attr-defined]
                                            **body})


def test_a_name_is_taken_once_in_the_cluster(cluster: Cluster) -> None:
    a, b, c = cluster.a, cluster.b, cluster.c
    gate = threading.Barrier(2)

    def race(d: Daemon) -> ApiError | None:
        gate.wait()
        try:
            create(d, "web")
            return None
        except ApiError as exc:
            return exc

    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(("node-a", "node-b"), pool.map(race, (a, b)), strict=True))
    winners = [n for n, r in results.items() if r is None]
    assert len(winners) == 1, results
    winner = winners[0]
    loser = next(r for r in results.values() if r is not None)
    assert loser.status == 409 and f"exists in the cluster, on node {winner}" in loser.message, loser.message
    err = fails(c, "create", "web", "--template", "busybox")
    assert f"an instance named 'web' exists in the cluster, on node {winner}" in err

    create(b, "only-b")
    create(c, "only-c")
    # every node lists every node's instances, each with its node
    for d in (a, b, c):
        rows = wait_for("all instances listed", lambda d=d: {"web", "only-b", "only-c"} <= set(listed(d)))
        rows = listed(d)
        assert (rows["web"]["node"], rows["only-b"]["node"], rows["only-c"]["node"]) == (winner, "node-b", "node-c")
        assert rows["only-b"]["state"] == "stopped" and rows["only-b"]["template"] == "busybox"
    # numeric ids are unique in the cluster too: each node picks one no other node has
    ids = {n: rows[n]["id"] for n in ("web", "only-b", "only-c")}
    assert len(set(ids.values())) == 3, ids
    taken = fails(a, "create", "dup-id", "--template", "busybox", "--id", str(ids["only-c"]))
    assert f"id {ids['only-c']} is taken in the cluster" in taken, taken
    # two new names at once on two nodes: both made, each with an id of its own (the node whose
    # pick the other took a moment before picks again)
    gate = threading.Barrier(2)

    def make(pair: tuple[Daemon, str]) -> int:
        gate.wait()
        create(*pair)
        return int(pair[0].instance(pair[1])["id"])

    with ThreadPoolExecutor(2) as pool:
        new_ids = list(pool.map(make, ((a, "pa"), (b, "pb"))))
    assert len(set(new_ids) | set(ids.values())) == 5, (new_ids, ids)
    table = a.ok("list").splitlines()
    assert table[0].split()[:3] == ["ID", "NAME", "NODE"]
    assert any(line.split()[1:3] == ["only-c", "node-c"] for line in table[1:]), table

    # rename into a name another node has: refused; the old name stays held
    assert f"exists in the cluster, on node {winner}" in fails(c, "rename", "only-c", "web")
    assert "only-c" in listed(c) and listed(a)["only-c"]["node"] == "node-c"
    # a rename takes the new name and frees the old one
    c.ok("rename", "only-c", "only-c2")
    assert wait_for("rename seen on node-a", lambda: "only-c" not in listed(a) and "only-c2" in listed(a))
    c.ok("rename", "only-c2", "only-c")
    # the winner destroys it: the name is free for any node
    owner = a if winner == "node-a" else b
    owner.client.run("DELETE", "/1.0/instances/web")
    create(c, "web")
    assert wait_for("web on node-c", lambda: listed(a).get("web", {}).get("node") == "node-c")


def test_a_request_about_another_nodes_instance_is_made_there(cluster: Cluster) -> None:
    a, c = cluster.a, cluster.c
    assert "only-c" not in [i["name"] for i in a.client.get("/1.0/instances")["instances"] if i["node"] == "node-a"]
    shown = a.client.get("/1.0/instances/only-c")["instance"]   # node-c's full view, through node-a
    assert shown["name"] == "only-c" and shown["idmap"]["uid_base"] == c.instance("only-c")["idmap"]["uid_base"]
    a.ok("start", "only-c")
    assert c.instance("only-c")["state"] == "running"
    a.ok("stop", "only-c", "--kill")
    assert c.instance("only-c")["state"] == "stopped"
    by_id = a.client.get(f"/1.0/instances/{shown['id']}")["instance"]
    assert by_id["name"] == "only-c"
    assert "exec, console and display connect to that node" in fails(a, "exec", "only-c", "--", "true")
    # node-c ran them as node-a, audited as such
    audit = (c.state_dir / "audit.log").read_text()
    assert '"identity":"certificate:node:node-a"' in audit and "/1.0/instances/only-c/state" in audit, audit[-500:]
    assert "no instance named 'nowhere'" in fails(a, "status", "nowhere")
    # an operator is told where to go (the owner would run it as an admin)
    secret = a.ok("token", "create", "cl-op2", "--role", "operator").strip()
    status, answer = https(a, secret, "PUT", "/1.0/instances/only-c/state", {"action": "start"})
    assert status == 409 and "only-c is on node node-c; send this request to that node" in answer["error"], answer
    assert c.instance("only-c")["state"] == "stopped"


def test_placement_picks_the_node_with_room_and_pins(cluster: Cluster) -> None:
    a, b, c = cluster.a, cluster.b, cluster.c
    seen = nodes(a)   # one host: every node has the same RAM
    total, free = seen["node-a"]["ram_total"], min(n["ram_free"] for n in seen.values())
    fill = free // (1 << 20) - 2048   # MiB: fits now (with slack for the host's other work)
    need = (total // (1 << 20) - fill) // 1024 + 1   # GiB: more than a filled node has left
    big = f"{fill}M"
    create(a, "fill-a", limits={"ram": big})
    create(c, "fill-c", limits={"ram": big})
    wait_for("promised RAM published", lambda: all(n["ram_promised"] == fill << 20
                                                   for n in (nodes(b)["node-a"], nodes(b)["node-c"])))
    try:
        # auto (the default), asked of node-a: only node-b has that much RAM left to promise
        a.ok("create", "placed", "--template", "busybox", "--ram", f"{need}G")
        assert wait_for("placed listed", lambda: listed(a).get("placed", {}).get("node")) == "node-b"
        assert b.instance("placed")["limits"]["ram"] == f"{need}G"
        # --node pins (even where auto would not go), and a node without room says so
        a.ok("create", "pinned", "--template", "busybox", "--node", "node-c")
        assert c.instance("pinned")["name"] == "pinned"
        err = fails(b, "create", "no-room", "--template", "busybox", "--ram", f"{need}G", "--node", "node-a")
        assert f"node node-a has no room for this instance (ram {need}G): it has" in err, err
        # nowhere room: a clear answer naming each node's, and nothing left behind
        err = fails(a, "create", "no-room", "--template", "busybox", "--ram", f"{2 * total // (1 << 30)}G")
        assert "no node of the cluster has room for this instance" in err and "node-b: " in err, err
        assert "no node 'node-x' in the cluster" in fails(a, "create", "no-room", "--node", "node-x")
        for d in (a, b, c):
            assert "no-room" not in listed(d)
        create(b, "no-room")   # the name was never held
        b.client.run("DELETE", "/1.0/instances/no-room")
    finally:
        for d, name in ((a, "fill-a"), (c, "fill-c"), (b, "placed"), (c, "pinned")):
            with contextlib.suppress(ApiError):
                d.client.run("DELETE", f"/1.0/instances/{name}")


def test_addresses_and_macs_are_unique_in_the_cluster(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    routed = {"nics": [{"mode": "routed", "addresses": ["203.0.113.7"]}]}
    gate = threading.Barrier(2)

    def race(pair: tuple[Daemon, str]) -> ApiError | None:
        gate.wait()
        try:
            create(*pair, **routed)
            return None
        except ApiError as exc:
            return exc

    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(("node-a", "node-b"), pool.map(race, ((a, "ra"), (b, "rb"))), strict=True))
    winners = [n for n, r in results.items() if r is None]
    assert len(winners) == 1, results
    loser = next(r for r in results.values() if r is not None)
    holder = "ra" if winners == ["node-a"] else "rb"
    assert loser.status == 409 and (f"address 203.0.113.7 on network (routed) is taken in the cluster (by {holder} "
                                    f"on node {winners[0]})") in loser.message, loser.message
    # the loser left nothing behind; every NIC of the cluster has a MAC of its own
    rows = wait_for("NICs listed", lambda: listed(a) if holder in listed(a) else None)
    assert ({"ra", "rb"} - {holder}) & (set(rows) | set(listed(b))) == set()
    macs = [n["mac"] for i in rows.values() for n in i["nics"]]
    assert macs and len(set(macs)) == len(macs), macs
    # each container's id range is published with its node (the others avoid it when they pick)
    base = a.instance("only-c")["idmap"]["uid_base"]
    held = wait_for("id range published", lambda: [kv.json() for kv in cluster_keys(cluster, f"/ctd/idmaps/{base}")])
    assert held[0]["node"] == "node-c" and held[0]["instance"] == "only-c" and held[0]["size"] > 0
    # a NIC added later is claimed the same way
    other = b if holder == "ra" else a
    create(other, "r3", nics=[])
    try:
        with pytest.raises(ApiError) as refused:
            other.client.request("POST", "/1.0/instances/r3/nics", {"mode": "routed", "addresses": ["203.0.113.7"]})
        assert refused.value.status == 409 and f"taken in the cluster (by {holder} on node" in refused.value.message
        assert other.instance("r3")["nics"] == []
    finally:
        other.client.run("DELETE", "/1.0/instances/r3")
    # destroy frees the address for any node
    (a if holder == "ra" else b).client.run("DELETE", f"/1.0/instances/{holder}")
    wait_for("address released", lambda: not cluster_keys(cluster, "/ctd/addresses/-/203.0.113.7"))
    create(other, "r2", **routed)
    assert other.instance("r2")["nics"][0]["addresses"] == ["203.0.113.7"]
    other.client.run("DELETE", "/1.0/instances/r2")


def cluster_keys(cluster: Cluster, prefix: str) -> list[Any]:
    async def read() -> list[Any]:
        etcd = Etcd([cluster.etcd.client_url])
        try:
            return await etcd.get_prefix(prefix)
        finally:
            await etcd.close()
    return asyncio.run(read())


def test_two_nodes_picking_on_one_network_never_take_the_same(cluster: Cluster) -> None:
    """The claim itself on the real etcd: two nodes pick addresses and MACs at once on a network
    of one name (one host cannot have two bridges of one name, so the nodes are the claims')."""
    net = NetworkRecord(name="lanx", bridge="lanx", subnet4="10.250.0.0/28", subnet6="fd00:250::/120", nat=False,
                        created_at="")

    async def node(name: str, first_id: int) -> list[NicRequest]:
        etcd = Etcd([cluster.etcd.client_url])
        claims = NicClaims(etcd, name)
        made = []
        try:
            for n in range(5):   # ids alike on both (a MAC follows the id): MACs must still differ
                req = NicRequest("lanx", NicMode.BRIDGED, [], True, None)
                await claims.claim(f"{name}-{n}", first_id + n, [req], 0, lambda _: net, set(), lambda _: [])
                made.append(req)
        finally:
            await etcd.close()
        return made

    async def both() -> list[list[NicRequest]]:
        return list(await asyncio.gather(node("node-x", 900), node("node-y", 900)))

    try:
        made = [r for reqs in asyncio.run(both()) for r in reqs]
        addresses = [a for r in made for a in r.addresses]
        assert len(made) == 10 and len(addresses) == 20 and len(set(addresses)) == 20, addresses
        assert len({r.mac for r in made}) == 10
        assert len(cluster_keys(cluster, "/ctd/addresses/lanx/")) == 20
    finally:
        async def clean() -> None:
            etcd = Etcd([cluster.etcd.client_url])
            try:
                for kv in [*await etcd.get_prefix("/ctd/addresses/lanx/"), *await etcd.get_prefix("/ctd/macs/")]:
                    if kv.json().get("node") in ("node-x", "node-y"):
                        await etcd.txn([], [Delete(kv.key)])
            finally:
                await etcd.close()
        asyncio.run(clean())


def test_a_killed_node_goes_offline_and_can_be_removed(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    b.kill9()
    started = time.monotonic()
    wait_for("node-b offline", lambda: nodes(a)["node-b"]["state"] == "offline", timeout=LEASE_TTL + 20)
    took = time.monotonic() - started
    assert took <= LEASE_TTL + 20
    # its instances stay known (they may still run) until the node is removed, marked as such
    assert listed(a)["only-b"]["node_online"] is False
    assert any(line.split()[1:4] == ["only-b", "node-b", "(offline)"] for line in a.ok("list").splitlines())
    out = a.ok("cluster", "remove", "node-b")
    assert "names released: only-b, pb" in out
    assert "only-b" not in listed(a) and "node-b" not in nodes(a)
    create(a, "only-b")   # the name is free again
    # the removed node comes back standalone: its instances are its own again, no cluster view
    b.start()
    assert b.client.get("/1.0/cluster")["cluster"]["member"] is False
    assert set(listed(b)) == {"only-b", "pb"} and "node" not in listed(b)["only-b"]
    # and cannot join again while its instance's name is another node's now
    refused = fails(b, "cluster", "join", a.ok("cluster", "add", "node-b").strip())
    assert "taken in the cluster already: only-b (node node-a)" in refused, refused
    print(f"node-b offline {took:.1f} s after kill -9 (lease TTL {LEASE_TTL} s)")


def test_without_etcd_a_node_keeps_its_own_and_makes_no_name(cluster: Cluster) -> None:
    a = cluster.a
    cluster.etcd.stop()
    r = a.ctl("list")
    assert r.code == 0 and "only-b" in r.out and "other nodes' instances are not shown: etcd cannot be reached" in r.err
    with pytest.raises(ApiError) as refused:
        create(a, "no-etcd")
    assert refused.value.status == 503 and "etcd cannot be reached" in refused.value.message
    assert "no-etcd" not in listed(a)
    a.ok("start", "only-b")   # its own instances: as ever
    assert a.instance("only-b")["state"] == "running"
    a.ok("stop", "only-b", "--kill")


def test_a_standalone_ctd_says_how_to_turn_cluster_mode_on(ctd: Daemon, tmp_path: Path) -> None:
    assert ctd.client.get("/1.0/cluster")["cluster"] == {"enabled": False}
    assert "set etcd_endpoints" in fails(ctd, "cluster", "init")
