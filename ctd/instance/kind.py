"""The instance interface: what the manager asks of a kind of instance (container, VM).

The manager keeps lookup, locks, power state and dispatch; everything that differs between
kinds sits behind this Protocol, one implementation per package (ctd/instance/container/kind.py,
ctd/instance/vm/kind.py), found through the registry (ctd/instance/kinds.py). A kind whose
machinery is missing on this host (no QEMU) is refused there, in one place, with NotSupported.

Contract of each method: it runs on the event loop with the instance's lock held by the caller
where the manager holds it today; blocking work goes to a thread inside the kind. Checks raise
4xx errors (ctd.errors) before anything changes; makers register what they made on the
NewInstance they are given, which undoes it if they fail.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from cgroups import CgroupGroup, Resources
from ctd.instance.consolehub import ConsoleHub
from ctd.instance.requests import CloneRequest, CreateRequest, VmRequest
from ctd.instance.reserve import NewInstance
from ctd.instance.rollback import Rollback
from ctd.instance.shapes import LiveSnapshot
from ctd.network.netlink import InsideNic
from ctd.state import InstanceRecord, InstanceType


class InstanceKind(Protocol):
    """One kind of instance."""

    type: InstanceType
    process_name: str       # what exit reports call its main process ("init", "QEMU")
    takes_io_uring: bool    # whether --io_uring means anything for it
    nics_go_with_it: bool   # its host-side NICs vanish with it (a netns's veths) rather than being deleted

    def unavailable(self) -> str | None: ...   # why it cannot run on this host and what to do, or None

    # --- what the manager shows
    def is_running(self, rec: InstanceRecord) -> bool: ...
    def has_storage(self, rec: InstanceRecord) -> bool: ...
    def group(self, rec: InstanceRecord) -> CgroupGroup: ...
    def group_name(self, rec: InstanceRecord) -> str: ...
    def view_fields(self, rec: InstanceRecord) -> dict[str, Any]: ...   # "console" and "vm" of a view

    # --- making one (provisioning)
    def check_body(self, body: dict[str, Any]) -> VmRequest | None: ...   # CreateRequest.vm
    def check_limits(self, limits: dict[str, int]) -> None: ...
    def clone_body(self, src: InstanceRecord, name: str) -> dict[str, Any]: ...
    def check_reinstall(self, rec: InstanceRecord) -> None: ...
    async def create(self, req: CreateRequest, new: NewInstance) -> InstanceRecord: ...
    async def clone(self, req: CloneRequest, new: NewInstance, src_lock: asyncio.Lock) -> InstanceRecord: ...

    # --- power
    async def start(self, rec: InstanceRecord, resources: Resources, paused: bool) -> tuple[int, int | None]: ...
    async def stop(self, rec: InstanceRecord, timeout: float, kill: bool) -> bool: ...
    async def cleanup(self, rec: InstanceRecord) -> None: ...
    async def destroy(self, rec: InstanceRecord) -> None: ...
    async def suspend(self, rec: InstanceRecord) -> None: ...   # freezer / QMP stop; raises if it did not take
    async def resume(self, rec: InstanceRecord) -> None: ...    # thaw / QMP cont
    async def is_suspended(self, rec: InstanceRecord) -> bool: ...   # the kernel's or QEMU's word
    async def hardware(self, rec: InstanceRecord) -> dict[str, Any]: ...
    def console(self, rec: InstanceRecord) -> ConsoleHub: ...   # 409 when not running
    async def exec(self, rec: InstanceRecord, command: list[str], env: dict[str, str], cwd: str,
                   tty: bool) -> Any: ...   # a process handle the exec stream drives

    # --- storage
    async def snapshot(self, rec: InstanceRecord, snap: str) -> LiveSnapshot | None: ...
    async def rollback(self, rec: InstanceRecord, snap: str) -> None: ...

    # --- settings (ctd/instance/settings.py)
    async def configure_nics(self, rec: InstanceRecord, inside: list[InsideNic]) -> None: ...
    def check_password_user(self, rec: InstanceRecord, user: str) -> None: ...
    async def apply_limits(self, rec: InstanceRecord, before: InstanceRecord, new_limits: dict[str, int],
                           removed: frozenset[str], done: Rollback) -> None: ...
    async def write_guest(self, rec: InstanceRecord, before: InstanceRecord, userpasswd: tuple[str, str] | None,
                          notes: list[str], done: Rollback) -> None: ...
    async def after_set(self, rec: InstanceRecord, changes: dict[str, int]) -> list[str]: ...

    # --- after a daemon restart (ctd/instance/recovery.py)
    def release_leftovers(self, rec: InstanceRecord) -> list[str]: ...
    async def adopt(self, rec: InstanceRecord) -> bool: ...

