"""A VM's removable CD-ROM and firmware: an ISO inserted into a running busybox VM is read by
the guest, ejected, kept across restarts, booted first with --boot; bad paths refused (symlink,
directory, ctd's own files, a container). UEFI with secure boot and a TPM for a Linux VM, and a
template VM booting the host's kernel through OVMF."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctctl.client import ApiError
from tests.vm.test_vm_config import console_says
from tests.vm.test_vm_lifecycle import iso

pytestmark = pytest.mark.slow


def media_drive(ctd, name: str) -> dict:  # type: ignore[no-untyped-def]
    hw = ctd.client.get(f"/1.0/instances/{name}/hardware")["hardware"]
    return next(b for b in hw["block"] if b.get("device") == "drive-media0")


def refused(ctd, name: str, path: str) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ApiError) as err:
        ctd.client.request("POST", f"/1.0/instances/{name}/media", {"iso": path})
    return str(err.value)


def test_iso_inserted_into_a_running_vm_is_read_by_the_guest_and_bad_paths_are_refused(ctd, tmp_path):
    name, container = ctd.unique("med"), ctd.unique("medc")
    rescue = iso(tmp_path / "rescue.iso", "RESCUE")
    try:
        ctd.ok("create", name, "--type", "vm", "--template", "busybox", "--disk", "64M", "--ram", "256M",
               "--net", "none", timeout=120)
        # bad paths: nothing stored
        link = tmp_path / "link.iso"
        link.symlink_to(rescue)
        assert "symlink" in refused(ctd, name, str(link))
        assert "not a regular file" in refused(ctd, name, str(tmp_path))
        assert "absolute path" in refused(ctd, name, "rescue.iso")
        assert "does not exist" in refused(ctd, name, str(tmp_path / "none.iso"))
        disk = ctd.state_dir / "storage/instances" / name / "disk.raw"
        assert "ctd's own files" in refused(ctd, name, str(disk))
        assert ctd.instance(name)["vm"]["media"] is None
        ctd.ok("create", container, "--template", "busybox")
        r = ctd.ctl("media", "insert", container, str(rescue))
        assert r.code != 0 and "container" in r.err, r.err

        ctd.ok("start", name)
        console_says(ctd, name, "echo UP''NOW", "UPNOW")
        # busybox has no udev: a hot-added vCPU stays offline in it, and the answer says so
        out = ctd.ok("set", name, "--cpus", "2")
        assert "Note: cpus 2: 1 vCPU(s) added to the VM, but this guest has no udev" in out, out
        assert console_says(ctd, name, "echo NP=$(grep -c ^processor /proc/cpuinfo)", "NP=1")
        assert "file" not in (media_drive(ctd, name).get("inserted") or {})   # empty drive
        out = ctd.ok("media", "insert", name, str(rescue))
        assert "Note" not in out, out
        assert media_drive(ctd, name)["inserted"]["file"] == str(rescue)
        # the guest reads it: /dev/sr1 (the seed stays /dev/sr0)
        console_says(ctd, name, "mkdir -p /mnt/r; mount -t iso9660 -o ro /dev/sr1 /mnt/r && cat /mnt/r/*; echo",
                     "RESCUE")
        console_says(ctd, name, "umount /mnt/r; echo UM''OK", "UMOK")
        ctd.ok("media", "eject", name)
        assert not media_drive(ctd, name).get("inserted")
        # kept across a restart, and booted first with --boot (the firmware, not the host's kernel)
        out = ctd.ok("media", "insert", name, str(rescue), "--boot")
        assert "boot: from the ISO at its next start" in out, out
        ctd.ok("stop", "--timeout", "1", name)
        ctd.ok("start", "--paused", name)
        argv = Path(f"/proc/{ctd.instance(name)['pid']}/cmdline").read_bytes().split(b"\0")
        assert b"-kernel" not in argv
        assert any(a.startswith(b"ide-cd,") and b"id=media0,bootindex=0" in a for a in argv), argv
        assert media_drive(ctd, name)["inserted"]["file"] == str(rescue)
        assert ctd.instance(name)["vm"]["media"] == str(rescue) and ctd.instance(name)["vm"]["boot_media"]
        assert f"{rescue} (boots from it)" in ctd.ok("status", name)
        ctd.ok("stop", "--timeout", "1", name)
        ctd.ok("media", "eject", name)
        vm = ctd.instance(name)["vm"]
        assert vm["media"] is None and vm["boot_media"] is False
    finally:
        ctd.ctl("destroy", "--force", name)
        ctd.ctl("destroy", "--force", container)


def test_uefi_secure_boot_and_tpm_for_a_linux_vm_and_a_template_vm_booting_through_ovmf(ctd, tmp_path):
    blank, tmpl, restored = ctd.unique("uefi"), ctd.unique("uefit"), ctd.unique("uefir")
    base = ctd.state_dir / "storage/instances"
    try:
        ctd.ok("create", blank, "--type", "vm", "--disk", "64M", "--ram", "256M", "--net", "none",
               "--firmware", "uefi", "--secure-boot", "--tpm")
        ctd.ok("start", "--paused", blank)
        out = ctd.ok("hardware", blank)
        assert "firmware: UEFI (OVMF), secure boot on" in out and "tpm: TPM 2.0" in out, out
        vm = ctd.instance(blank)["vm"]
        assert (vm["firmware"], vm["secure_boot"], vm["tpm"]) == ("uefi", True, True), vm
        assert "UEFI, secure boot on, TPM 2.0" in ctd.ok("status", blank)
        hw = ctd.client.get(f"/1.0/instances/{blank}/hardware")["hardware"]
        files = " ".join((b.get("inserted") or {}).get("file", "") for b in hw["block"])
        assert "OVMF_CODE_4M.ms.fd" in files and f"{blank}/OVMF_VARS.fd" in files
        assert hw["tpm"] and hw["tpm"][0]["model"] == "tpm-crb"
        # a backup keeps the firmware, its variables and the TPM state: the restore is UEFI again
        ctd.ok("stop", "--timeout", "1", blank)
        ctd.ok("backup", blank, str(tmp_path / "uefi.backup"), timeout=300)
        ctd.ok("restore", str(tmp_path / "uefi.backup"), "--name", restored, timeout=300)
        vm = ctd.instance(restored)["vm"]
        assert (vm["firmware"], vm["secure_boot"], vm["tpm"]) == ("uefi", True, True), vm
        assert (base / restored / "OVMF_VARS.fd").read_bytes() == (base / blank / "OVMF_VARS.fd").read_bytes()
        assert any((base / restored / "tpm").iterdir())
        # refused: secure boot without UEFI, and on a template VM (no shim on its disk)
        r = ctd.ctl("create", ctd.unique("bad"), "--type", "vm", "--disk", "64M", "--secure-boot")
        assert r.code != 0 and "--firmware uefi" in r.err, r.err
        r = ctd.ctl("create", tmpl, "--type", "vm", "--template", "busybox", "--disk", "64M",
                    "--firmware", "uefi", "--secure-boot")
        assert r.code != 0 and "install the VM from an ISO" in r.err, r.err
        # UEFI without secure boot: OVMF boots the host's kernel, the guest comes up, the seed is read
        ctd.ok("create", tmpl, "--type", "vm", "--template", "busybox", "--disk", "64M", "--ram", "256M",
               "--net", "none", "--firmware", "uefi", timeout=120)
        ctd.ok("start", tmpl)
        assert "firmware: UEFI (OVMF), secure boot off" in ctd.ok("hardware", tmpl)
        console_says(ctd, tmpl, "echo HN=$(hostname); ls /sys/firmware/efi >/dev/null && echo E''FI", "EFI",
                     timeout=300)
        console_says(ctd, tmpl, "echo HN=$(hostname)", f"HN={tmpl}")
    finally:
        for name in (blank, tmpl, restored):
            ctd.ctl("destroy", "--force", name)
