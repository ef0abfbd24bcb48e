"""The result of one readiness check."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any


class Status(enum.Enum):
    OK = "OK"
    WARN = "WARN"
    MISSING = "MISSING"


@dataclass(frozen=True)
class CheckResult:
    name: str  # e.g. "CONFIG_USER_NS", "cgroup-version", "tool:qemu"
    status: Status
    detail: str  # what was found
    fix: str  # what to do when not OK ("" when OK)
    required: bool  # a required item that is MISSING makes `ctctl check` fail
    category: str  # e.g. "kernel/namespaces", "cgroups", "tools"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckResult:
        """Inverse of to_dict; tolerant of extra keys (the daemon may add some)."""
        return cls(
            name=str(d["name"]),
            status=Status(str(d["status"]).upper()),
            detail=str(d.get("detail", "")),
            fix=str(d.get("fix", "")),
            required=bool(d.get("required", False)),
            category=str(d.get("category", "")),
        )


def ok(name: str, detail: str, category: str, required: bool = False) -> CheckResult:
    return CheckResult(name, Status.OK, detail, "", required, category)


def bad(name: str, detail: str, fix: str, category: str, required: bool) -> CheckResult:
    """MISSING when required, WARN otherwise."""
    status = Status.MISSING if required else Status.WARN
    return CheckResult(name, status, detail, fix, required, category)


def warn(name: str, detail: str, fix: str, category: str, required: bool = False) -> CheckResult:
    return CheckResult(name, Status.WARN, detail, fix, required, category)
