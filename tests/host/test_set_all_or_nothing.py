"""`ctctl set` is all or nothing: every option is checked before anything changes, and a
failure half-way (the kernel refusing a limit) takes back what was already applied."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers.net import own_network


@pytest.fixture
def net(ctd):
    with own_network(ctd, "ts") as network:
        yield network


def beancounter(ctd, name, resource):
    rows = ctd.client.get(f"/1.0/instances/{name}/beancounters")["beancounters"]
    return next(r for r in rows if r["name"] == resource)


def shaping(ctd, name) -> str:
    host_end = ctd.instance(name)["nics"][0]["host_name"]
    return subprocess.run(["tc", "qdisc", "show", "dev", host_end], capture_output=True, text=True).stdout


def snapshot(ctd, name) -> dict:
    """Everything a set may change, as a user sees it."""
    inst = ctd.instance(name)
    return {"limits": inst["limits"], "disk_limit": inst["disk"]["limit"], "nics": [
        (n["addresses"], n["rate"]) for n in inst["nics"]], "hostname": inst["hostname"],
        "inside": ctd.sh(name, "ip -4 -o addr show dev eth0; cat /etc/hostname").out,
        "numproc": beancounter(ctd, name, "numproc")["limit"], "tbf": "tbf" in shaping(ctd, name)}


def test_many_options_at_once_are_all_applied(ctd, make_container, net):
    name = make_container(net=net["name"])
    out = ctd.ok("set", name, "--numproc", "64", "--cpulimit", "50", "--rate", "10mbit", "--diskspace", "3G")
    inst = ctd.instance(name)
    assert inst["limits"]["numproc"] == 64 and inst["limits"]["cpulimit"] == 50, (out, inst["limits"])
    assert inst["disk"]["limit"] == 3 << 30
    assert inst["nics"][0]["rate"] == 10_000_000 and "tbf" in shaping(ctd, name)
    assert beancounter(ctd, name, "numproc")["limit"] == 64
    cpu = Path(ctd.group(name).dirs()["cpu"])
    if (cpu / "cpu.max").exists():   # cgroup v2
        quota, period = map(int, (cpu / "cpu.max").read_text().split())
    else:
        quota, period = (int((cpu / f"cpu.cfs_{k}_us").read_text()) for k in ("quota", "period"))
    assert quota * 100 // period == 50


def test_a_limit_the_kernel_refuses_takes_back_what_was_applied(ctd, make_container, net):
    """--ram below what the container holds (tmpfs pages, no swap) is refused by the kernel
    after the disk limit, the address and the rate were applied: those go back too."""
    name = make_container(net=net["name"], ram="256M")
    ctd.sh(name, "probe alloc 0; mkdir -p /dev/shm/x; dd if=/dev/zero of=/dev/shm/x/f bs=1M count=40 2>/dev/null")
    before = snapshot(ctd, name)
    extra = ctd.instance(name)["nics"][0]["addresses"][0].rsplit(".", 1)[0] + ".222"
    r = ctd.ctl("set", name, "--diskspace", "3G", "--ipadd", extra, "--rate", "10mbit", "--numproc", "64",
                "--ram", "8M", "--hostname", "renamed", "--nameserver", "192.0.2.53")
    assert r.code == 1 and "refused" in r.err and "nothing was changed" in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert snapshot(ctd, name) == before
    assert "192.0.2.53" not in ctd.sh(name, "cat /etc/resolv.conf").out
    # the address is free again: another instance may take it
    ctd.ok("set", name, "--ipadd", extra)
    assert extra in ctd.instance(name)["nics"][0]["addresses"]


@pytest.mark.parametrize("bad,expect", [
    (["--ipdel", "10.255.255.254"], "is not an address of"),
    (["--diskspace", "1M"], "the disk limit must be at least"),
    (["--userpasswd", "nosuchuser:secret"], "no user 'nosuchuser'"),
])
def test_a_bad_option_is_refused_before_anything_changes(ctd, make_container, net, bad, expect):
    name = make_container(net=net["name"])
    if "--diskspace" in bad:  # (an opted-in simple-quota pool charges a fresh root far less than 1M)
        ctd.sh(name, "dd if=/dev/urandom of=/root/blob bs=1M count=3 2>/dev/null; sync")
    before = snapshot(ctd, name)
    r = ctd.ctl("set", name, "--rate", "10mbit", "--numproc", "64", "--hostname", "renamed", *bad)
    assert r.code == 1 and expect in r.err, r.err
    assert snapshot(ctd, name) == before
