"""Can QEMU use KVM here, or must VMs fall back to TCG (software emulation)?"""

from __future__ import annotations

import fcntl
import os
import platform
from pathlib import Path

from .model import CheckResult, ok, warn

DEV_KVM = Path("/dev/kvm")
PVM_MODULE = Path("/sys/module/kvm_pvm")
CPUINFO = Path("/proc/cpuinfo")
KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO, 0x00)
KVM_API_VERSION = 12


def _cpu_flags(cpuinfo: Path) -> set[str]:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def kvm_usable(dev: Path = DEV_KVM, pvm_module: Path = PVM_MODULE,
               cpuinfo: Path = CPUINFO, machine: str | None = None) -> tuple[bool, str]:
    """(usable, reason). False when /dev/kvm is absent, backed by PVM, or the CPU lacks vmx/svm."""
    if not dev.exists():
        return False, f"{dev} does not exist (KVM module not loaded, or no hardware virtualization)"
    if pvm_module.exists():
        return False, (f"{dev} is backed by kvm_pvm (paravirtualized KVM for nested guests): "
                       "stock guest kernels hang or fail under it")
    if (machine or platform.machine()) in ("x86_64", "i686", "i386"):
        flags = _cpu_flags(cpuinfo)
        if not flags & {"vmx", "svm"}:
            return False, "the CPU shows no vmx/svm flag (VT-x/AMD-V absent or disabled)"
    try:
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return False, f"cannot open {dev}: {e.strerror}"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as e:
        return False, f"KVM_GET_API_VERSION on {dev} failed: {e.strerror}"
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return False, f"{dev} reports KVM API version {version}, expected {KVM_API_VERSION}"
    return True, f"{dev} usable (KVM API {version})"


def check_kvm() -> CheckResult:
    usable, reason = kvm_usable()
    if usable:
        return ok("kvm", f"{reason}: VMs run with accel=kvm", "virtualization")
    return warn("kvm", f"not usable: {reason}; VMs fall back to TCG (software emulation: they "
                "boot and work, but run many times slower)",
                "run ctd on hardware with VT-x/AMD-V enabled in the firmware (or with nested "
                "virtualization exposed to this guest) and load kvm_intel or kvm_amd",
                "virtualization")
