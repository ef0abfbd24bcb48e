"""Every bad input gets a 4xx from the API, one line from ctctl, and leaves nothing behind."""

from __future__ import annotations

import json

import pytest

from ctctl.client import ApiError


def snapshot(ctd) -> tuple:
    names = sorted(i["name"] for i in ctd.client.get("/1.0/instances")["instances"])
    dirs = sorted(p.name for p in (ctd.state_dir / "storage/instances").iterdir())
    return names, dirs


def one_line_error(r) -> str:
    assert r.code != 0
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctctl: "), r.err
    return lines[0]


@pytest.mark.parametrize("bad", ["Bad", "-x", "123", "../x", "a/b", "a" * 64, "a_b", "a b", ""])
def test_invalid_names_are_refused(ctd, bad):
    before = snapshot(ctd)
    r = ctd.ctl("create", "--template", "busybox", "--", bad)
    assert "invalid instance name" in one_line_error(r)
    assert snapshot(ctd) == before


def test_api_gives_400_for_invalid_names_and_bodies(ctd):
    for body in ({"name": "../x", "template": "busybox"}, {"name": "ok", "template": "busybox", "limits": {"ram": "1Q"}},
                 {"name": "ok"}, {"name": "ok", "template": "busybox", "bogus": 1}, [], "x",
                 {"name": "ok", "template": "busybox", "id": "7"}, {"name": "ok", "template": "busybox", "privileged": "yes"},
                 {"name": "ok", "template": "busybox", "limits": {"ram": "99999999999T"}},
                 {"name": "ok", "template": "busybox", "limits": {"numproc": "99999999999"}},
                 {"name": "ok", "template": "busybox", "limits": {"ram": [[[[]]]]}},
                 {"name": "ok", "template": "busybox", "x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}):
        with pytest.raises(ApiError) as err:
            ctd.client.request("POST", "/1.0/instances", body)
        assert err.value.status == 400, body
    import http.client
    import socket
    conn = http.client.HTTPConnection("localhost")
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.connect(str(ctd.socket))
    conn.request("POST", "/1.0/instances", "{not json", {"Content-Type": "application/json"})
    resp = conn.getresponse()
    body = json.loads(resp.read())
    assert resp.status == 400 and body["code"] == "invalid" and "JSON" in body["error"]
    deep = '{"name": "ok", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"  # RecursionError: was a 500
    conn.request("POST", "/1.0/instances", deep, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    body = json.loads(resp.read())
    assert resp.status == 400 and "32 levels" in body["error"], body
    r = ctd.ctl("create", "big", "--template", "busybox", "--ram", "99999999999T")
    assert "at most 8388607T" in one_line_error(r)


def test_unknown_template(ctd):
    before = snapshot(ctd)
    line = one_line_error(ctd.ctl("create", "x1", "--template", "nosuch"))
    assert "nosuch" in line
    assert snapshot(ctd) == before


def test_duplicate_name_and_id(ctd, make_container):
    name = make_container(start=False)
    before = snapshot(ctd)
    assert "already exists" in one_line_error(ctd.ctl("create", name, "--template", "busybox"))
    taken = ctd.instance(name)["id"]
    assert "taken" in one_line_error(ctd.ctl("create", "other", "--template", "busybox", "--id", str(taken)))
    assert snapshot(ctd) == before


@pytest.mark.parametrize("option,value", [("--ram", "1Q"), ("--ram", "-5M"), ("--cpus", "64"), ("--cpus", "0"),
                                          ("--numproc", "abc"), ("--numproc", "30:20"), ("--ram", "1K")])
def test_limits_that_do_not_parse(ctd, option, value):
    before = snapshot(ctd)
    one_line_error(ctd.ctl("create", "lim", "--template", "busybox", option, value))
    assert snapshot(ctd) == before


def test_exec_into_a_stopped_instance(ctd, make_container):
    name = make_container(start=False)
    assert "not running" in one_line_error(ctd.ctl("exec", name, "--", "true"))
    with pytest.raises(ApiError) as err:
        ctd.client.get(f"/1.0/instances/{name}/exec", cmd="true")
    assert err.value.status == 409


def test_destroy_of_a_running_instance_needs_force(ctd, make_container):
    name = make_container()
    assert "--force" in one_line_error(ctd.ctl("destroy", name))
    assert ctd.instance(name)["state"] == "running"
    ctd.ok("destroy", "--force", name)
    assert not ctd.rootfs(name).exists()


def test_unknown_instance_and_path(ctd):
    assert "no instance" in one_line_error(ctd.ctl("start", "nosuch"))
    with pytest.raises(ApiError) as err:
        ctd.client.get("/1.0/nothing-here")
    assert err.value.status == 404
    with pytest.raises(ApiError) as err:
        ctd.client.request("PUT", "/1.0/instances/x/state", {"action": "explode"})
    assert err.value.status in (400, 404)


def test_failed_start_leaves_nothing_behind(ctd, make_container):
    """A root whose init is missing, and one whose init can't be executed."""
    name = make_container(start=False)
    init = ctd.rootfs(name) / "sbin/init"
    init.unlink()

    def groups() -> list[list[str]]:  # but standby inits' groups, which come and go
        return [sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("standby-"))
                for d in ctd.cgroup_dirs()]

    groups_before = groups()
    assert "no /sbin/init" in one_line_error(ctd.ctl("start", name))
    init.write_text("not a program")
    init.chmod(0o644)
    line = one_line_error(ctd.ctl("start", name))
    assert "denied" in line.lower() or "exec" in line.lower()
    assert ctd.instance(name)["state"] == "stopped"
    groups_after = groups()
    assert groups_after == groups_before
    assert f"ct-{name}" not in str(groups_after)


def test_usage_errors_are_one_line_too(ctd):
    for args in (["create"], ["create", "x", "--template"], ["start"], ["exec", "x"], ["frobnicate"],
                 ["stop", "x", "--timeout", "soon"]):
        r = ctd.ctl(*args)
        assert r.code == 2
        one_line_error(r)


def test_openapi_schema_is_served(ctd):
    schema = ctd.client.get("/1.0/openapi.json")
    assert schema["openapi"].startswith("3.")
    assert "/1.0/instances" in schema["paths"]
