"""A VM's settings through ctd: the cloud-init seed it carries, `set` on a running VM (live
vCPUs, RAM that waits for the guest or the next start), and clones.

The VMs here have no OS (blank disk) or a busybox disk: QEMU runs paused or idles in the
firmware, so nothing waits for a guest to boot."""

from __future__ import annotations

import hashlib
import json
import subprocess
import re
import threading
import time
from pathlib import Path

import pytest
import yaml

from ctd.instance.vm.rootdisk import MOUNT_DIR
from tests.vm.test_vm_lifecycle import qemu_pids, swtpm_pids, iso

pytestmark = pytest.mark.slow

QEMU_OVERHEAD = 256 << 20   # ctd's cgroup allowance for QEMU itself (vm/driver.py)


def iso_file(image: Path, name: str) -> str:
    """One file of an ISO, read with isoinfo (genisoimage): no mount needed."""
    r = subprocess.run(["isoinfo", "-i", str(image), "-R", "-x", f"/{name}"], capture_output=True, text=True,
                       check=True)
    return r.stdout


def iso_label(image: Path) -> str:
    out = subprocess.run(["isoinfo", "-d", "-i", str(image)], capture_output=True, text=True, check=True).stdout
    return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Volume id:"))


def ext4_file(image: Path, path: str) -> str:
    """A file of an ext4 disk image, read with debugfs (no mount, no loop device)."""
    return subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, text=True,
                          check=True).stdout


def memory_limit(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if ":memory:" in x)
    return int(Path("/sys/fs/cgroup/memory", line.split(":", 2)[2].lstrip("/"), "memory.limit_in_bytes").read_text())


def test_seed_carries_the_settings_set_follows_and_vcpus_and_ram_change_live(ctd, net, ssh_key, tmp_path):
    name = ctd.unique("seed")
    vmdir = ctd.state_dir / "storage/instances" / name
    seed = vmdir / "seed.iso"
    before = qemu_pids()
    try:
        ctd.ok("create", name, "--type", "vm", "--disk", "64M", "--ram", "256M", "--cpus", "1", "--net", net,
               "--ssh-key", f"{ssh_key}.pub", "--userpasswd", "root:s3cret", "--nameserver", "192.0.2.53")
        inst = ctd.instance(name)
        nic = inst["nics"][0]
        address = nic["addresses"][0]
        # the seed: a cidata ISO with what a container of these settings would get
        assert iso_label(seed) == "cidata"
        meta = yaml.safe_load(iso_file(seed, "meta-data"))
        user = yaml.safe_load(iso_file(seed, "user-data"))
        netcfg = yaml.safe_load(iso_file(seed, "network-config"))
        assert meta["local-hostname"] == name and meta["instance-id"]
        assert user["hostname"] == name
        root = user["users"][0]
        assert root["name"] == "root" and root["ssh_authorized_keys"] == [Path(f"{ssh_key}.pub").read_text().strip()]
        assert root["hashed_passwd"].startswith("$6$") and "s3cret" not in iso_file(seed, "user-data")
        eth0 = netcfg["ethernets"]["eth0"]
        assert eth0["match"]["macaddress"] == nic["mac"]
        assert any(a.split("/")[0] == address for a in eth0["addresses"])
        assert eth0["nameservers"]["addresses"] == ["192.0.2.53"]

        ctd.ok("start", "--paused", name)
        hw = ctd.client.get(f"/1.0/instances/{name}/hardware")["hardware"]
        cds = [b for b in hw["block"] if (b.get("inserted") or {}).get("file") == str(seed)]
        assert cds and cds[0]["removable"] and cds[0]["inserted"]["ro"], "no cidata CD-ROM in QEMU"
        assert hw["vcpus"] == 1 and hw["ram"] == 256 << 20 and hw["balloon"]
        pid = ctd.instance(name)["pid"]
        assert memory_limit(pid) == (256 << 20) + QEMU_OVERHEAD

        # set on the running VM: hostname and address go into the seed now, into the guest at next start
        new_address = address.rsplit(".", 1)[0] + ".77"
        out = ctd.ok("set", name, "--hostname", "renamed", "--ipadd", new_address)
        assert "next start" in out
        meta2 = yaml.safe_load(iso_file(seed, "meta-data"))
        assert meta2["local-hostname"] == "renamed" and meta2["instance-id"] != meta["instance-id"]
        addresses = yaml.safe_load(iso_file(seed, "network-config"))["ethernets"]["eth0"]["addresses"]
        assert any(a.split("/")[0] == new_address for a in addresses)

        # vCPUs: hot-added at once; whether this guest (none: a blank disk) onlines them ctd cannot
        # see, and says so instead of a plain success
        out = ctd.ok("set", name, "--cpus", "2")
        assert "Note: cpus 2: 1 vCPU(s) added to the VM; the guest must bring them online itself" in out, out
        assert ctd.client.get(f"/1.0/instances/{name}/hardware")["hardware"]["vcpus"] == 2
        # RAM past the boot size: at next start, said so; the cgroup stays as it was
        out = ctd.ok("set", name, "--ram", "512M")
        assert "Note: ram:" in out and "next start" in out
        assert memory_limit(pid) == (256 << 20) + QEMU_OVERHEAD
        # lower, but this guest has no balloon driver (no OS): it keeps its RAM, and so does the cgroup
        out = ctd.ok("set", name, "--ram", "128M", timeout=60)
        assert "Note: ram:" in out and "256 MiB" in out
        assert memory_limit(pid) == (256 << 20) + QEMU_OVERHEAD
        assert ctd.instance(name)["limits"]["ram"] in ("128M", 128 << 20)

        ctd.ok("stop", "--timeout", "1", name)
        ctd.ok("start", "--paused", name)   # the next start has what was set
        hw = ctd.client.get(f"/1.0/instances/{name}/hardware")["hardware"]
        assert hw["vcpus"] == 2 and hw["ram"] == 128 << 20
        assert memory_limit(ctd.instance(name)["pid"]) == (128 << 20) + QEMU_OVERHEAD
    finally:
        ctd.ctl("destroy", "--force", name)
    assert not vmdir.exists() and not (qemu_pids() - before)


class DiskWatch:
    """Samples, in a thread, whether a disk image is attached to a loop device or mounted (ctd's
    mount namespace is the host's) while a step runs: a host mount of it would show."""

    def __init__(self, image: Path, ctd_pid: int) -> None:
        self.image, self.mountinfo = str(image), Path(f"/proc/{ctd_pid}/mountinfo")
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            loops = subprocess.run(["losetup", "-j", self.image], capture_output=True, text=True).stdout
            mounts = [m for m in self.mountinfo.read_text().splitlines() if self.image.rsplit("/", 1)[0] in m]
            self.seen += [x for x in [loops.strip(), *mounts] if x]
            self._stop.wait(0.02)

    def __enter__(self) -> DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def digest(image: Path) -> str:
    return hashlib.sha256(image.read_bytes()).hexdigest()


def console_says(ctd, name: str, command: str, marker: str, timeout: float = 120) -> str:  # type: ignore[no-untyped-def]
    """The output of a shell command on the VM's serial console (busybox's root shell there),
    once it contains marker; the boot may still be running when the first tries go in."""
    deadline, out = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        out = ctd.ctl("console", name, input=f"\n{command}\n", timeout=60).out
        if marker in out:
            return out
        time.sleep(2)
    raise AssertionError(f"{marker!r} never on {name}'s console; last:\n{out[-800:]}")


def identity(ctd, name: str) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    """(machine-id, number of ssh host key files) inside the VM, read on its serial console."""
    out = console_says(ctd, name, 'echo "I""D=$(cat /etc/machine-id) KEYS=$(ls /etc/ssh 2>/dev/null | grep -c ssh_host_)"',
                       "ID=")
    found = re.search(r"ID=([0-9a-f]{32}) KEYS=(\d+)", out)
    assert found, out[-500:]
    return found.group(1), int(found.group(2))


def pings(address: str, timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(["busybox", "ping", "-c1", "-W1", address], capture_output=True).returncode == 0:
            return True
    return False


def test_a_booted_template_vm_gets_set_and_clone_settings_from_its_seed_never_a_host_mount(ctd, net):
    """After the first boot the disk is the guest's: set and clone rebuild the seed only, and the
    applier ctd put in the disk applies it at the next boot (the disk on the host stays as it was)."""
    src, dst = ctd.unique("vsrc"), ctd.unique("vdst")
    base = ctd.state_dir / "storage/instances"
    disk = base / src / "disk.raw"
    try:
        ctd.ok("create", src, "--type", "vm", "--template", "busybox", "--disk", "64M", "--ram", "256M",
               "--net", net, timeout=120)
        ctd.ok("start", src)
        # booted from the uncompressed kernel ctd extracted from Debian's bzImage (PVH entry)
        argv = Path(f"/proc/{ctd.instance(src)['pid']}/cmdline").read_bytes().split(b"\0")
        kernel = argv[argv.index(b"-kernel") + 1].decode()
        assert "/vm-kernels/vmlinux-" in kernel and Path(kernel).read_bytes()[:4] == b"\x7fELF"
        first = ctd.instance(src)["nics"][0]["addresses"][0]
        console_says(ctd, src, "echo HN=$(hostname)", f"HN={src}")   # the first boot applied the seed too
        assert pings(first), f"{src} does not answer at {first}"
        # what a booted guest holds that a clone must not share: its machine-id, its ssh host keys
        console_says(ctd, src, "mkdir -p /etc/ssh; echo key > /etc/ssh/ssh_host_ed25519_key; sync; echo MADE''KEY",
                     "MADEKEY")
        src_identity = identity(ctd, src)
        assert src_identity[1] == 1
        r = ctd.ctl("clone", src, dst)
        assert r.code == 1 and "running" in r.err   # a live disk is not consistent
        ctd.ok("stop", "--timeout", "1", src)

        before, mtime = digest(disk), disk.stat().st_mtime_ns
        moved = first.rsplit(".", 1)[0] + ".99"
        with DiskWatch(disk, ctd.proc.pid) as watch:
            out = ctd.ok("set", src, "--hostname", "renamed", "--ipadd", moved, "--ipdel", first)
            ctd.ok("clone", src, dst, timeout=120)
        assert not watch.seen, f"the VM's disk was attached on the host: {watch.seen}"
        assert digest(disk) == before and disk.stat().st_mtime_ns == mtime
        assert "Note: guest settings:" in out and "next boot" in out
        assert ext4_file(disk, "/etc/hostname").strip() == src and not (base / src / MOUNT_DIR).exists()
        # the seeds say who each one is now, for the applier (ctd/) and for cloud-init
        assert iso_file(base / src / "seed.iso", "ctd/hostname").strip() == "renamed"
        assert f"ip addr add {moved}/" in iso_file(base / src / "seed.iso", "ctd/network.sh")
        a, b = ctd.instance(src), ctd.instance(dst)
        assert b["type"] == "vm" and b["id"] != a["id"] and b["hostname"] == dst
        assert b["nics"][0]["mac"] != a["nics"][0]["mac"]
        assert b["nics"][0]["addresses"] != a["nics"][0]["addresses"]
        seeds = [yaml.safe_load(iso_file(base / n / "seed.iso", "meta-data")) for n in (src, dst)]
        assert seeds[1]["local-hostname"] == dst and seeds[1]["instance-id"] != seeds[0]["instance-id"]
        assert iso_file(base / dst / "seed.iso", "ctd/instance-id").strip() == seeds[1]["instance-id"]
        mac = yaml.safe_load(iso_file(base / dst / "seed.iso", "network-config"))["ethernets"]["eth0"]["match"]
        assert mac["macaddress"] == b["nics"][0]["mac"]

        # inside, at the next boot: the new name and address, from the seed
        ctd.ok("start", src)
        console_says(ctd, src, "echo HN=$(hostname)", "HN=renamed")
        assert pings(moved), f"{src} does not answer at its new address {moved}"
        assert identity(ctd, src) == src_identity   # renamed, still itself
        ctd.ok("stop", "--timeout", "1", src)
        ctd.ok("start", dst)
        console_says(ctd, dst, "echo HN=$(hostname)", f"HN={dst}")
        assert pings(b["nics"][0]["addresses"][0]), f"the clone does not answer at {b['nics'][0]['addresses'][0]}"
        dst_identity = identity(ctd, dst)
        assert dst_identity[0] != src_identity[0] and dst_identity[1] == 0   # a new machine, no source keys
    finally:
        for n in (dst, src):
            ctd.ctl("destroy", "--force", n)
    assert not (base / dst).exists() and not (base / src).exists()


def test_clone_of_a_windows_vm_copies_uefi_vars_and_tpm_state(ctd, tmp_path):
    installer = iso(tmp_path / "win.iso", "WIN")
    src, dst = ctd.unique("wsrc"), ctd.unique("wdst")
    base = ctd.state_dir / "storage/instances"
    tpm_before = swtpm_pids()
    try:
        ctd.ok("create", src, "--type", "vm", "--profile", "windows", "--iso", str(installer), "--disk", "64M",
               "--ram", "256M")
        ctd.ok("start", "--paused", src)   # makes the per-VM UEFI variables and TPM state
        ctd.ok("stop", "--timeout", "1", src)
        ctd.ok("clone", src, dst)
        vars_src, vars_dst = base / src / "OVMF_VARS.fd", base / dst / "OVMF_VARS.fd"
        assert vars_dst.read_bytes() == vars_src.read_bytes()
        tpm_files = sorted(p.name for p in (base / dst / "tpm").iterdir())
        assert tpm_files and tpm_files == sorted(p.name for p in (base / src / "tpm").iterdir())
        assert not (base / dst / "seed.iso").exists()   # no cloud-init for Windows
        assert "ctd does not configure Windows guests" in ctd.ok("set", dst, "--hostname", "win2")
        ctd.ok("start", "--paused", dst)
        hw = ctd.client.get(f"/1.0/instances/{dst}/hardware")["hardware"]
        assert hw["tpm"] and str(vars_dst) in json.dumps(hw["block"])
    finally:
        for n in (dst, src):
            ctd.ctl("destroy", "--force", n)
    time.sleep(0.5)
    assert not (swtpm_pids() - tpm_before)
    assert not (base / dst).exists() and not (base / src).exists()


def test_a_disk_mount_left_by_a_dead_ctd_is_released(tmp_path):
    from ctd.instance.vm import rootdisk

    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    image = vm_dir / "disk.raw"
    subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    with rootdisk.mounted(image) as root:   # the normal way: gone afterwards
        (root / "hello").write_text("hi")
    assert not (vm_dir / rootdisk.MOUNT_DIR).exists()
    assert "hi" in ext4_file(image, "/hello")
    # ctd killed inside mounted(): the mount and its loop device stay until recovery
    point = vm_dir / rootdisk.MOUNT_DIR
    point.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(point)], check=True)
    try:
        assert str(image) in subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True).stdout
        assert rootdisk.release_stale_mount(vm_dir)
        assert not point.exists()
        assert str(image) not in subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True).stdout
        assert not rootdisk.release_stale_mount(vm_dir)
    finally:
        subprocess.run(["umount", str(point)], capture_output=True)


def test_a_vm_without_balloon_is_told_ram_waits_for_the_next_start(ctd):
    name = ctd.unique("nobal")
    try:
        ctd.ok("create", name, "--type", "vm", "--compat", "--disk", "64M", "--ram", "256M")
        ctd.ok("start", "--paused", name)
        assert not ctd.client.get(f"/1.0/instances/{name}/hardware")["hardware"]["balloon"]
        out = ctd.ok("set", name, "--ram", "128M")
        assert "Note: ram: cannot resize RAM live" in out and "next start" in out
        assert memory_limit(ctd.instance(name)["pid"]) == (256 << 20) + QEMU_OVERHEAD
    finally:
        ctd.ctl("destroy", "--force", name)


def test_set_on_a_template_vm_reaches_its_disk_before_the_first_start_its_seed_after(ctd):
    name = ctd.unique("vset")
    disk = ctd.state_dir / "storage/instances" / name / "disk.raw"
    try:
        ctd.ok("create", name, "--type", "vm", "--template", "busybox", "--disk", "64M", "--ram", "128M",
               timeout=120)
        shadow_before = ext4_file(disk, "/etc/shadow")
        out = ctd.ok("set", name, "--hostname", "second", "--userpasswd", "root:pw2")
        assert "Note" not in out   # stopped: written into the disk at once
        assert ext4_file(disk, "/etc/hostname").strip() == "second"
        root_hash = next(line for line in ext4_file(disk, "/etc/shadow").splitlines() if line.startswith("root:"))
        assert root_hash.split(":")[1].startswith("$6$") and root_hash not in shadow_before
        # a clone of a VM that never ran: ctd writes its disk, with a machine-id of its own
        twin = ctd.unique("vtwin")
        try:
            ctd.ok("clone", name, twin, timeout=120)
            ids = [ext4_file(ctd.state_dir / "storage/instances" / n / "disk.raw", "/etc/machine-id").strip()
                   for n in (name, twin)]
            assert ids[0] != ids[1] and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids), ids
        finally:
            ctd.ctl("destroy", "--force", twin)
        ctd.ok("start", "--paused", name)   # from now on the disk is the guest's
        out = ctd.ok("set", name, "--hostname", "third")
        assert "Note: guest settings: on the VM's seed CD-ROM; the guest applies them at its next boot" in out
        seed = disk.with_name("seed.iso")
        assert iso_file(seed, "ctd/hostname").strip() == "third"
        ctd.ok("stop", "--timeout", "1", name)
        before = digest(disk)
        out = ctd.ok("set", name, "--hostname", "fourth")   # stopped, but it has run: the seed only
        assert "next boot" in out and iso_file(seed, "ctd/hostname").strip() == "fourth"
        ctd.ok("start", "--paused", name)
        assert digest(disk) == before and ext4_file(disk, "/etc/hostname").strip() == "second"
        assert iso_file(seed, "ctd/hostname").strip() == "fourth"
        assert not list(disk.parent.glob(".mnt*"))
    finally:
        ctd.ctl("destroy", "--force", name)


def test_set_hostname_of_a_container_applies_at_its_next_start(ctd):
    name = ctd.unique("hn")
    try:
        ctd.ok("create", name, "--template", "busybox")
        ctd.ok("set", name, "--hostname", "renamed-ct")
        assert (ctd.state_dir / "storage/instances" / name / "rootfs/etc/hostname").read_text().strip() == "renamed-ct"
        ctd.ok("start", name)
        assert ctd.ok("exec", name, "--", "hostname").strip() == "renamed-ct"
        out = ctd.ok("set", name, "--hostname", "later")
        assert "Note: hostname: applies at next start" in out
        assert ctd.ok("exec", name, "--", "hostname").strip() == "renamed-ct"
        ctd.ok("restart", name)
        assert ctd.ok("exec", name, "--", "hostname").strip() == "later"
        assert ctd.instance(name)["hostname"] == "later"
    finally:
        ctd.ctl("destroy", "--force", name)


def test_seed_iso_carries_the_appliers_files_and_refuses_paths_outside_it(tmp_path):
    from ctd.errors import InvalidRequest
    from ctd.instance.vm.seed import Seed, build_seed_iso

    seed = Seed(instance_id="i-1", hostname="vm1")
    iso = build_seed_iso(seed, tmp_path / "seed.iso", files={"ctd/hostname": "vm1\n",
                                                             "ctd/network/10-ctd-eth0.network": "[Match]\n"})
    assert iso_file(iso, "ctd/hostname") == "vm1\n"
    assert iso_file(iso, "ctd/network/10-ctd-eth0.network") == "[Match]\n"
    assert '"instance-id": "i-1"' in iso_file(iso, "meta-data")
    for bad in ("../escape", "/etc/passwd"):
        with pytest.raises(InvalidRequest, match="outside the seed"):
            build_seed_iso(seed, tmp_path / "bad.iso", files={bad: "x"})
    assert not (tmp_path / "bad.iso").exists()
