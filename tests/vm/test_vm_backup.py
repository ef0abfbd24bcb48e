"""Backup and restore of VMs (ctd/instance/vm/backup.py, ctd/storage/backup/vmarchive.py, qcow2.py).

A running busybox-template VM is backed up while it runs (QEMU copies its disk) and keeps running;
the restore boots and has the file written inside before the backup. A UEFI VM's variables and
TPM state come back byte for byte. Tampered files (a backing file or a data file naming a host
file, a disk of the wrong size, a header naming a host path) are refused with nothing left."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.vm.test_vm_config import console_says
from tests.vm.test_vm_lifecycle import iso, qemu_pids

pytestmark = pytest.mark.slow


def qmp_status(ctd, name: str) -> str:  # type: ignore[no-untyped-def]
    return str(ctd.client.get(f"/1.0/instances/{name}/hardware")["hardware"]["status"])


def members(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(header, {member: bytes}) of a backup file."""
    with tarfile.open(path) as tf:
        out = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}  # type: ignore[union-attr]
    return json.loads(out.pop("ctd-backup.json")), out


def write_backup(path: Path, header: dict[str, Any], files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in [("ctd-backup.json", json.dumps(header).encode()), *files.items()]:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


def qemu_of(*names: str) -> set[int]:
    """QEMU processes of these VMs (other tests on the host run VMs of their own)."""
    found = set()
    for pid in qemu_pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.startswith(f"{n},".encode()) for a in argv for n in names):
            found.add(pid)
    return found


def left_behind(ctd, name: str) -> list[str]:  # type: ignore[no-untyped-def]
    storage = ctd.state_dir / "storage"
    found = [p.name for p in storage.iterdir() if p.name.startswith((".restore-", ".backup-"))]
    if (storage / "instances" / name).exists():
        found.append(f"instances/{name}")
    if name in {i["name"] for i in ctd.client.get("/1.0/instances")["instances"]}:
        found.append(f"row {name}")
    return found


def test_a_running_vm_is_backed_up_live_keeps_running_and_its_restore_boots_with_the_file(ctd, net, tmp_path):
    src, dst = ctd.unique("vbs"), ctd.unique("vbd")
    live, paused = tmp_path / "live.backup", tmp_path / "paused.backup"
    try:
        ctd.ok("create", src, "--type", "vm", "--template", "busybox", "--disk", "64M", "--ram", "256M",
               "--net", net, timeout=120)
        ctd.ok("start", src)
        console_says(ctd, src, "echo vm-backup-marker > /marker; sync; echo WR''OTE", "WROTE")
        pid = ctd.instance(src)["pid"]
        op = ctd.client.request("POST", f"/1.0/instances/{src}/backup", {"file": str(live)})["operation"]
        during = set()
        while op["status"] == "running":   # QEMU's word while it copies the disk
            during.add(qmp_status(ctd, src))
            op = ctd.client.get(f"/1.0/operations/{op['id']}")["operation"]
        assert op["status"] == "success", op
        assert during <= {"running"}, during
        assert op["result"]["consistency"].startswith("crash-consistent"), op["result"]
        # the VM ran on through its backup: the same QEMU, running, its shell answering
        assert ctd.instance(src)["state"] == "running" and ctd.instance(src)["pid"] == pid
        assert qmp_status(ctd, src) == "running"
        console_says(ctd, src, "echo STILL''UP", "STILLUP")
        header, files = members(live)
        assert header["type"] == "vm" and header["driver"] == "qemu" and sorted(files) == ["disk.qcow2"]
        assert header["meta"]["vm"] == {"profile": "linux", "compat": False, "disk_size": 64 << 20,
                                        "kernel": True, "firmware": "bios", "secure_boot": False, "tpm": False}
        assert files["disk.qcow2"][:4] == b"QFI\xfb" and len(files["disk.qcow2"]) < 64 << 20
        # a suspended VM is backed up too, and stays suspended
        ctd.ok("suspend", src)
        ctd.ok("backup", src, str(paused), timeout=300)
        assert ctd.instance(src)["state"] == "suspended" and qmp_status(ctd, src) == "paused"
        ctd.ok("resume", src)

        out = ctd.ok("restore", str(live), "--name", dst, timeout=300)
        assert f"Restored {dst}" in out
        a, b = ctd.instance(src), ctd.instance(dst)
        assert b["type"] == "vm" and b["state"] == "stopped" and b["id"] != a["id"] and b["hostname"] == dst
        assert b["nics"][0]["mac"] != a["nics"][0]["mac"]
        assert b["nics"][0]["addresses"] != a["nics"][0]["addresses"]
        ctd.ok("start", dst)
        console_says(ctd, dst, "cat /marker", "vm-backup-marker")
        console_says(ctd, dst, "echo HN=$(hostname)", f"HN={dst}")
        assert ctd.instance(src)["state"] == "running"
    finally:
        for n in (dst, src):
            ctd.ctl("destroy", "--force", n)
    assert not qemu_of(src, dst)
    assert not left_behind(ctd, dst) and not left_behind(ctd, src)


def test_a_uefi_vms_variables_and_tpm_state_survive_backup_and_restore(ctd, tmp_path):
    installer = iso(tmp_path / "win.iso", "WIN")
    src, dst = ctd.unique("wbs"), ctd.unique("wbd")
    base = ctd.state_dir / "storage/instances"
    file = tmp_path / "win.backup"
    try:
        ctd.ok("create", src, "--type", "vm", "--profile", "windows", "--iso", str(installer), "--disk", "64M",
               "--ram", "256M")
        ctd.ok("start", "--paused", src)   # makes the VM's UEFI variables and TPM state
        ctd.ok("stop", "--timeout", "1", src)
        nvram = base / src / "OVMF_VARS.fd"
        with open(nvram, "r+b") as fh:     # a variable of the guest's own (the firmware never ran)
            fh.seek(0x30000)
            fh.write(b"guest-uefi-variable")
        ctd.ok("start", "--paused", src)
        out = ctd.ok("backup", src, str(file), timeout=300)
        assert "crash-consistent" in out and "installer ISO is not in the backup" in out, out
        header, files = members(file)
        assert sorted(files) == ["OVMF_VARS.fd", "disk.qcow2", "tpm.tar"]
        assert files["OVMF_VARS.fd"] == nvram.read_bytes()
        ctd.ok("stop", "--timeout", "1", src)

        ctd.ok("restore", str(file), "--name", dst, timeout=300)
        assert (base / dst / "OVMF_VARS.fd").read_bytes() == nvram.read_bytes()
        # the TPM state as swtpm had it at the backup (it saves again at each stop, so the live
        # directory moved on since)
        with tarfile.open(fileobj=io.BytesIO(files["tpm.tar"])) as tf:
            tpm_backed = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}  # type: ignore[union-attr]
        assert "tpm2-00.permall" in tpm_backed
        assert {p.name: p.read_bytes() for p in (base / dst / "tpm").iterdir()} == tpm_backed
        vm = ctd.instance(dst)["vm"]
        assert vm["profile"] == "windows" and "iso" not in vm
        ctd.ok("start", "--paused", dst)
        hw = ctd.client.get(f"/1.0/instances/{dst}/hardware")["hardware"]
        assert hw["tpm"] and str(base / dst / "OVMF_VARS.fd") in json.dumps(hw["block"])
    finally:
        for n in (dst, src):
            ctd.ctl("destroy", "--force", n)
    assert not qemu_of(src, dst)
    assert not left_behind(ctd, dst) and not left_behind(ctd, src)


def test_tampered_vm_backups_are_refused_and_leave_nothing(ctd, tmp_path):
    src = ctd.unique("vbt")
    good = tmp_path / "good.backup"
    host_file = tmp_path / "host-secret.raw"
    host_file.write_bytes(b"host secret\n" * 1000)
    try:
        ctd.ok("create", src, "--type", "vm", "--disk", "64M", "--ram", "256M")
        out = ctd.ok("backup", src, str(good), timeout=120)
        assert "consistent: the VM was stopped" in out
    finally:
        ctd.ctl("destroy", "--force", src)
    header, files = members(good)

    def qcow2(size: int, *options: str) -> bytes:
        image = tmp_path / f"img-{uuid.uuid4().hex[:6]}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *options, str(image), str(size)], check=True)
        return image.read_bytes()

    def refused(name: str, hdr: dict[str, Any], members_: dict[str, bytes], words: str) -> None:
        file = write_backup(tmp_path / f"{name}.backup", hdr, members_)
        r = ctd.ctl("restore", str(file), "--name", name, timeout=120)
        assert r.code != 0 and words in r.err, (name, r.err)
        assert not left_behind(ctd, name), left_behind(ctd, name)

    size = 64 << 20
    refused("tbacking", header, {"disk.qcow2": qcow2(size, "-b", str(host_file), "-F", "raw")},
            "names a backing file")
    refused("tdata", header, {"disk.qcow2": qcow2(size, "-o", f"data_file={tmp_path / 'data.raw'}")},
            "external data file")
    refused("tsize", header, {"disk.qcow2": qcow2(128 << 20)}, "is 134217728 bytes big")
    refused("traw", header, {"disk.qcow2": b"\0" * (1 << 20)}, "is not a qcow2 image")
    for field, value in (("iso", "/dev/sda"), ("nvram", str(host_file)), ("kernel_path", "/etc/shadow")):
        bad = json.loads(json.dumps(header))
        bad["meta"]["vm"][field] = value
        refused(f"th{field[:3]}", bad, files, "unknown field")
    bad = json.loads(json.dumps(header))
    bad["meta"]["vm"]["kernel"] = "/etc/shadow"
    refused("thkern", bad, files, "kernel")
    bad["meta"]["vm"]["kernel"] = False
    bad["meta"]["vm"]["disk_size"] = 1 << 60
    refused("thhuge", bad, files, "does not fit this pool")
    bad["meta"]["vm"]["disk_size"] = header["meta"]["vm"]["disk_size"]
    bad["meta"]["vm"]["firmware"] = "coreboot"
    refused("thfw", bad, files, "invalid firmware")
    # UEFI variables for a VM without UEFI, a member of another kind, members out of order
    refused("tvars", header, {**files, "OVMF_VARS.fd": b"\0" * 4096}, "no UEFI")
    refused("tother", header, {**files, "rootfs.tar.zst": b"x"}, "unexpected member")
    # and the untouched file restores (the refusals above were the tampering's doing)
    try:
        ctd.ok("restore", str(good), "--name", "tgood", timeout=120)
        assert ctd.instance("tgood")["type"] == "vm"
    finally:
        ctd.ctl("destroy", "--force", "tgood")


def _copying(op: dict[str, Any]) -> bool:
    """The operation runs and its progress line says QEMU's copy is under way (done < total)."""
    parts = str(op.get("progress") or "").split()
    if op.get("status") != "running" or len(parts) < 4 or parts[1:3] != ["MB", "of"]:
        return False
    return float(parts[0]) < float(parts[3])


def _settle(d: Any, op_id: str) -> None:
    deadline = time.monotonic() + 120
    while d.client.get(f"/1.0/operations/{op_id}")["operation"]["status"] == "running":
        assert time.monotonic() < deadline, "the backup did not end"
        time.sleep(0.2)


def test_a_ctd_killed_during_a_live_backup_leaves_the_vm_running_and_the_next_backup_works(fresh_ctd, tmp_path):
    """QEMU outlives ctd with the backup job and its target node still in it: the next backup
    clears them first (else QEMU refuses the node name), and the restart removed the work files."""
    d = fresh_ctd
    d.ok("create", "vbk", "--type", "vm", "--disk", "1G", "--ram", "256M")
    try:
        disk = d.state_dir / "storage/instances/vbk/disk.raw"
        with open(disk, "r+b") as fh:   # data for QEMU to copy (the VM never ran: a blank disk)
            for _ in range(512):
                fh.write(os.urandom(1 << 20))
        d.ok("start", "vbk")
        pid = d.instance("vbk")["pid"]
        # ctd is killed while QEMU copies (the progress line's "X MB of Y MB" with X < Y), not after:
        # once the copy is done ctd writes the file itself, a phase this test is not about. A copy
        # that ended before a poll saw it running is tried again with a new file.
        for attempt in range(3):
            out = tmp_path / f"a{attempt}.bak"
            op = d.client.request("POST", "/1.0/instances/vbk/backup", {"file": str(out)})["operation"]
            deadline = time.monotonic() + 60
            while op["status"] == "running" and not _copying(op) and time.monotonic() < deadline:
                time.sleep(0.05)
                op = d.client.get(f"/1.0/operations/{op['id']}")["operation"]
            if _copying(op):
                break
            _settle(d, op["id"])
            out.unlink(missing_ok=True)
        else:
            pytest.fail("three live backups ended before a poll saw QEMU copying")
        d.kill9()
        d.start()
        assert d.instance("vbk")["state"] == "running" and d.instance("vbk")["pid"] == pid
        assert not out.exists() and not [p for p in tmp_path.iterdir() if ".part-" in p.name]
        assert not [p for p in (d.state_dir / "storage").iterdir() if p.name.startswith(".backup-")]
        out = d.ok("backup", "vbk", str(tmp_path / "b.bak"), timeout=300)
        assert "crash-consistent" in out
        header, files = members(tmp_path / "b.bak")
        assert header["meta"]["vm"]["disk_size"] == 1 << 30 and len(files["disk.qcow2"]) > 512 << 20
        assert d.instance("vbk")["state"] == "running" and d.instance("vbk")["pid"] == pid
    finally:
        d.ctl("destroy", "--force", "vbk")
    assert not qemu_of("vbk")


def test_a_vm_takes_a_schedule_and_backs_up_into_backup_dir_with_retention(ctd):
    src, copy = ctd.unique("vbs"), ctd.unique("vbsr")
    try:
        ctd.ok("create", src, "--type", "vm", "--disk", "64M", "--ram", "256M",
               "--backup-schedule", "daily@02:00", "--backup-keep", "2")
        assert "daily@02:00, keep 2" in ctd.ok("status", src)
        said = [ctd.ok("backup", src, timeout=120) for _ in range(3)]
        assert all("full, qemu" in s for s in said), said
        assert "Removed" in said[2]                       # the oldest goes: keep 2
        listed = json.loads(ctd.ok("backup-list", src, "--format", "json"))
        assert [b["kind"] for b in listed] == ["full", "full"] and all(b["present"] for b in listed)
        ctd.ok("restore", listed[-1]["file"], "--name", copy, timeout=120)
        assert ctd.instance(copy)["type"] == "vm"
    finally:
        ctd.ctl("destroy", "--force", copy)
        ctd.ctl("destroy", "--force", src)
