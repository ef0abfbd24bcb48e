"""Cluster mode without etcd: join tokens, the gateway's key ranges, settings, the role table,
and that a standalone ctd loads nothing of the cluster's etcd side."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest

from ctd.cluster import etcd
from ctd.cluster.membership import decode_token, encode_token
from ctd.cluster.node import summary
from ctd.config import load_config
from ctd.errors import InvalidRequest
from ctd.remote import policy
from ctd.remote.identity import Role

REPO = Path(__file__).resolve().parents[2]


def test_a_join_token_round_trips_and_garbage_is_named() -> None:
    token = encode_token("node-b", "s3cret", "2030-01-01T00:00:00+00:00")
    node, secret, expires = decode_token(token)
    assert (node, secret) == ("node-b", "s3cret")
    assert expires == datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    for bad in ("", "ctdjoin_", "ctdjoin_!!!", token[:-5], "eyJ" + token[8:], 7, None):
        with pytest.raises(InvalidRequest, match="not a cluster join token"):
            decode_token(bad)


def test_prefix_end_covers_the_prefix_only() -> None:
    assert etcd.prefix_end("/ctd/instances/") == b"/ctd/instances0"
    assert etcd.prefix_end("\xff") == b"\xc3\xc0"   # bytes, not characters: UTF-8 c3 bf, its last + 1


def test_compare_and_ops_speak_the_gateways_json() -> None:
    assert etcd.Compare.missing("/k").wire() == {"key": "L2s=", "target": "CREATE", "result": "EQUAL",
                                                 "create_revision": "0"}
    assert etcd.Compare.value_is("/k", b"v").wire()["value"] == "dg=="
    assert etcd.put_json("/k", {"b": 1, "a": 2}, lease=5).wire() == {
        "request_put": {"key": "L2s=", "value": "eyJhIjoyLCJiIjoxfQ==", "lease": "5"}}
    kv = etcd.KeyValue.parse({"key": "L2s=", "value": "e30=", "create_revision": "3"})
    assert (kv.key, kv.json(), kv.create_revision, kv.mod_revision, kv.lease) == ("/k", {}, 3, 0, 0)


def test_summary_keeps_the_list_columns_only() -> None:
    view = {"id": 1, "name": "a", "state": "running", "usage": {"cpu": 5},
            "nics": [{"name": "eth0", "addresses": ["10.0.0.2"], "rx_bytes": 99}]}
    out = summary(view)
    assert "usage" not in out and out["nics"] == [{"name": "eth0", "network": None, "mode": None, "mac": None,
                                                   "addresses": ["10.0.0.2"]}]


@pytest.mark.parametrize(("text", "wrong"), [
    ('etcd_endpoints = "http://a:2379"', "etcd_endpoints must be a list"),
    ('etcd_endpoints = ["a:2379"]', "etcd_endpoints must be a list"),
    ('node_name = "Node_1"', "node_name must be"),
    ('node_address = "http://x:8443"', "node_address must be an HTTPS URL"),
    ("cluster_lease_ttl = 1", "cluster_lease_ttl must be seconds"),
])
def test_bad_cluster_settings_are_named(tmp_path: Path, text: str, wrong: str) -> None:
    file = tmp_path / "ctd.toml"
    file.write_text(text + "\n")
    with pytest.raises(InvalidRequest, match=wrong):
        load_config(file, {})


def test_cluster_settings_load(tmp_path: Path) -> None:
    file = tmp_path / "ctd.toml"
    file.write_text('etcd_endpoints = ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]\nnode_name = "n1"\n')
    config = load_config(file, {})
    assert config.etcd_endpoints == ("http://10.0.0.1:2379", "http://10.0.0.2:2379")
    assert config.cluster_node == "n1" and config.cluster_lease_ttl == 10


@pytest.mark.parametrize(("path", "method"), [("/1.0/cluster", "GET"), ("/1.0/cluster/nodes", "GET"),
                                              ("/1.0/cluster/nodes", "POST"), ("/1.0/cluster/join", "POST"),
                                              ("/1.0/cluster/init", "POST"), ("/1.0/cluster/nodes/{name}", "DELETE")])
def test_the_cluster_is_the_admins(path: str, method: str) -> None:
    rule = policy.rule_for(path, method)
    for role in (Role.TENANT, Role.OPERATOR):
        denial = policy.check_route(role, rule, method, path)
        assert denial is not None and denial.needs is Role.ADMIN
    assert policy.check_route(Role.ADMIN, rule, method, path) is None


def test_a_standalone_ctd_loads_no_etcd_client() -> None:
    """The daemon, the API app and ctctl import nothing that talks to etcd."""
    code = ("import sys, ctd.daemon, ctd.api.server, ctd.api.schema, ctctl.main\n"
            "print(sorted(m for m in sys.modules if m in ('ctd.cluster.etcd', 'ctd.cluster.node')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_an_auto_id_another_node_took_is_picked_again() -> None:
    """check_and_claim: IdTaken for an id this node chose re-runs the check (a fresh pick), and
    what each refused attempt held is let go; an id the caller asked for is not re-picked."""
    import asyncio
    from types import SimpleNamespace

    from ctd.api.handlers import check_and_claim
    from ctd.cluster.errors import IdTaken

    released: list[tuple[str, int]] = []
    picks = iter([100, 101, 102])

    async def claim(name: str, instance_id: int) -> None:
        if instance_id == 100:
            raise IdTaken("id 100 is taken in the cluster")

    c = SimpleNamespace(cluster=SimpleNamespace(claim=claim), projects=SimpleNamespace(release=lambda key: None),
                        instances=SimpleNamespace(release=lambda name, i: released.append((name, i))))

    def check() -> tuple[tuple[str, int], str]:
        return ("web", next(picks)), "key"

    got = asyncio.run(check_and_claim(c, check, lambda r: r, True))  # type: ignore[arg-type]
    assert got == (("web", 101), "key") and released == [("web", 100)]
    picks = iter([100])
    with pytest.raises(IdTaken):
        asyncio.run(check_and_claim(c, check, lambda r: r, False))  # type: ignore[arg-type]
    assert released == [("web", 100), ("web", 100)]
