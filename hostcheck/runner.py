"""run_checks: every host check, in a stable order."""

from __future__ import annotations

from pathlib import Path

from .cgroups import check_cgroups
from .idmap import check_idmapped_mounts
from .kconfig import check_kernel_config
from .kvm import check_kvm
from .model import CheckResult
from .tools import check_tools
from .userns import check_subids, check_userns_limits


def run_checks(kernel_config: Path | None = None, pool_path: Path | None = None) -> list[CheckResult]:
    """All checks. kernel_config: a config file to check instead of the running kernel's;
    pool_path: ctd's storage pool directory (default /var/lib/ctd or its nearest parent)."""
    return [
        *check_kernel_config(kernel_config),
        *check_cgroups(),
        *check_userns_limits(),
        *check_subids(),
        check_idmapped_mounts(pool_path),
        check_kvm(),
        *check_tools(),
    ]
