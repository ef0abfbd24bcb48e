"""A VM's data disks (ctd/instance/vm/datadisks.py): `ctctl disk add` hot-plugs one into a
running busybox VM (the guest sees vdb with its size), `disk remove` takes it back live (the
guest lets it go, the file is deleted), a stopped VM gets one at its next start, snapshots and
clones carry them; bad input (a container, a taken or bad name, a small size) changes nothing."""

from __future__ import annotations

import re

import pytest

from tests.vm.test_vm_config import console_says

pytestmark = pytest.mark.slow
MiB = 1 << 20


def sectors(ctd, name: str, dev: str) -> int | None:  # type: ignore[no-untyped-def]
    """The guest's size of /dev/DEV in 512-byte sectors (None: the guest has no such disk)."""
    out = console_says(ctd, name, f"echo S''Z=$(cat /sys/block/{dev}/size 2>/dev/null || echo none)Z", "SZ=")
    found = re.findall(r"SZ=(\d+|none)Z", out)
    assert found, out[-400:]
    return None if found[-1] == "none" else int(found[-1])


def test_data_disks_hot_plug_and_go_with_snapshots_and_clones(ctd):
    name, clone, container = ctd.unique("dd"), ctd.unique("ddc"), ctd.unique("ddx")
    vmdir = ctd.state_dir / "storage/instances" / name
    try:
        ctd.ok("create", name, "--type", "vm", "--template", "busybox", "--disk", "64M", "--ram", "256M",
               "--net", "none", timeout=120)
        ctd.ok("create", container, "--template", "busybox")
        r = ctd.ctl("disk", "add", container, "--size", "64M")
        assert r.code != 0 and "container" in r.err, r.err
        r = ctd.ctl("disk", "add", name, "--size", "1M")
        assert r.code != 0 and "at least 64M" in r.err, r.err
        r = ctd.ctl("disk", "add", name, "--size", "64M", "--name", "Bad/1")
        assert r.code != 0 and "invalid disk name" in r.err, r.err
        assert ctd.instance(name)["vm"]["data_disks"] == [] and not list(vmdir.glob("data-*"))

        ctd.ok("start", name)
        assert sectors(ctd, name, "vda") and sectors(ctd, name, "vdb") is None
        out = ctd.ok("disk", "add", name, "--size", "96M")
        assert "data disk data1 (96.0M) added" in out and "Note" not in out, out
        assert ctd.instance(name)["vm"]["data_disks"] == [{"name": "data1", "size": 96 * MiB}]
        assert "data1 96.0M" in ctd.ok("status", name)
        assert (vmdir / "data-data1.raw").stat().st_size == 96 * MiB
        assert sectors(ctd, name, "vdb") == 96 * MiB // 512          # hot-plugged: the guest sees it
        r = ctd.ctl("disk", "add", name, "--size", "64M", "--name", "data1")
        assert r.code != 0 and "already" in r.err, r.err
        ctd.ok("disk", "remove", name, "data1")                         # live: the guest gives it back
        assert sectors(ctd, name, "vdb") is None and not (vmdir / "data-data1.raw").exists()
        assert ctd.instance(name)["vm"]["data_disks"] == []

        # stopped: at the next start; a snapshot and a clone take it with the root disk
        ctd.ok("stop", "--timeout", "1", name)
        ctd.ok("disk", "add", name, "--size", "64M", "--name", "logs")
        ctd.ok("snapshot", name, "s1")
        assert (vmdir / "snapshots/s1/data-logs.raw").is_file()
        ctd.ok("clone", name, clone)
        assert ctd.instance(clone)["vm"]["data_disks"] == [{"name": "logs", "size": 64 * MiB}]
        assert (ctd.state_dir / "storage/instances" / clone / "data-logs.raw").stat().st_size == 64 * MiB
        ctd.ok("start", name)
        assert sectors(ctd, name, "vdb") == 64 * MiB // 512
        r = ctd.ctl("disk", "remove", name, "nosuch")
        assert r.code != 0 and "no data disk" in r.err and "logs" in r.err, r.err
    finally:
        for n in (name, clone, container):
            ctd.ctl("destroy", "--force", n)
