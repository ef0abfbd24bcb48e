"""Virtual machines through ctd and ctctl, under TCG here (KVM where the host can).

Slow: a Debian guest boots in a minute or two without hardware virtualisation."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from ctctl.client import ApiError

pytestmark = pytest.mark.slow


def qemu_pids() -> set[int]:
    out = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if Path(f"/proc/{pid}/comm").read_text().startswith(("qemu-system", "qemu-")) and _live(pid):
                    out.add(int(pid))
            except OSError:
                pass
    return out


def _live(pid: str) -> bool:
    """Not a zombie waiting for whatever reaper the test machine has."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def swtpm_pids() -> set[int]:
    out = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "swtpm" and _live(pid):
                    out.add(int(pid))
            except OSError:
                pass
    return out


def iso(path: Path, label: str) -> Path:
    src = path.parent / f"{label}-src"
    src.mkdir()
    (src / "README.TXT").write_text(label)
    subprocess.run(["genisoimage", "-quiet", "-V", label, "-o", str(path), str(src)], check=True)
    return path


def test_vm_options_only_for_vms_and_a_missing_iso_is_refused(ctd):
    for body, status in (({"name": "vmx", "template": "busybox", "vm": {"disk": "1G"}}, 400),
                         ({"name": "vmx", "type": "vm", "vm": {"iso": "/nonexistent.iso"}}, 404),
                         ({"name": "vmx", "type": "vm", "vm": {"disk": "1Q"}}, 400),
                         ({"name": "vmx", "type": "vm", "vm": {"profile": "windows"}}, 400),
                         ({"name": "vmx", "type": "vm", "vm": {"disk": "100T"}}, 400),
                         ({"name": "vmx", "type": "vm", "limits": {"numproc": 10}}, 400),
                         ({"name": "vmx", "type": "vm", "privileged": True}, 400)):
        with pytest.raises(ApiError) as err:
            ctd.client.request("POST", "/1.0/instances", body)
        assert err.value.status == status, (body, err.value.message)
    assert ctd.ctl("status", "vmx").code == 1
    assert not (ctd.state_dir / "storage/instances/vmx").exists()


def test_windows_profile_starts_paused_with_tpm_pflash_disk_nic_and_both_cdroms(ctd, net, tmp_path):
    installer, drivers = iso(tmp_path / "win.iso", "WIN"), iso(tmp_path / "virtio-win.iso", "VIRTIO")
    name = ctd.unique("win")
    tpm_before = swtpm_pids()
    try:
        ctd.ok("create", name, "--type", "vm", "--profile", "windows", "--iso", str(installer),
               "--drivers-iso", str(drivers), "--disk", "2G", "--ram", "1G", "--net", net)
        ctd.ok("start", "--paused", name)
        hw = ctd.client.get(f"/1.0/instances/{name}/hardware")["hardware"]
        assert hw["status"] == "prelaunch" or hw["status"] == "paused"
        assert hw["tpm"] and hw["tpm"][0]["model"] == "tpm-crb"
        files = " ".join((b.get("inserted") or {}).get("file", "") for b in hw["block"])
        assert str(installer) in files and str(drivers) in files and "disk.raw" in files
        flash = {b.get("qdev", ""): b.get("inserted") or {} for b in hw["block"] if "flash" in (b.get("qdev") or "")}
        code, nvram = flash["/machine/system.flash0"], flash["/machine/system.flash1"]
        assert "OVMF_CODE" in code["file"] and code["ro"] is True       # UEFI firmware, read-only
        assert nvram["file"].endswith("OVMF_VARS.fd") and nvram["ro"] is False and name in nvram["file"]
        assert any(d.get("qdev_id", "").startswith("nic") for d in hw["pci"])
        assert swtpm_pids() - tpm_before, "no swtpm runs for the TPM"
        out = ctd.ok("hardware", name)
        assert "tpm: tpm-crb" in out
    finally:
        ctd.ctl("destroy", "--force", name)
    time.sleep(0.5)
    assert not (swtpm_pids() - tpm_before), "swtpm left behind"
    assert not (ctd.state_dir / "storage/instances" / name).exists()


def test_kill9_of_ctd_leaves_the_vm_running_and_a_new_ctd_stops_it(fresh_ctd):
    d = fresh_ctd
    before = qemu_pids()
    d.ok("create", "vmkeep", "--type", "vm", "--disk", "64M", "--ram", "256M")
    d.ok("start", "vmkeep")
    pid = d.instance("vmkeep")["pid"]
    assert pid in qemu_pids()
    d.kill9()
    time.sleep(0.3)
    assert pid in qemu_pids(), "QEMU died with ctd"
    d.start()
    inst = d.instance("vmkeep")
    assert inst["state"] == "running" and inst["pid"] == pid
    d.ok("stop", "--timeout", "3", "vmkeep")  # no OS on the disk: ACPI goes unanswered, then quit
    assert d.instance("vmkeep")["state"] == "stopped"
    time.sleep(0.3)
    assert qemu_pids() == before or not (qemu_pids() - before)
    # a stopped VM's disk: snapshot, change, rollback
    disk = d.state_dir / "storage/instances/vmkeep/disk.raw"
    with disk.open("r+b") as fh:
        fh.write(b"before")
    d.ok("snapshot", "vmkeep", "s1")
    with disk.open("r+b") as fh:
        fh.write(b"after!")
    d.ok("rollback", "vmkeep", "s1")
    assert disk.read_bytes()[:6] == b"before"
    assert "s1" in d.ok("snapshot-list", "vmkeep")
    d.ok("start", "vmkeep")
    pid = d.instance("vmkeep")["pid"]
    # a running VM's snapshot is live: paused for the copy, no agent here so crash-consistent
    with disk.open("r+b") as fh:
        fh.write(b"live!!")
    out = d.ok("snapshot", "vmkeep", "s2")
    assert "crash-consistent" in out and "paused" in out, out
    inst = d.instance("vmkeep")
    assert (inst["state"], inst["pid"]) == ("running", pid)
    assert (d.state_dir / "storage/instances/vmkeep/snapshots/s2/disk.raw").read_bytes()[:6] == b"live!!"
    # a live snapshot that fails half-way (the snapshot directory refuses a new entry): the VM runs
    # on, not paused, on its own disk, and no snapshot is left
    snaps = d.state_dir / "storage/instances/vmkeep/snapshots"
    subprocess.run(["chattr", "+i", str(snaps)], check=True)
    try:
        r = d.ctl("snapshot", "vmkeep", "s3")
    finally:
        subprocess.run(["chattr", "-i", str(snaps)], check=True)
    assert r.code != 0, r.out
    inst = d.instance("vmkeep")
    assert (inst["state"], inst["pid"]) == ("running", pid)
    assert "s3" not in d.ok("snapshot-list", "vmkeep")
    assert sorted(p.name for p in snaps.iterdir()) == ["s1", "s2"]
    d.ok("destroy", "--force", "vmkeep")


@pytest.mark.timeout(1500)   # a template build (1-3 min) and a Debian boot under TCG, as test_vm_disks's
def test_debian_vm_boots_takes_its_address_answers_ssh_and_powers_off_by_acpi(ctd, debian, net, ssh_key):
    key = ssh_key
    name = ctd.unique("vm")
    before = qemu_pids()
    try:
        ctd.ok("create", name, "--type", "vm", "--template", "debian-12", "--net", net, "--ram", "1G",
               "--disk", "2G", "--ssh-key", f"{key}.pub", timeout=300)
        ctd.ok("start", name)
        inst = ctd.instance(name)
        assert inst["type"] == "vm" and inst["state"] == "running"
        address = inst["nics"][0]["addresses"][0]
        host = inst["nics"][0]["host_name"]
        deadline, answer = time.monotonic() + 420, None
        while time.monotonic() < deadline:
            r = subprocess.run(["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o",
                                "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                                f"root@{address}", "hostname; systemctl is-system-running --wait"],
                               capture_output=True, text=True, timeout=120)
            if r.returncode in (0, 1) and r.stdout.strip():
                answer = r.stdout.split()
                break
            time.sleep(3)
        assert answer and answer[0] == name, "no ssh answer from the VM"

        def guest(command: str) -> str:
            # under TCG on a busy 2-core host one ssh round can stall for a while: one more try
            for attempt in (1, 2):
                try:
                    return subprocess.run(["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o",
                                           "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o",
                                           "ConnectTimeout=20", f"root@{address}", command],
                                          capture_output=True, text=True, timeout=90).stdout
                except subprocess.TimeoutExpired:
                    if attempt == 2:
                        raise
            return ""

        # the cloud-init seed is a CD-ROM the guest can read (this disk needs no cloud-init: ctd
        # wrote the same settings into it at create, and its applier reads the seed at each boot)
        meta = guest("mount -o ro /dev/sr0 /mnt && cat /mnt/meta-data; umount /mnt")
        assert f'"local-hostname": "{name}"' in meta
        # ctd's seed applier (a systemd unit in the disk) ran at boot and recorded that seed
        assert guest("systemctl show -p Result ctd-seed.service").strip() == "Result=success"
        applied = guest("cat /var/lib/ctd-seed/instance-id").strip()
        assert applied and f'"instance-id": "{applied}"' in meta
        # vCPU hot-add and the balloon, as the guest sees them
        mem_before = int(guest("awk '/MemTotal/ {print $2}' /proc/meminfo"))
        out = ctd.ok("set", name, "--cpus", "2", "--ram", "768M", timeout=60)
        assert "Note" not in out, out
        for _ in range(20):
            if guest("nproc").strip() == "2":
                break
            time.sleep(1)
        assert guest("nproc").strip() == "2", "the hot-added vCPU did not come online"
        mem_after = int(guest("awk '/MemTotal/ {print $2}' /proc/meminfo"))
        assert mem_before - mem_after >= 200 * 1024, (mem_before, mem_after)
        assert subprocess.run(["busybox", "ping", "-c1", "-W2", address], capture_output=True).returncode == 0
        console = ctd.ctl("console", name, input="\n", timeout=30)
        assert "login:" in console.out, console.out[-500:]
        start = time.monotonic()
        ctd.ok("stop", "--timeout", "120", name)
        assert time.monotonic() - start < 100, "the guest did not power off on ACPI"
        assert ctd.instance(name)["state"] == "stopped"
        assert host not in subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout

        # after a boot the disk is the guest's: a change goes onto the seed, and the applier in the
        # guest hands networkd the new address at the next boot
        moved = address.rsplit(".", 1)[0] + ".99"
        out = ctd.ok("set", name, "--hostname", "deb-renamed", "--ipadd", moved, "--ipdel", address)
        assert "next boot" in out
        ctd.ok("start", name)
        address = moved   # guest() now asks the new address
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and guest("hostname").strip() != "deb-renamed":
            time.sleep(3)
        assert guest("hostname").strip() == "deb-renamed", f"no ssh answer as deb-renamed at {moved}"
    finally:
        ctd.ctl("destroy", "--force", name)
    assert not (qemu_pids() - before)
    assert not (ctd.state_dir / "storage/instances" / name).exists()


def test_tar_backup_and_reinstall_are_refused_for_vms(ctd, tmp_path):
    """A VM's backup is its disk image (tests/vm/test_vm_backup.py): --tar and reinstall are for
    containers: a clear 400, no file, the VM unchanged."""
    installer = iso(tmp_path / "inst.iso", "INST")
    name = ctd.unique("vmb")
    ctd.ok("create", name, "--type", "vm", "--profile", "windows", "--iso", str(installer), "--disk", "1G")
    try:
        target = tmp_path / "vm.bak"
        r = ctd.ctl("backup", "--tar", name, str(target))
        assert r.code == 1 and "--tar is for containers" in r.err, r.err
        assert not target.exists()
        with pytest.raises(ApiError) as err:
            ctd.client.request("POST", f"/1.0/instances/{name}/backup", {"file": str(target), "driver": "tar"})
        assert err.value.status == 400
        r = ctd.ctl("reinstall", name, "--template", "busybox")
        assert r.code == 1 and "is a VM: reinstall is for containers" in r.err, r.err
        assert ctd.instance(name)["type"] == "vm" and ctd.instance(name)["state"] == "stopped"
    finally:
        ctd.ctl("destroy", "--force", name)


def test_vm_status_forced_stop_message_and_destroy_removes_its_run_dir(ctd):
    """status of a VM rendered (it has no id range: once a traceback); a stop that had to end
    QEMU says so; destroy leaves no run directory and no console log (the next VM with this id
    would find them)."""
    name = ctd.unique("vms")
    ctd.ok("create", name, "--type", "vm", "--disk", "64M", "--ram", "256M")
    run_dir = ctd.state_dir / "run/vm" / str(ctd.instance(name)["id"])
    console_log = ctd.state_dir / "consoles" / f"{ctd.instance(name)['id']}.log"
    try:
        out = ctd.ok("status", name)
        assert "host ids:" in out and "a VM" in out and "Traceback" not in out
        # container-only limits are refused up front, and nothing else of that set applies
        r = ctd.ctl("set", name, "--hostname", "renamed", "--numproc", "10")
        assert r.code == 1 and "numproc: container limits" in r.err, r.err
        assert ctd.instance(name)["hostname"] == name and "numproc" not in ctd.instance(name)["limits"]
        ctd.ok("start", name)
        assert console_log.exists() and not (run_dir / "serial.log").exists()   # ctd's ring, not QEMU's log
        assert "state:       running" in ctd.ok("status", name)
        # a blank disk has no OS to answer the ACPI button: QEMU is ended after the timeout
        out = ctd.ok("stop", "--timeout", "2", name)
        assert out.strip() == f"Stopped {name} (forced after 2 s: the guest ignored ACPI)"
        assert ctd.instance(name)["state"] == "stopped"
        ctd.ok("start", name)
        assert ctd.ok("stop", "--kill", name).strip() == f"Stopped {name} (killed at once)"
    finally:
        ctd.ctl("destroy", "--force", name)
    assert not run_dir.exists(), sorted(p.name for p in run_dir.iterdir())
    assert not console_log.exists()


def test_qemu_installed_while_ctd_runs_is_used_without_a_restart(tmp_path):
    """ctd started on a PATH without QEMU (a farm of links to the host's tools, QEMU left out):
    VM creates are refused with the fix and `ctctl check` agrees; once QEMU appears (its link
    added, as apt-get install would), the next create works and check says so — no restart."""
    from tests.conftest import Daemon, _teardown

    tools = tmp_path / "bin"
    tools.mkdir()
    for directory in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if os.path.isdir(directory):
            for entry in os.listdir(directory):
                if not entry.startswith("qemu-system") and not (tools / entry).exists():
                    (tools / entry).symlink_to(os.path.join(directory, entry))
    d = Daemon(tmp_path / "state", tmp_path / "ctd.sock", f"ctd-test-{uuid.uuid4().hex[:8]}",
               launcher=["env", f"PATH={tools}"])
    d.start()
    try:
        r = d.ctl("create", "late", "--type", "vm", "--disk", "64M")
        assert r.code == 1 and "install qemu-system-x86" in r.err, r.err
        before = {c["name"]: c["status"] for c in d.client.get("/1.0/check")["results"]}
        assert before["driver:vm"] == "WARN"

        (tools / "qemu-system-x86_64").symlink_to("/usr/bin/qemu-system-x86_64")   # "apt-get install"
        d.ok("create", "late", "--type", "vm", "--disk", "64M")
        after = {c["name"]: c["status"] for c in d.client.get("/1.0/check")["results"]}
        assert after["driver:vm"] == "OK"
        assert d.client.get("/1.0")["drivers"]["vm"]["usable"] is True
    finally:
        _teardown(d)
