"""Resource limits for ctd's containers on cgroup v1 or v2, and OpenVZ's beancounter view.

    mgr = detect_manager(base_name="ctd")    # picks the backend for this host
    grp = mgr.group("ct-101"); grp.create(); grp.apply(Resources(memory_max=parse_size("1G")))

Imports nothing from ctd or ctctl.
"""
from __future__ import annotations

from .base import CgroupGroup, CgroupManager
from .beancounters import LONG_MAX, build_beancounters, format_beancounters
from .detect import detect_manager
from .discovery import Hierarchy, discover
from .errors import CgroupError
from .fs import CgroupFS
from .model import (
    Beancounter,
    DeviceRule,
    DeviceType,
    IoLimit,
    Resources,
    Usage,
    cpu_shares_to_weight,
    cpu_weight_to_shares,
)
from .units import UNLIMITED, parse_count, parse_cpulist, parse_limit, parse_size
from .v1 import V1Group, V1Manager
from .v2 import V2Group, V2Manager

__all__ = [
    "UNLIMITED", "LONG_MAX", "Beancounter", "CgroupError", "CgroupFS", "CgroupGroup",
    "CgroupManager", "DeviceRule", "DeviceType", "Hierarchy", "IoLimit", "Resources", "Usage", "V1Group", "V1Manager",
    "V2Group", "V2Manager", "build_beancounters", "cpu_shares_to_weight",
    "cpu_weight_to_shares", "detect_manager", "discover", "format_beancounters", "parse_count",
    "parse_cpulist", "parse_limit", "parse_size",
]
