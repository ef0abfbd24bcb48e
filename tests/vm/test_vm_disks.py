"""A VM's root disk grown with `ctctl set --disk` (stopped and live through QMP), what is refused
(shrinking, beyond the pool, a container), the Windows profile's defaults, and a Debian guest
whose root filesystem follows the disk (ctd's applier) and sees a live grow at once."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.vm.test_vm_lifecycle import iso, qemu_pids

pytestmark = pytest.mark.slow
MiB, GiB = 1 << 20, 1 << 30


def test_set_disk_grows_a_stopped_and_a_running_vm_and_refuses_shrink_and_beyond_the_pool(ctd):
    name = ctd.unique("dsk")
    disk = ctd.state_dir / "storage/instances" / name / "disk.raw"
    container = ctd.unique("dskc")
    try:
        ctd.ok("create", name, "--type", "vm", "--disk", "64M", "--ram", "128M")
        assert disk.stat().st_size == 64 * MiB
        # shrinking: refused, nothing changed
        r = ctd.ctl("set", name, "--disk", "32M")
        assert r.code != 0 and "never shrinks" in r.err and "64M" in r.err, r.err
        r = ctd.ctl("set", name, "--disk", "100000T")
        assert r.code != 0 and "does not fit this pool" in r.err, r.err
        r = ctd.ctl("set", name, "--disk", "lots")
        assert r.code != 0 and "invalid disk size" in r.err, r.err
        assert disk.stat().st_size == 64 * MiB and ctd.instance(name)["vm"]["disk_size"] == 64 * MiB
        # stopped: the file grows (sparse); an installed guest grows its own partition
        out = ctd.ok("set", name, "--disk", "128M")
        assert "disk 128M" in out and "growpart" in out, out
        assert disk.stat().st_size == 128 * MiB and ctd.instance(name)["vm"]["disk_size"] == 128 * MiB
        assert os.stat(disk).st_blocks * 512 < 8 * MiB   # still sparse
        # running: QEMU grows it and the virtual disk the guest sees
        ctd.ok("start", "--paused", name)
        out = ctd.ok("set", name, "--disk", "192M")
        assert "disk 192M" in out, out
        hw = ctd.client.get(f"/1.0/instances/{name}/hardware")["hardware"]
        root = next(b for b in hw["block"] if b.get("device") == "drive-disk0")
        assert root["inserted"]["image"]["virtual-size"] == 192 * MiB
        assert disk.stat().st_size == 192 * MiB and ctd.instance(name)["vm"]["disk_size"] == 192 * MiB
        r = ctd.ctl("set", name, "--disk", "128M")
        assert r.code != 0 and "never shrinks" in r.err
        # a container's space is its diskspace limit
        ctd.ok("create", container, "--template", "busybox")
        r = ctd.ctl("set", container, "--disk", "1G")
        assert r.code != 0 and "disk is a VM option" in r.err, r.err
    finally:
        ctd.ctl("destroy", "--force", name)
        ctd.ctl("destroy", "--force", container)


def test_windows_profile_defaults_to_two_vcpus_4g_and_64g(ctd, tmp_path):
    name = ctd.unique("wdf")
    try:
        ctd.ok("create", name, "--type", "vm", "--profile", "windows", "--iso", str(iso(tmp_path / "w.iso", "WIN")))
        inst = ctd.instance(name)
        assert inst["limits"]["cpus"] == min(2, os.cpu_count() or 1)
        assert inst["limits"]["ram"] == "4G"
        assert inst["vm"]["disk_size"] == 64 * GiB
        assert (ctd.state_dir / "storage/instances" / name / "disk.raw").stat().st_size == 64 * GiB
    finally:
        ctd.ctl("destroy", "--force", name)


@pytest.mark.timeout(1500)   # a template build (1-3 min) and a Debian boot under TCG
def test_debian_vm_root_filesystem_follows_set_disk(ctd, debian, net, ssh_key):
    """df inside after a grow while stopped (ctd's applier at boot), lsblk inside after a live grow."""
    key = ssh_key
    name = ctd.unique("grow")
    before = qemu_pids()
    try:
        ctd.ok("create", name, "--type", "vm", "--template", "debian-12", "--net", net, "--ram", "768M",
               "--disk", "1G", "--ssh-key", f"{key}.pub", timeout=300)
        out = ctd.ok("set", name, "--disk", "1536M")
        assert "applier grows the root filesystem when the VM starts" in out, out
        ctd.ok("start", name)
        address = ctd.instance(name)["nics"][0]["addresses"][0]

        def guest(command: str, wait: float = 0) -> str:
            deadline = time.monotonic() + wait
            while True:
                try:
                    r = subprocess.run(["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o",
                                        "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o",
                                        "ConnectTimeout=10", f"root@{address}", command],
                                       capture_output=True, text=True, timeout=90)
                    if r.returncode == 0 or time.monotonic() > deadline:
                        return r.stdout
                except subprocess.TimeoutExpired:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(3)

        size = guest("df -B1 --output=size / | tail -n1", wait=420).strip()
        assert size, "no ssh answer from the VM"
        assert int(size) > 1400 * MiB, f"root filesystem is {int(size) // MiB} MiB after the grow to 1536M"
        # live: the guest's kernel sees the larger disk at once; the filesystem at its next boot
        out = ctd.ok("set", name, "--disk", "2G", timeout=60)
        assert "guest sees it now" in out and "next boot" in out, out
        seen = ""
        for _ in range(20):
            seen = guest("lsblk -bdno SIZE /dev/vda").strip()
            if seen == str(2 * GiB):
                break
            time.sleep(1)
        assert seen == str(2 * GiB), f"the guest sees /dev/vda as {seen} bytes"
    finally:
        ctd.ctl("destroy", "--force", name)
    assert not (qemu_pids() - before)
