"""The registry of instance kinds: which implementation of ctd/instance/kind.py serves an
instance type, and the one place a kind this host cannot run is refused (NotSupported).

Adding a kind: a new InstanceType value, a package with its kind class, and one line here.
"""

from __future__ import annotations

from collections.abc import Callable

from ctd.errors import InvalidRequest, NotSupported
from ctd.instance.container.driver import ContainerDriver
from ctd.instance.container.kind import ContainerKind
from ctd.instance.context import InstanceContext
from ctd.instance.kind import InstanceKind
from ctd.instance.vm.kind import VmKind
from ctd.state import InstanceRecord, InstanceType


class Kinds:
    """Every kind this daemon knows, by type."""

    def __init__(self, ctx: InstanceContext, containers: ContainerDriver,
                 on_stopped: Callable[[str, int | None], None]) -> None:
        self.container = ContainerKind(ctx, containers)
        self.vm = VmKind(ctx, on_stopped)
        self._by_type: dict[InstanceType, InstanceKind] = {InstanceType.CONTAINER: self.container,
                                                          InstanceType.VM: self.vm}

    def of(self, rec: InstanceRecord) -> InstanceKind:
        """The kind of an existing instance (whether or not it can run here now)."""
        return self._by_type[rec.type]

    def of_type(self, kind_type: InstanceType) -> InstanceKind:
        return self._by_type[kind_type]

    def named(self, name: object) -> InstanceKind:
        """The kind a request names ("type": "container" / "vm"); 400 for an unknown one."""
        for kind_type, kind in self._by_type.items():
            if name == kind_type.value:
                return kind
        raise InvalidRequest(f"invalid type {name!r}: use {' or '.join(t.value for t in self._by_type)}")

    def require(self, kind: InstanceKind) -> InstanceKind:
        """The kind, if this host can run it; NotSupported saying what to install otherwise."""
        reason = kind.unavailable()
        if reason is not None:
            raise NotSupported(reason)
        return kind

    def all(self) -> list[InstanceKind]:
        return list(self._by_type.values())
