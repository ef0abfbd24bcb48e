"""Host programs, firmware and Python modules that ctd drives."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from .model import CheckResult, bad, ok

CATEGORY = "tools"
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/local/bin",
                               "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
# machine -> (qemu binary, Debian package)
QEMU = {"x86_64": ("qemu-system-x86_64", "qemu-system-x86"),
        "aarch64": ("qemu-system-aarch64", "qemu-system-arm"),
        "ppc64le": ("qemu-system-ppc64", "qemu-system-ppc"),
        "s390x": ("qemu-system-s390x", "qemu-system-misc"),
        "riscv64": ("qemu-system-riscv64", "qemu-system-misc")}
# machine -> (UEFI firmware candidates, Debian package)
FIRMWARE = {
    "x86_64": (["/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd",
                "/usr/share/ovmf/OVMF.fd", "/usr/share/edk2/ovmf/OVMF_CODE.fd",
                "/usr/share/edk2/x64/OVMF_CODE.fd", "/usr/share/qemu/OVMF.fd"], "ovmf"),
    "aarch64": (["/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd",
                 "/usr/share/edk2/aarch64/QEMU_EFI.fd"], "qemu-efi-aarch64"),
}


@dataclass(frozen=True)
class Tool:
    name: str  # check name: tool:<name>
    programs: tuple[str, ...]  # all must be found
    package: str  # Debian package(s) to install
    use: str
    required: bool = False


def tools_for(machine: str) -> list[Tool]:
    qemu, qemu_pkg = QEMU.get(machine, (f"qemu-system-{machine}", "qemu-system"))
    return [
        Tool("btrfs-progs", ("mkfs.btrfs", "btrfs"), "btrfs-progs", "btrfs storage pool"),
        Tool("lxcfs", ("lxcfs",), "lxcfs", "container-scoped /proc/meminfo, uptime, cpuinfo"),
        Tool("nftables", ("nft",), "nftables", "MAC/IP anti-spoofing rules, traffic counters"),
        Tool("dnsmasq", ("dnsmasq",), "dnsmasq-base", "DHCP and DNS for instance names on ctd's networks"),
        Tool("qemu", (qemu,), qemu_pkg, "virtual machines"),
        Tool("swtpm", ("swtpm", "swtpm_setup"), "swtpm swtpm-tools", "TPM 2.0 for Windows VMs"),
        Tool("genisoimage", ("genisoimage",), "genisoimage", "cloud-init seed CD-ROM of Linux VMs"),
        Tool("mmdebstrap", ("mmdebstrap",), "mmdebstrap", "Debian templates"),
    ]


def which(program: str) -> str | None:
    return shutil.which(program, path=SEARCH_PATH)


def check_tool(tool: Tool) -> CheckResult:
    found = {p: which(p) for p in tool.programs}
    missing = [p for p, path in found.items() if path is None]
    if missing:
        return bad(f"tool:{tool.name}", f"{', '.join(missing)} not found ({tool.use})",
                   f"apt-get install {tool.package}", CATEGORY, tool.required)
    return ok(f"tool:{tool.name}", f"{', '.join(str(p) for p in found.values())} ({tool.use})",
              CATEGORY, tool.required)


def check_firmware(machine: str) -> CheckResult | None:
    if machine not in FIRMWARE:
        return None
    candidates, package = FIRMWARE[machine]
    found = next((c for c in candidates if Path(c).is_file()), None)
    if found is None:
        return bad("tool:ovmf", f"no UEFI firmware ({candidates[0]} …): UEFI and Windows VMs "
                   "unavailable", f"apt-get install {package}", CATEGORY, False)
    return ok("tool:ovmf", f"{found} (UEFI firmware for VMs)", CATEGORY)


def is_static_elf(path: Path) -> bool | None:
    """True when the ELF file has no PT_INTERP (statically linked); None if not a readable ELF."""
    try:
        with path.open("rb") as f:
            ident = f.read(64)
            if len(ident) < 64 or ident[:4] != b"\x7fELF":
                return None
            is64, endian = ident[4] == 2, "<" if ident[5] == 1 else ">"
            if is64:
                phoff, = struct.unpack_from(endian + "Q", ident, 0x20)
                phentsize, phnum = struct.unpack_from(endian + "HH", ident, 0x36)
            else:
                phoff, = struct.unpack_from(endian + "I", ident, 0x1C)
                phentsize, phnum = struct.unpack_from(endian + "HH", ident, 0x2A)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return None
    PT_INTERP = 3
    types = [struct.unpack_from(endian + "I", table, i * phentsize)[0] for i in range(phnum)
             if (i + 1) * phentsize <= len(table)]
    return PT_INTERP not in types


def check_busybox() -> CheckResult:
    use = "busybox template; copied into containers, so it must be static"
    path = Path("/bin/busybox") if Path("/bin/busybox").exists() else None
    path = path or (Path(p) if (p := which("busybox")) else None)
    if path is None:
        return bad("tool:busybox", f"not found ({use})", "apt-get install busybox-static",
                   CATEGORY, False)
    if is_static_elf(path.resolve()) is False:
        return bad("tool:busybox", f"{path} is dynamically linked ({use})",
                   "apt-get install busybox-static", CATEGORY, False)
    return ok("tool:busybox", f"{path}, static ({use})", CATEGORY)


def check_module(module: str, pip_name: str, use: str, required: bool, hint: str = "") -> CheckResult:
    name = f"python:{pip_name}"
    if importlib.util.find_spec(module) is None:
        return bad(name, f"module {module!r} not importable ({use})",
                   f"pip install {pip_name}{hint}", "python", required)
    return ok(name, f"module {module!r} importable ({use})", "python", required)


def check_tools(machine: str | None = None) -> list[CheckResult]:
    machine = machine or platform.machine()
    results = [check_tool(t) for t in tools_for(machine)]
    if (fw := check_firmware(machine)) is not None:
        results.append(fw)
    results.append(check_busybox())
    results.append(check_module("prctl", "python-prctl", "capability bounding for containers",
                                True, " (build needs: apt-get install libcap-dev)"))
    results.append(check_module("pyroute2", "pyroute2", "netlink: bridges, veths, addresses",
                                False))
    return results
