"""Projects with a real daemon, driven by ctctl as an admin on the socket: the lifecycle, the
name rule, every limit at create, set, clone, restore and snapshot (refused with a message naming
the limit and the usage, and nothing made), usage in `ctctl project show`, and delete refused
while instances remain. Cross-project access over HTTPS is tests/security/test_cross_tenant.py.
"""
from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctctl.client import ApiError
from tests.conftest import Daemon, _start_daemon, _teardown


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = _start_daemon(tmp_path_factory.mktemp("projects"), "projects")
    try:
        yield d
    finally:
        _teardown(d)


def show(d: Daemon, project: str) -> dict:
    return json.loads(d.ok("project", "show", project, "--format", "json"))


def names(d: Daemon) -> set[str]:
    return {i["name"] for i in d.client.get("/1.0/instances")["instances"]}


def refused(d: Daemon, *args: str) -> str:
    r = d.ctl(*args)
    assert r.code != 0, f"ctctl {' '.join(args)} was not refused: {r.out}"
    return r.err


@pytest.fixture
def project(daemon: Daemon) -> Iterator[str]:
    """A fresh project (name without '-'); its instances and itself go afterwards."""
    name = "p" + daemon.unique("x").split("-")[1]
    daemon.ok("project", "create", name, "--description", "test customer")
    try:
        yield name
    finally:
        for inst in daemon.client.get("/1.0/instances")["instances"]:
            if inst["project"] == name:
                daemon.ctl("destroy", inst["name"], "--force")
        daemon.ctl("project", "delete", name)


def test_lifecycle_usage_and_delete_refused_while_used(daemon: Daemon, project: str) -> None:
    listed = daemon.ok("project", "list")
    assert "default" in listed and project in listed and "test customer" in listed
    p = show(daemon, project)
    assert p["usage"]["instances"] == 0 and p["instances"] == [] and p["allow_exec"] is False
    web = f"{project}-web"
    daemon.ok("create", web, "--template", "busybox", "--project", project, "--ram", "256M", "--cpus", "1")
    inst = daemon.instance(web)
    assert inst["project"] == project
    p = show(daemon, project)
    assert p["instances"] == [web]
    assert [i["name"] for i in daemon.client.get("/1.0/instances", project=project)["instances"]] == [web]
    assert web not in [i["name"] for i in daemon.client.get("/1.0/instances", project="default")["instances"]]
    assert p["usage"]["instances"] == 1 and p["usage"]["ram"] == 256 << 20 and p["usage"]["cpus"] == 1
    text = daemon.ok("project", "show", project)
    assert "instances:  1 / unlimited" in text and "ram:        256M / unlimited" in text, text
    # the default project never goes; a used one is refused with what to do
    assert "cannot be deleted" in refused(daemon, "project", "delete", "default")
    err = refused(daemon, "project", "delete", project)
    assert f"project {project} still has 1 instance(s): {web}" in err and "delete or move them first" in err
    assert project in daemon.ok("project", "list")
    daemon.ok("destroy", web)
    daemon.ok("project", "delete", project)
    assert "no project named" in refused(daemon, "project", "show", project)
    daemon.ok("project", "create", project)   # for the fixture's cleanup


def test_names_in_a_project_begin_with_its_name(daemon: Daemon, project: str) -> None:
    err = refused(daemon, "create", "web", "--template", "busybox", "--project", project)
    assert f"instances of project {project} are named '{project}-...'" in err
    err = refused(daemon, "create", f"{project}-x", "--template", "busybox")
    assert f"belong to project {project}" in err, "the default project cannot take a project's prefix"
    assert f"{project}-x" not in names(daemon) and "web" not in names(daemon)
    # a project whose prefix instances already use is refused, naming them
    clash = daemon.unique("old")
    daemon.ok("create", clash, "--template", "busybox")
    try:
        err = refused(daemon, "project", "create", clash.split("-")[0])
        assert "would clash" in err and clash in err
    finally:
        daemon.ok("destroy", clash)
    for bad in ("Acme", "ac-me", "1x", "x" * 32):
        assert "invalid project name" in refused(daemon, "project", "create", bad)
    assert "exists already" in refused(daemon, "project", "create", project)
    assert "no project named" in refused(daemon, "token", "create", daemon.unique("tk"), "--role", "tenant",
                                         "--project", "nosuchproject")


def test_instances_limit_at_create_and_clone(daemon: Daemon, project: str) -> None:
    daemon.ok("project", "set", project, "--instances", "1")
    a, b = f"{project}-a", f"{project}-b"
    daemon.ok("create", a, "--template", "busybox", "--project", project)
    err = refused(daemon, "create", b, "--template", "busybox", "--project", project)
    assert f"project {project}: 1 instances of 1; raise limits.instances or destroy one" in err
    err = refused(daemon, "clone", a, b)
    assert "1 instances of 1" in err
    assert b not in names(daemon) and not (daemon.state_dir / "storage" / "instances" / b).exists()
    # raised: the clone lands in the source's project
    daemon.ok("project", "set", project, "--instances", "2")
    daemon.ok("clone", a, b)
    assert daemon.instance(b)["project"] == project
    assert show(daemon, project)["usage"]["instances"] == 2


def test_ram_and_cpus_limits_at_create_and_set(daemon: Daemon, project: str) -> None:
    daemon.ok("project", "set", project, "--ram", "512M", "--cpus", "2")
    a, b = f"{project}-a", f"{project}-b"
    err = refused(daemon, "create", a, "--template", "busybox", "--project", project, "--cpus", "1")
    assert f"project {project} limits ram" in err and "--ram" in err, "no RAM limit: the sum would be moot"
    daemon.ok("create", a, "--template", "busybox", "--project", project, "--ram", "384M", "--cpus", "1")
    err = refused(daemon, "create", b, "--template", "busybox", "--project", project, "--ram", "256M",
                  "--cpus", "1")
    assert f"project {project}: ram 384M of 512M in use, this needs 256M more; raise limits.ram" in err
    daemon.ok("create", b, "--template", "busybox", "--project", project, "--ram", "128M", "--cpus", "1")
    # set: growth beyond the sum refused, the instance unchanged; shrinking fine
    err = refused(daemon, "set", b, "--ram", "256M")
    assert "raise limits.ram" in err and daemon.instance(b)["limits"]["ram"] == "128M"
    err = refused(daemon, "set", b, "--cpus", "2")
    assert f"project {project}: cpus 2 of 2 in use" in err and daemon.instance(b)["limits"]["cpus"] == 1
    daemon.ok("set", a, "--ram", "256M")
    daemon.ok("set", b, "--ram", "256M")
    assert show(daemon, project)["usage"]["ram"] == 512 << 20
    # lowering the project's limit below its usage refuses growth only
    daemon.ok("project", "set", project, "--ram", "256M")
    daemon.ok("set", a, "--ram", "128M")
    assert "raise limits.ram" in refused(daemon, "set", a, "--ram", "192M")
    daemon.ok("project", "set", project, "--ram", "unlimited", "--cpus", "unlimited")
    daemon.ok("set", a, "--ram", "1G")


def test_disk_limit(daemon: Daemon, project: str) -> None:
    daemon.ok("project", "set", project, "--disk", "1G")
    a, b = f"{project}-a", f"{project}-b"
    assert "diskspace" in refused(daemon, "create", a, "--template", "busybox", "--project", project)
    daemon.ok("create", a, "--template", "busybox", "--project", project, "--diskspace", "768M")
    err = refused(daemon, "create", b, "--template", "busybox", "--project", project, "--diskspace", "512M")
    assert f"project {project}: disk 768M of 1G in use, this needs 512M more; raise limits.disk" in err
    assert b not in names(daemon)
    assert "limits.disk" in refused(daemon, "set", a, "--diskspace", "2G")
    assert show(daemon, project)["usage"]["disk"] == 768 << 20


def test_addresses_limit(daemon: Daemon, project: str) -> None:
    net, n = daemon.unique("pn"), random.randrange(10, 250)
    daemon.ok("network", "create", net, "--subnet", f"10.213.{n}.1/24")
    try:
        daemon.ok("project", "set", project, "--addresses", "2")
        a, b = f"{project}-a", f"{project}-b"
        daemon.ok("create", a, "--template", "busybox", "--project", project, "--net", net)
        daemon.ok("set", a, "--ipadd", f"10.213.{n}.50")
        assert show(daemon, project)["usage"]["addresses"] == 2
        err = refused(daemon, "set", a, "--ipadd", f"10.213.{n}.51")
        assert f"project {project}: addresses 2 of 2 in use, this needs 1 more; raise limits.addresses" in err
        err = refused(daemon, "create", b, "--template", "busybox", "--project", project, "--net", net)
        assert "limits.addresses" in err and b not in names(daemon)
        assert f"10.213.{n}.51" not in json.dumps(daemon.instance(a)["nics"])
        daemon.ok("set", a, "--ipdel", f"10.213.{n}.50")
        daemon.ok("set", a, "--ipadd", f"10.213.{n}.51")
    finally:
        for inst in daemon.client.get("/1.0/instances")["instances"]:
            if inst["project"] == project:
                daemon.ctl("destroy", inst["name"], "--force")
        daemon.ok("network", "delete", net)


def test_snapshots_limit(daemon: Daemon, project: str) -> None:
    daemon.ok("project", "set", project, "--snapshots", "2")
    a = f"{project}-a"
    daemon.ok("create", a, "--template", "busybox", "--project", project)
    daemon.ok("snapshot", a, "s1")
    daemon.ok("snapshot", a, "s2")
    err = refused(daemon, "snapshot", a, "s3")
    assert f"project {project}: snapshots 2 of 2 in use, this needs 1 more; raise limits.snapshots or delete one" \
        in err
    assert "s3" not in daemon.ok("snapshot-list", a)
    daemon.ok("snapshot-delete", a, "s1")
    daemon.ok("snapshot", a, "s3")
    assert show(daemon, project)["usage"]["snapshots"] == 2


def test_restore_into_a_project_counts_against_it(daemon: Daemon, project: str, tmp_path: Path) -> None:
    src = daemon.unique("src")
    daemon.ok("create", src, "--template", "busybox")
    try:
        backup = tmp_path / "b.tar.zst"
        daemon.ok("backup", src, str(backup), "--tar")
        daemon.ok("project", "set", project, "--instances", "0")
        target = f"{project}-restored"
        err = refused(daemon, "restore", str(backup), "--name", target, "--project", project)
        assert f"project {project}: 0 instances of 0" in err and target not in names(daemon)
        daemon.ok("project", "set", project, "--instances", "1")
        daemon.ok("restore", str(backup), "--name", target, "--project", project)
        assert daemon.instance(target)["project"] == project
        assert "named" in refused(daemon, "restore", str(backup), "--name", "plain", "--project", project)
    finally:
        daemon.ok("destroy", src)


def test_exec_and_templates_settings(daemon: Daemon, project: str) -> None:
    daemon.ok("project", "set", project, "--allow-exec", "--templates", "busybox")
    p = show(daemon, project)
    assert p["allow_exec"] is True and p["templates"] == ["busybox"]
    daemon.ok("project", "set", project, "--no-allow-exec", "--templates", "")
    p = show(daemon, project)
    assert p["allow_exec"] is False and p["templates"] is None
    assert "nothing to change" in refused(daemon, "project", "set", project)
    with pytest.raises(ApiError, match="unknown project limit 'ramm'"):
        daemon.client.request("PATCH", f"/1.0/projects/{project}", {"limits": {"ramm": 1}})
    with pytest.raises(ApiError, match="unknown field"):
        daemon.client.request("PATCH", f"/1.0/projects/{project}", {"name": "other"})


def test_a_create_in_flight_holds_its_place(daemon: Daemon, project: str) -> None:
    """Two creates for the last place, the second sent while the first is still being made: the
    second is refused (the first's admission counts before its row exists)."""
    daemon.ok("project", "set", project, "--instances", "1")
    a, b = f"{project}-a", f"{project}-b"
    first = daemon.client.request("POST", "/1.0/instances", {"name": a, "template": "busybox", "project": project})
    assert first["operation"]["status"] == "running"
    with pytest.raises(ApiError, match=f"project {project}: 1 instances of 1"):
        daemon.client.request("POST", "/1.0/instances", {"name": b, "template": "busybox", "project": project})
    done = daemon.client.get(f"/1.0/operations/{first['operation']['id']}/wait")["operation"]
    assert done["status"] == "success", done
    assert show(daemon, project)["usage"]["instances"] == 1 and b not in names(daemon)
    # and once it is done, its row counts instead of its hold: not twice
    daemon.ok("project", "set", project, "--instances", "2")
    daemon.ok("create", b, "--template", "busybox", "--project", project)


def test_backups_limit_counts_the_backups_in_backup_dir(daemon: Daemon, project: str) -> None:
    daemon.ok("project", "set", project, "--backups", "2")
    a = f"{project}-a"
    daemon.ok("create", a, "--template", "busybox", "--project", project, "--backup-keep", "5")
    daemon.ok("backup", a, timeout=120)
    daemon.ok("backup", a, timeout=120)
    err = refused(daemon, "backup", a)
    assert f"project {project}: backups 2 of 2 in use, this needs 1 more; raise limits.backups" in err
    assert len(json.loads(daemon.ok("backup-list", a, "--format", "json"))) == 2
    assert show(daemon, project)["usage"]["backups"] == 2
    daemon.ok("project", "set", project, "--backups", "unlimited")
    daemon.ok("backup", a, timeout=120)
