"""Roles over real HTTPS: tokens of each role against a real daemon on 127.0.0.1.

A tenant runs its instance (list, start, stop, console, snapshot, its own settings) and is
refused everything else with 403 naming its role and what it lacks: limits, privileged mode,
networks, templates, host paths (backup, restore), tokens, the audit log, exec (its project does
not allow it). An operator creates and changes instances but not privileged ones, not host
files, not templates, trust or the storage pool. Each refusal leaves the host unchanged and is in
the audit log. ctctl makes tokens and join tokens of each role.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctctl.client import pinning_context
from tests.conftest import REPO, CtlResult, Daemon, _start_daemon, _teardown

WS = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    port = free_port()
    d = _start_daemon(tmp_path_factory.mktemp("roles"), "roles", f'https_address = "127.0.0.1:{port}"\n')
    d.port = port  # type: ignore[attr-defined]
    try:
        yield d
    finally:
        _teardown(d)


class Api:
    """One token's view of the HTTPS API."""

    def __init__(self, d: Daemon, token: str) -> None:
        self.d, self.token = d, token

    def call(self, method: str, path: str, body: object = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], dict]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.d.port, timeout=120,  # type: ignore[attr-defined]
                                           context=pinning_context())
        try:
            sent = {"Authorization": f"Bearer {self.token}", **(headers or {})}
            conn.request(method, path, None if body is None else json.dumps(body), sent)
            response = conn.getresponse()
            raw = response.read() if response.status != 101 else b""
            return response.status, dict(response.getheaders()), json.loads(raw) if raw else {}
        finally:
            conn.close()

    def ok(self, method: str, path: str, body: object = None) -> dict:
        status, _, got = self.call(method, path, body)
        assert status in (200, 201, 202), (method, path, status, got)
        op = got.get("operation")
        assert op is None or op["status"] == "success", op
        return got

    def denied(self, method: str, path: str, body: object = None, *words: str) -> str:
        status, _, got = self.call(method, path, body)
        assert status == 403 and got["code"] == "forbidden", (method, path, status, got)
        for word in words:
            assert word in got["error"], (word, got["error"])
        return got["error"]


def token(d: Daemon, name: str, role: str) -> Api:
    secret = d.ok("token", "create", name, "--role", role).strip()
    assert secret.startswith("ctd_")
    return Api(d, secret)


def audit(d: Daemon, label: str) -> list[dict]:
    lines = (d.state_dir / "audit.log").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["identity"] == label]


def test_a_tenant_runs_its_instance_and_nothing_more(daemon: Daemon, tmp_path: Path) -> None:
    name = daemon.unique("ten")
    daemon.ok("create", name, "--template", "busybox", "--ram", "256M")
    tenant = token(daemon, "customer", "tenant")
    i = f"/1.0/instances/{name}"
    try:
        assert name in [x["name"] for x in tenant.ok("GET", "/1.0/instances")["instances"]]
        assert tenant.ok("GET", i)["instance"]["name"] == name
        tenant.ok("PUT", i + "/state?wait=true", {"action": "start"})
        assert daemon.instance(name)["state"] == "running"
        status, _, _ = tenant.call("GET", i + "/console", headers=WS)
        assert status == 101, "a tenant attaches to its console"
        status, headers, _ = tenant.call("GET", i + "/exec?cmd=id", headers=WS)
        assert status == 403 and "does not allow exec" in headers["X-Ctd-Error"], "no upgrade"
        # its own settings, not the provider's
        assert tenant.ok("PATCH", i, {"description": "my web server"})["instance"]["description"] == "my web server"
        tenant.denied("PATCH", i, {"limits": {"ram": "4G"}}, "role tenant", "'limits'", "operator", "userpasswd")
        tenant.denied("PATCH", i, {"limits": {"cpus": 1}, "description": "x"}, "'limits'")
        tenant.denied("PATCH", i, {"privileged": True}, "'privileged'", "admin")
        tenant.denied("PATCH", i, {"disabled": False}, "'disabled'")
        tenant.denied("PUT", i + "/state", {"action": "suspend"}, "'action' to \"suspend\"")
        assert daemon.instance(name)["limits"]["ram"] == "256M", "unchanged"
        assert daemon.instance(name)["description"] == "my web server"
        tenant.ok("POST", i + "/snapshots?wait=true", {"name": "before"})
        assert "before" in tenant.ok("GET", i + "/snapshots")["snapshots"]
        # nothing host-wide, no host paths, nothing about access
        target = tmp_path / "stolen.tar"
        for method, path, body, what in [
                ("POST", "/1.0/instances", {"name": "mine2", "template": "busybox"}, "create an instance"),
                ("DELETE", i, None, "destroy"),
                ("POST", "/1.0/networks", {"name": "tnet", "subnet": "10.250.0.1/24"}, "create a network"),
                ("POST", "/1.0/templates", {"name": "busybox"}, "template"),
                ("POST", i + "/backup", {"file": str(target)}, "'file'"),   # a file on the host: the admin's
                ("POST", "/1.0/restore", {"file": "/etc/passwd", "name": "x"}, "backup file"),
                ("POST", "/1.0/tokens", {"name": "more", "role": "admin"}, "tokens"),
                ("POST", "/1.0/trust/tokens", {"name": "join"}, "join tokens"),
                ("GET", "/1.0/audit", None, "audit log"),
                ("GET", "/1.0/storage", None, "storage pool"),
                ("GET", "/1.0/networks", None, "networks"),
                ("POST", "/1.0/shutdown", {}, "every instance")]:
            tenant.denied(method, path, body, "role tenant may not", what)
        assert not target.exists()
        assert "mine2" not in [x["name"] for x in daemon.client.get("/1.0/instances")["instances"]]
        assert "tnet" not in [n["name"] for n in daemon.client.get("/1.0/networks")["networks"]]
        assert daemon.ok("token", "list").count("\n") == 2, "header and the tenant's token: no new one"
        info = tenant.ok("GET", "/1.0")
        assert "state_dir" not in info and "recovered" not in info and info["https"]["certificate_fingerprint"]
        tenant.ok("PUT", i + "/state?wait=true", {"action": "stop", "timeout": 5})
        assert daemon.instance(name)["state"] == "stopped"
    finally:
        daemon.ctl("destroy", "--force", name)
        daemon.ctl("token", "revoke", "customer")
    mine = audit(daemon, "token:customer")
    refused = [e for e in mine if e["status"] == 403]
    assert all(e["role"] == "tenant" and e["denied"] for e in refused)
    assert {(e["method"], e["path"]) for e in refused} >= {
        ("GET", "/1.0/audit"), ("GET", "/1.0/storage"), ("PATCH", f"/1.0/instances/{name}"),
        ("POST", "/1.0/networks"), ("GET", f"/1.0/instances/{name}/exec")}, "denied reads too"
    assert ("PUT", f"/1.0/instances/{name}/state", 200) in {(e["method"], e["path"], e["status"]) for e in mine}


def test_an_operator_manages_instances_but_nothing_host_wide(daemon: Daemon) -> None:
    operator = token(daemon, "reseller", "operator")
    name = daemon.unique("op")
    try:
        operator.denied("POST", "/1.0/instances", {"name": name, "template": "busybox", "privileged": True},
                        "role operator", "'privileged' to true", "admin")
        operator.denied("POST", "/1.0/instances", {"name": name, "type": "vm", "vm": {"disk": "/etc/shadow"}},
                        "'vm.disk'")
        operator.denied("POST", "/1.0/instances", {"name": name, "template": "busybox", "boot_delay": 3600},
                        "'boot_delay'")
        assert name not in [x["name"] for x in daemon.client.get("/1.0/instances")["instances"]]
        operator.ok("POST", "/1.0/instances?wait=true", {"name": name, "template": "busybox", "privileged": False})
        i = f"/1.0/instances/{name}"
        assert operator.ok("PATCH", i, {"limits": {"ram": "128M"}})["instance"]["limits"]["ram"] == "128M"
        operator.denied("PATCH", i, {"disabled": True, "reason": "unpaid"}, "'disabled'", "admin")
        assert daemon.instance(name)["disabled"] is False
        operator.ok("PUT", i + "/state?wait=true", {"action": "start"})
        status, _, _ = operator.call("GET", i + "/exec?cmd=true", headers=WS)
        assert status == 101, "an operator may exec"
        for method, path, body, what in [
                ("GET", "/1.0/trust", None, "trusted certificates"),
                ("POST", "/1.0/trust/tokens", {"name": "j"}, "join tokens"),
                ("POST", "/1.0/templates", {"name": "busybox"}, "build"),
                ("DELETE", "/1.0/templates/busybox", None, "delete a template"),
                ("GET", "/1.0/storage", None, "storage pool"),
                ("GET", "/1.0/check", None, "host checks"),
                ("POST", "/1.0/networks", {"name": "onet"}, "create a network"),
                ("POST", i + "/backup", {"file": "/tmp/x.tar"}, "'file'"),
                ("POST", "/1.0/tokens", {"name": "t2"}, "tokens")]:
            operator.denied(method, path, body, "role operator may not", what)
        assert any(t["name"] == "busybox" and t["built"] for t in daemon.client.get("/1.0/templates")["templates"])
        operator.ok("DELETE", i + "?force=true&wait=true")
        assert name not in [x["name"] for x in daemon.client.get("/1.0/instances")["instances"]]
    finally:
        daemon.ctl("destroy", "--force", name)
        daemon.ctl("token", "revoke", "reseller")


def test_a_tenant_reinstalls_from_a_distribution_template_only(daemon: Daemon) -> None:
    """A template made from an instance holds that instance's files: not a tenant's to install."""
    other, mine, private = daemon.unique("other"), daemon.unique("mine"), daemon.unique("priv")
    daemon.ok("create", other, "--template", "busybox")
    daemon.ok("create", mine, "--template", "busybox")
    (daemon.rootfs(other) / "root" / "secret.txt").write_text("other customer's data\n")
    tenant = token(daemon, "reinstaller", "tenant")
    try:
        daemon.client.run("POST", "/1.0/templates", {"name": private, "from": other})
        i = f"/1.0/instances/{mine}"
        tenant.denied("POST", i + "/reinstall", {"template": private}, "role tenant may not reinstall",
                      f"'{private}'")
        assert not (daemon.rootfs(mine) / "root" / "secret.txt").exists()
        tenant.ok("POST", i + "/reinstall?wait=true", {"template": "busybox"})
        tenant.ok("POST", i + "/reinstall?wait=true", {})   # its own template
        assert not (daemon.rootfs(mine) / "root" / "secret.txt").exists()
    finally:
        daemon.ctl("destroy", "--force", other)
        daemon.ctl("destroy", "--force", mine)
        daemon.ctl("template", "delete", private)
        daemon.ctl("token", "revoke", "reinstaller")


def ctl(config: Path, *args: str, input: str = "") -> CtlResult:
    """ctctl as a user on another machine: its own config dir, no socket."""
    env = {k: v for k, v in os.environ.items() if k != "CTD_SOCKET"}
    env["XDG_CONFIG_HOME"] = str(config)
    r = subprocess.run([sys.executable, "-m", "ctctl.main", *args], capture_output=True, text=True, timeout=120,
                       cwd=REPO, env=env, input=input)
    return CtlResult(r.returncode, r.stdout, r.stderr)


def test_ctctl_makes_tokens_and_join_tokens_of_each_role(daemon: Daemon, tmp_path: Path) -> None:
    name = daemon.unique("cli")
    daemon.ok("create", name, "--template", "busybox")
    try:
        made = daemon.ctl("token", "create", "cli-tenant", "--role", "tenant")
        assert made.code == 0 and "role tenant" in made.err
        assert "tenant" in [line.split()[1] for line in daemon.ok("token", "list").splitlines()
                            if line.startswith("cli-tenant")]
        bad = daemon.ctl("token", "create", "cli-root", "--role", "root")
        assert bad.code != 0 and "operator" in bad.err and "cli-root" not in daemon.ok("token", "list")
        joined = daemon.ctl("trust", "token", "cli-join", "--role", "operator")
        assert joined.code == 0 and "role operator" in joined.err
        assert any("cli-join" in line and "operator" in line for line in daemon.ok("trust", "list").splitlines())
        # the tenant's ctctl: its own settings go through, the limits do not
        fp = daemon.client.get("/1.0")["https"]["certificate_fingerprint"]
        url = f"https://127.0.0.1:{daemon.port}"  # type: ignore[attr-defined]
        config = tmp_path / "xdg"
        added = ctl(config, "remote", "add", "node", url, "--token", made.out.strip(), "--accept-certificate", fp)
        assert added.code == 0, added.err
        r = ctl(config, "--remote", "node", "set", name, "--ram", "1G")
        assert r.code != 0 and "role tenant may not" in r.err and "'limits'" in r.err, r.err
        r = ctl(config, "--remote", "node", "set", name, "--description", "hello")
        assert r.code == 0, r.err
        assert daemon.instance(name)["description"] == "hello" and "ram" not in daemon.instance(name)["limits"]
        # and it runs its instance with the ordinary commands
        for args in (("start", name), ("stop", name, "--kill")):
            r = ctl(config, "--remote", "node", *args)
            assert r.code == 0, (args, r.err)
        assert ctl(config, "--remote", "node", "start", name).code == 0
        console = ctl(config, "--remote", "node", "console", name, input="echo console-$((6*7))\n")
        assert console.code == 0 and "console-42" in console.out, console.err
        r = ctl(config, "--remote", "node", "exec", name, "--", "id")
        assert r.code != 0 and "does not allow exec" in r.err, r.err
    finally:
        daemon.ctl("destroy", "--force", name)
        daemon.ctl("token", "revoke", "cli-tenant")
        daemon.ctl("trust", "revoke-token", "cli-join")
