"""Administrative flags on a real daemon: disabled (with its reason), protected, description and
tags, list filters, rename (storage, snapshots, NIC and state follow), restart persistence."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctctl.client import ApiError
from tests.conftest import Daemon
from tests.helpers.net import own_network
from tests.host.test_restore_trust import meta_set, tampered


@pytest.fixture
def names(ctd: Daemon) -> Iterator[list[str]]:
    """Instances a test made (under their current name): unprotected and destroyed after."""
    made: list[str] = []
    yield made
    for name in made:
        ctd.ctl("set", name, "--protected", "no")
        ctd.ctl("destroy", "--force", name)


def make(ctd: Daemon, names: list[str], *options: str, start: bool = False) -> str:
    name = ctd.unique("adm")
    ctd.ok("create", name, "--template", "busybox", *options)
    names.append(name)
    if start:
        ctd.ok("start", name)
    return name


def refused(ctd: Daemon, status: int, method: str, path: str, body: object = None, **query: str) -> str:
    with pytest.raises(ApiError) as err:
        if method == "GET":
            ctd.client.get(path, **query)
        else:
            ctd.client.request(method, path, body, query=query or None)
    assert err.value.status == status, (body, err.value.message)
    return err.value.message


def test_a_disabled_instance_is_not_started_until_enabled(ctd: Daemon, names: list[str]) -> None:
    name = make(ctd, names, "--disabled", "yes", "--reason", "invoice 4711 unpaid")
    r = ctd.ctl("start", name)
    assert r.code != 0 and "disabled (invoice 4711 unpaid)" in r.err and f"set {name} --disabled no" in r.err
    assert ctd.instance(name)["state"] == "stopped"
    assert refused(ctd, 409, "PUT", f"/1.0/instances/{name}/state", {"action": "start"})
    listed = ctd.ok("list")
    assert any(name in line and "stopped (disabled)" in line for line in listed.splitlines()), listed
    assert "invoice 4711 unpaid" in ctd.ok("status", name)
    ctd.ok("set", name, "--disabled", "no")
    view = ctd.instance(name)
    assert view["disabled"] is False and view["disabled_reason"] is None
    ctd.ok("start", name)
    # Running: disabling needs --stop; without it nothing changes.
    r = ctd.ctl("set", name, "--disabled", "yes", "--reason", "abuse")
    assert r.code != 0 and "is running" in r.err and "--stop" in r.err
    assert ctd.instance(name)["state"] == "running" and ctd.instance(name)["disabled"] is False
    out = ctd.ok("set", name, "--disabled", "yes", "--reason", "abuse", "--stop")
    assert "stopped" in out and "disabled (abuse)" in out
    view = ctd.instance(name)
    assert view["state"] == "stopped" and view["disabled"] and view["disabled_reason"] == "abuse"
    with pytest.raises(ApiError) as err:   # an operation: refused when it runs
        ctd.client.run("PUT", f"/1.0/instances/{name}/state", {"action": "restart"})
    assert "disabled (abuse)" in err.value.message
    assert ctd.instance(name)["state"] == "stopped"
    # Bad combinations
    assert "stop goes with disabled" in refused(ctd, 400, "PATCH", f"/1.0/instances/{name}", {"stop": True})
    assert "reason goes with" in refused(ctd, 400, "PATCH", f"/1.0/instances/{name}",
                                         {"disabled": False, "reason": "x"})


def test_a_protected_instance_is_not_destroyed_reinstalled_or_rolled_back(ctd: Daemon, names: list[str]) -> None:
    name = make(ctd, names, "--protected", "yes")
    ctd.ok("snapshot", name, "s1")
    for args in (("destroy", name), ("destroy", "--force", name), ("reinstall", name),
                 ("rollback", name, "s1")):
        r = ctd.ctl(*args)
        assert r.code != 0 and "protected" in r.err and f"set {name} --protected no" in r.err, (args, r.err)
    assert refused(ctd, 409, "DELETE", f"/1.0/instances/{name}", force="true")
    assert ctd.instance(name)["protected"] is True
    assert "s1" in ctd.ok("snapshot-list", name)
    assert ctd.rootfs(name).is_dir()
    ctd.ok("set", name, "--protected", "no")
    ctd.ok("destroy", name)
    names.remove(name)
    assert refused(ctd, 404, "GET", f"/1.0/instances/{name}")


def test_description_and_tags_are_shown_filtered_and_bounded(ctd: Daemon, names: list[str]) -> None:
    web = make(ctd, names, "--tag", "customer=acme", "--tag", "tier=gold", "--description", "web shop\nfront")
    db = make(ctd, names, "--tag", "customer=acme", "--tag", "tier=silver", start=True)
    other = make(ctd, names, "--tag", "customer=zeta")
    view = ctd.instance(web)
    assert view["tags"] == {"customer": "acme", "tier": "gold"} and view["description"] == "web shop\nfront"
    status = ctd.ok("status", web)
    assert "customer=acme" in status and "web shop" in status

    def listed(*args: str) -> set[str]:
        return {i["name"] for i in json.loads(ctd.ok("list", "--format", "json", *args))} & {web, db, other}

    assert listed("--tag", "customer=acme") == {web, db}
    assert listed("--tag", "customer=acme", "--tag", "tier=gold") == {web}
    assert listed("--tag", "tier") == {web, db}
    assert listed("--state", "running") == {db}
    assert listed("--state", "running", "--tag", "customer=zeta") == set()
    assert listed("--state", "stopped", "--state", "running", "--tag", "customer") == {web, db, other}
    assert "unknown state" in refused(ctd, 400, "GET", "/1.0/instances", state="sleeping")
    assert "invalid tag key" in refused(ctd, 400, "GET", "/1.0/instances", tag="a b=c")
    # Changing and removing tags
    ctd.ok("set", web, "--tag", "tier=", "--tag", "env=prod")
    assert ctd.instance(web)["tags"] == {"customer": "acme", "env": "prod"}
    ctd.ok("set", web, "--untag", "env")
    assert ctd.instance(web)["tags"] == {"customer": "acme"}
    # Hostile input: refused with what was wrong, nothing changed
    path = f"/1.0/instances/{web}"
    assert "at most 4096" in refused(ctd, 400, "PATCH", path, {"description": "x" * 100_000})
    assert "U+001B" in refused(ctd, 400, "PATCH", path, {"description": "red \x1b[31m"})
    assert "U+202E" in refused(ctd, 400, "PATCH", path, {"description": "evil \u202e"})
    assert "U+000A" in refused(ctd, 400, "PATCH", path, {"tags": {"k": "two\nlines"}})
    assert "invalid tag key" in refused(ctd, 400, "PATCH", path, {"tags": {"../x": "1"}})
    assert "invalid tag key" in refused(ctd, 400, "PATCH", path, {"tags": {"k" * 64: "1"}})
    assert "at most 256" in refused(ctd, 400, "PATCH", path, {"tags": {"k": "v" * 257}})
    assert "at most 64" in refused(ctd, 400, "PATCH", path, {"tags": {f"k{i}": "v" for i in range(5000)}})
    assert "must be an object" in refused(ctd, 400, "PATCH", path, {"tags": ["a=b"]})
    ctd.client.request("PATCH", path, {"tags": {f"k{i}": "v" for i in range(62)}})   # 63 with customer
    assert "would have 65 tags" in refused(ctd, 400, "PATCH", path, {"tags": {"y1": "v", "y2": "v"}})
    assert len(ctd.instance(web)["tags"]) == 63 and ctd.instance(web)["description"] == "web shop\nfront"
    r = ctd.ctl("create", ctd.unique("adm"), "--template", "busybox", "--tag", "noequals")
    assert r.code != 0 and "KEY=VALUE" in r.err
    # A clone takes description and tags, not the admin flags (as Proxmox does)
    ctd.ok("set", other, "--protected", "yes", "--disabled", "yes", "--description", "copied")
    copy = ctd.unique("adm")
    ctd.ok("clone", other, copy)
    names.append(copy)
    view = ctd.instance(copy)
    assert view["tags"] == {"customer": "zeta"} and view["description"] == "copied"
    assert view["protected"] is False and view["disabled"] is False


def test_a_backup_carries_description_and_tags_but_never_the_admin_flags(ctd: Daemon, names: list[str],
                                                                       tmp_path: Path) -> None:
    name = make(ctd, names, "--tag", "customer=acme", "--description", "shop")
    out = tmp_path / "src.backup"
    ctd.ok("backup", name, str(out), "--tar")
    ctd.ok("set", name, "--protected", "yes", "--disabled", "yes", "--reason", "unpaid")
    flagged = tmp_path / "flagged.backup"
    ctd.ok("backup", name, str(flagged), "--tar")
    copy = ctd.unique("adm")
    names.append(copy)
    ctd.ok("restore", str(flagged), "--name", copy)
    view = ctd.instance(copy)
    assert (view["protected"], view["disabled"]) == (False, False)
    assert (view["description"], view["tags"]) == ("shop", {"customer": "acme"})
    # A file that asks for the flags (a tenant's, edited) gets neither: the note names them
    evil = tampered(out, meta_set(protected=True, disabled=True, disabled_reason="locked out"))
    copy2 = ctd.unique("adm")
    names.append(copy2)
    said = ctd.ok("restore", str(evil), "--name", copy2)
    assert "ignored" in said and "protected" in said
    view = ctd.instance(copy2)
    assert (view["protected"], view["disabled"]) == (False, False)
    ctd.ok("start", copy2)
    ctd.ok("destroy", "--force", copy2)
    names.remove(copy2)
    bad = tampered(out, meta_set(tags={"k": "v\x1b]0;pwned\x07"}))
    r = ctd.ctl("restore", str(bad), "--name", ctd.unique("adm"))
    assert r.code != 0 and "backup header, description or tags" in r.err and "U+001B" in r.err


@pytest.fixture
def net(ctd: Daemon) -> Iterator[dict]:
    with own_network(ctd, "ta") as network:
        yield network


def test_rename_moves_storage_snapshots_and_state_and_the_container_runs(ctd: Daemon, names: list[str],
                                                                        net: dict) -> None:
    old = make(ctd, names, "--net", net["name"], "--tag", "customer=acme", start=True)
    assert ctd.sh(old, "echo kept > /root/mark").code == 0
    nic_before = ctd.instance(old)["nics"][0]
    r = ctd.ctl("rename", old, "x" + old)
    assert r.code != 0 and "stop it first" in r.err
    ctd.ok("stop", old)
    ctd.ok("snapshot", old, "before")
    taken = make(ctd, names)
    for new, status, words in ((taken, 409, "already exists"), ("Bad_Name", 400, "invalid new name"),
                               ("123", 400, "invalid new name"), (old, 400, "already has that name")):
        assert words in refused(ctd, status, "POST", f"/1.0/instances/{old}/rename", {"name": new})
    assert ctd.instance(old)["name"] == old and ctd.rootfs(old).is_dir()
    new = ctd.unique("ren")
    out = ctd.ok("rename", old, new)
    names[names.index(old)] = new
    assert f"Renamed {old} to {new}" in out and f"hostname stays '{old}'" in out
    assert refused(ctd, 404, "GET", f"/1.0/instances/{old}")
    assert not (ctd.state_dir / "storage" / "instances" / old).exists() and ctd.rootfs(new).is_dir()
    view = ctd.instance(new)
    assert view["hostname"] == old and view["tags"] == {"customer": "acme"}
    assert view["nics"][0]["mac"] == nic_before["mac"] and view["nics"][0]["addresses"] == nic_before["addresses"]
    assert "before" in ctd.ok("snapshot-list", new)
    ctd.ok("start", new)
    assert ctd.sh(new, "cat /root/mark").out.strip() == "kept"
    assert ctd.sh(new, f"ping -c1 -W2 {net['gateway']}").code == 0
    assert ctd.instance(new)["nics"][0]["host_name"] == nic_before["host_name"]
    ctd.ok("stop", new)
    ctd.ok("rollback", new, "before")
    ctd.ok("start", new)
    assert ctd.sh(new, "cat /root/mark").out.strip() == "kept"


def test_flags_survive_a_restart_and_a_rename_cut_by_a_crash_completes(fresh_ctd: Daemon) -> None:
    import os
    d = fresh_ctd
    d.ok("create", "keep", "--template", "busybox")
    d.ok("set", "keep", "--disabled", "yes", "--reason", "unpaid", "--protected", "yes",
         "--description", "a customer", "--tag", "plan=s")
    d.ok("snapshot", "keep", "s1")
    d.stop()
    os.environ["CTD_FAULT"] = "rename.after_db"
    try:
        d.start()
    finally:
        os.environ.pop("CTD_FAULT", None)
    with pytest.raises(ApiError):
        d.client.request("POST", "/1.0/instances/keep/rename", {"name": "kept"})
    assert d.proc is not None
    d.proc.wait(30)
    assert (d.state_dir / "storage" / "instances" / "keep").is_dir()   # the crash came before the move
    d.start()
    view = d.instance("kept")
    assert view["disabled"] and view["disabled_reason"] == "unpaid" and view["protected"]
    assert view["description"] == "a customer" and view["tags"] == {"plan": "s"}
    assert not (d.state_dir / "storage" / "instances" / "keep").exists() and d.rootfs("kept").is_dir()
    assert "s1" in d.ok("snapshot-list", "kept")
    assert "renaming" not in json.dumps(view)
    d.ok("set", "kept", "--disabled", "no", "--protected", "no")
    d.ok("start", "kept")
    d.ok("destroy", "--force", "kept")


def test_rename_of_a_vm_moves_its_disk_and_snapshots_and_it_starts(ctd: Daemon, names: list[str]) -> None:
    vm = ctd.client.get("/1.0")["drivers"]["vm"]
    if not vm.get("usable"):
        pytest.skip(f"VMs are not usable here: {vm.get('reason')}")
    old, new = ctd.unique("vmo"), ctd.unique("vmn")
    ctd.ok("create", old, "--type", "vm", "--disk", "64M", "--ram", "128M", "--cpus", "1")
    names.append(old)
    ctd.ok("snapshot", old, "s1")
    ctd.ok("rename", old, new)
    names[names.index(old)] = new
    base = ctd.state_dir / "storage" / "instances"
    assert (base / new / "disk.raw").is_file() and not (base / old).exists()
    assert "s1" in ctd.ok("snapshot-list", new)
    ctd.ok("start", new)
    assert ctd.instance(new)["state"] == "running"
    r = ctd.ctl("rename", new, old)
    assert r.code != 0 and "stop it first" in r.err
    ctd.ok("stop", "--kill", new)
