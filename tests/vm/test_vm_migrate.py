"""`ctctl migrate VM --to NODE` on real parts: the two ctd nodes and etcd member of
tests/host/test_cluster_migrate.py, the smallest guest the VM tests boot (busybox, 64M disk,
256M RAM, under TCG here).

A stopped VM moves with its disks (a data disk with bytes written from the host, checked on
the target), its settings, id, NIC with its address and MAC; it boots on the target. A running
one moves live: the same guest runs on (what it holds only in memory is there, its uptime goes
on), downtime reported. A target that refuses (its pool too full for the disks' data), or whose
ctd is killed mid-way, leaves the VM where it was (running, if it ran), and nothing on the
target."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from ctctl.client import ApiError
from tests.host.test_cluster import listed, wait_for
from tests.host.test_cluster_migrate import Pair, address, nothing_left_on, pair, staged
from tests.vm.test_vm_config import console_says

pytestmark = pytest.mark.slow
__all__ = ["pair"]   # the module's fixture, used here
MARK = b"migrated data disk \x00\x01 end"


def test_a_stopped_vm_migrates_with_its_disks_and_boots_there(pair: Pair) -> None:
    a, b = pair.a, pair.b
    ip, name = address(), "vmig-stopped"
    a.ok("create", name, "--type", "vm", "--template", "busybox", "--disk", "64M", "--ram", "256M",
         "--ipadd", ip, "--tag", "role=moved", timeout=120)
    try:
        a.ok("disk", "add", name, "--size", "64M", "--name", "data1")
        data = a.state_dir / "storage/instances" / name / "data-data1.raw"
        with data.open("r+b") as fh:
            fh.seek(40 << 20)
            fh.write(MARK)
        before = a.instance(name)
        t0 = time.monotonic()
        out = b.ok("migrate", name, "--to", "node-b")   # asked of b: forwarded to a, its owner
        took = time.monotonic() - t0
        assert f"Migrated {name} to node-b" in out and "downtime" not in out, out
        view = b.instance(name)
        assert view["state"] == "stopped" and view["id"] == before["id"] and view["type"] == "vm"
        assert view["created_at"] == before["created_at"]   # so the same uuid and seed instance-id
        assert view["limits"] == before["limits"] and view["tags"] == {"role": "moved"}
        assert [n["mac"] for n in view["nics"]] == [n["mac"] for n in before["nics"]]
        assert [n["addresses"] for n in view["nics"]] == [[ip]]
        assert view["vm"]["data_disks"] == before["vm"]["data_disks"] == [{"name": "data1", "size": 64 << 20}]
        assert view["vm"]["disk_size"] == before["vm"]["disk_size"]
        moved = b.state_dir / "storage/instances" / name
        with (moved / "data-data1.raw").open("rb") as fh:
            fh.seek(40 << 20)
            assert fh.read(len(MARK)) == MARK
        assert (moved / "disk.raw").stat().st_size == 64 << 20
        rows = wait_for("the list shows node-b", lambda: listed(a).get(name, {}).get("node") == "node-b" and True)
        assert rows
        nothing_left_on(a, "node-a", name)
        print(f"stopped VM migration: {took:.2f} s: {out.strip()}")
        b.ok("start", name)
        console_says(b, name, "echo B''OOTED-$(hostname)", f"BOOTED-{name}")
    finally:
        for d in (a, b):
            d.ctl("destroy", "--force", name)


def uptime(d, name: str) -> float:  # type: ignore[no-untyped-def]
    out = console_says(d, name, "echo U''P=$(cut -d' ' -f1 /proc/uptime)=", "UP=")
    return float(out.rsplit("UP=", 1)[1].split("=", 1)[0])


def test_a_running_vm_migrates_live_and_runs_on(pair: Pair) -> None:
    a, b = pair.a, pair.b
    ip, name = address(), "vmig-live"
    a.ok("create", name, "--type", "vm", "--template", "busybox", "--disk", "64M", "--ram", "256M",
         "--ipadd", ip, timeout=120)
    try:
        a.ok("start", name)
        # in the guest's memory only (tmpfs), and on its disk
        console_says(a, name, "echo in-memory > /tmp/mem.txt; echo on-disk > /root/disk.txt; sync; echo W''ROTE",
                     "WROTE")
        before, up = a.instance(name), uptime(a, name)
        t0 = time.monotonic()
        out = a.ok("migrate", name, "--to", "node-b", timeout=600)
        took = time.monotonic() - t0
        assert f"Migrated {name} to node-b live" in out and "downtime" in out, out
        downtime = float(out.rsplit("downtime", 1)[1].split()[0])
        assert 0 < downtime < 30, out
        view = b.instance(name)
        assert view["state"] == "running" and view["id"] == before["id"]
        assert [n["mac"] for n in view["nics"]] == [n["mac"] for n in before["nics"]]
        assert console_says(b, name, "cat /tmp/mem.txt /root/disk.txt", "on-disk").count("in-memory") >= 1
        assert uptime(b, name) > up   # the same guest: no reboot
        nothing_left_on(a, "node-a", name)
        assert not list((a.state_dir / "run").glob("migrate/*"))
        print(f"live VM migration: {took:.2f} s in all: {out.strip()}")
    finally:
        for d in (a, b):
            d.ctl("destroy", "--force", name)


def test_a_live_migration_whose_target_dies_leaves_the_vm_running(pair: Pair) -> None:
    """b's ctd is killed (kill -9) while the disks are copied: the source's guest runs on, b
    back has nothing of it (its waiting QEMU ended at its start)."""
    a, b = pair.a, pair.b
    name = "vmig-kill"
    a.ok("create", name, "--type", "vm", "--template", "busybox", "--disk", "64M", "--ram", "256M",
         "--net", "none", timeout=120)
    try:
        a.ok("start", name)
        up = uptime(a, name)
        op_id = a.client.request("POST", f"/1.0/instances/{name}/migrate", {"to": "node-b"})["operation"]["id"]

        def copying() -> bool:
            op = a.client.get(f"/1.0/operations/{op_id}")["operation"]
            assert op["status"] == "running", op
            return str(op.get("progress") or "").startswith(("disks:", "memory:"))

        wait_for("the copy under way", copying, timeout=120)
        b.kill9()
        try:
            op = a.client.get(f"/1.0/operations/{op_id}/wait", timeout=300)["operation"]
            assert op["status"] == "failure", op
            assert a.instance(name)["state"] == "running" and listed(a)[name]["node"] == "node-a"
            assert uptime(a, name) > up
        finally:
            b.start()
        nothing_left_on(b, "node-b", name)
        assert not list((a.state_dir / "run").glob("migrate/*"))
    finally:
        a.ctl("destroy", "--force", name)


def test_a_vm_the_target_refuses_stays_where_it_was(pair: Pair) -> None:
    """b's pool cannot take the disks' data: refused before a byte is sent; the VM is on a as
    before, b has nothing of it."""
    a, b = pair.a, pair.b
    name = "vmig-refused"
    # only a member node's certificate may send one (not even the host's admin on the socket)
    for method, path in (("POST", "/1.0/cluster/vm-migrations"), ("GET", "/1.0/cluster/vm-migrations/"
                                                                          + "0" * 32 + "/tunnel?to=nbd")):
        with pytest.raises(ApiError) as refused:
            b.client.request(method, path, {"header": {}, "id": 4242} if method == "POST" else None)
        assert refused.value.status == 403 and "only another node" in refused.value.message
    a.ok("create", name, "--type", "vm", "--template", "busybox", "--disk", "64M", "--ram", "256M",
         "--net", "none", timeout=120)
    storage = b.state_dir / "storage"
    filler = storage / "filler"
    st = os.statvfs(storage)
    try:
        fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
        os.posix_fallocate(fd, 0, max(1, st.f_bavail * st.f_frsize - (32 << 20)))
        os.close(fd)
        subprocess.run(["btrfs", "filesystem", "sync", str(storage)], capture_output=True)
        with pytest.raises(ApiError) as failed:
            a.client.run("POST", f"/1.0/instances/{name}/migrate", {"to": "node-b"})
        assert "node node-b refused the migration" in failed.value.message and "free space" in failed.value.message
        assert a.instance(name)["state"] == "stopped" and listed(b)[name]["node"] == "node-a"
        assert (a.state_dir / "storage/instances" / name / "disk.raw").is_file()
        nothing_left_on(b, "node-b", name)
        assert not staged(a)
    finally:
        filler.unlink(missing_ok=True)
        subprocess.run(["btrfs", "filesystem", "sync", str(storage)], capture_output=True)
        a.ctl("destroy", "--force", name)
