"""Kernel configuration: read the running kernel's config and check the fragment's options."""

from __future__ import annotations

import gzip
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

from .fragment import FRAGMENT_REF, KOption, load_fragment, parse_version
from .model import CheckResult, bad, ok, warn

PROC_CONFIG = Path("/proc/config.gz")
_HEADER = re.compile(r"^#\s*Linux/(\S+)\s+(\d+\.\d+\S*)\s+Kernel Configuration", re.M)
_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$", re.M)
_MACHINE_ARCH = {"x86_64": "x86", "i686": "x86", "i386": "x86", "aarch64": "arm64",
                 "armv7l": "arm", "ppc64le": "powerpc", "s390x": "s390", "riscv64": "riscv"}


@dataclass(frozen=True)
class KernelConfig:
    source: str  # the file read
    values: dict[str, str] = field(default_factory=dict)  # CONFIG_... -> "y" / "m" / "0x10" ...
    version: tuple[int, int] | None = None
    arch: str | None = None  # kconfig SRCARCH: x86, arm64 ...

    def enabled(self, name: str) -> bool:
        return self.values.get(name) in ("y", "m")


def kernel_release() -> str:
    return os.uname().release


def default_config_paths() -> list[Path]:
    return [PROC_CONFIG, Path("/boot") / f"config-{kernel_release()}"]


def parse_config(text: str, source: str, running: bool) -> KernelConfig:
    values = {m.group(1): m.group(2).strip().strip('"') for m in _SET.finditer(text)}
    version: tuple[int, int] | None = None
    arch: str | None = None
    if m := _HEADER.search(text):
        arch, version = m.group(1), parse_version(m.group(2))
    if running:  # the running kernel: uname is authoritative
        version = parse_version(kernel_release()) or version
        arch = arch or _MACHINE_ARCH.get(platform.machine())
    return KernelConfig(source, values, version, arch)


def read_config(path: Path | None = None) -> KernelConfig | None:
    """The given config file (plain or gzip), else the running kernel's; None if unreadable."""
    candidates = [path] if path else default_config_paths()
    for p in candidates:
        try:
            data = p.read_bytes()
        except OSError:
            continue
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        return parse_config(data.decode(errors="replace"), str(p), running=path is None)
    return None


def _applicable(opt: KOption, cfg: KernelConfig) -> str | None:
    """Why the option does not apply to this kernel, or None when it does."""
    if opt.since and cfg.version and cfg.version < opt.since:
        return f"not applicable: kernel {cfg.version[0]}.{cfg.version[1]} predates it ({opt.since[0]}.{opt.since[1]})"
    if opt.arch and cfg.arch and opt.arch != cfg.arch:
        return f"not applicable on {cfg.arch}"
    return None


def _wanted(opt: KOption) -> str:
    return f"{opt.name}=m (or =y)" if opt.value == "m" else f"{opt.name}=y"


def check_option(opt: KOption, cfg: KernelConfig, group: list[KOption]) -> CheckResult:
    category = f"kernel/{opt.section}"
    value = cfg.values.get(opt.name)
    if cfg.enabled(opt.name):
        return ok(opt.name, f"={value}: {opt.purpose}", category, opt.required)
    if reason := _applicable(opt, cfg):
        return ok(opt.name, f"{reason}: {opt.purpose}", category, opt.required)
    state = "not set" if value is None or value == "n" else f"={value}"
    peers = [o for o in group if o is not opt and _applicable(o, cfg) is None]
    if provider := next((o for o in peers if cfg.enabled(o.name)), None):
        return ok(opt.name, f"{state}; {provider.name}={cfg.values[provider.name]} covers "
                  f"'{opt.any_of}': {opt.purpose}", category, opt.required)
    if peers:
        names = ", ".join(o.name for o in [opt, *peers])
        fix = f"rebuild the kernel with one of {names} (=y or =m; see {FRAGMENT_REF})"
    else:
        fix = f"rebuild the kernel with {_wanted(opt)} (see {FRAGMENT_REF})"
    return bad(opt.name, f"{state}: {opt.purpose}", fix, category, opt.required)


def check_kernel_config(path: Path | None = None, fragment: Path | None = None) -> list[CheckResult]:
    options = load_fragment(fragment)
    cfg = read_config(path)
    if cfg is None:
        tried = ", ".join(str(p) for p in default_config_paths())
        return [warn("kernel-config", f"cannot read the kernel configuration ({tried}); "
                     "kernel options not checked",
                     "modprobe configs (provides /proc/config.gz), or install the running "
                     "kernel's config as /boot/config-$(uname -r)", "kernel")]
    ver = f" {cfg.version[0]}.{cfg.version[1]}" if cfg.version else ""
    results = [ok("kernel-config", f"read {cfg.source} (Linux/{cfg.arch or '?'}{ver}); "
                  f"{len(options)} options from {FRAGMENT_REF}", "kernel")]
    for opt in options:
        group = [o for o in options if opt.any_of and o.any_of == opt.any_of]
        results.append(check_option(opt, cfg, group))
    return results
