"""Projects (tenants) as plain data, and the limit arithmetic (pure: unit-tested without a daemon).

A project has limits on what its instances use together: `instances` (how many), `ram` (the sum
of their RAM limits), `cpus` (the sum of their CPU counts), `disk` (the sum of their disk limits:
a container's diskspace, a VM's disk size), `addresses` (IP addresses on their NICs) and
`snapshots` (over all of them). A limit absent is unlimited.

Contract:
- check_limits(raw) turns a request's {"ram": "8G", "instances": 5, ...} into normalised ints;
  "unlimited" (or null) in a change removes a limit.
- refusal(project, before, after) is None when `after` fits or does not grow beyond `before` in
  any limited figure (lowering a limit below today's usage does not break what exists; it only
  refuses growth); otherwise the message naming the first limit, the usage and what to do:
  "project acme: 5 instances of 5; raise limits.instances or destroy one".
- missing_limit(project, instance_limits) names a figure the project limits but the instance
  leaves unlimited (an instance without a RAM limit would make the project's RAM limit moot).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

from cgroups import UNLIMITED, parse_count, parse_size
from ctd.errors import InvalidRequest

DEFAULT = "default"
# No '-': an instance of project P is named "P-..." (docs/remote.md, "Names"), so no project's
# prefix is another's.
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,30}$")
SIZE_LIMITS = frozenset({"ram", "disk"})
LIMITS: dict[str, str] = {
    "instances": "how many instances the project may have",
    "ram": "the sum of its instances' RAM limits, e.g. 8G",
    "cpus": "the sum of its instances' CPU counts",
    "disk": "the sum of its instances' disk limits (a container's diskspace, a VM's disk), e.g. 100G",
    "addresses": "how many IP addresses its instances' NICs may hold",
    "snapshots": "how many snapshots its instances may have together",
    "backups": "how many backups its instances may have together in the node's backup_dir",
}
# What to do when a limit is reached, after "raise limits.X or ...".
REMEDY = {"instances": "destroy one", "ram": "lower an instance's ram", "cpus": "lower an instance's cpus",
          "disk": "lower an instance's diskspace", "addresses": "remove one (ctctl set --ipdel)",
          "snapshots": "delete one", "backups": "wait for retention (--backup-keep) to remove one"}
# The instance limit each project figure is the sum of (None: counted, not a limit).
FROM_INSTANCE = {"ram": "ram", "cpus": "cpus", "disk": "diskspace"}


def check_name(value: Any) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise InvalidRequest(f"invalid project name {value!r}: use 1-31 lowercase letters and digits, "
                             "starting with a letter (no '-': instance names begin with 'PROJECT-')")
    return value


@dataclass(frozen=True)
class Usage:
    """What a project's instances use together (or what one instance adds)."""

    instances: int = 0
    ram: int = 0
    cpus: int = 0
    disk: int = 0
    addresses: int = 0
    snapshots: int = 0
    backups: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def __sub__(self, other: Usage) -> Usage:
        return Usage(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def instance_usage(limits: dict[str, int], *, vm_disk: int | None = None, addresses: int = 0,
                   snapshots: int = 0, backups: int = 0) -> Usage:
    """One instance's share: its RAM, CPU and disk limits (unlimited counts 0: missing_limit
    refuses such an instance where the project limits that figure)."""
    def value(key: str) -> int:
        v = limits.get(key, 0)
        return 0 if v == UNLIMITED else v
    disk = vm_disk if vm_disk is not None else value("diskspace")
    return Usage(instances=1, ram=value("ram"), cpus=value("cpus"), disk=disk, addresses=addresses,
                 snapshots=snapshots, backups=backups)


@dataclass
class Project:
    name: str
    description: str = ""
    limits: dict[str, int] = field(default_factory=dict)
    allow_exec: bool = False             # tenants may run commands in its instances
    templates: list[str] | None = None   # templates its tenants may reinstall from; None: the host's recipes
    created_at: str = ""

    @property
    def prefix(self) -> str:
        """What its instances' names begin with ('' for default)."""
        return "" if self.name == DEFAULT else f"{self.name}-"

    def with_changes(self, **changes: Any) -> Project:
        return replace(self, **changes)


def human(key: str, n: int) -> str:
    if key not in SIZE_LIMITS:
        return str(n)
    for unit, scale in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n}B"


def check_limits(raw: Any) -> dict[str, int | None]:
    """A request's limits, normalised; None for a limit to remove ("unlimited" or null)."""
    if not isinstance(raw, dict):
        raise InvalidRequest("limits must be an object, e.g. {\"instances\": 5, \"ram\": \"8G\"}")
    out: dict[str, int | None] = {}
    for key, value in raw.items():
        if key not in LIMITS:
            raise InvalidRequest(f"unknown project limit {key!r}; known: {', '.join(LIMITS)}")
        if value is None or (isinstance(value, str) and value.strip().lower() == "unlimited"):
            out[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise InvalidRequest(f"invalid limits.{key} {value!r}: expected "
                                 + ("a size such as 8G" if key in SIZE_LIMITS else "a whole number"))
        try:
            number = parse_size(str(value)) if key in SIZE_LIMITS else parse_count(str(value))
        except ValueError:
            raise InvalidRequest(f"invalid limits.{key} {value!r}: expected "
                                 + ("a size such as 8G" if key in SIZE_LIMITS else "a whole number")
                                 + " or 'unlimited'") from None
        if number == UNLIMITED:
            out[key] = None
        elif not 0 <= number < (1 << 62):
            raise InvalidRequest(f"invalid limits.{key} {value!r}: out of range")
        else:
            out[key] = number
    return out


def merged(current: dict[str, int], changes: dict[str, int | None]) -> dict[str, int]:
    out = dict(current)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def refusal(project: Project, before: Usage, after: Usage) -> str | None:
    """Why `after` does not fit the project's limits; None when it does (see the module doc)."""
    for key in LIMITS:
        limit = project.limits.get(key)
        if limit is None:
            continue
        now, then = getattr(before, key), getattr(after, key)
        if then > limit and then > now:
            if key == "instances":
                return (f"project {project.name}: {now} instances of {limit}; "
                        f"raise limits.instances or {REMEDY[key]}")
            return (f"project {project.name}: {key} {human(key, now)} of {human(key, limit)} in use, this needs "
                    f"{human(key, then - now)} more; raise limits.{key} or {REMEDY[key]}")
    return None


def missing_limit(project: Project, limits: dict[str, int], vm: bool = False) -> str | None:
    """The instance limit it must have because the project limits the sum of it."""
    for key, per_instance in FROM_INSTANCE.items():
        if key not in project.limits or (vm and key == "disk"):
            continue   # a VM's disk always has its size
        value = limits.get(per_instance)
        if value is None or value == UNLIMITED:
            return (f"project {project.name} limits {key} ({human(key, project.limits[key])} in all): "
                    f"give the instance a {per_instance} limit (e.g. --{per_instance} ...)")
    return None
