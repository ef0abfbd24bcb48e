"""The cross-tenant escape suite: tokens of project A (a tenant, an operator) against project B's
instance, over real HTTPS on 127.0.0.1 with a real daemon.

Every attempt is made twice: against B's instance `victim` (by name or numeric id) and against a
name or id that does not exist. The two answers must be the same (status, error code, and the
message with the name swapped), so nothing tells "another project's" from "none"; and afterwards
the victim is as it was (state, settings, snapshots, name). Positive controls (the same tokens on
A's own instance) show the refusals come from the projects' scoping, not from the role table.
Attempts: list, get by name and by id, settings, state changes, destroy, rename, exec and console
(WebSocket upgrades), snapshots (list, take, delete), rollback, clone of the instance and of its
snapshot, reinstall, beancounters, hardware, backup, restore into B, create in B, create and
rename onto B's names, operations (get, wait, cancel, list), metrics, networks, projects, id
guessing over a range, error messages that would name B's instance, and timing.
"""
from __future__ import annotations

import http.client
import json
import random
import socket
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctctl.client import pinning_context
from tests.conftest import Daemon, _start_daemon, _teardown
from tests.security.test_trust import make_cert

WS = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
GHOST_ID = "987654"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: dict

    def shape(self, ref: str) -> tuple[int, str, str]:
        """What an attacker compares: status, the body and the error header with the ref masked."""
        return (self.status, json.dumps(self.body, sort_keys=True).replace(ref, "REF"),
                self.headers.get("X-Ctd-Error", "").replace(ref, "REF"))


class Api:
    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token

    def call(self, method: str, path: str, body: object = None, headers: dict[str, str] | None = None) -> Answer:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=120, context=pinning_context())
        try:
            conn.request(method, path, None if body is None else json.dumps(body),
                         {"Authorization": f"Bearer {self.token}", **(headers or {})})
            r = conn.getresponse()
            raw = r.read() if r.status != 101 else b""
            try:
                parsed = json.loads(raw) if raw else {}
            except ValueError:
                parsed = {"raw": raw.decode(errors="replace")}
            return Answer(r.status, dict(r.getheaders()), parsed)
        finally:
            conn.close()


@dataclass
class World:
    d: Daemon
    a: str            # the attackers' project
    b: str            # the victim's project
    victim: str
    victim_id: str
    mine: str         # A's own instance
    tenant: Api
    operator: Api

    def snapshot_of_victim(self) -> dict:
        inst = self.d.instance(self.victim)
        return {"state": inst["state"], "description": inst["description"], "limits": inst["limits"],
                "name": inst["name"], "project": inst["project"], "tags": inst["tags"],
                "snapshots": sorted(self.d.client.get(f"/1.0/instances/{self.victim}/snapshots")["snapshots"]),
                "hostname": inst["hostname"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    port = free_port()
    d = _start_daemon(tmp_path_factory.mktemp("xtenant"), "xtenant", f'https_address = "127.0.0.1:{port}"\n')
    try:
        a, b = "acme", "globex"
        d.ok("project", "create", a, "--allow-exec")   # exec allowed: a refusal must come from the scoping
        d.ok("project", "create", b)
        victim, mine = f"{b}-victim", f"{a}-mine"
        net, subnet = d.unique("xt"), random.randrange(10, 250)
        d.ok("network", "create", net, "--subnet", f"10.214.{subnet}.1/24")
        d.ok("create", victim, "--template", "busybox", "--project", b, "--description", "B's secret",
             "--net", net)
        d.ok("snapshot", victim, "s1")
        d.ok("start", victim)
        d.ok("create", mine, "--template", "busybox", "--project", a, "--net", net)
        d.ok("start", mine)
        tenant = d.ok("token", "create", "a-tenant", "--role", "tenant", "--project", a).strip()
        operator = d.ok("token", "create", "a-operator", "--role", "operator", "--project", a).strip()
        yield World(d, a, b, victim, str(d.instance(victim)["id"]), mine, Api(port, tenant), Api(port, operator))
    finally:
        _teardown(d)


@pytest.fixture
def unchanged(world: World) -> Iterator[None]:
    """The victim after the attempt is the victim before it."""
    before = world.snapshot_of_victim()
    yield
    assert world.snapshot_of_victim() == before, "the attempt changed B's instance"
    assert world.d.ok("list").count(world.b + "-") == 1, "no instance of B's name made"


def same_as_missing(api: Api, method: str, template: str, world: World, body: object = None,
                    headers: dict[str, str] | None = None, by_id: bool = False) -> Answer:
    """The attempt on the victim answers exactly as on an instance that does not exist."""
    real, ghost = (world.victim_id, GHOST_ID) if by_id else (world.victim, f"{world.b}-ghost")
    hit = api.call(method, template.format(ref=real), body, headers)
    miss = api.call(method, template.format(ref=ghost), body, headers)
    assert hit.shape(real) == miss.shape(ghost), (method, template, hit, miss)
    assert hit.status in (400, 403, 404), hit
    assert "B's secret" not in json.dumps(hit.body) and world.b + "-" not in json.dumps(hit.body).replace(real, "")
    return hit


INST = "/1.0/instances/{ref}"
# (role, method, path, body, headers): each one an attempt, by name and by numeric id
ATTEMPTS = [
    ("tenant", "GET", INST, None, None),
    ("operator", "GET", INST, None, None),
    ("tenant", "PATCH", INST, {"description": "owned"}, None),
    ("operator", "PATCH", INST, {"limits": {"ram": "64M"}}, None),
    ("tenant", "PUT", INST + "/state", {"action": "stop", "force": True}, None),
    ("tenant", "PUT", INST + "/state", {"action": "restart", "force": True}, None),
    ("operator", "PUT", INST + "/state", {"action": "suspend"}, None),
    ("operator", "DELETE", INST + "?force=true", None, None),
    ("operator", "POST", INST + "/rename", {"name": "acme-stolen"}, None),
    ("tenant", "GET", INST + "/exec?cmd=id", None, WS),
    ("operator", "GET", INST + "/exec?cmd=cat&cmd=/etc/shadow", None, WS),
    ("tenant", "GET", INST + "/console", None, WS),
    ("tenant", "GET", INST + "/snapshots", None, None),
    ("tenant", "POST", INST + "/snapshots", {"name": "mine"}, None),
    ("tenant", "DELETE", INST + "/snapshots/s1", None, None),
    ("tenant", "POST", INST + "/rollback", {"snapshot": "s1", "restart": True}, None),
    ("operator", "POST", INST + "/clone", {"name": "acme-copy"}, None),
    ("operator", "POST", INST + "/clone", {"name": "acme-copy", "snapshot": "s1"}, None),
    ("tenant", "POST", INST + "/reinstall", {"template": "busybox", "restart": True}, None),
    ("tenant", "GET", INST + "/beancounters", None, None),
    ("operator", "GET", INST + "/hardware", None, None),
    ("operator", "POST", INST + "/backup", {"file": "/tmp/x.tar"}, None),
]


@pytest.mark.parametrize("by_id", [False, True], ids=["by-name", "by-id"])
@pytest.mark.parametrize("role,method,path,body,headers", ATTEMPTS,
                         ids=[f"{a[0]}-{a[1]}-{a[2].split('{ref}')[1] or 'instance'}" for a in ATTEMPTS])
def test_b_instance_is_like_one_that_does_not_exist(world: World, unchanged: None, by_id: bool, role: str,
                                                    method: str, path: str, body: object,
                                                    headers: dict[str, str] | None) -> None:
    api = world.tenant if role == "tenant" else world.operator
    hit = same_as_missing(api, method, path, world, body, headers, by_id)
    if method == "GET" and path == INST:
        assert hit.status == 404 and hit.body["code"] == "not-found"


def test_positive_controls_the_same_tokens_work_on_their_own_instance(world: World) -> None:
    own = f"/1.0/instances/{world.mine}"
    assert world.tenant.call("GET", own).status == 200
    assert world.tenant.call("GET", own + "/exec?cmd=id", headers=WS).status == 101, "exec is allowed in A"
    assert world.tenant.call("GET", own + "/console", headers=WS).status == 101
    assert world.operator.call("GET", own + "/snapshots").status == 200


def test_list_shows_only_a(world: World, unchanged: None) -> None:
    for api in (world.tenant, world.operator):
        listed = api.call("GET", "/1.0/instances").body["instances"]
        assert [i["name"] for i in listed] == [world.mine]
        assert {i["project"] for i in listed} == {world.a}
        for query in ("?state=running", "?tag=x", f"?tag=project={world.b}"):
            assert world.victim not in json.dumps(api.call("GET", "/1.0/instances" + query).body)


def test_id_guessing_over_a_range_finds_only_a(world: World) -> None:
    found = []
    for guess in range(95, 140):
        got = world.tenant.call("GET", f"/1.0/instances/{guess}")
        if got.status == 200:
            found.append(got.body["instance"]["name"])
        else:
            assert got.shape(str(guess)) == world.tenant.call("GET", f"/1.0/instances/{GHOST_ID}").shape(GHOST_ID)
    assert found == [world.mine]


def test_restore_and_create_into_b_are_refused_as_for_any_project(world: World, unchanged: None) -> None:
    for method, path, body in [("POST", "/1.0/restore", {"file": "/tmp/x", "project": "{p}"}),
                               ("POST", "/1.0/instances", {"name": "{p}-new", "template": "busybox",
                                                           "project": "{p}"})]:
        answers = []
        for project in (world.b, "nosuchproject"):
            sent = json.loads(json.dumps(body).replace("{p}", project))
            got = world.operator.call(method, path, sent)
            assert got.status == 403, got
            answers.append(got.shape(project))
        assert answers[0] == answers[1]


def test_create_and_rename_onto_b_names_are_refused_as_for_any_name(world: World, unchanged: None) -> None:
    """The name rule answers before any lookup: B's name and a free one of B's prefix alike."""
    for real, ghost in ((world.victim, f"{world.b}-ghost"), ("victim", "ghost")):
        hit = world.operator.call("POST", "/1.0/instances", {"name": real, "template": "busybox"})
        miss = world.operator.call("POST", "/1.0/instances", {"name": ghost, "template": "busybox"})
        assert hit.status == 400 and hit.shape(real) == miss.shape(ghost), (hit, miss)
    world.d.ok("stop", world.mine)
    try:
        hit = world.operator.call("POST", f"/1.0/instances/{world.mine}/rename", {"name": world.victim})
        miss = world.operator.call("POST", f"/1.0/instances/{world.mine}/rename", {"name": f"{world.b}-ghost"})
        assert hit.status == 400 and hit.shape(world.victim) == miss.shape(f"{world.b}-ghost")
    finally:
        world.d.ok("start", world.mine)
    assert world.d.instance(world.mine)["name"] == world.mine


def test_b_operations_are_unknown_ids(world: World, unchanged: None) -> None:
    started = world.d.client.request("POST", f"/1.0/instances/{world.victim}/snapshots", {"name": "op1"})
    op = started["operation"]["id"]
    world.d.client.get(f"/1.0/operations/{op}/wait")
    world.d.client.request("DELETE", f"/1.0/instances/{world.victim}/snapshots/op1")
    ghost = "0" * 32
    for api in (world.tenant, world.operator):
        ops = api.call("GET", "/1.0/operations").body["operations"]
        assert op not in json.dumps(ops) and world.victim not in json.dumps(ops)
        assert all(o["project"] == world.a for o in ops)
        for method, path in (("GET", "/1.0/operations/{}"), ("GET", "/1.0/operations/{}/wait?timeout=0")):
            hit, miss = api.call(method, path.format(op)), api.call(method, path.format(ghost))
            assert hit.status == 404 and hit.shape(op) == miss.shape(ghost)
    hit, miss = world.operator.call("DELETE", f"/1.0/operations/{op}"), world.operator.call(
        "DELETE", f"/1.0/operations/{ghost}")
    assert hit.status == 404 and hit.shape(op) == miss.shape(ghost)


def test_a_own_operations_are_visible_to_a(world: World) -> None:
    started = world.tenant.call("POST", f"/1.0/instances/{world.mine}/snapshots", {"name": "t1"})
    assert started.status == 202, started
    op = started.body["operation"]
    assert op["project"] == world.a
    assert world.tenant.call("GET", f"/1.0/operations/{op['id']}/wait").body["operation"]["status"] == "success"
    world.tenant.call("DELETE", f"/1.0/instances/{world.mine}/snapshots/t1")


def test_metrics_carry_only_a_series(world: World) -> None:
    conn = http.client.HTTPSConnection("127.0.0.1", world.operator.port, timeout=60, context=pinning_context())
    conn.request("GET", "/1.0/metrics", headers={"Authorization": f"Bearer {world.operator.token}"})
    r = conn.getresponse()
    text = r.read().decode()
    conn.close()
    assert r.status == 200
    assert world.mine in text, "A's own series are there"
    assert world.victim not in text and world.b not in text
    running = [line for line in text.splitlines()
               if line.startswith('ctd_instances{') and 'state="running"' in line and 'type="container"' in line]
    assert running and running[0].endswith(" 1.0"), running


def test_networks_do_not_name_b_instances(world: World) -> None:
    for net in world.operator.call("GET", "/1.0/networks").body["networks"]:
        assert world.victim not in net["used_by"]
        one = world.operator.call("GET", f"/1.0/networks/{net['name']}").body["network"]
        assert world.victim not in json.dumps(one)


def test_an_address_of_b_is_refused_without_naming_it(world: World, unchanged: None) -> None:
    nics = world.d.instance(world.victim)["nics"]
    taken = next(a for n in nics for a in n["addresses"] if a.startswith("10.214."))
    got = world.operator.call("PATCH", f"/1.0/instances/{world.mine}", {"ipadd": [taken]})
    assert got.status == 409 and world.victim not in got.body["error"] and "another instance" in got.body["error"]


def test_b_project_is_unknown_to_a(world: World) -> None:
    for api in (world.tenant, world.operator):
        assert [p["name"] for p in api.call("GET", "/1.0/projects").body["projects"]] == [world.a]
        hit, miss = api.call("GET", f"/1.0/projects/{world.b}"), api.call("GET", "/1.0/projects/nosuch")
        assert hit.status == 404 and hit.shape(world.b) == miss.shape("nosuch")
        own = api.call("GET", f"/1.0/projects/{world.a}").body["project"]
        assert own["instances"] == [world.mine] and own["usage"]["instances"] == 1
    # changing limits is an admin's, whatever the project
    for project in (world.a, world.b):
        got = world.operator.call("PATCH", f"/1.0/projects/{project}", {"limits": {"instances": 100}})
        assert got.status == 403
    assert world.d.ok("project", "show", world.a, "--format", "json").count('"instances": 100') == 0


def test_timing_does_not_tell_b_instance_from_none(world: World) -> None:
    """Median time of GET on B's instance and on a missing one, interleaved on one keep-alive
    connection: the same within noise (both are one lookup and the same 404)."""
    conn = http.client.HTTPSConnection("127.0.0.1", world.tenant.port, timeout=60, context=pinning_context())
    auth = {"Authorization": f"Bearer {world.tenant.token}"}
    times: dict[str, list[float]] = {world.victim: [], f"{world.b}-ghost": []}
    try:
        for _ in range(60):
            for name in times:
                began = time.perf_counter()
                conn.request("GET", f"/1.0/instances/{name}", headers=auth)
                r = conn.getresponse()
                r.read()
                times[name].append(time.perf_counter() - began)
                assert r.status == 404
    finally:
        conn.close()
    hit, miss = (statistics.median(v) for v in times.values())
    print(f"GET another project's instance: median {hit * 1e3:.2f} ms; a missing one: {miss * 1e3:.2f} ms")
    assert abs(hit - miss) < max(0.002, 0.3 * miss), f"victim {hit * 1e3:.2f} ms, missing {miss * 1e3:.2f} ms"


def test_deleting_a_project_revokes_its_tokens(world: World) -> None:
    d = world.d
    d.ok("project", "create", "initech")
    secret = d.ok("token", "create", "i-tenant", "--role", "tenant", "--project", "initech").strip()
    api = Api(world.tenant.port, secret)
    assert api.call("GET", "/1.0/instances").status == 200
    d.ok("project", "delete", "initech")
    d.ok("project", "create", "initech")   # a new customer of the same name
    try:
        assert api.call("GET", "/1.0/instances").status == 401, "the old customer's token is gone"
        assert "i-tenant" not in d.ok("token", "list")
    finally:
        d.ok("project", "delete", "initech")


def test_a_certificate_of_project_a_is_scoped_like_its_tokens(world: World, tmp_path: Path) -> None:
    """A TLS client certificate trusted for acme (ctctl trust add --project) sees acme only."""
    cert, key, _ = make_cert(tmp_path, "acme-laptop")
    world.d.ok("trust", "add", str(cert), "--role", "tenant", "--project", world.a)
    try:
        context = pinning_context((str(cert), str(key)))

        def get(path: str) -> tuple[int, dict]:
            conn = http.client.HTTPSConnection("127.0.0.1", world.tenant.port, timeout=60, context=context)
            try:
                conn.request("GET", path)
                r = conn.getresponse()
                return r.status, json.loads(r.read())
            finally:
                conn.close()

        status, listed = get("/1.0/instances")
        assert status == 200 and [i["name"] for i in listed["instances"]] == [world.mine]
        hit, miss = get(f"/1.0/instances/{world.victim}"), get(f"/1.0/instances/{world.b}-ghost")
        assert hit[0] == miss[0] == 404
        assert hit[1]["error"].replace(world.victim, "REF") == miss[1]["error"].replace(f"{world.b}-ghost", "REF")
        assert f"{world.a}" in world.d.ok("trust", "list")
        assert "no project named" in world.d.ctl("trust", "add", str(cert), "--name", "other", "--project",
                                                 "nosuch").err
    finally:
        world.d.ok("trust", "remove", "acme-laptop")


def test_the_audit_log_names_the_project_acted_in(world: World) -> None:
    """Refused attempts on B's instance are audited under A (the caller's), A's own changes under A;
    `ctctl audit --project` filters."""
    world.tenant.call("PATCH", f"/1.0/instances/{world.mine}", {"description": "audited"})
    world.tenant.call("PATCH", f"/1.0/instances/{world.victim}", {"description": "x"})
    entries = json.loads(world.d.ok("audit", "--project", world.a, "--format", "json"))
    assert entries and {e["project"] for e in entries} == {world.a}
    mine = [e for e in entries if e["path"] == f"/1.0/instances/{world.mine}" and e["method"] == "PATCH"]
    assert mine and mine[-1]["status"] == 200 and mine[-1]["identity"] == "token:a-tenant"
    probe = [e for e in entries if e["path"] == f"/1.0/instances/{world.victim}" and e["method"] == "PATCH"]
    assert probe and probe[-1]["status"] == 404
    assert not [e for e in json.loads(world.d.ok("audit", "--project", world.b, "--format", "json"))
                if e["identity"].startswith("token:a-")], "nothing of A's is filed under B"


def test_what_a_project_allows_its_tenants(world: World) -> None:
    """Exec and the reinstall templates come from the project's settings (projectrules.py)."""
    d, own = world.d, f"/1.0/instances/{world.mine}"
    d.ok("project", "set", world.a, "--no-allow-exec", "--templates", "nosuchtemplate")
    try:
        got = world.tenant.call("GET", own + "/exec?cmd=id", headers=WS)
        assert got.status == 403 and f"project '{world.a}' does not allow exec" in got.headers["X-Ctd-Error"]
        got = world.tenant.call("POST", own + "/reinstall", {"template": "busybox", "restart": True})
        assert got.status == 403 and "may not reinstall from template 'busybox'" in got.body["error"]
        assert world.operator.call("GET", own + "/exec?cmd=id", headers=WS).status == 101, "operators are not limited"
    finally:
        d.ok("project", "set", world.a, "--allow-exec", "--templates", "")
    assert world.tenant.call("GET", own + "/exec?cmd=id", headers=WS).status == 101
    got = world.tenant.call("POST", own + "/reinstall?wait=true", {"template": "busybox", "restart": True})
    assert got.status == 200 and got.body["operation"]["status"] == "success", got
