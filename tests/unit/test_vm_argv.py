"""VmSpec -> QEMU argv, for both profiles, without running QEMU."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ctd.errors import InvalidRequest, NotFound
from ctd.instance.vm.argv import HYPERV_KVM, HYPERV_TCG, build_argv, esc, kv
from ctd.instance.vm.spec import MiB, Disk, Firmware, Nic, VmSpec

UUID = "6b1e8a34-5f3c-4e4e-9d55-0a3c5c9e2f10"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Every file a spec may point at, plus an executable that stands in for QEMU."""
    f = {}
    for name in ("disk.qcow2", "data.raw", "vmlinux", "initrd", "win.iso", "virtio-win.iso", "seed.iso",
                 "CODE.fd", "VARS.fd"):
        f[name] = tmp_path / name
        f[name].write_bytes(b"x")
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.write_text("#!/bin/sh\n")
    qemu.chmod(qemu.stat().st_mode | stat.S_IXUSR)
    f["qemu"] = qemu
    f["run"] = tmp_path / "run"
    return f


def linux(files: dict[str, Path], **kw: object) -> VmSpec:
    base: dict[str, object] = dict(name="web1", uuid=UUID, ram=512 * MiB, cpus=2, run_dir=files["run"],
                                   accel="tcg", machine="pc", qemu=str(files["qemu"]),
                                   disks=[Disk(files["disk.qcow2"], "qcow2")],
                                   kernel=files["vmlinux"], initrd=files["initrd"],
                                   append="console=ttyS0 root=/dev/vda rw quiet",
                                   nics=[Nic("vm100n0", "52:54:00:aa:bb:01")])
    base.update(kw)
    return VmSpec(**base)  # type: ignore[arg-type]


def windows(files: dict[str, Path], **kw: object) -> VmSpec:
    base: dict[str, object] = dict(name="win11", uuid=UUID, ram=4096 * MiB, cpus=4, run_dir=files["run"],
                                   profile="windows", accel="tcg", qemu=str(files["qemu"]),
                                   firmware=Firmware(files["CODE.fd"], files["VARS.fd"], secure_boot=True),
                                   disks=[Disk(files["disk.qcow2"], "qcow2")], cdroms=[files["win.iso"]],
                                   drivers_iso=files["virtio-win.iso"],
                                   nics=[Nic("vm101n0", "52:54:00:aa:bb:02")])
    base.update(kw)
    return VmSpec(**base)  # type: ignore[arg-type]


def values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def one(argv: list[str], flag: str) -> str:
    got = values(argv, flag)
    assert len(got) == 1, (flag, got)
    return got[0]


def test_linux_profile_argv(files: dict[str, Path]) -> None:
    spec = linux(files)
    argv = build_argv(spec)
    run = files["run"]
    assert argv[0] == str(files["qemu"])
    for flag in ("-nodefaults", "-no-user-config", "-daemonize"):
        assert argv.count(flag) == 1
    assert "-S" not in argv
    assert one(argv, "-name") == "web1,process=qemu-web1"
    assert one(argv, "-uuid") == UUID
    assert one(argv, "-machine") == "pc"
    assert one(argv, "-accel") == "tcg,tb-size=128"   # not QEMU's 1 GiB translation cache
    assert one(argv, "-cpu") == "max"
    assert one(argv, "-smp") == "2,sockets=1,cores=2,threads=1,maxcpus=2"
    assert one(argv, "-m") == "512M"
    assert one(argv, "-rtc") == "base=utc"
    assert values(argv, "-chardev") == [f"socket,id=serial0,path={run}/serial.sock,server=on,wait=off,"
                                        f"logfile={run}/serial.log",
                                        # the guest agent's channel (vm/agent.py), served by QEMU
                                        f"socket,id=agent0,path={run}/agent.sock,server=on,wait=off"]
    assert "virtserialport,bus=vserial0.0,chardev=agent0,name=org.qemu.guest_agent.0" in values(argv, "-device")
    assert one(argv, "-serial") == "chardev:serial0"
    assert one(argv, "-qmp") == f"unix:{run}/qmp.sock,server=on,wait=off"
    assert one(argv, "-display") == "none"
    assert one(argv, "-vnc") == f"unix:{run}/vnc.sock"
    assert one(argv, "-pidfile") == f"{run}/qemu.pid"
    assert one(argv, "-kernel") == str(files["vmlinux"])
    assert one(argv, "-initrd") == str(files["initrd"])
    assert one(argv, "-append") == "console=ttyS0 root=/dev/vda rw quiet"   # one element, unquoted
    assert one(argv, "-drive") == (f"file={files['disk.qcow2']},if=none,id=drive-disk0,format=qcow2,"
                                   "cache=none,discard=unmap")
    assert values(argv, "-device") == ["VGA,id=video0", "virtio-blk-pci,drive=drive-disk0,id=disk0,bootindex=1",
                                       "virtio-net-pci,netdev=net0,mac=52:54:00:aa:bb:01,id=nic0",
                                       "virtio-balloon-pci,id=balloon0,free-page-reporting=on",
                                       "virtio-serial-pci,id=vserial0", "virtserialport,bus=vserial0.0,chardev=agent0,name=org.qemu.guest_agent.0"]
    assert one(argv, "-netdev") == "tap,id=net0,ifname=vm100n0,script=no,downscript=no"
    for flag in ("-tpmdev", "-blockdev", "-global"):
        assert flag not in argv


def test_room_for_hot_added_vcpus_except_on_microvm(files: dict[str, Path]) -> None:
    assert one(build_argv(linux(files, cpus=1, max_cpus=4)), "-smp") == "1,sockets=1,cores=4,threads=1,maxcpus=4"
    # fewer slots than boot vCPUs: the boot count wins
    assert one(build_argv(linux(files, cpus=3, max_cpus=2)), "-smp") == "3,sockets=1,cores=3,threads=1,maxcpus=3"
    micro = build_argv(linux(files, machine="microvm", cpus=1, max_cpus=4))
    assert one(micro, "-smp") == "1,sockets=1,cores=1,threads=1,maxcpus=1"
    assert "virtio-balloon-device,id=balloon0,free-page-reporting=on" in values(micro, "-device")
    assert "virtio-balloon-pci,id=balloon0,free-page-reporting=on" not in values(build_argv(linux(files, balloon=False)), "-device")


def test_linux_defaults_to_q35_and_kvm_uses_host_cpu(files: dict[str, Path]) -> None:
    argv = build_argv(linux(files, machine=None, accel="kvm"))
    assert one(argv, "-machine") == "q35"
    assert one(argv, "-accel") == "kvm"
    assert one(argv, "-cpu") == "host"


def test_paused_and_no_vnc(files: dict[str, Path]) -> None:
    argv = build_argv(linux(files, paused=True, vnc=False))
    assert "-S" in argv and "-vnc" not in argv and "VGA,id=video0" not in argv
    assert one(argv, "-display") == "none"


def test_linux_with_cdrom_and_seed_on_pc_uses_piix_ide(files: dict[str, Path]) -> None:
    argv = build_argv(linux(files, cdroms=[files["win.iso"]], seed_iso=files["seed.iso"], kernel=None,
                            initrd=None, append=None))
    devices = values(argv, "-device")
    assert "ide-cd,bus=ide.0,unit=0,drive=drive-cd0,id=cd0,bootindex=2" in devices
    assert "ide-cd,bus=ide.0,unit=1,drive=drive-cd1,id=cd1" in devices
    assert f"file={files['seed.iso']},if=none,id=drive-cd1,media=cdrom,readonly=on,format=raw" in values(argv, "-drive")
    assert "-kernel" not in argv


def test_windows_profile_argv_tcg(files: dict[str, Path]) -> None:
    spec = windows(files)
    argv = build_argv(spec)
    run = files["run"]
    assert one(argv, "-machine") == "q35,pflash0=ovmf-code,pflash1=ovmf-vars,smm=on,hpet=off"
    assert one(argv, "-cpu") == "max," + ",".join(HYPERV_TCG)
    assert not {"hv_vpindex", "hv_synic", "hv_stimer"} & set(one(argv, "-cpu").split(","))
    assert one(argv, "-rtc") == "base=localtime"
    assert values(argv, "-blockdev") == [
        f"driver=file,node-name=ovmf-code,filename={files['CODE.fd']},read-only=on",
        f"driver=file,node-name=ovmf-vars,filename={run}/OVMF_VARS.fd"]
    assert values(argv, "-global") == ["ICH9-LPC.disable_s3=1", "ICH9-LPC.disable_s4=1",
                                       "driver=cfi.pflash01,property=secure,value=on"]
    assert values(argv, "-chardev")[1] == f"socket,id=chrtpm,path={run}/swtpm.sock"
    assert one(argv, "-tpmdev") == "emulator,id=tpm0,chardev=chrtpm"
    assert values(argv, "-device") == [
        "tpm-crb,tpmdev=tpm0",
        "qemu-xhci,id=xhci", "usb-tablet,id=tablet0,bus=xhci.0",
        "VGA,id=video0",
        "virtio-blk-pci,drive=drive-disk0,id=disk0,bootindex=1",
        "ide-cd,bus=ide.0,drive=drive-cd0,id=cd0,bootindex=2",     # install ISO
        "ide-cd,bus=ide.1,drive=drive-cd1,id=cd1",                 # virtio-win drivers
        "virtio-net-pci,netdev=net0,mac=52:54:00:aa:bb:02,id=nic0",
        "virtio-balloon-pci,id=balloon0,free-page-reporting=on",
        "virtio-serial-pci,id=vserial0", "virtserialport,bus=vserial0.0,chardev=agent0,name=org.qemu.guest_agent.0"]
    drives = values(argv, "-drive")
    assert drives[1] == f"file={files['win.iso']},if=none,id=drive-cd0,media=cdrom,readonly=on,format=raw"
    assert drives[2] == f"file={files['virtio-win.iso']},if=none,id=drive-cd1,media=cdrom,readonly=on,format=raw"


def test_windows_profile_kvm_has_every_enlightenment(files: dict[str, Path]) -> None:
    argv = build_argv(windows(files, accel="kvm"))
    cpu = one(argv, "-cpu").split(",")
    assert cpu[0] == "host" and cpu[1:] == list(HYPERV_KVM)
    assert {"hv_relaxed", "hv_vapic", "hv_spinlocks=0x1fff", "hv_time", "hv_synic", "hv_stimer",
            "hv_vpindex", "hv_reset", "hv_frequencies"} == set(cpu[1:])


def test_windows_defaults_to_debian_ovmf_secure_boot_and_tpm(files: dict[str, Path]) -> None:
    spec = windows(files, firmware=None)
    assert spec.uefi == Firmware(Path("/usr/share/OVMF/OVMF_CODE_4M.ms.fd"),
                                 Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd"), True)
    assert spec.has_tpm and spec.machine_type == "q35"
    argv = build_argv(spec, check_files=False)
    assert "filename=/usr/share/OVMF/OVMF_CODE_4M.ms.fd" in values(argv, "-blockdev")[0]
    assert build_argv(windows(files, tpm=False)).count("-tpmdev") == 0


def test_compat_uses_e1000_and_ahci(files: dict[str, Path]) -> None:
    argv = build_argv(windows(files, compat=True))
    devices = values(argv, "-device")
    assert "ide-hd,bus=ide.0,drive=drive-disk0,id=disk0,bootindex=1" in devices
    assert "ide-cd,bus=ide.1,drive=drive-cd0,id=cd0,bootindex=2" in devices
    assert "ide-cd,bus=ide.2,drive=drive-cd1,id=cd1" in devices
    assert "e1000,netdev=net0,mac=52:54:00:aa:bb:02,id=nic0" in devices
    assert not any(d.startswith("virtio") for d in devices)
    # pc has no AHCI of its own: one controller is added for the disks that want it.
    argv = build_argv(linux(files, compat=True, disks=[Disk(files["disk.qcow2"], "qcow2"), Disk(files["data.raw"])]))
    devices = values(argv, "-device")
    assert devices.count("ahci,id=ahci0") == 1
    assert devices.index("ahci,id=ahci0") < devices.index("ide-hd,bus=ahci0.0,drive=drive-disk0,id=disk0,bootindex=1")
    assert "ide-hd,bus=ahci0.1,drive=drive-disk1,id=disk1" in devices


def test_boot_cdrom_first(files: dict[str, Path]) -> None:
    devices = values(build_argv(windows(files, boot_cdrom_first=True)), "-device")
    assert "virtio-blk-pci,drive=drive-disk0,id=disk0,bootindex=2" in devices
    assert "ide-cd,bus=ide.0,drive=drive-cd0,id=cd0,bootindex=1" in devices


def test_disk_options(files: dict[str, Path]) -> None:
    argv = build_argv(linux(files, disks=[Disk(files["data.raw"], cache="writeback", readonly=True)]))
    assert one(argv, "-drive") == f"file={files['data.raw']},if=none,id=drive-disk0,format=raw,cache=writeback,readonly=on"


def test_microvm(files: dict[str, Path]) -> None:
    argv = build_argv(linux(files, machine="microvm", seed_iso=files["seed.iso"]))
    assert one(argv, "-machine") == "microvm,x-option-roms=off,isa-serial=on,acpi=on"
    devices = values(argv, "-device")
    assert devices == ["virtio-blk-device,drive=drive-disk0,id=disk0,bootindex=1",
                       "virtio-blk-device,drive=drive-cd0,id=cd0",
                       "virtio-net-device,netdev=net0,mac=52:54:00:aa:bb:01,id=nic0",
                       "virtio-balloon-device,id=balloon0,free-page-reporting=on",
                       "virtio-serial-device,id=vserial0", "virtserialport,bus=vserial0.0,chardev=agent0,name=org.qemu.guest_agent.0"]
    assert "-vnc" not in argv


def test_paths_with_commas_spaces_and_quotes_stay_one_argument(tmp_path: Path, files: dict[str, Path]) -> None:
    odd = tmp_path / "d, 'q' \"x\" $H"
    odd.mkdir()
    disk = odd / "a,b.qcow2"
    disk.write_bytes(b"x")
    run = odd / "r,d"
    spec = linux(files, disks=[Disk(disk, "qcow2")], run_dir=run)
    argv = build_argv(spec)
    assert one(argv, "-drive").startswith(f"file={str(disk).replace(',', ',,')},if=none,")
    assert one(argv, "-qmp") == f"unix:{str(run).replace(',', ',,')}/qmp.sock,server=on,wait=off"
    assert one(argv, "-vnc") == f"unix:{str(run).replace(',', ',,')}/vnc.sock"
    assert one(argv, "-pidfile") == f"{run}/qemu.pid"     # a plain path option: no escaping
    assert not any(a.startswith(("'", '"')) for a in argv)


def test_esc_and_kv() -> None:
    assert esc("a,b,,c") == "a,,b,,,,c"
    assert kv("tap", {"id": "net0", "vhost": None, "ifname": "x,y"}) == "tap,id=net0,ifname=x,,y"
    assert kv("", {"a": 1}) == "a=1"


@pytest.mark.parametrize("change, message", [
    ({"name": "Bad_Name"}, "invalid VM name"),
    ({"uuid": "not-a-uuid"}, "invalid VM uuid"),
    ({"ram": 100 * MiB + 1}, "whole number of MiB"),
    ({"ram": 8 * MiB}, "at least 16 MiB"),
    ({"cpus": 0}, "cpu count"),
    ({"accel": "hvf"}, "unknown accelerator"),
    ({"machine": "isapc"}, "unknown machine"),
    ({"profile": "bsd"}, "unknown VM profile"),
    ({"machine": "microvm", "kernel": None, "initrd": None, "append": None}, "give a kernel"),
    ({"kernel": None}, "need a kernel"),
    ({"append": "a\nb"}, "NUL or newline"),
    ({"nics": [Nic("vm100n0", "53:54:00:aa:bb:01")]}, "multicast"),
    ({"nics": [Nic("vm100n0", "52:54:00:AA:BB:01")]}, "lowercase"),
    ({"nics": [Nic("a-very-long-tap-name", "52:54:00:aa:bb:01")]}, "invalid tap name"),
    ({"nics": [Nic("t0", "52:54:00:aa:bb:01"), Nic("t1", "52:54:00:aa:bb:01")]}, "unique"),
    ({"nics": [Nic("t0", "52:54:00:aa:bb:01", "rtl8139")]}, "unknown NIC model"),
    ({"disks": [Disk(Path("relative.img"))]}, "must be absolute"),
    ({"disks": [Disk(Path("/x.img"), "vmdk")]}, "unknown format"),
    ({"disks": [Disk(Path("/x.img"), bus="scsi")]}, "unknown bus"),
    ({"disks": [Disk(Path("/x.img"), cache="fast")]}, "unknown cache"),
    ({"run_dir": Path("/" + "r" * 100)}, "too long"),
    ({"firmware": Firmware(Path("/c"), Path("/v"), secure_boot=True)}, "needs SMM"),
    ({"tpm": True, "machine": "microvm"}, "TPM needs"),
])
def test_invalid_specs(files: dict[str, Path], change: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        build_argv(linux(files, **change))


def test_windows_needs_q35(files: dict[str, Path]) -> None:
    with pytest.raises(InvalidRequest, match="needs machine q35"):
        build_argv(windows(files, machine="pc"))


def test_too_many_cdroms_on_pc(files: dict[str, Path]) -> None:
    isos = [files["win.iso"]] * 4 + [files["seed.iso"]]
    with pytest.raises(InvalidRequest, match="no free IDE port for CD-ROM"):
        build_argv(linux(files, cdroms=isos))


@pytest.mark.parametrize("change, message", [
    ({"disks": [Disk(Path("/nonexistent/disk.img"))]}, "disk image .raw. /nonexistent/disk.img does not exist"),
    ({"kernel": Path("/nonexistent/vmlinux")}, "kernel /nonexistent/vmlinux does not exist"),
    ({"seed_iso": Path("/nonexistent/seed.iso")}, "cloud-init seed ISO"),
    ({"qemu": "/nonexistent/qemu"}, "qemu-system-x86"),
])
def test_missing_files_are_not_found(files: dict[str, Path], change: dict[str, object], message: str) -> None:
    with pytest.raises(NotFound, match=message):
        build_argv(linux(files, **change))


def test_missing_firmware_and_drivers(files: dict[str, Path]) -> None:
    with pytest.raises(NotFound, match="UEFI firmware code /nope/CODE.fd .*apt-get install ovmf"):
        build_argv(windows(files, firmware=Firmware(Path("/nope/CODE.fd"), files["VARS.fd"], True)))
    with pytest.raises(NotFound, match="driver ISO"):
        build_argv(windows(files, drivers_iso=Path("/nope/virtio-win.iso")))
    # Once the per-VM copy exists the template is not needed any more.
    nvram = files["run"] / "OVMF_VARS.fd"
    nvram.parent.mkdir()
    nvram.write_bytes(b"v")
    build_argv(windows(files, firmware=Firmware(files["CODE.fd"], Path("/gone/VARS.fd"), True)))


def test_block_device_disks_are_accepted(files: dict[str, Path]) -> None:
    if not os.path.exists("/dev/null"):
        pytest.skip("no /dev")
    with pytest.raises(NotFound):   # a character device is not a disk
        build_argv(linux(files, disks=[Disk(Path("/dev/null"))]))


def test_runtime_paths(files: dict[str, Path]) -> None:
    spec = windows(files, nvram=Path("/var/lib/ctd/vm/win11/OVMF_VARS.fd"),
                   tpm_state_dir=Path("/var/lib/ctd/vm/win11/tpm"))
    run = files["run"]
    assert [spec.qmp_socket, spec.serial_socket, spec.vnc_socket, spec.pidfile, spec.swtpm_socket] == [
        run / "qmp.sock", run / "serial.sock", run / "vnc.sock", run / "qemu.pid", run / "swtpm.sock"]
    assert spec.nvram_path == Path("/var/lib/ctd/vm/win11/OVMF_VARS.fd")
    assert spec.tpm_dir == Path("/var/lib/ctd/vm/win11/tpm")
    assert spec.all_cdroms() == [files["win.iso"], files["virtio-win.iso"]]


def test_pick_accel_answers_with_a_reason() -> None:
    from ctd.instance.vm.spec import pick_accel

    accel, reason = pick_accel()
    assert accel in ("kvm", "tcg") and reason


def test_ctds_vms_have_no_growing_qemu_serial_log(files: dict[str, Path]) -> None:
    """ctd reads the serial socket itself into a fixed-size ring (ctd/instance/vm/serial.py):
    QEMU's logfile, which a flooding guest grows without end, is left out."""
    run = files["run"]
    argv = build_argv(linux(files, serial_logfile=False))
    serial = [v for k, v in zip(argv, argv[1:]) if k == "-chardev" and "id=serial0" in v]
    assert serial == [f"socket,id=serial0,path={run}/serial.sock,server=on,wait=off"]   # no logfile=
