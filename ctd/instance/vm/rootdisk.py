"""A bootable disk from a container template: the same root, configured the same way.

The template's root (a snapshot on btrfs, so no copy) gets the guest settings and the
host kernel's network and disk modules, then `mkfs.ext4 -d` turns it into a raw ext4 disk.
The VM boots Debian's kernel from the host's /boot directly (no bootloader in the image).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ctd import guestfs
from ctd.errors import NotFound, OperationFailed

# What a guest needs from the kernel's modules when its root is on virtio and its NIC too.
# button + evdev: the ACPI power button reaches systemd-logind, so `ctctl stop` powers off cleanly.
# virtio_balloon: `set --ram` on a running VM; sr_mod + isofs: the cloud-init seed CD-ROM is readable
# (on ata_piix, or ahci on q35: UEFI VMs).
MODULES = ("virtio_net", "net_failover", "failover", "virtio_blk", "virtio_console", "9pnet_virtio",
           "e1000", "ext4", "crc16", "mbcache", "jbd2", "button", "evdev", "virtio_balloon",
           "ata_piix", "ahci", "sr_mod", "cdrom", "isofs")
# Hot-added vCPUs (`set --cpus` on a running VM) come up offline; this is the rule distributions
# that expect hotplug (Ubuntu's 40-vm-hotadd.rules) ship.
CPU_HOTADD_RULE = 'SUBSYSTEM=="cpu", ACTION=="add", TEST=="online", ATTR{online}=="0", ATTR{online}="1"\n'


@dataclass(frozen=True)
class Kernel:
    version: str
    vmlinuz: Path
    initrd: Path


def host_kernel() -> Kernel:
    """Debian's newest installed kernel (package linux-image-amd64)."""
    candidates = sorted(Path("/boot").glob("vmlinuz-*"), key=lambda p: p.stat().st_mtime)
    for vmlinuz in reversed(candidates):
        version = vmlinuz.name[len("vmlinuz-"):]
        initrd = Path(f"/boot/initrd.img-{version}")
        if initrd.exists() and Path(f"/lib/modules/{version}").is_dir():
            return Kernel(version, vmlinuz, initrd)
    raise NotFound("no kernel with initrd and modules in /boot: apt-get install linux-image-amd64")


def _module_files(version: str) -> list[Path]:
    base = Path(f"/lib/modules/{version}")
    dep = (base / "modules.dep").read_text().splitlines()
    index = {}
    for line in dep:
        path, _, needs = line.partition(":")
        index[Path(path).name.split(".")[0]] = (path, needs.split())
    wanted: set[str] = set()
    todo = [m for m in MODULES if m in index]
    while todo:
        name = todo.pop()
        if name in wanted or name not in index:
            continue
        wanted.add(name)
        todo += [Path(n).name.split(".")[0] for n in index[name][1]]
    return [base / index[m][0] for m in wanted]


def add_kernel_modules(rootfs: Path, kernel: Kernel) -> None:
    """Copy the few modules the guest needs into its root, then index them there."""
    base = Path(f"/lib/modules/{kernel.version}")
    target = rootfs / "lib/modules" / kernel.version
    for module in _module_files(kernel.version):
        dest = target / module.relative_to(base)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(module, dest)
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (base / name).exists():
            shutil.copy2(base / name, target / name)
    # loaded at boot even where the guest has no udev to load them by device; isofs because a
    # minbase guest has no modprobe for the kernel to load it on mount
    guestfs.make_dirs(rootfs, "/etc/modules-load.d")
    guestfs.write_file(rootfs, "/etc/modules-load.d/ctd-vm.conf",
                       "virtio_net\nvirtio_blk\nvirtio_console\nbutton\nevdev\nvirtio_balloon\nisofs\n")
    guestfs.make_dirs(rootfs, "/etc/udev/rules.d")
    guestfs.write_file(rootfs, "/etc/udev/rules.d/40-ctd-vcpu-hotadd.rules", CPU_HOTADD_RULE)
    result = subprocess.run(["depmod", "-b", str(rootfs), kernel.version], capture_output=True, text=True)
    if result.returncode != 0:
        raise OperationFailed(f"depmod for the VM's modules failed: {result.stderr.strip()}")


def has_udev(rootfs: Path) -> bool:
    """Whether the guest runs udev (and so ctd's vCPU rule); busybox's template does not."""
    # lexists: a link's target is the guest's path, never followed into the host's tree
    return any(os.path.lexists(rootfs / d / "udevadm") for d in ("usr/bin", "usr/sbin", "bin", "sbin"))


def make_disk(rootfs: Path, image: Path, size: int) -> None:
    """A raw ext4 disk of size bytes holding rootfs (sparse; nodatacow on btrfs)."""
    image.touch(mode=0o600)
    subprocess.run(["chattr", "+C", str(image)], capture_output=True)  # btrfs: no COW for a VM disk
    os.truncate(image, size)
    guestfs.write_file(rootfs, "/etc/fstab", "/dev/vda / ext4 defaults,errors=remount-ro 0 1\n")
    result = subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(rootfs), str(image)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        image.unlink(missing_ok=True)
        raise OperationFailed(f"mkfs.ext4 could not make the VM's disk: {result.stderr.strip()}")


MOUNT_DIR = ".mnt"


def release_stale_mount(vm_dir: Path) -> bool:
    """A mount that mounted() left when ctd died inside it: unmounted (its loop device goes
    with it) and the directory removed. True if there was one."""
    point = vm_dir / MOUNT_DIR
    if not point.exists():
        return False
    if os.path.ismount(point):
        subprocess.run(["umount", str(point)], capture_output=True)
    with contextlib.suppress(OSError):
        point.rmdir()
    return True


@contextlib.contextmanager
def mounted(image: Path) -> Iterator[Path]:
    """The ext4 root of a template-built disk, mounted (loop, nosuid, nodev, noexec) in a private
    directory beside it while ctd writes the guest's settings into it (VM stopped).

    This trusts the host kernel's ext4 with a filesystem the guest has written; ctd only does
    it for disks it made itself (template VMs), never for installed ones."""
    point = image.with_name(MOUNT_DIR)
    point.mkdir(mode=0o700, exist_ok=True)
    try:
        result = subprocess.run(["mount", "-t", "ext4", "-o", "loop,nosuid,nodev,noexec", str(image), str(point)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise OperationFailed(f"cannot mount the VM's disk to configure it: {result.stderr.strip()}")
        try:
            yield point
        finally:
            # the loop device goes with the mount (mount -o loop sets autoclear)
            subprocess.run(["umount", str(point)], capture_output=True, check=True)
    finally:
        with contextlib.suppress(OSError):
            point.rmdir()


def kernel_cmdline(extra: str = "") -> str:
    console = "ttyS0" if platform.machine() in ("x86_64", "i686") else "ttyAMA0"
    return f"root=/dev/vda rw console={console} net.ifnames=0 panic=-1 {extra}".strip()


def blank_disk(image: Path, size: int) -> None:
    """An empty sparse raw disk (for installing from an ISO)."""
    image.touch(mode=0o600)
    subprocess.run(["chattr", "+C", str(image)], capture_output=True)
    os.truncate(image, size)
